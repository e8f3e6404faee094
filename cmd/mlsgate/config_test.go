package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// daemons are the commands that read a configuration, with the keys whose
// value in deploy/<name>.yaml is an example rather than the default.
var daemons = []struct {
	d        daemonConfig
	args     []string
	examples []string
}{
	{agentConfig, []string{"agent"}, []string{"integrity"}},
	{loaderConfig, []string{"loader"}, nil},
	{storeConfig, []string{"store", "serve"}, nil},
	{mapperConfig, []string{"mapper", "serve"}, []string{"policy"}},
	{updatedConfig, []string{"updated"}, []string{"cert", "key", "ca", "crl"}},
}

// daemonCmd is the daemon's command in a fresh tree (so that it inherits
// the logging flags), its flags parsed from args.
func daemonCmd(t *testing.T, path []string, args ...string) *cobra.Command {
	t.Helper()
	cmd, _, err := newRoot().Find(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// exampleCopy is deploy/<name>.yaml copied to a file this test owns (the
// checkout's owner need not be one the trust check accepts).
func exampleCopy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return writeConfig(t, name+".yaml", string(b))
}

func writeConfig(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// effective is every setting's value as the daemon will read it.
func effective(cmd *cobra.Command, lc *loadedConfig) map[string]string {
	m := map[string]string{}
	for k, fl := range configFlags(cmd) {
		m[k] = fl.Value.String()
	}
	for k := range lc.d.extra {
		m[k] = strings.TrimSpace(strings.ReplaceAll(strings.ReplaceAll(toString(lc.v.Get(k)), "map[]", ""), " ", ""))
	}
	return m
}

func toString(v any) string {
	b, _ := yaml.Marshal(v)
	return string(b)
}

// TestDeployedConfigs: deploy/ has an example per daemon; it loads, names
// every key of the daemon with a comment, gives the defaults (but for the
// keys listed as examples), and a key it does not know is refused, naming
// the key, the file and the line.
func TestDeployedConfigs(t *testing.T) {
	for _, dm := range daemons {
		t.Run(dm.d.name, func(t *testing.T) {
			file := exampleCopy(t, dm.d.name)
			cmd := daemonCmd(t, dm.args, "--config", file)
			lc, err := dm.d.load(cmd)
			if err != nil {
				t.Fatalf("%s: %v", dm.d.example(), err)
			}
			if lc.file != file {
				t.Errorf("read %q, want %q", lc.file, file)
			}
			if dm.d.name == "agent" {
				if _, _, err := loadAgentConfig(daemonCmd(t, dm.args, "--config", file)); err != nil {
					t.Errorf("agent.Config from %s: %v", dm.d.example(), err)
				}
			}

			// Every key, with a comment.
			b, _ := os.ReadFile(file)
			var doc yaml.Node
			if err := yaml.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			inFile := map[string]bool{}
			lastComment := ""
			root := doc.Content[0]
			for i := 0; i+1 < len(root.Content); i += 2 {
				k, v := root.Content[i], root.Content[i+1]
				inFile[k.Value] = true
				if k.HeadComment != "" {
					lastComment = k.HeadComment
				}
				named := regexp.MustCompile(`\b` + regexp.QuoteMeta(k.Value) + `\b`).MatchString(lastComment)
				if k.HeadComment == "" && k.LineComment == "" && v.LineComment == "" && !named {
					t.Errorf("%s line %d: key %s has no comment (give it one, or name it in the comment of its group)", dm.d.example(), k.Line, k.Value)
				}
			}
			keys := []string{}
			for k := range configFlags(cmd) {
				keys = append(keys, k)
			}
			for k := range dm.d.extra {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if !inFile[k] {
					t.Errorf("%s lacks key %s: document every setting of %s there", dm.d.example(), k, cmd.CommandPath())
				}
			}

			// The defaults.
			dcmd := daemonCmd(t, dm.args, "--config", "")
			dlc, err := dm.d.load(dcmd)
			if err != nil {
				t.Fatal(err)
			}
			got, want := effective(cmd, lc), effective(dcmd, dlc)
			for _, k := range keys {
				if !slices.Contains(dm.examples, k) && got[k] != want[k] {
					t.Errorf("%s: %s is %q, the default is %q: keep the example's values the defaults", dm.d.example(), k, got[k], want[k])
				}
			}

			// An unknown key is refused.
			bad := writeConfig(t, dm.d.name+".yaml", string(b)+"\nsocket_gruop: wheel\n")
			_, err = dm.d.load(daemonCmd(t, dm.args, "--config", bad))
			n := strings.Count(string(b)+"\n", "\n") + 1
			if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `unknown key "socket_gruop"`) ||
				!strings.Contains(err.Error(), "line "+itoa(n)) {
				t.Errorf("unknown key at line %d: %v", n, err)
			}
			if dm.d.name != "updated" && (err == nil || !strings.Contains(err.Error(), `did you mean "socket_group"`)) {
				t.Errorf("no suggestion for socket_gruop: %v", err)
			}
		})
	}
}

func itoa(n int) string { return strings.TrimSpace(toString(n)) }

// TestConfigPrecedence: flag > MLSGATE_<DAEMON>_ > file > default, for a
// scalar, a list and the inherited logging settings.
func TestConfigPrecedence(t *testing.T) {
	file := writeConfig(t, "updated.yaml", "apply_timeout: 1m\nguest_addr: [10.0.0.1, 10.0.0.2]\nlog_level: warn\nstate_dir: /file\n")
	get := func(cmd *cobra.Command, name string) string { return cmd.Flags().Lookup(name).Value.String() }

	cmd := daemonCmd(t, []string{"updated"}, "--config", file)
	if _, err := updatedConfig.load(cmd); err != nil {
		t.Fatal(err)
	}
	if get(cmd, "apply-timeout") != "1m0s" || get(cmd, "guest-addr") != "[10.0.0.1,10.0.0.2]" || get(cmd, "log-level") != "warn" || get(cmd, "shutdown-timeout") != "10s" {
		t.Errorf("file: apply-timeout %s guest-addr %s log-level %s shutdown-timeout %s", get(cmd, "apply-timeout"), get(cmd, "guest-addr"), get(cmd, "log-level"), get(cmd, "shutdown-timeout"))
	}

	t.Setenv("MLSGATE_UPDATED_APPLY_TIMEOUT", "2m")
	t.Setenv("MLSGATE_UPDATED_GUEST_ADDR", "10.0.0.3,10.0.0.4")
	t.Setenv("MLSGATE_UPDATED_LOG_LEVEL", "error")
	t.Setenv("MLSGATE_UPDATED_STATE_DIR", "") // empty is a value, not unset
	cmd = daemonCmd(t, []string{"updated"}, "--config", file)
	if _, err := updatedConfig.load(cmd); err != nil {
		t.Fatal(err)
	}
	if get(cmd, "apply-timeout") != "2m0s" || get(cmd, "guest-addr") != "[10.0.0.3,10.0.0.4]" || get(cmd, "log-level") != "error" || get(cmd, "state-dir") != "" {
		t.Errorf("environment: apply-timeout %s guest-addr %s log-level %s state-dir %q", get(cmd, "apply-timeout"), get(cmd, "guest-addr"), get(cmd, "log-level"), get(cmd, "state-dir"))
	}

	cmd = daemonCmd(t, []string{"updated"}, "--config", file, "--apply-timeout", "3m", "--guest-addr", "10.0.0.5", "--log-level", "debug")
	if _, err := updatedConfig.load(cmd); err != nil {
		t.Fatal(err)
	}
	if get(cmd, "apply-timeout") != "3m0s" || get(cmd, "guest-addr") != "[10.0.0.5]" || get(cmd, "log-level") != "debug" {
		t.Errorf("flags: apply-timeout %s guest-addr %s log-level %s", get(cmd, "apply-timeout"), get(cmd, "guest-addr"), get(cmd, "log-level"))
	}
}

// TestConfigBadValues: a value of the wrong type, from the file or the
// environment, names where it came from and what is wanted.
func TestConfigBadValues(t *testing.T) {
	for _, tc := range []struct {
		body, env, val, want string
	}{
		{body: "ttl: 300\n", want: "line 1: key ttl"},
		{body: "ttl: [1m]\n", want: "a list, not a single value"},
		{body: "socket: {a: b}\n", want: "a mapping"},
		{body: "log_level: verbose\n", want: "line 1: key log_level"},
		{body: "- a\n- b\n", want: "want a mapping"},
		{body: "ttl: 1m\nttl: 2m\n", want: "already defined"},
		{env: "MLSGATE_STORE_TTL", val: "soon", want: "environment MLSGATE_STORE_TTL"},
		{env: "MLSGATE_STORE_LOG_FORMAT", val: "xml", want: "environment MLSGATE_STORE_LOG_FORMAT"},
	} {
		if tc.env != "" {
			t.Setenv(tc.env, tc.val)
		}
		file := writeConfig(t, "store.yaml", tc.body)
		_, err := storeConfig.load(daemonCmd(t, []string{"store", "serve"}, "--config", file))
		if err == nil || !strings.Contains(err.Error(), tc.want) || tc.body != "" && !strings.Contains(err.Error(), file) {
			t.Errorf("%q %s=%s: %v, want an error naming %q and the file", tc.body, tc.env, tc.val, err, tc.want)
		}
		if tc.env != "" {
			os.Unsetenv(tc.env)
		}
	}
}

// TestConfigEnvironment: an MLSGATE_<DAEMON>_ variable that names no
// setting is refused, as is the agent's old unprefixed style; other
// daemons' and tools' variables are left alone.
func TestConfigEnvironment(t *testing.T) {
	t.Setenv("MLSGATE_GUEST_CACHE", "/tmp/x")     // a tool's
	t.Setenv("MLSGATE_AGENT", "unix:/tmp/a.sock") // the vif script's
	t.Setenv("MLSGATE_MAPPER_POLICY", "/x")       // another daemon's
	t.Setenv("MLSGATE_LISTEN", "0.0.0.0:1")       // no daemon's
	if _, err := storeConfig.load(daemonCmd(t, []string{"store", "serve"}, "--config", "")); err != nil {
		t.Fatalf("other variables refused: %v", err)
	}
	for _, tc := range []struct {
		d        daemonConfig
		args     []string
		env, val string
		want     string
	}{
		{storeConfig, []string{"store", "serve"}, "MLSGATE_STORE_SOCKET_GRUOP", "wheel", "did you mean MLSGATE_STORE_SOCKET_GROUP?"},
		{mapperConfig, []string{"mapper", "serve"}, "MLSGATE_MAPPER_CONFIG", "/x.yaml", "chosen with --config"},
		{loaderConfig, []string{"loader"}, "MLSGATE_LOADER_ARGS", "--backend xen", "/etc/mlsgate/loader.yaml"},
		{agentConfig, []string{"agent"}, "MLSGATE_PIN_DIR", "/sys/fs/bpf/x", "rename it MLSGATE_AGENT_PIN_DIR"},
		{updatedConfig, []string{"updated"}, "MLSGATE_UPDATED_CERTIFICATE", "/x", "MLSGATE_UPDATED_CERTIFICATE"},
	} {
		t.Setenv(tc.env, tc.val)
		_, err := tc.d.load(daemonCmd(t, tc.args, "--config", ""))
		if err == nil || !strings.Contains(err.Error(), tc.env) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%s for %s: %v, want an error naming it and %q", tc.env, tc.val, tc.d.name, err, tc.want)
		}
		os.Unsetenv(tc.env)
	}
}

