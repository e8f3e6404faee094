package policystore

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/mapper"
)

// Application is one web application as the policy store knows it: the
// paper's table of "web application, web servers, MLS range", plus what the
// store needs to generate the application's policies. Applications are data:
// they are loaded from YAML files (see LoadFile) or fetched from an
// application authority, never compiled in.
type Application struct {
	// Name identifies the application ("analyst"). Lower-case letters,
	// digits and '-', at most 40 characters, so that it can be part of an
	// SELinux module name and a file name.
	Name string `json:"name" yaml:"name"`
	// Description is free text for operators.
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
	// Type is the SELinux type of the application's processes in the guest
	// ("analyst_t"). The generated modules declare it and the types derived
	// from it (<base>_exec_t, <base>_conf_t, <base>_data_t, where base is
	// Type without "_t").
	Type string `json:"type" yaml:"type"`
	// Guest is the secrecy/integrity range of a guest that runs the
	// application. A guest is loaded at exactly this range; every label it
	// may send or receive lies within it.
	Guest label.Bounds `json:"guest" yaml:"guest"`
	// Integrity assigns an integrity level to SELinux types, following the
	// paper's PIDSI rule: program types (executables, configuration) rank
	// above the data they process. Types not named get the guest's low
	// integrity.
	Integrity map[string]label.Integrity `json:"integrity,omitempty" yaml:"integrity,omitempty"`
	// Servers are the web servers that take part in the application.
	Servers []Server `json:"servers" yaml:"servers"`
	// URLs are further URL patterns that belong to the application besides
	// its servers' host names, e.g. "*.analyst.example/".
	URLs []URLPattern `json:"urls,omitempty" yaml:"urls,omitempty"`
	// Labels map URLs to labels more finely than the server ranges do; they
	// become the guest's label-mapper policy, before the per-server rules.
	Labels []LabelRule `json:"labels,omitempty" yaml:"labels,omitempty"`
	// LoadableFrom lists who may ask for this application to be loaded: the
	// name of the application of the requesting guest, "host" for the
	// host's own command line, or "any".
	LoadableFrom []string `json:"loadable_from" yaml:"loadable_from"`
	// Pool asks VMLoad to keep guests configured for the application ahead
	// of demand (see PoolSpec); the zero value keeps none.
	Pool PoolSpec `json:"pool,omitzero" yaml:"pool,omitempty"`
}

// PoolSpec is how many guests VMLoad keeps ready for an application: booted,
// with the application's bundle generated, checked, pushed and applied on
// both ends, each with its own SA keys (and its update daemon's own
// certificate, issued when it booted), so that a load that finds one only
// resolves, authorizes and hands it out.
type PoolSpec struct {
	// Ready is the number of such guests; 0 (the default) keeps none.
	Ready int `json:"ready,omitempty" yaml:"ready,omitempty"`
}

// MaxReady bounds PoolSpec.Ready: every ready guest is a running VM.
const MaxReady = 16

// Server is a web server of an application. Its Range bounds the labels of
// the data it serves: the paper's ws1 and ws2 serve s6–s15, ws3 s0–s5.
type Server struct {
	Name      string       `json:"name" yaml:"name"`
	Hosts     []string     `json:"hosts" yaml:"hosts"`
	Addresses []netip.Addr `json:"addresses" yaml:"addresses"`
	Range     label.Bounds `json:"range" yaml:"range"`
	// Label is the label of a URL on this server that no Labels rule names;
	// when unset, the server's lowest label.
	Label *label.Label `json:"label,omitempty" yaml:"label,omitempty"`
}

// DefaultLabel is the label of the server's URLs that no finer rule names.
func (s Server) DefaultLabel() label.Label {
	if s.Label != nil {
		return *s.Label
	}
	return s.Range.Low
}

// URLPattern names URLs by host and path prefix. Host is a DNS name or
// "*.suffix" for every name strictly under suffix; PathPrefix starts with
// "/" and matches on whole path segments' bytes ("/a" matches "/a" and
// "/ab"; write "/a/" for a directory).
type URLPattern struct {
	Host       string `json:"host" yaml:"host"`
	PathPrefix string `json:"path,omitempty" yaml:"path,omitempty"`
}

// String prints the pattern as host + path.
func (p URLPattern) String() string {
	path := p.PathPrefix
	if path == "" {
		path = "/"
	}
	return p.Host + path
}

