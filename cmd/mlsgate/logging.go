package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The persistent logging flags every daemon reads through newLogger.
const (
	flagLogLevel  = "log-level"
	flagLogFormat = "log-format"
)

var (
	logLevels  = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	logFormats = []string{"text", "json"}
)

// underSystemd reports whether the process runs as a systemd service
// (journald keeps JSON lines whole and searchable there).
func underSystemd(getenv func(string) string) bool {
	return getenv("INVOCATION_ID") != "" || getenv("JOURNAL_STREAM") != ""
}

// addLogFlags adds --log-level and --log-format to root for every
// subcommand.
func addLogFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.String(flagLogLevel, "info", "log level: debug, info, warn or error")
	f.String(flagLogFormat, "", "log format: text or json (default: json under systemd, i.e. with $INVOCATION_ID or $JOURNAL_STREAM set, else text)")
}

// logOptions checks the logging flags' values; an unknown one is an error
// naming the accepted values.
func logOptions(fs *pflag.FlagSet, getenv func(string) string) (slog.Level, string, error) {
	level, format := "info", ""
	if fl := fs.Lookup(flagLogLevel); fl != nil {
		level = fl.Value.String()
	}
	if fl := fs.Lookup(flagLogFormat); fl != nil {
		format = fl.Value.String()
	}
	lv, ok := logLevels[strings.ToLower(level)]
	if !ok {
		return 0, "", fmt.Errorf("--log-level %q: want one of debug, info, warn, error", level)
	}
	switch format {
	case "":
		format = "text"
		if underSystemd(getenv) {
			format = "json"
		}
	case "text", "json":
	default:
		return 0, "", fmt.Errorf("--log-format %q: want one of %s", format, strings.Join(logFormats, ", "))
	}
	return lv, format, nil
}

// newLogger is the logger of a daemon subcommand, on its stderr, as
// --log-level and --log-format say.
func newLogger(cmd *cobra.Command) (*slog.Logger, error) {
	return newLoggerTo(cmd.ErrOrStderr(), cmd.Flags(), os.Getenv)
}

func newLoggerTo(w io.Writer, fs *pflag.FlagSet, getenv func(string) string) (*slog.Logger, error) {
	lv, format, err := logOptions(fs, getenv)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// secretFlag reports whether a setting's name says it holds a secret; such
// a value is never logged (today no daemon takes a secret as a setting:
// keys are files, named by path).
func secretFlag(name string) bool {
	n := strings.ToLower(name)
	for _, w := range []string{"password", "passwd", "secret", "token", "psk", "private"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// redactURL hides the password of a URL setting (an authority given as
// https://user:pass@host); anything else is returned as it is.
func redactURL(s string) string {
	if !strings.Contains(s, "@") || !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "REDACTED (unparsable URL with credentials)"
	}
	return u.Redacted()
}

// logStart writes a daemon's first log line: the binary's version and its
// effective configuration (settings: name → value; nil means the command's
// flags), with secret-named settings redacted.
func logStart(log *slog.Logger, cmd *cobra.Command, settings map[string]any) {
	if settings == nil {
		settings = map[string]any{}
		cmd.Flags().VisitAll(func(fl *pflag.Flag) {
			if fl.Name == "help" {
				return
			}
			settings[fl.Name] = fl.Value.String()
		})
		// The format in effect, not the flag's empty default.
		if _, format, err := logOptions(cmd.Flags(), os.Getenv); err == nil {
			settings[flagLogFormat] = format
		}
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cfg := make([]any, 0, len(keys))
	for _, k := range keys {
		v := settings[k]
		if secretFlag(k) {
			v = "REDACTED"
		} else if s, ok := v.(string); ok {
			v = redactURL(s)
		}
		cfg = append(cfg, slog.Any(k, v))
	}
	args := append([]any{"command", cmd.CommandPath()}, buildinfo.Read().LogAttrs()...)
	args = append(args, slog.Group("config", cfg...))
	log.Info("starting", args...)
}
