package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Info is what the toolchain recorded about the running binary. Fields the
// build did not record (a test binary, -buildvcs=false) are "unknown".
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Time      string `json:"time"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go_version"`
}

const unknown = "unknown"

// Set with -ldflags -X by 'make build' for builds the toolchain cannot
// stamp itself (a git worktree, whose .git is a file, or -buildvcs=false):
// used only where the build info has no VCS data.
var (
	ldRevision string
	ldTime     string
	ldModified string
)

// Read returns the running binary's Info.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
	}
	return withLinkerValues(FromBuildInfo(bi), ldRevision, ldTime, ldModified)
}

// withLinkerValues fills what the toolchain did not stamp from the -X
// values.
func withLinkerValues(in Info, rev, t, modified string) Info {
	if in.Revision != unknown || rev == "" {
		return in
	}
	in.Revision, in.Modified = rev, modified == "true"
	if t != "" {
		in.Time = t
	}
	return in
}

// FromBuildInfo extracts Info from bi (a seam for tests).
func FromBuildInfo(bi *debug.BuildInfo) Info {
	in := Info{Version: bi.Main.Version, Revision: unknown, Time: unknown, GoVersion: bi.GoVersion}
	if in.Version == "" {
		in.Version = unknown
	}
	if in.GoVersion == "" {
		in.GoVersion = unknown
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the one-line form printed by 'mlsgate --version'.
func (in Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mlsgate %s (revision %s", in.Version, in.Revision)
	if in.Modified {
		b.WriteString(", modified")
	}
	fmt.Fprintf(&b, ", committed %s, %s)", in.Time, in.GoVersion)
	return b.String()
}

// LogAttrs are the key/value pairs of the start-up log line.
func (in Info) LogAttrs() []any {
	return []any{"version", in.Version, "revision", in.Revision, "vcs_time", in.Time, "modified", in.Modified, "go_version", in.GoVersion}
}

// Collector is the mlsgate_build_info gauge, always 1, whose labels say
// what binary serves the scrape (revision carries a "-modified" suffix for
// a build from a modified tree).
func Collector() prometheus.Collector {
	in := Read()
	rev := in.Revision
	if in.Modified {
		rev += "-modified"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "mlsgate", Name: "build_info",
		Help:        "Always 1; the labels name the running binary's version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": in.Version, "revision": rev, "goversion": in.GoVersion},
	})
	g.Set(1)
	return g
}
