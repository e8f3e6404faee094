package policystore

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/mlsgate/mlsgate/label"
)

// The template files of a bundle, one per generated artefact. An
// administrator's directory may replace any of them (LoadTemplates).
const (
	TmplGuestTE = "guest.te.tmpl"      // guest SELinux module
	TmplGuestIF = "guest.if.tmpl"      // guest module's interfaces, for the base policy
	TmplGuestFC = "guest.fc.tmpl"      // guest file contexts
	TmplHostTE  = "host.te.tmpl"       // dom0 SELinux module
	TmplHostFC  = "host.fc.tmpl"       // dom0 file contexts
	TmplXFRM    = "xfrm.yaml.tmpl"     // XFRM policies and SAs, as YAML
	TmplMapper  = "mapper.policy.tmpl" // the guest's label-mapper policy
)

// TemplateNames lists every template file a set holds, in a fixed order.
func TemplateNames() []string {
	return []string{TmplGuestTE, TmplGuestIF, TmplGuestFC, TmplHostTE, TmplHostFC, TmplXFRM, TmplMapper}
}

//go:embed templates/*.tmpl
var builtinFS embed.FS

// Templates is a complete, parsed and tested set of bundle templates. It is
// immutable and safe for concurrent use.
type Templates struct {
	tmpl   map[string]*template.Template
	source map[string]string // file name → path, or "" for built-in
}

// TemplateError is a template that does not parse, does not execute, or
// renders something invalid. Err already carries text/template's
// "template: NAME:LINE:" position where there is one; Rendered, when
// non-zero, is the line of the rendered output that is wrong.
type TemplateError struct {
	File     string // template file name, e.g. "guest.te.tmpl"
	Path     string // the administrator's file, or "" for the built-in one
	Rendered int    // 1-based line of the output, or 0
	Text     string // that line's text
	Err      error
}

// Error names the file (the administrator's path, or the built-in name),
// the rendered line when there is one, what is wrong, and the fix.
func (e *TemplateError) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
	} else {
		b.WriteString(e.File + " (built-in)")
	}
	if e.Rendered > 0 {
		fmt.Fprintf(&b, ", rendered line %d %q", e.Rendered, e.Text)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if e.Path != "" {
		fmt.Fprintf(&b, "; fix %s, or remove it to fall back to the built-in %s", e.Path, e.File)
	} else {
		b.WriteString("; this is a bug in mlsgate's built-in template: override it with a fixed copy and report it")
	}
	return b.String()
}

// Unwrap returns the underlying parse, execution or validation error.
func (e *TemplateError) Unwrap() error { return e.Err }

// templateFuncs are the functions templates may call besides text/template's
// built-ins.
var templateFuncs = template.FuncMap{
	// quote escapes a string for a regular expression (regexp.QuoteMeta).
	"quote": regexp.QuoteMeta,
	// yq quotes any value as a YAML double-quoted scalar (the JSON string
	// of its text form), so that ':' and ',' in contexts and IPv6
	// addresses never change the YAML structure.
	"yq": func(v any) (string, error) {
		s := fmt.Sprint(v)
		if tm, ok := v.(interface{ MarshalText() ([]byte, error) }); ok {
			b, err := tm.MarshalText()
			if err != nil {
				return "", err
			}
			s = string(b)
		}
		b, err := json.Marshal(s)
		return string(b), err
	},
	// join joins strings with a separator.
	"join": strings.Join,
}

func parseTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(templateFuncs).Parse(text)
}

var (
	builtinOnce sync.Once
	builtinSet  *Templates
	builtinErr  error
)

// builtin parses and tests the embedded set once.
func builtin() (*Templates, error) {
	builtinOnce.Do(func() { builtinSet, builtinErr = loadBuiltin() })
	return builtinSet, builtinErr
}

func loadBuiltin() (*Templates, error) {
	t := &Templates{tmpl: map[string]*template.Template{}, source: map[string]string{}}
	for _, name := range TemplateNames() {
		text, err := builtinFS.ReadFile("templates/" + name)
		if err != nil {
			return nil, &TemplateError{File: name, Err: err}
		}
		if t.tmpl[name], err = parseTemplate(name, string(text)); err != nil {
			return nil, &TemplateError{File: name, Err: err}
		}
		t.source[name] = ""
	}
	if err := t.selfTest(); err != nil {
		return nil, err
	}
	return t, nil
}