// TestConfigFileTrust: a daemon runs as root, so its file, and every
// directory above it, must be owned by root (or the daemon's user) and
// writable by no one else; the error names the file and the fix.
func TestConfigFileTrust(t *testing.T) {
	const body = "ttl: 1m\n"
	load := func(file string) error {
		_, err := storeConfig.load(daemonCmd(t, []string{"store", "serve"}, "--config", file))
		return err
	}
	dirWith := func(mode os.FileMode) (string, string) {
		dir := filepath.Join(t.TempDir(), "d")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "store.yaml")
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		return dir, file
	}

	ok := writeConfig(t, "store.yaml", body)
	if err := load(ok); err != nil {
		t.Fatalf("0644 file of ours: %v", err)
	}
	for _, mode := range []os.FileMode{0o664, 0o646, 0o666, 0o620} {
		f := writeConfig(t, "store.yaml", body)
		os.Chmod(f, mode)
		if err := load(f); err == nil || !strings.Contains(err.Error(), f) || !strings.Contains(err.Error(), "fix: chmod go-w "+f) {
			t.Errorf("file mode %04o: %v", mode, err)
		}
	}
	dir, f := dirWith(0o777)
	if err := load(f); err == nil || !strings.Contains(err.Error(), "directory "+dir) || !strings.Contains(err.Error(), "chmod go-w "+dir) {
		t.Errorf("world-writable directory: %v", err)
	}
	_, f = dirWith(0o1777 | os.ModeSticky)
	if err := load(f); err != nil {
		t.Errorf("file of ours in a sticky directory (as /tmp): %v", err)
	}
	// A symlink from a good directory to a file in a writable one.
	_, target := dirWith(0o777)
	link := filepath.Join(t.TempDir(), "store.yaml")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := load(link); err == nil || !strings.Contains(err.Error(), "directory "+filepath.Dir(target)) {
		t.Errorf("symlink into a writable directory: %v", err)
	}
	// A FIFO is refused at once instead of blocking the daemon.
	fifo := filepath.Join(t.TempDir(), "store.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- load(fifo) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a FIFO as the config file blocked the daemon")
	}
	// Missing: the default is optional, a file given with --config is not.
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if err := load(missing); err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), `--config ""`) {
		t.Errorf("missing --config file: %v", err)
	}
	cmd := daemonCmd(t, []string{"store", "serve"})
	cmd.Flags().Lookup(flagConfig).DefValue = missing
	cmd.Flags().Lookup(flagConfig).Value.Set(missing)
	if lc, err := storeConfig.load(cmd); err != nil || lc.file != "" || !strings.Contains(lc.source, "does not exist") {
		t.Errorf("missing default file: %+v %v", lc, err)
	}
	// Through the command line, as an operator meets it.
	bad := writeConfig(t, "store.yaml", body)
	os.Chmod(bad, 0o666)
	err := runContext(context.Background(), []string{"store", "serve", "--config", bad, "--socket", "", "--listen", ""}, &strings.Builder{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "chmod go-w") {
		t.Errorf("mlsgate store serve --config (mode 0666): %v", err)
	}

	if os.Geteuid() != 0 {
		// A daemon run as a user trusts root's files as well as its own.
		if fi, err := os.Stat("/etc/passwd"); err == nil && fi.Sys().(*syscall.Stat_t).Uid == 0 && fi.Mode().Perm()&0o022 == 0 {
			if _, err := readTrustedConfig("/etc/passwd"); err != nil {
				t.Errorf("root's file, read by uid %d: %v", os.Geteuid(), err)
			}
		}
		t.Log("not root: the cases of files owned by another user need chown")
		return
	}
	other := writeConfig(t, "store.yaml", body)
	if err := os.Chown(other, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := load(other); err == nil || !strings.Contains(err.Error(), "owned by uid 65534, not root") || !strings.Contains(err.Error(), "chown root "+other) {
		t.Errorf("file owned by nobody, read by root: %v", err)
	}
	dir, f = dirWith(0o755)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := load(f); err == nil || !strings.Contains(err.Error(), "directory "+dir+" is owned by uid 65534") {
		t.Errorf("directory owned by nobody, read by root: %v", err)
	}
}

// TestDaemonHelpNamesConfig: each daemon's --help names its config file
// option, default file, example and environment prefix.
func TestDaemonHelpNamesConfig(t *testing.T) {
	for _, dm := range daemons {
		var out strings.Builder
		if err := run(append(slices.Clone(dm.args), "--help"), &out); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"--config string", dm.d.defaultFile(), dm.d.example(), dm.d.envPrefix() + "<KEY>", dm.d.envPrefix() + "LOG_LEVEL"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("mlsgate %s --help lacks %q", strings.Join(dm.args, " "), want)
			}
		}
	}
}

