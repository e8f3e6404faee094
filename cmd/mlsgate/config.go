package main

// One configuration style for every daemon (agent, loader, store, mapper,
// update daemon): each setting is a flag, an MLSGATE_<DAEMON>_<KEY>
// environment variable and a key of a YAML file, merged through viper
// (flags > environment > file > defaults) and checked strictly.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

const (
	flagConfig = "config"
	// configDir holds the daemons' files, /etc/mlsgate/<daemon>.yaml.
	configDir = "/etc/mlsgate"
	// maxConfigSize bounds a configuration file: it is YAML settings, not
	// data.
	maxConfigSize = 1 << 20
)

// daemonConfig is where one daemon's settings come from. Its keys are its
// flags' names with _ for - (--pin-dir: pin_dir, MLSGATE_AGENT_PIN_DIR),
// the inherited --log-level and --log-format included, plus extra.
type daemonConfig struct {
	// name gives the environment prefix MLSGATE_<NAME>_, the default file
	// /etc/mlsgate/<name>.yaml and the example deploy/<name>.yaml.
	name string
	// extra are keys without a flag (the agent's integrity map) and their
	// defaults; the daemon decodes them itself (decodeExact).
	extra map[string]any
	// legacyEnv: the daemon read MLSGATE_<KEY> before its prefix existed
	// (the agent); such a variable is refused, naming its new name, instead
	// of being ignored.
	legacyEnv bool
}

// The daemons' configurations.
var (
	agentConfig   = daemonConfig{name: "agent", extra: map[string]any{"default_integrity": "i0", "integrity": map[string]any{}}, legacyEnv: true}
	loaderConfig  = daemonConfig{name: "loader"}
	storeConfig   = daemonConfig{name: "store"}
	mapperConfig  = daemonConfig{name: "mapper"}
	updatedConfig = daemonConfig{name: "updated"}
)

func (d daemonConfig) envPrefix() string   { return "MLSGATE_" + strings.ToUpper(d.name) + "_" }
func (d daemonConfig) defaultFile() string { return filepath.Join(configDir, d.name+".yaml") }
func (d daemonConfig) example() string     { return "deploy/" + d.name + ".yaml" }

// register gives cmd its --config flag and says in its help where its
// settings come from.
func (d daemonConfig) register(cmd *cobra.Command) {
	cmd.Flags().String(flagConfig, d.defaultFile(), fmt.Sprintf("configuration file (YAML; keys are the flags' names with _ for -, see %s); \"\" for none; a missing default file is fine", d.example()))
	cmd.Long = strings.TrimRight(cmd.Long, "\n") + "\n\n" + wrap(d.help(), 78)
}

// help is the Configuration paragraph of the daemon's --help.
func (d daemonConfig) help() string {
	p := d.envPrefix()
	return fmt.Sprintf(`Configuration: each setting is a flag, an environment variable %[1]s<KEY> and a key of the file --config (default %[2]s; "" for none), KEY being the flag's name with _ for - (--log-level: %[1]sLOG_LEVEL, log_level). A flag wins over the environment, the environment over the file, the file over the defaults below; %[3]s documents every key. The default file may be missing, a file given with --config may not. An unknown key in the file, or an unknown %[1]s variable, is an error, and so is a file (or a directory above it) owned by a user other than root or the daemon's, or writable by its group or others. The effective configuration is logged at start.`,
		p, d.defaultFile(), d.example())
}

// wrap breaks s into lines of at most width columns at spaces.
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		if i > 0 {
			if n+1+len(w) > width {
				b.WriteByte('\n')
				n = 0
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

// loadedConfig is a daemon's merged configuration. The flags hold the
// effective values afterwards (what the daemon reads); v holds them too,
// with the extra keys.
type loadedConfig struct {
	d      daemonConfig
	v      *viper.Viper
	file   string // the file read; "" none
	source string // where the file came from, or why none was read
	// fromEnv are the flags set from the environment (their viper value is
	// the raw string; the flag holds the parsed one).
	fromEnv map[string]*pflag.Flag
}

// configKey is a flag's configuration key.
func configKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// configFlags are cmd's settings by key: its flags and the inherited
// ones, but not --config, --help or --version.
func configFlags(cmd *cobra.Command) map[string]*pflag.Flag {
	cmd.InheritedFlags() // merges the persistent flags into cmd.Flags()
	m := map[string]*pflag.Flag{}
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		switch fl.Name {
		case flagConfig, "help", "version":
			return
		}
		m[configKey(fl.Name)] = fl
	})
	return m
}