// DefaultTemplates returns the built-in template set, embedded from
// policystore/templates/. It panics if the embedded set is broken, which
// the package's tests rule out.
func DefaultTemplates() *Templates {
	t, err := builtin()
	if err != nil {
		panic("policystore: built-in templates: " + err.Error())
	}
	return t
}

// LoadTemplates returns the built-in set with every file present in dir
// replacing the built-in file of the same name; files dir lacks fall back
// to the built-in ones. The set is tested as a whole before it is
// returned: every file must parse and the set must generate a valid bundle
// for a sample application. On any error no set is returned, so a caller
// that reloads templates keeps its last good set.
//
// A *.tmpl file in dir that is not one of TemplateNames is refused, since
// it is most likely a misspelt override that would silently not apply;
// other files (README, backups without .tmpl) are ignored.
func LoadTemplates(dir string) (*Templates, error) {
	def, err := builtin()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("template directory: %w; give a directory holding any of %s", err, strings.Join(TemplateNames(), ", "))
	}
	t := &Templates{tmpl: map[string]*template.Template{}, source: map[string]string{}}
	for name, tm := range def.tmpl {
		t.tmpl[name], t.source[name] = tm, ""
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".tmpl") {
			continue
		}
		path := filepath.Join(dir, name)
		if !slices.Contains(TemplateNames(), name) {
			errs = append(errs, fmt.Errorf("%s: not a template mlsgate uses; rename it to one of %s, or remove it", path, strings.Join(TemplateNames(), ", ")))
			continue
		}
		if !e.Type().IsRegular() && e.Type()&fs.ModeSymlink == 0 {
			errs = append(errs, fmt.Errorf("%s: not a regular file", path))
			continue
		}
		text, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read template: %w", err))
			continue
		}
		tm, err := parseTemplate(name, string(text))
		if err != nil {
			errs = append(errs, &TemplateError{File: name, Path: path, Err: err})
			continue
		}
		t.tmpl[name], t.source[name] = tm, path
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("template set %s refused: %w", dir, errors.Join(errs...))
	}
	if err := t.selfTest(); err != nil {
		return nil, fmt.Errorf("template set %s refused: %w", dir, err)
	}
	return t, nil
}

// Source returns the path of the administrator's file that provides the
// named template, or "" when the built-in one is used.
func (t *Templates) Source(name string) string { return t.source[name] }

// render executes one template. The text/template position
// ("template: guest.te.tmpl:12:5: ...") is kept in the error.
func (t *Templates) render(name string, data *TemplateData) ([]byte, error) {
	tm, ok := t.tmpl[name]
	if !ok {
		return nil, &TemplateError{File: name, Err: errors.New("missing from the template set")}
	}
	var b bytes.Buffer
	if err := tm.Execute(&b, data); err != nil {
		return nil, t.errorf(name, 0, "%w", err)
	}
	return b.Bytes(), nil
}

func (t *Templates) errorf(name string, rendered int, format string, args ...any) *TemplateError {
	return &TemplateError{File: name, Path: t.source[name], Rendered: rendered, Err: fmt.Errorf(format, args...)}
}

// errorAt is errorf for a line of the rendered output out.
func (t *Templates) errorAt(name string, out []byte, line int, format string, args ...any) *TemplateError {
	e := t.errorf(name, line, format, args...)
	e.Text = renderedLine(out, line)
	return e
}

// selfTest generates a bundle for a sample application with the set, so
// that a set that cannot generate one is refused when it is loaded, not
// when a guest is waiting for it.
func (t *Templates) selfTest() error {
	app := sampleApplication()
	spi := uint32(0x1000)
	_, err := GenerateBundle(app, BundleRequest{
		Guest:          "selftest",
		GuestAddr:      netip.MustParseAddr("192.0.2.7"),
		HostAddr:       netip.MustParseAddr("192.0.2.1"),
		MapperUpstream: "http://192.0.2.1:7070",
		SPI:            func() (uint32, error) { spi++; return spi, nil },
		Version:        1,
		Now:            time.Unix(0, 0).UTC(),
	}, t)
	if err != nil {
		return fmt.Errorf("trial run on the built-in sample application: %w", err)
	}
	return nil
}