// LabelRule maps URLs matching a regular expression (RE2, matched against
// the whole URL) to a label, which must lie within the range of the server
// that serves the URL's host.
type LabelRule struct {
	URL   string      `json:"url" yaml:"url"`
	Label label.Label `json:"label" yaml:"label"`
}

// AnyCaller and HostCaller are the special LoadableFrom entries.
const (
	AnyCaller  = "any"
	HostCaller = "host"
)

var (
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,39}$`)
	typeRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,60}_t$`)
	hostRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// FieldError says which field of an application is wrong and how to fix it.
// The loader wraps it in a FileError that adds the file and line.
type FieldError struct {
	Field  string // a path such as "servers[1].range"
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Limits on one application, so that a hostile authority or file cannot
// make the store or the generated policies unbounded.
const (
	MaxServers     = 256
	MaxHostsPerApp = 4096
	MaxLabelRules  = 4096
	MaxRegexLen    = 4096
)

// Validate checks an application on its own (conflicts between
// applications are the index's business) and returns the first problem as a
// *FieldError.
func (a *Application) Validate() error {
	if !nameRE.MatchString(a.Name) {
		return fieldErr("name", "%q is not a valid application name: use 1-40 lower-case letters, digits or '-', starting with a letter", a.Name)
	}
	if !typeRE.MatchString(a.Type) {
		return fieldErr("type", "%q is not a valid SELinux type for the application: use lower-case letters, digits and '_', ending in \"_t\" (e.g. %s_t)", a.Type, strings.ReplaceAll(a.Name, "-", "_"))
	}
	if err := a.Guest.Validate(); err != nil {
		return fieldErr("guest", "%v", err)
	}
	for typ, integ := range a.Integrity {
		if !typeRE.MatchString(typ) {
			return fieldErr("integrity", "%q is not a valid SELinux type (lower-case, ending in \"_t\")", typ)
		}
		if err := integ.Validate(); err != nil {
			return fieldErr("integrity."+typ, "%v", err)
		}
	}
	if len(a.Servers) == 0 {
		return fieldErr("servers", "an application needs at least one web server")
	}
	if len(a.Servers) > MaxServers {
		return fieldErr("servers", "%d servers; at most %d are allowed", len(a.Servers), MaxServers)
	}
	names := map[string]bool{}
	hosts := map[string]string{}
	nhosts := 0
	for i, s := range a.Servers {
		f := fmt.Sprintf("servers[%d]", i)
		if !nameRE.MatchString(s.Name) {
			return fieldErr(f+".name", "%q is not a valid server name: use 1-40 lower-case letters, digits or '-'", s.Name)
		}
		if names[s.Name] {
			return fieldErr(f+".name", "server %q is listed twice", s.Name)
		}
		names[s.Name] = true
		if len(s.Hosts) == 0 {
			return fieldErr(f+".hosts", "server %q needs at least one host name", s.Name)
		}
		for j, h := range s.Hosts {
			if err := checkHost(h, false); err != nil {
				return fieldErr(fmt.Sprintf("%s.hosts[%d]", f, j), "%v", err)
			}
			if other, dup := hosts[h]; dup {
				return fieldErr(fmt.Sprintf("%s.hosts[%d]", f, j), "host %q already belongs to server %q", h, other)
			}
			hosts[h] = s.Name
			nhosts++
		}
		if len(s.Addresses) == 0 {
			return fieldErr(f+".addresses", "server %q needs at least one address: the XFRM policies and the fast path's peer table are keyed by address", s.Name)
		}
		for j, ad := range s.Addresses {
			if !ad.IsValid() || ad.IsUnspecified() || ad.IsMulticast() || ad.Zone() != "" {
				return fieldErr(fmt.Sprintf("%s.addresses[%d]", f, j), "%v is not a unicast address", ad)
			}
		}
		if err := s.Range.Validate(); err != nil {
			return fieldErr(f+".range", "%v", err)
		}
		if s.Label != nil && !s.Range.Contains(*s.Label) {
			return fieldErr(f+".label", "label %v is outside the server's range %v", *s.Label, s.Range)
		}
		if _, ok := s.Range.Intersect(a.Guest); !ok {
			return fieldErr(f+".range", "range %v has nothing in common with the guest range %v, so a guest of this application could never talk to %q: fix the range or drop the server", s.Range, a.Guest, s.Name)
		}
	}
	if len(a.URLs)+nhosts > MaxHostsPerApp {
		return fieldErr("urls", "%d host patterns; at most %d are allowed", len(a.URLs)+nhosts, MaxHostsPerApp)
	}
	for i, p := range a.URLs {
		f := fmt.Sprintf("urls[%d]", i)
		if err := checkHost(p.Host, true); err != nil {
			return fieldErr(f+".host", "%v", err)
		}
		if p.PathPrefix != "" && !strings.HasPrefix(p.PathPrefix, "/") {
			return fieldErr(f+".path", "path %q must start with \"/\"", p.PathPrefix)
		}
	}
	if len(a.Labels) > MaxLabelRules {
		return fieldErr("labels", "%d label rules; at most %d are allowed", len(a.Labels), MaxLabelRules)
	}
	for i, r := range a.Labels {
		f := fmt.Sprintf("labels[%d]", i)
		if len(r.URL) > MaxRegexLen {
			return fieldErr(f+".url", "regular expression of %d bytes; at most %d", len(r.URL), MaxRegexLen)
		}
		if _, err := regexp.Compile("^(?:" + r.URL + ")$"); err != nil {
			return fieldErr(f+".url", "bad regular expression: %v", err)
		}
		if err := r.Label.Validate(); err != nil {
			return fieldErr(f+".label", "%v", err)
		}
		if !a.Guest.Contains(r.Label) {
			return fieldErr(f+".label", "label %v is outside the guest range %v: a guest of this application could never read that URL", r.Label, a.Guest)
		}
		// A server holds data within its range only, so a rule that labels
		// a server's URLs outside it contradicts the server.
		prog, err := mapper.CompileAnchored(r.URL)
		if err != nil {
			return fieldErr(f+".url", "bad regular expression: %v", err)
		}
		for _, s := range a.Servers {
			for _, h := range s.Hosts {
				if mapper.TargetsHost(prog, h) && !s.Range.Contains(r.Label) {
					return fieldErr(f+".label", "label %v is outside the range %v of server %q, whose host %s the URL pattern can match: narrow the pattern or change the label", r.Label, s.Range, s.Name, h)
				}
			}
		}
	}
	if a.Pool.Ready < 0 || a.Pool.Ready > MaxReady {
		return fieldErr("pool.ready", "%d ready guests; want 0 (none, the default) to %d", a.Pool.Ready, MaxReady)
	}
	if len(a.LoadableFrom) == 0 {
		return fieldErr("loadable_from", "say who may load the application: application names, %q or %q", HostCaller, AnyCaller)
	}
	for i, c := range a.LoadableFrom {
		if c != AnyCaller && c != HostCaller && !nameRE.MatchString(c) {
			return fieldErr(fmt.Sprintf("loadable_from[%d]", i), "%q is neither an application name nor %q or %q", c, HostCaller, AnyCaller)
		}
	}
	return nil
}

// checkHost accepts a lower-case DNS name, or with wildcard "*.name".
func checkHost(h string, wildcard bool) error {
	name := h
	if wildcard && strings.HasPrefix(h, "*.") {
		name = h[2:]
	}
	if len(name) == 0 || len(name) > 253 || !hostRE.MatchString(name) {
		hint := "a lower-case DNS name such as ws1.analyst.example"
		if wildcard {
			hint += " or *.analyst.example"
		}
		return fmt.Errorf("%q is not a host name: want %s", h, hint)
	}
	return nil
}

// IntegrityPolicy is the application's PIDSI assignment as a label policy.
func (a *Application) IntegrityPolicy() label.IntegrityPolicy {
	return label.IntegrityPolicy{Default: a.Guest.Low.Integrity, ByType: a.Integrity}
}

// MayBeLoadedBy reports whether a guest running application caller ("" or
// HostCaller for the host) may ask for this application.
func (a *Application) MayBeLoadedBy(caller string) bool {
	if caller == "" {
		caller = HostCaller
	}
	for _, c := range a.LoadableFrom {
		if c == AnyCaller || c == caller {
			return true
		}
	}
	return false
}

// Server returns the server with the given name.
func (a *Application) Server(name string) (Server, bool) {
	for _, s := range a.Servers {
		if s.Name == name {
			return s, true
		}
	}
	return Server{}, false
}

// TypeBase is Type without its "_t" suffix: the stem of derived types and
// of module names.
func (a *Application) TypeBase() string { return strings.TrimSuffix(a.Type, "_t") }