// TestConfigStartLine: the first log line carries the effective settings,
// where the file came from, and no secret.
func TestConfigStartLine(t *testing.T) {
	file := writeConfig(t, "store.yaml", "authority: https://ops:s3cret@authority.example/\ncache_ttl: 2m\n")
	t.Setenv("MLSGATE_STORE_TTL", "1m")
	t.Setenv("INVOCATION_ID", "") // text outside systemd
	t.Setenv("JOURNAL_STREAM", "")
	cmd := daemonCmd(t, []string{"store", "serve"}, "--config", file, "--listen", "")
	lc, err := storeConfig.load(cmd)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	lc.logStart(slog.New(slog.NewJSONHandler(&buf, nil)), cmd)
	var line struct{ Config map[string]any }
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"config": file, "ttl": "1m0s", "cache_ttl": "2m", "listen": "", "log_format": "text", "socket_group": "mlsgate"} {
		if line.Config[k] != want {
			t.Errorf("start line %s = %v, want %v", k, line.Config[k], want)
		}
	}
	if strings.Contains(buf.String(), "s3cret") {
		t.Errorf("start line logs the authority's password: %s", buf.String())
	}
	// Without a file, it says why.
	cmd = daemonCmd(t, []string{"store", "serve"}, "--config", "")
	if lc, err = storeConfig.load(cmd); err != nil || lc.source != `none (--config "")` {
		t.Errorf("no file: %q %v", lc.source, err)
	}
}

