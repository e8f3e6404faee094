package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out strings.Builder
		if err := run(args, &out); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if s := out.String(); !strings.HasPrefix(s, "mlsgate ") || !strings.Contains(s, "revision ") || !strings.Contains(s, "go1.") {
			t.Errorf("%v printed %q, want version, revision and Go version", args, s)
		}
	}
	var out strings.Builder
	if err := run([]string{"version", "-o", "json"}, &out); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out.String()), &m); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	for _, k := range []string{"version", "revision", "time", "modified", "go_version"} {
		if _, ok := m[k]; !ok {
			t.Errorf("version -o json lacks %q: %s", k, out.String())
		}
	}
	if err := run([]string{"version", "-o", "xml"}, &out); err == nil || !strings.Contains(err.Error(), "text or json") {
		t.Errorf("version -o xml: %v", err)
	}
}

func TestLogFlagsRefuseUnknownValues(t *testing.T) {
	var out strings.Builder
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "verbose", "label", "level", "s0"}, "debug, info, warn, error"},
		{[]string{"--log-format", "xml", "label", "level", "s0"}, "text, json"},
		{[]string{"agent", "--log-level", "trace"}, "debug, info, warn, error"},
		{[]string{"store", "serve", "--log-format", "logfmt", "--socket", "/nonexistent/x.sock"}, "text, json"},
	} {
		err := run(tc.args, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one listing %q", tc.args, err, tc.want)
		}
	}
	if err := run([]string{"--log-level", "debug", "--log-format", "json", "label", "level", "s0"}, &out); err != nil {
		t.Errorf("valid logging flags refused: %v", err)
	}
}

func TestLogFormatDefault(t *testing.T) {
	root := newRoot()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "text"},
		{map[string]string{"INVOCATION_ID": "abc"}, "json"},
		{map[string]string{"JOURNAL_STREAM": "8:1234"}, "json"},
	} {
		_, format, err := logOptions(root.PersistentFlags(), env(tc.env))
		if err != nil || format != tc.want {
			t.Errorf("env %v: format %q (%v), want %q", tc.env, format, err, tc.want)
		}
	}
	// An explicit --log-format wins over systemd's default.
	if err := root.PersistentFlags().Set(flagLogFormat, "text"); err != nil {
		t.Fatal(err)
	}
	if _, format, _ := logOptions(root.PersistentFlags(), env(map[string]string{"INVOCATION_ID": "x"})); format != "text" {
		t.Errorf("--log-format text under systemd gave %q", format)
	}
}

func TestLoggerLevelAndStartLine(t *testing.T) {
	root := newRoot()
	fs := root.PersistentFlags()
	fs.Set(flagLogLevel, "warn")
	fs.Set(flagLogFormat, "json")
	var buf bytes.Buffer
	log, err := newLoggerTo(&buf, fs, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), "shown") {
		t.Errorf("--log-level warn wrote %q", buf.String())
	}

	buf.Reset()
	log = slog.New(slog.NewJSONHandler(&buf, nil))
	logStart(log, root, map[string]any{"pin_dir": "/sys/fs/bpf/mlsgate", "vici_password": "hunter2", "api_token": "t0ken", "authority": "https://ops:s3cret@authority.example:8443/v1"})
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	for _, k := range []string{"version", "revision", "go_version", "config"} {
		if _, ok := line[k]; !ok {
			t.Errorf("start line lacks %q: %s", k, buf.String())
		}
	}
	if strings.Contains(buf.String(), "hunter2") || strings.Contains(buf.String(), "t0ken") || strings.Contains(buf.String(), "s3cret") {
		t.Errorf("start line logs a secret: %s", buf.String())
	}
	if cfg, _ := line["config"].(map[string]any); cfg["pin_dir"] != "/sys/fs/bpf/mlsgate" {
		t.Errorf("start line config %v lacks pin_dir", line["config"])
	}
}

// TestAgentConfigLogKeys: the logging settings, inherited from the root,
// are keys of every daemon (log_level in the file, MLSGATE_AGENT_LOG_LEVEL),
// yet not fields of agent.Config (its exact decoding would refuse them).
func TestAgentConfigLogKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("log_level: warn\nlog_format: json\npin_dir: /sys/fs/bpf/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := newRoot()
	agentCmd, _, err := root.Find([]string{"agent"})
	if err != nil {
		t.Fatal(err)
	}
	if err := agentCmd.ParseFlags([]string{"--log-level", "debug", "--config", file}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := loadAgentConfig(agentCmd)
	if err != nil {
		t.Fatalf("agent config with log keys: %v", err)
	}
	if cfg.PinDir != "/sys/fs/bpf/x" {
		t.Errorf("pin_dir from the file: %q", cfg.PinDir)
	}
	lv, format, err := logOptions(agentCmd.Flags(), func(string) string { return "" })
	if err != nil || lv != slog.LevelDebug || format != "json" {
		t.Errorf("--log-level debug over the file's warn, the file's json: got %v %q %v", lv, format, err)
	}
}