// sampleApplication is the application selfTest renders: two servers,
// categories, a label rule and an integrity assignment, so that templates
// meet every kind of value they can be given.
func sampleApplication() *Application {
	b := func(s string) label.Bounds { return mustBounds(s) }
	l := func(s string) label.Label {
		v, err := label.ParseLabel(s)
		if err != nil {
			panic(err)
		}
		return v
	}
	top := l("s9:c1/i4")
	return &Application{
		Name:      "sample",
		Type:      "sample_t",
		Guest:     b("s0-s9:c0.c3/i2-i6"),
		Integrity: map[string]label.Integrity{"sample_exec_t": 6, "sample_data_t": 2},
		Servers: []Server{
			{Name: "low", Hosts: []string{"low.sample.example"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}, Range: b("s0-s4/i2-i6")},
			{Name: "high", Hosts: []string{"high.sample.example", "h.sample.example"}, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8::2")}, Range: b("s5-s9:c0.c3/i2-i6"), Label: &top},
		},
		Labels:       []LabelRule{{URL: `https?://high\.sample\.example/x(/.*)?`, Label: l("s7:c2/i5")}},
		LoadableFrom: []string{HostCaller},
	}
}

func mustBounds(s string) label.Bounds {
	b, err := label.ParseBounds(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TemplateData is what every template is executed with. Values are
// computed by GenerateBundle; templates decide how they are written out.
// Labels, levels, ranges, bounds and addresses print in their text forms
// ("s10/i8", "s6-s15", "10.70.1.1"); in YAML write them through yq.
type TemplateData struct {
	// App is the application (see Application).
	App *Application
	// Version is the bundle version; Now the generation time.
	Version uint64
	Now     time.Time
	// Module and HostModule are the SELinux module names for the guest
	// ("mlsgate_analyst") and the host ("mlsgate_analyst_host").
	Module, HostModule string
	// Types are the application's SELinux types.
	Types TemplateTypes
	// IntegrityTypes lists App.Integrity sorted by type, for comments.
	IntegrityTypes []TypeIntegrity
	// FileLevel is the level of program and configuration files (s0:
	// readable at every level of the guest, PIDSI protects them by
	// integrity); DataLevel that of data files (the guest's low level).
	FileLevel, DataLevel label.Level
	// Guest and Host are the two tunnel endpoints.
	Guest TemplateGuest
	Host  TemplateEndpoint
	// MapperUpstream is the base URL of the host's label mapper.
	MapperUpstream string
	// Servers are the application's servers with their SPD entries and
	// SAs, in the application's order.
	Servers []TemplateServer
	// LabelRules are the application's label rules, in order.
	LabelRules []LabelRule
	// DefaultLabel is the mapper's answer when nothing matches (s0/i0).
	DefaultLabel label.Label
}

// TemplateTypes names the SELinux types of an application with base B.
type TemplateTypes struct {
	Process string // B_t: the application's processes, and its SAs' type
	Exec    string // B_exec_t: its programs
	Conf    string // B_conf_t: its configuration
	Data    string // B_data_t: the data it keeps
	SPD     string // B_spd_t: its XFRM policies (association polmatch target)
}

// TypeIntegrity is one entry of the application's PIDSI assignment.
type TypeIntegrity struct {
	Type      string
	Integrity label.Integrity
}

// TemplateEndpoint is one end of the guest↔host tunnel.
type TemplateEndpoint struct {
	Addr   netip.Addr
	Prefix netip.Prefix // Addr/32 or Addr/128
}

// TemplateGuest is the guest end, with the guest's name and bounds.
type TemplateGuest struct {
	TemplateEndpoint
	Name string
	// Any is 0.0.0.0/0 or ::/0, in the guest's family.
	Any netip.Prefix
	// Range is the guest's secrecy/integrity bounds; Secrecy their
	// secrecy part as an SELinux range.
	Range   label.Bounds
	Secrecy label.Range
}

// TemplateServer is one server of the application as the templates see it.
type TemplateServer struct {
	Name  string
	Hosts []string
	// Prefixes are the server's addresses in the guest's family, as /32
	// or /128 XFRM selectors.
	Prefixes []netip.Prefix
	// Range is the server's bounds; DefaultLabel what the mapper answers
	// for its URLs that no label rule names.
	Range        label.Bounds
	DefaultLabel label.Label
	// SPDRange is the server range ∩ guest range, secrecy part, and
	// SPDContext the context of the server's XFRM policies,
	// "system_u:object_r:B_spd_t:<SPDRange>".
	SPDRange   label.Range
	SPDContext string
	// Reqid ties the server's policies to its SAs.
	Reqid uint32
	// SAs are the server's SA pairs, one per label, sorted by label.
	SAs []TemplateSA
}

// TemplateSA is one SA pair: OutSPI on the guest→host SA, InSPI on the
// host→guest SA, both with Context and Label.
type TemplateSA struct {
	Label         label.Label
	Context       string
	OutSPI, InSPI uint32
}