// TestAgentCleanupReadsPinDir: 'agent cleanup' without --pin-dir acts on
// the pin_dir the agent is configured with (its file, then
// MLSGATE_AGENT_PIN_DIR), not on the default. The directories are not on a
// bpffs, so cleanup refuses them, naming each: nothing is removed.
func TestAgentCleanupReadsPinDir(t *testing.T) {
	fromFile, fromEnv, fromFlag := t.TempDir(), t.TempDir(), t.TempDir()
	file := writeConfig(t, "agent.yaml", "pin_dir: "+fromFile+"\nlog_level: warn\n")
	cleanup := func(args ...string) error {
		return run(append([]string{"agent", "cleanup"}, args...), &strings.Builder{})
	}
	if err := cleanup("--config", file); err == nil || !strings.Contains(err.Error(), fromFile) {
		t.Errorf("pin_dir from the file: %v", err)
	}
	t.Setenv("MLSGATE_AGENT_PIN_DIR", fromEnv)
	if err := cleanup("--config", file); err == nil || !strings.Contains(err.Error(), fromEnv) {
		t.Errorf("pin_dir from MLSGATE_AGENT_PIN_DIR: %v", err)
	}
	if err := cleanup("--config", file, "--pin-dir", fromFlag); err == nil || !strings.Contains(err.Error(), fromFlag) {
		t.Errorf("--pin-dir: %v", err)
	}
	bad := writeConfig(t, "agent.yaml", "pin_dri: /x\n")
	if err := cleanup("--config", bad); err == nil || !strings.Contains(err.Error(), "pin_dri") || !strings.Contains(err.Error(), "--pin-dir") {
		t.Errorf("a bad agent file: %v", err)
	}
}