// load merges the defaults, the file, the environment and the flags, and
// writes the result into the flags that were not given.
func (d daemonConfig) load(cmd *cobra.Command) (*loadedConfig, error) {
	flags := configFlags(cmd)
	known := map[string]bool{}
	for k := range flags {
		known[k] = true
	}
	for k := range d.extra {
		known[k] = true
	}
	name := cmd.CommandPath()
	if err := d.checkEnv(name, known); err != nil {
		return nil, err
	}

	l := &loadedConfig{d: d, v: viper.New(), fromEnv: map[string]*pflag.Flag{}}
	var data []byte
	var lines map[string]int
	if fl := cmd.Flags().Lookup(flagConfig); fl != nil {
		l.file = fl.Value.String()
		if l.file == "" {
			l.source = `none (--config "")`
		} else {
			var err error
			data, err = readTrustedConfig(l.file)
			switch {
			case errors.Is(err, os.ErrNotExist) && !fl.Changed:
				l.source = fmt.Sprintf("none (%s does not exist)", l.file)
				l.file = ""
			case err != nil:
				if errors.Is(err, os.ErrNotExist) {
					return nil, fmt.Errorf("config %s: %w (fix: copy %s there, or give --config \"\" for none)", l.file, err, d.example())
				}
				return nil, err
			default:
				l.source = l.file
				if lines, err = configKeys(l.file, data, known, name, d); err != nil {
					return nil, err
				}
			}
		}
	}

	v := l.v
	v.SetConfigType("yaml")
	if data != nil {
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("config %s: %w", l.file, err)
		}
	}
	v.SetEnvPrefix(strings.TrimSuffix(d.envPrefix(), "_"))
	v.AllowEmptyEnv(true) // MLSGATE_STORE_LISTEN= means "" (none), as --listen "" does
	v.AutomaticEnv()
	for k, val := range d.extra {
		v.SetDefault(k, val)
	}
	keys := make([]string, 0, len(flags))
	for k := range flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	sources := map[string]string{}
	for _, k := range keys {
		fl := flags[k]
		if err := v.BindPFlag(k, fl); err != nil {
			return nil, err
		}
		if fl.Changed {
			sources[k] = "flag --" + fl.Name
			continue
		}
		src := ""
		if _, ok := os.LookupEnv(d.envPrefix() + strings.ToUpper(k)); ok {
			src = "environment " + d.envPrefix() + strings.ToUpper(k)
			l.fromEnv[k] = fl
		} else if line, ok := lines[k]; ok {
			src = fmt.Sprintf("config %s line %d: key %s", l.file, line, k)
		} else {
			continue
		}
		sources[k] = src
		if err := setFlag(fl, v.Get(k)); err != nil {
			return nil, fmt.Errorf("%s: %v (want %s, as for --%s)", src, err, flagTypeHint(fl), fl.Name)
		}
	}
	// The logging flags were checked before the file and the environment
	// could set them.
	if _, _, err := logOptions(cmd.Flags(), os.Getenv); err != nil {
		for _, k := range []string{configKey(flagLogLevel), configKey(flagLogFormat)} {
			if s := sources[k]; s != "" && strings.Contains(err.Error(), "--"+flags[k].Name) {
				return nil, fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil, err
	}
	return l, nil
}

// checkEnv refuses an MLSGATE_<DAEMON>_ variable that names no setting of
// the daemon (a typo would otherwise be ignored) and, for the agent, an
// unprefixed MLSGATE_<KEY> of one of its keys (read before the prefix
// existed). Other MLSGATE_ variables are left alone: other daemons' (a
// child inherits its parent's environment) and tools' (MLSGATE_GUEST_CACHE,
// MLSGATE_AGENT for the vif script).
func (d daemonConfig) checkEnv(name string, known map[string]bool) error {
	p := d.envPrefix()
	var errs []error
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, p):
			key := strings.ToLower(strings.TrimPrefix(k, p))
			if known[key] {
				continue
			}
			hint := ""
			switch {
			case key == flagConfig:
				hint = "; the file is chosen with --config only"
			case key == "args":
				hint = fmt.Sprintf("; options are no longer passed through the unit's environment: move them into %s as keys (see %s)", d.defaultFile(), d.example())
			default:
				if s := suggest(key, known); s != "" {
					hint = fmt.Sprintf(" (did you mean %s%s?)", p, strings.ToUpper(s))
				}
			}
			errs = append(errs, fmt.Errorf("environment %s: %s has no setting %q%s; fix: correct or unset it (its variables are %s followed by a key of %s in capitals)", k, name, key, hint, p, d.example()))
		case d.legacyEnv && strings.HasPrefix(k, "MLSGATE_") && known[strings.ToLower(strings.TrimPrefix(k, "MLSGATE_"))]:
			key := strings.TrimPrefix(k, "MLSGATE_")
			errs = append(errs, fmt.Errorf("environment %s is no longer read: %s's variables carry the prefix %s; fix: rename it %s%s", k, name, p, p, key))
		}
	}
	return errors.Join(errs...)
}

// configKeys checks the file's top-level keys against known and returns
// each one's line. Every unknown key is named with its line.
func configKeys(file string, data []byte, known map[string]bool, name string, d daemonConfig) (map[string]int, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config %s: %w (want YAML key: value lines, as in %s)", file, err, d.example())
	}
	lines := map[string]int{}
	if len(doc.Content) == 0 {
		return lines, nil // empty, or comments only
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s line %d: want a mapping of keys to values, as in %s", file, root.Line, d.example())
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if known[k.Value] {
			lines[k.Value] = k.Line
			continue
		}
		hint := ""
		if s := suggest(k.Value, known); s != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", s)
		}
		errs = append(errs, fmt.Errorf("config %s line %d: unknown key %q%s; fix: correct or remove it (%s documents the keys of %s)", file, k.Line, k.Value, hint, d.example(), name))
	}
	return lines, errors.Join(errs...)
}

// suggest is the known key nearest to key, if it is near.
func suggest(key string, known map[string]bool) string {
	n := strings.ToLower(strings.ReplaceAll(key, "-", "_"))
	best, bestD := "", 3
	for k := range known {
		if k == n {
			return k
		}
		if dist := editDistance(n, k); dist < bestD || dist == bestD && k < best {
			best, bestD = k, dist
		}
	}
	if bestD > 2 {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// setFlag gives fl the value the file or the environment has for it.
func setFlag(fl *pflag.Flag, val any) error {
	var list []string
	isList := false
	switch x := val.(type) {
	case []any:
		isList = true
		for _, e := range x {
			switch e.(type) {
			case map[string]any, []any:
				return fmt.Errorf("%v: a list of single values only", x)
			}
			list = append(list, fmt.Sprint(e))
		}
	case []string:
		isList, list = true, x
	case map[string]any:
		return errors.New("a mapping, not a single value")
	}
	sv, isSlice := fl.Value.(pflag.SliceValue)
	if isList {
		if !isSlice {
			return fmt.Errorf("%v: a list, not a single value", val)
		}
		return sv.Replace(list)
	}
	s := ""
	if val != nil {
		s = fmt.Sprint(val)
	}
	if isSlice && s == "" {
		return sv.Replace(nil) // an empty variable: the empty list
	}
	if err := fl.Value.Set(s); err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	return nil
}

// flagTypeHint says what a flag's values look like.
func flagTypeHint(fl *pflag.Flag) string {
	switch t := fl.Value.Type(); t {
	case "duration":
		return "a duration such as 30s, 5m or 0"
	case "bool":
		return "true or false"
	case "stringSlice", "strings":
		return "a list (YAML [a, b] or a,b in the environment)"
	case "int", "uint16", "uint32", "uint64", "int64":
		return "a whole number (" + t + ")"
	case "float64":
		return "a number"
	default:
		return "a " + t
	}
}

// readTrustedConfig reads a configuration file only root or the daemon's
// own user can have written: a daemon runs as root, so a file, or a
// directory above it, another user owns or its group or others may write
// would hand that user the daemon's settings (socket group, pin directory,
// enforce). The file is opened once, checked on its descriptor and read
// from it. A missing file is an error wrapping os.ErrNotExist.
func readTrustedConfig(path string) ([]byte, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	// O_NONBLOCK: a FIFO planted in its place must not hang the daemon.
	f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("config %s is not a regular file (%s); fix: give --config a YAML file", path, fi.Mode().Type())
	}
	euid := uint32(os.Geteuid())
	if err := checkOwner(path, path, fi, euid, false); err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if rfi, err := os.Stat(real); err != nil || !os.SameFile(fi, rfi) {
		return nil, fmt.Errorf("config %s changed while it was read (%v); fix: retry, and find who replaces it", path, err)
	}
	seen := map[string]bool{}
	for _, p := range []string{abs, real} {
		for dir := filepath.Dir(p); !seen[dir]; dir = filepath.Dir(dir) {
			seen[dir] = true
			dfi, err := os.Stat(dir)
			if err != nil {
				return nil, fmt.Errorf("config %s: %w", path, err)
			}
			if err := checkOwner(path, dir, dfi, euid, true); err != nil {
				return nil, err
			}
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("config %s is larger than %d bytes; fix: give --config the daemon's YAML settings (see deploy/)", path, maxConfigSize)
	}
	return data, nil
}

// checkOwner refuses name (the file, or a directory above it) when a user
// other than root or euid owns it or its group or others may write it (a
// directory with the sticky bit excepted: there only its owner may replace
// the file).
func checkOwner(file, name string, fi os.FileInfo, euid uint32, dir bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("config %s: cannot read the owner of %s", file, name)
	}
	who := "root"
	if euid != 0 {
		who = fmt.Sprintf("root or uid %d (this daemon's user)", euid)
	}
	what := "it"
	if dir {
		what = "directory " + name
	}
	if st.Uid != 0 && st.Uid != euid {
		fix := "chown root " + name
		if dir {
			fix = fmt.Sprintf("move the file under a directory only root may write (%s), or chown root %s", configDir, name)
		}
		return fmt.Errorf("config %s: %s is owned by uid %d, not %s: that user could change what this daemon does; fix: %s", file, what, st.Uid, who, fix)
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 && !(dir && fi.Mode()&os.ModeSticky != 0) {
		if dir {
			return fmt.Errorf("config %s: directory %s is writable by its group or others (mode %04o): another user could replace the file; fix: chmod go-w %s, or move the file to %s", file, name, perm, name, configDir)
		}
		return fmt.Errorf("config %s is writable by its group or others (mode %04o): another user could change what this daemon does; fix: chmod go-w %s", file, perm, name)
	}
	return nil
}

// decodeExact decodes the settings into out (mapstructure tags), every key
// but skip used exactly once: the agent's Config.
func (l *loadedConfig) decodeExact(out any, skip ...string) error {
	settings := l.v.AllSettings()
	for _, k := range skip {
		delete(settings, k)
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           out,
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","), textHook),
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(settings); err != nil {
		return fmt.Errorf("configuration (%s): %w (see %s for the keys)", l.source, err, l.d.example())
	}
	return nil
}

// logStart logs the daemon's first line: version and the effective
// configuration (secrets redacted), with the file it came from.
func (l *loadedConfig) logStart(log *slog.Logger, cmd *cobra.Command) {
	settings := l.v.AllSettings()
	settings[flagConfig] = l.source
	for k, fl := range l.fromEnv {
		settings[k] = fl.Value.String() // 1m0s, not the variable's 1m
	}
	if _, format, err := logOptions(cmd.Flags(), os.Getenv); err == nil {
		settings[configKey(flagLogFormat)] = format // the format in effect, not ""
	}
	logStart(log, cmd, settings)
}
