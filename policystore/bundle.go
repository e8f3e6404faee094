package policystore

import (
	"cmp"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/ipsec"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
)

// A bundle is everything one guest of one application needs, generated
// from templates (the paper's section 4.2: "the policy store uses policy
// templates as a basis for generating the access control and network
// policies, as these must include the network identity of the server"):
// SELinux modules for the guest and for dom0, the XFRM policies and SAs of
// the labeled IPsec tunnel between the guest and its host, the guest's
// label-mapper policy, and certificates.
//
// The tunnel runs guest↔host, as in the paper: dom0 terminates it, so the
// SA a packet arrives on tells the host (and the fast path) its label, and
// the host forwards it to the server.

// CertKind is the role of a certificate in a bundle.
type CertKind uint8

// The certificate kinds. The zero value is invalid.
const (
	// CertServer is a web server's certificate: the host authenticates
	// the server with it. Its key goes to the server, never to the guest.
	CertServer CertKind = iota + 1
	// CertGuest is the guest's own certificate, with its key: the guest's
	// update daemon and IPsec end present it.
	CertGuest
)

// String returns "server" or "guest".
func (k CertKind) String() string {
	switch k {
	case CertServer:
		return "server"
	case CertGuest:
		return "guest"
	}
	return fmt.Sprintf("CertKind(%d)", uint8(k))
}

// MarshalText implements encoding.TextMarshaler.
func (k CertKind) MarshalText() ([]byte, error) {
	if k != CertServer && k != CertGuest {
		return nil, fmt.Errorf("certificate kind %d is neither server nor guest", uint8(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *CertKind) UnmarshalText(b []byte) error {
	switch string(b) {
	case "server":
		*k = CertServer
	case "guest":
		*k = CertGuest
	default:
		return fmt.Errorf("certificate kind %q: want \"server\" or \"guest\"", b)
	}
	return nil
}

// Issuer issues a certificate and its private key (both PEM) for a holder
// with common name cn, DNS names dns and addresses ips. It is the seam
// where the certificate authority plugs in.
type Issuer func(kind CertKind, cn string, dns []string, ips []netip.Addr) (certPEM, keyPEM []byte, err error)

// BundleRequest is what GenerateBundle needs besides the application:
// where the guest is, and the host's resources.
type BundleRequest struct {
	// Guest names the guest ("vm7"): lower-case letters, digits and '-'.
	Guest string
	// GuestAddr and HostAddr are the ends of the labeled IPsec tunnel.
	// They must be of the same family; servers are reached through the
	// tunnel at their addresses of that family.
	GuestAddr, HostAddr netip.Addr
	// MapperUpstream is the base URL of the host's label mapper
	// ("http://10.0.0.1:7070"), where the guest's mapper forwards misses.
	MapperUpstream string
	// SPI allocates one SPI from the host's range. It is called twice per
	// SA pair, in a fixed order, so a deterministic allocator gives a
	// deterministic bundle.
	SPI func() (uint32, error)
	// ReqidBase is the reqid of the first server's policies; server i
	// gets ReqidBase+i. Zero means 1.
	ReqidBase uint32
	// Issuer issues the certificates; nil means a bundle without
	// certificates (Bundle.Notes says so).
	Issuer Issuer
	// NoCertificatesBecause, with Issuer nil, is why the bundle needs no
	// certificates, said in its notes in place of the generic note.
	NoCertificatesBecause string
	// Version is the bundle's version, chosen by the caller and
	// increasing; it must not be 0.
	Version uint64
	// Now is the generation time.
	Now time.Time
	// Rand is the source of SA keys; nil means crypto/rand.
	Rand io.Reader
}

// Bundle is the generated configuration of one guest of one application.
// It is JSON-serialisable, and for the same application, request and
// templates every field but the SA keys and the certificates is the same.
type Bundle struct {
	// Application is the application's name.
	Application string `json:"application"`
	// Version is the request's version; Generated its Now.
	Version   uint64    `json:"version"`
	Generated time.Time `json:"generated"`
	// Guest, GuestAddr and HostAddr are the request's.
	Guest     string     `json:"guest"`
	GuestAddr netip.Addr `json:"guest_addr"`
	HostAddr  netip.Addr `json:"host_addr"`
	// Range is the guest's secrecy/integrity bounds.
	Range label.Bounds `json:"range"`
	// Modules are the SELinux modules: the guest's and the host's.
	Modules []selinux.Module `json:"modules"`
	// Policies and States are the guest's XFRM policies and SAs. The host
	// installs the same SAs (they are the two ends of one tunnel).
	Policies []ipsec.Policy `json:"policies"`
	States   []ipsec.State  `json:"states"`
	// MapperPolicy is the guest's label-mapper policy, in the mapper's
	// line format.
	MapperPolicy string `json:"mapper_policy"`
	// Certificates are the servers' certificates (no keys) and the
	// guest's own (with its key).
	Certificates []Certificate `json:"certificates,omitempty"`
	// ServerKeys are the servers' private keys. They go to the servers,
	// never to the guest: GuestPart drops them.
	ServerKeys []ServerKey `json:"server_keys,omitempty"`
	// Labels is every distinct label the bundle uses (SAs, mapper
	// policy), sorted.
	Labels []label.Label `json:"labels"`
	// Peers are the servers as the fast path's peer table needs them.
	Peers []Peer `json:"peers"`
	// Notes say what the generator left out and why, for operators.
	Notes []string `json:"notes,omitempty"`
	// CRL is the CA's current revocation list (PEM "X509 CRL"), added by
	// the loader when it pushes the bundle: the guest's update daemon
	// installs it as its --crl file, so revocations made after the guest
	// booted reach it. It is not part of the bundle's identity (the update
	// daemon's Digest leaves it out).
	CRL []byte `json:"crl,omitempty"`
}

// Certificate is a certificate of the bundle. KeyPEM is set only for the
// guest's own certificate.
type Certificate struct {
	// Name is the server's name, or the guest's.
	Name    string   `json:"name"`
	Kind    CertKind `json:"kind"`
	CertPEM []byte   `json:"cert_pem"`
	KeyPEM  []byte   `json:"key_pem,omitempty"`
}

// ServerKey is a server's private key, delivered to that server only.
type ServerKey struct {
	Server string `json:"server"`
	KeyPEM []byte `json:"key_pem"`
}

// Peer is a server as the fast path sees it: where it is and which labels
// it may hold.
type Peer struct {
	Server    string       `json:"server"`
	Addresses []netip.Addr `json:"addresses"`
	Range     label.Bounds `json:"range"`
}

// GuestPart returns a copy of the bundle with what only the host needs
// removed: the servers' private keys and the host's SELinux module. This is
// what the loader sends to the guest's update daemon.
func (b *Bundle) GuestPart() *Bundle {
	g := *b
	g.ServerKeys = nil
	g.Modules = nil
	for _, m := range b.Modules {
		if m.Target == selinux.TargetGuest {
			g.Modules = append(g.Modules, m)
		}
	}
	return &g
}

// XFRM priorities are lower-wins. Policies the store adds are checked to
// leave the catch-all block below every allow policy.

// GenerateBundle generates the bundle of one guest of app. t nil means
// DefaultTemplates.
//
// Choices, each enforced after the templates have rendered, so an edited
// template cannot undo them:
//   - For each server, the labels the guest may use toward it are the label
//     rules whose regular expression can match a URL on one of the
//     server's hosts, plus the server's default label, keeping only labels
//     within both the guest range and the server range (a label outside
//     either would be dropped by the fast path anyway). Each label gets an
//     SA pair, guest→host "out" and host→guest "in", with context
//     system_u:system_r:<app type>:<level>. SELinux contexts carry no
//     integrity, so labels that share a level share one SA pair whose
//     label has the lowest of their integrities: claiming less integrity
//     is always safe.
//   - Each server gets a reqid, and for each of its addresses a policy
//     pair guest/32→server/32 "out" and server/32→guest/32 "in", whose
//     context is system_u:object_r:<base>_spd_t:<server∩guest secrecy
//     range>: a socket matches it (association polmatch) only at a level
//     the server may receive and the guest may hold. Separate reqids per
//     server let the host tell from the SA which server a packet is for.
//   - Unlabeled catch-all block policies (guest/32→any out, any→guest/32
//     in) sit below every allow policy, so a socket whose context matches
//     no labeled policy cannot send or receive in clear. Only the host is
//     reached in clear, for the mapper and the update daemon (and, for an
//     IPv6 guest, ICMPv6 to link-local and link-local multicast addresses,
//     or neighbour discovery with the host would fail); no clear policy may
//     cover a server's address.
//   - Every SPI the allocator returned is used by exactly one SA, and no
//     other SPI is.
func GenerateBundle(app *Application, req BundleRequest, t *Templates) (*Bundle, error) {
	if t == nil {
		t = DefaultTemplates()
	}
	if app == nil {
		return nil, errors.New("generate bundle: no application")
	}
	if err := app.Validate(); err != nil {
		return nil, fmt.Errorf("generate bundle: application %q: %w", app.Name, err)
	}
	g := &generator{app: app, req: req, t: t}
	if err := g.checkRequest(); err != nil {
		return nil, fmt.Errorf("generate bundle for %s/%s: %w", app.Name, req.Guest, err)
	}
	b, err := g.generate()
	if err != nil {
		return nil, fmt.Errorf("generate bundle for %s/%s: %w", app.Name, req.Guest, err)
	}
	return b, nil
}

type generator struct {
	app   *Application
	req   BundleRequest
	t     *Templates
	data  TemplateData
	notes []string
	spis  map[uint32]bool // allocated, not yet used by a state
}

func (g *generator) notef(format string, args ...any) {
	g.notes = append(g.notes, fmt.Sprintf(format, args...))
}

func (g *generator) checkRequest() error {
	r := &g.req
	if !nameRE.MatchString(r.Guest) {
		return fmt.Errorf("guest name %q: use 1-40 lower-case letters, digits or '-', starting with a letter (e.g. vm7)", r.Guest)
	}
	if err := checkAddr("guest address", r.GuestAddr); err != nil {
		return fmt.Errorf("%w; set BundleRequest.GuestAddr to the guest's address", err)
	}
	if err := checkAddr("host address", r.HostAddr); err != nil {
		return fmt.Errorf("%w; set BundleRequest.HostAddr to the host's address on the guest's network", err)
	}
	if r.GuestAddr.Is4() != r.HostAddr.Is4() {
		return fmt.Errorf("guest address %v and host address %v are of different families: the tunnel needs both ends in one family; give the host's address in the guest's family", r.GuestAddr, r.HostAddr)
	}
	if r.GuestAddr == r.HostAddr {
		return fmt.Errorf("guest and host both have the address %v; give each its own", r.GuestAddr)
	}
	if err := checkUpstream(r.MapperUpstream); err != nil {
		return err
	}
	if r.SPI == nil {
		return errors.New("no SPI allocator: set BundleRequest.SPI to the host's allocator")
	}
	if r.Version == 0 {
		return errors.New("version 0: versions start at 1 and increase with every bundle of the guest")
	}
	if r.Now.IsZero() {
		return errors.New("the generation time is zero: set BundleRequest.Now")
	}
	if uint64(cmp.Or(r.ReqidBase, 1))+uint64(len(g.app.Servers)) > 1<<32 {
		return fmt.Errorf("reqid base %d leaves no room for %d servers; use a smaller base", r.ReqidBase, len(g.app.Servers))
	}
	for i, rule := range g.app.Labels {
		if strings.ContainsAny(rule.URL, " \t\r\n\v\f") {
			return fmt.Errorf("application %q: labels[%d].url %q contains whitespace, which the mapper's line format cannot hold: write \\s or \\x20", g.app.Name, i, rule.URL)
		}
	}
	for _, s := range g.app.Servers {
		for _, a := range s.Addresses {
			if a.Unmap() == r.GuestAddr || a.Unmap() == r.HostAddr {
				return fmt.Errorf("server %q has the address %v, which is the guest's or the host's; a server needs its own address", s.Name, a)
			}
		}
	}
	return nil
}

func checkUpstream(u string) error {
	fix := "give the host mapper's base URL, e.g. http://10.0.0.1:7070"
	if u == "" {
		return fmt.Errorf("no mapper upstream: %s", fix)
	}
	p, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("mapper upstream %q: %v; %s", u, err, fix)
	}
	if (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil || p.RawQuery != "" || p.Fragment != "" || strings.ContainsAny(u, " \t\r\n") {
		return fmt.Errorf("mapper upstream %q is not a base URL; %s", u, fix)
	}
	return nil
}

func (g *generator) generate() (*Bundle, error) {
	app, req := g.app, g.req
	if err := g.plan(); err != nil {
		return nil, err
	}
	b := &Bundle{
		Application:  app.Name,
		Version:      req.Version,
		Generated:    req.Now,
		Guest:        req.Guest,
		GuestAddr:    req.GuestAddr,
		HostAddr:     req.HostAddr,
		Range:        app.Guest,
		Policies:     []ipsec.Policy{},
		States:       []ipsec.State{},
		Certificates: nil,
	}
	var err error
	if b.Modules, err = g.modules(); err != nil {
		return nil, err
	}
	if b.Policies, b.States, err = g.xfrm(); err != nil {
		return nil, err
	}
	if b.MapperPolicy, err = g.mapper(); err != nil {
		return nil, err
	}
	if b.Certificates, b.ServerKeys, err = g.certificates(); err != nil {
		return nil, err
	}
	b.Labels = g.labels(b)
	for _, s := range app.Servers {
		b.Peers = append(b.Peers, Peer{Server: s.Name, Addresses: slices.Clone(s.Addresses), Range: s.Range})
	}
	b.Notes = g.notes
	return b, nil
}

// plan computes the template data: types, endpoints, and per server its
// labels, reqid, SPD context and SA pairs with allocated SPIs.
func (g *generator) plan() error {
	app, req := g.app, g.req
	base := app.TypeBase()
	d := &g.data
	d.App = app
	d.Version, d.Now = req.Version, req.Now
	d.Module = "mlsgate_" + base
	d.HostModule = "mlsgate_" + base + "_host"
	d.Types = TemplateTypes{Process: app.Type, Exec: base + "_exec_t", Conf: base + "_conf_t", Data: base + "_data_t", SPD: base + "_spd_t"}
	for typ, i := range app.Integrity {
		d.IntegrityTypes = append(d.IntegrityTypes, TypeIntegrity{Type: typ, Integrity: i})
	}
	slices.SortFunc(d.IntegrityTypes, func(a, b TypeIntegrity) int { return strings.Compare(a.Type, b.Type) })
	d.FileLevel = label.Level{}
	d.DataLevel = app.Guest.Low.Secrecy
	d.Guest = TemplateGuest{
		TemplateEndpoint: endpoint(req.GuestAddr),
		Name:             req.Guest,
		Any:              netip.PrefixFrom(anyAddr(req.GuestAddr), 0),
		Range:            app.Guest,
		Secrecy:          label.Range{Low: app.Guest.Low.Secrecy, High: app.Guest.High.Secrecy},
	}
	d.Host = endpoint(req.HostAddr)
	d.MapperUpstream = req.MapperUpstream
	d.LabelRules = slices.Clone(app.Labels)
	d.DefaultLabel = label.Default

	rules := make([]*syntax.Prog, len(app.Labels))
	for i, r := range app.Labels {
		p, err := mapper.CompileAnchored(r.URL)
		if err != nil {
			return fmt.Errorf("application %q: labels[%d].url: %w", app.Name, i, err)
		}
		rules[i] = p
	}
	g.spis = map[uint32]bool{}
	reqid := cmp.Or(req.ReqidBase, 1)
	for si, s := range app.Servers {
		ts := TemplateServer{Name: s.Name, Hosts: slices.Clone(s.Hosts), Range: s.Range, DefaultLabel: s.DefaultLabel(), Reqid: reqid + uint32(si)}
		for _, a := range s.Addresses {
			if a.Is4() == req.GuestAddr.Is4() {
				ts.Prefixes = append(ts.Prefixes, endpoint(a).Prefix)
			} else {
				g.notef("server %s: address %v is not in the guest's address family; the guest reaches the server at %s only", s.Name, a, fmtPrefixes(ts.Prefixes))
			}
		}
		if len(ts.Prefixes) == 0 {
			fam := "IPv4"
			if !req.GuestAddr.Is4() {
				fam = "IPv6"
			}
			return fmt.Errorf("server %q has no %s address, so guest %s (%v) cannot reach it through its tunnel: add one to the application, or give the guest an address of the server's family", s.Name, fam, req.Guest, req.GuestAddr)
		}
		x, _ := s.Range.Intersect(app.Guest) // non-empty: Validate checked
		ts.SPDRange = label.Range{Low: x.Low.Secrecy, High: x.High.Secrecy}
		ts.SPDContext = fmt.Sprintf("system_u:object_r:%s:%s", d.Types.SPD, ts.SPDRange)
		for _, l := range g.serverLabels(s, rules) {
			sa := TemplateSA{Label: l, Context: saContext(app.Type, l)}
			var err error
			if sa.OutSPI, err = g.allocSPI(s.Name, l, dirOut); err != nil {
				return err
			}
			if sa.InSPI, err = g.allocSPI(s.Name, l, dirIn); err != nil {
				return err
			}
			ts.SAs = append(ts.SAs, sa)
		}
		d.Servers = append(d.Servers, ts)
	}
	return nil
}

func saContext(typ string, l label.Label) string {
	return fmt.Sprintf("system_u:system_r:%s:%s", typ, l.Secrecy)
}

func fmtPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Addr().String()
	}
	if len(s) == 0 {
		return "no address"
	}
	return strings.Join(s, ", ")
}

func endpoint(a netip.Addr) TemplateEndpoint {
	return TemplateEndpoint{Addr: a, Prefix: netip.PrefixFrom(a, a.BitLen())}
}

func anyAddr(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func (g *generator) allocSPI(server string, l label.Label, dir string) (uint32, error) {
	spi, err := g.req.SPI()
	if err != nil {
		return 0, fmt.Errorf("allocate the SPI of the %s SA toward %s at %v: %w", dir, server, l, err)
	}
	if spi < minSPI {
		return 0, fmt.Errorf("the SPI allocator returned %d, a reserved SPI (0-255): fix the host's SPI range", spi)
	}
	if g.spis[spi] {
		return 0, fmt.Errorf("the SPI allocator returned %d twice in one bundle: it must hand out each SPI once", spi)
	}
	g.spis[spi] = true
	return spi, nil
}

// serverLabels returns the labels the guest may use toward s, one per
// level (see GenerateBundle), sorted.
func (g *generator) serverLabels(s Server, rules []*syntax.Prog) []label.Label {
	app := g.app
	type cand struct {
		l    label.Label
		from string
	}
	var cands []cand
	for i, r := range app.Labels {
		if slices.ContainsFunc(s.Hosts, func(h string) bool { return mapper.TargetsHost(rules[i], h) }) {
			cands = append(cands, cand{r.Label, fmt.Sprintf("labels[%d]", i)})
		}
	}
	cands = append(cands, cand{s.DefaultLabel(), "default label"})
	byLevel := map[label.Level]label.Label{}
	var levels []label.Level
	for _, c := range cands {
		switch {
		case !app.Guest.Contains(c.l):
			g.notef("server %s: %s %v is outside the guest range %v; no SA for it", s.Name, c.from, c.l, app.Guest)
			continue
		case !s.Range.Contains(c.l):
			g.notef("server %s: %s %v is outside the server's range %v; no SA for it (fix the rule's label or regular expression)", s.Name, c.from, c.l, s.Range)
			continue
		}
		prev, seen := byLevel[c.l.Secrecy]
		if !seen {
			byLevel[c.l.Secrecy] = c.l
			levels = append(levels, c.l.Secrecy)
			continue
		}
		if prev.Integrity != c.l.Integrity {
			low := min(prev.Integrity, c.l.Integrity)
			g.notef("server %s: labels %v and %v share the SELinux level %v; one SA pair carries both, at the lower integrity %v", s.Name, prev, c.l, c.l.Secrecy, low)
			byLevel[c.l.Secrecy] = label.Label{Secrecy: c.l.Secrecy, Integrity: low}
		}
	}
	out := make([]label.Label, 0, len(levels))
	for _, lv := range levels {
		out = append(out, byLevel[lv])
	}
	slices.SortFunc(out, compareLabels)
	return out
}

// compareLabels orders labels by sensitivity, integrity, then category
// count and text: a total order, used only to make output deterministic.
func compareLabels(a, b label.Label) int {
	return cmp.Or(
		cmp.Compare(a.Secrecy.Sens, b.Secrecy.Sens),
		cmp.Compare(a.Integrity, b.Integrity),
		cmp.Compare(a.Secrecy.Cats.Count(), b.Secrecy.Cats.Count()),
		strings.Compare(a.Secrecy.Cats.String(), b.Secrecy.Cats.String()),
	)
}

func (g *generator) modules() ([]selinux.Module, error) {
	d := &g.data
	render := func(name string) (string, error) {
		out, err := g.t.render(name, d)
		return string(out), err
	}
	guest := selinux.Module{Name: d.Module, Target: selinux.TargetGuest}
	host := selinux.Module{Name: d.HostModule, Target: selinux.TargetHost}
	var err error
	for _, f := range []struct {
		dst  *string
		name string
	}{
		{&guest.TE, TmplGuestTE}, {&guest.IF, TmplGuestIF}, {&guest.FC, TmplGuestFC},
		{&host.TE, TmplHostTE}, {&host.FC, TmplHostFC},
	} {
		if *f.dst, err = render(f.name); err != nil {
			return nil, err
		}
	}
	if err := g.checkModuleHeader(TmplGuestTE, guest); err != nil {
		return nil, err
	}
	if err := g.checkModuleHeader(TmplHostTE, host); err != nil {
		return nil, err
	}
	return []selinux.Module{guest, host}, nil
}

var moduleStmtRE = regexp.MustCompile(`^module\s+([A-Za-z0-9_.-]+)\s+[0-9][0-9.]*\s*;$`)

// checkModuleHeader checks that the first statement of a rendered .te is
// "module <name> <version>;" with the name the loader will load it by.
func (g *generator) checkModuleHeader(tmpl string, m selinux.Module) error {
	for i, line := range strings.Split(m.TE, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sm := moduleStmtRE.FindStringSubmatch(line)
		if sm == nil {
			return g.t.errorAt(tmpl, []byte(m.TE), i+1, "the first statement is %q; a module starts with \"module %s <version>;\"", line, m.Name)
		}
		if sm[1] != m.Name {
			return g.t.errorAt(tmpl, []byte(m.TE), i+1, "the module is named %q; the loader loads it as %q, so write \"module %s <version>;\" (use {{.Module}} or {{.HostModule}})", sm[1], m.Name, m.Name)
		}
		return nil
	}
	return g.t.errorf(tmpl, 0, "rendered no module statement; a module starts with \"module %s <version>;\"", m.Name)
}

// xfrm renders the XFRM template, decodes it strictly, adds the keys and
// checks every invariant GenerateBundle documents.
func (g *generator) xfrm() ([]ipsec.Policy, []ipsec.State, error) {
	out, err := g.t.render(TmplXFRM, &g.data)
	if err != nil {
		return nil, nil, err
	}
	doc, lines, err := decodeXFRM(out)
	if err != nil {
		return nil, nil, g.t.errorf(TmplXFRM, 0, "%w", err)
	}
	at := func(l []int, i int) int {
		if i < len(l) {
			return l[i]
		}
		return 0
	}
	bad := func(line int, format string, args ...any) error {
		return g.t.errorAt(TmplXFRM, out, line, format, args...)
	}
	rnd := g.req.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	for i := range doc.States {
		key := make([]byte, GCMKeyLen)
		if _, err := io.ReadFull(rnd, key); err != nil {
			return nil, nil, fmt.Errorf("draw the key of SA %d: %w", doc.States[i].SPI, err)
		}
		doc.States[i].AEAD.Key = key
	}
	for i := range doc.Policies {
		if err := doc.Policies[i].Validate(); err != nil {
			return nil, nil, bad(at(lines.policies, i), "policies[%d]: %v", i, err)
		}
	}
	for i := range doc.States {
		if err := doc.States[i].Validate(); err != nil {
			return nil, nil, bad(at(lines.states, i), "states[%d]: %v", i, err)
		}
	}
	if err := g.checkXFRM(doc, func(kind string, i int) int {
		if kind == "policies" {
			return at(lines.policies, i)
		}
		return at(lines.states, i)
	}, bad); err != nil {
		return nil, nil, err
	}
	var pols []ipsec.Policy
	for i := range doc.Policies {
		pols = append(pols, doc.Policies[i].value())
	}
	var states []ipsec.State
	for i := range doc.States {
		states = append(states, doc.States[i].value())
	}
	return pols, states, nil
}

// checkXFRM enforces the bundle-level invariants on rendered XFRM: labels
// and contexts within the ranges, SPIs exactly the allocated ones, SAs only
// between guest and host, no clear path to a server, and the catch-all.
func (g *generator) checkXFRM(doc *xfrmDoc, line func(string, int) int, bad func(int, string, ...any) error) error {
	app, d := g.app, &g.data
	guest, host := g.req.GuestAddr, g.req.HostAddr
	guestSec := d.Guest.Secrecy
	// reqid → server, from the labeled policies that use it.
	reqServer := map[uint32]Server{}
	maxAllow := uint32(0)
	haveAllow := false
	var blockOut, blockIn *xfrmPolicy
	var blockOutIdx, blockInIdx int
	for i := range doc.Policies {
		p := &doc.Policies[i]
		ln := line("policies", i)
		if p.Action == actionAllow {
			haveAllow = true
			maxAllow = max(maxAllow, p.Priority)
		}
		if p.Context != "" {
			ctx, _ := parseMLSContext(p.Context) // Validate parsed it
			if ctx.Type != d.Types.SPD {
				return bad(ln, "policies[%d]: context type %s: the modules declare %s for the application's policies; write system_u:object_r:%s:<range>", i, ctx.Type, d.Types.SPD, d.Types.SPD)
			}
			if !guestSec.Contains(ctx.Range.Low) || !guestSec.Contains(ctx.Range.High) {
				return bad(ln, "policies[%d]: context range %v is not within the guest's range %v: a socket of the guest must never match it beyond its range", i, ctx.Range, guestSec)
			}
		}
		peer := p.Dst
		if p.Dir == dirIn {
			peer = p.Src
		}
		for _, s := range app.Servers {
			hit := slices.ContainsFunc(s.Addresses, func(a netip.Addr) bool { return peer.Contains(a.Unmap()) })
			if !hit {
				continue
			}
			if p.Action == actionAllow && len(p.Templates) == 0 {
				return bad(ln, "policies[%d]: lets the guest reach server %s (%v) in clear; traffic to a server must go through the labeled tunnel: add a template or drop the policy", i, s.Name, peer)
			}
			if p.Action == actionAllow && p.Context != "" {
				ctx, _ := parseMLSContext(p.Context)
				x, _ := s.Range.Intersect(app.Guest)
				srv := label.Range{Low: x.Low.Secrecy, High: x.High.Secrecy}
				if !srv.Contains(ctx.Range.Low) || !srv.Contains(ctx.Range.High) {
					return bad(ln, "policies[%d]: context range %v reaches beyond server %s's range within the guest, %v", i, ctx.Range, s.Name, srv)
				}
				for _, tm := range p.Templates {
					reqServer[tm.Reqid] = s
				}
			}
		}
		for _, tm := range p.Templates {
			if !isPair(tm.Src, tm.Dst, guest, host) {
				return bad(ln, "policies[%d]: the tunnel runs %v→%v; the guest's tunnels run between the guest %v and its host %v", i, tm.Src, tm.Dst, guest, host)
			}
		}
		if p.Action == actionBlock && p.Context == "" && p.Proto == 0 {
			if p.Dir == dirOut && p.Src.Contains(guest) && p.Dst.Bits() == 0 {
				blockOut, blockOutIdx = p, i
			}
			if p.Dir == dirIn && p.Dst.Contains(guest) && p.Src.Bits() == 0 {
				blockIn, blockInIdx = p, i
			}
		}
	}
	if blockOut == nil || blockIn == nil {
		return bad(0, "no unlabeled catch-all block policy pair for the guest (out %v→%v and in %v→%v, no context, action block): without it a socket that matches no labeled policy talks in clear; restore it", d.Guest.Prefix, d.Guest.Any, d.Guest.Any, d.Guest.Prefix)
	}
	if haveAllow {
		for _, bp := range []struct {
			p *xfrmPolicy
			i int
		}{{blockOut, blockOutIdx}, {blockIn, blockInIdx}} {
			if bp.p.Priority <= maxAllow {
				return bad(line("policies", bp.i), "policies[%d]: the catch-all block has priority %d, not below allow policies of priority up to %d (in XFRM the lower number wins): give it a larger number", bp.i, bp.p.Priority, maxAllow)
			}
		}
	}
	type spiKey struct {
		dst netip.Addr
		spi uint32
	}
	seen := map[spiKey]bool{}
	used := map[uint32]bool{}
	for i := range doc.States {
		s := &doc.States[i]
		ln := line("states", i)
		if !isPair(s.Src, s.Dst, guest, host) {
			return bad(ln, "states[%d]: the SA runs %v→%v; the guest's SAs run between the guest %v and its host %v", i, s.Src, s.Dst, guest, host)
		}
		k := spiKey{s.Dst, s.SPI}
		if seen[k] {
			return bad(ln, "states[%d]: SPI %d toward %v is used twice; each SA needs its own", i, s.SPI, s.Dst)
		}
		seen[k] = true
		if !g.spis[s.SPI] || used[s.SPI] {
			return bad(ln, "states[%d]: SPI %d was not allocated for this bundle (or is used twice); use the .OutSPI and .InSPI the template is given", i, s.SPI)
		}
		used[s.SPI] = true
		ctx, _ := parseMLSContext(s.Context)
		if ctx.Type != app.Type {
			return bad(ln, "states[%d]: context type %s: the application's sockets run as %s, and an SA is used only by sockets of its exact context", i, ctx.Type, app.Type)
		}
		if !app.Guest.Contains(s.Label) {
			return bad(ln, "states[%d]: label %v is outside the guest range %v", i, s.Label, app.Guest)
		}
		srv, ok := reqServer[s.Reqid]
		if !ok {
			return bad(ln, "states[%d]: reqid %d is used by no labeled policy toward a server; give the reqid of the server's policies", i, s.Reqid)
		}
		if !srv.Range.Contains(s.Label) {
			return bad(ln, "states[%d]: label %v is outside the range %v of server %s, whose policies use reqid %d", i, s.Label, srv.Range, srv.Name, s.Reqid)
		}
	}
	var missing []uint32
	for spi := range g.spis {
		if !used[spi] {
			missing = append(missing, spi)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return bad(0, "SPIs %v were allocated but no rendered SA uses them; render one state per .OutSPI and .InSPI", missing)
	}
	return nil
}

// isPair reports whether a→b is guest→host or host→guest.
func isPair(a, b, guest, host netip.Addr) bool {
	return (a == guest && b == host) || (a == host && b == guest)
}

// mapper renders the mapper policy and checks its lines.
func (g *generator) mapper() (string, error) {
	out, err := g.t.render(TmplMapper, &g.data)
	if err != nil {
		return "", err
	}
	if n, err := checkMapperPolicy(string(out)); err != nil {
		return "", g.t.errorAt(TmplMapper, out, n, "%w", err)
	}
	return string(out), nil
}

// checkMapperPolicy parses the rendered policy with the label mapper's own
// parser, the one the guest's mapper runs, so that a broken template is
// refused at generation time exactly as the mapper would refuse it, and
// holds its forward rules to the store's rule for upstreams. It returns the
// 1-based line of the first error.
func checkMapperPolicy(text string) (int, error) {
	pol, err := mapper.ParsePolicy("mapper.policy", []byte(text))
	if err != nil {
		var pe *mapper.ParseError
		if !errors.As(err, &pe) {
			return 0, err
		}
		if pe.Token != "" {
			return pe.Line, fmt.Errorf("%q: %s", pe.Token, pe.Reason)
		}
		return pe.Line, errors.New(pe.Reason)
	}
	for _, f := range pol.Forwards {
		if err := checkUpstream(f.Upstream); err != nil {
			return f.Line, err
		}
	}
	return 0, nil
}

// certificates asks the issuer for one certificate per server and one for
// the guest.
func (g *generator) certificates() ([]Certificate, []ServerKey, error) {
	iss := g.req.Issuer
	if iss == nil {
		if why := g.req.NoCertificatesBecause; why != "" {
			g.notef("the bundle has no certificates: %s", why)
		} else {
			g.notef("no certificate issuer was given: the bundle has no certificates, so the servers and the guest must be authenticated by other means")
		}
		return nil, nil, nil
	}
	var certs []Certificate
	var keys []ServerKey
	for _, s := range g.app.Servers {
		c, k, err := issue(iss, CertServer, s.Hosts[0], s.Hosts, s.Addresses)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate for server %s: %w", s.Name, err)
		}
		certs = append(certs, Certificate{Name: s.Name, Kind: CertServer, CertPEM: c})
		keys = append(keys, ServerKey{Server: s.Name, KeyPEM: k})
	}
	cn := g.req.Guest + "." + g.app.Name
	c, k, err := issue(iss, CertGuest, cn, nil, []netip.Addr{g.req.GuestAddr})
	if err != nil {
		return nil, nil, fmt.Errorf("certificate for guest %s: %w", g.req.Guest, err)
	}
	certs = append(certs, Certificate{Name: g.req.Guest, Kind: CertGuest, CertPEM: c, KeyPEM: k})
	return certs, keys, nil
}

// issue calls the issuer and checks that it returned one PEM certificate
// and one PEM private key.
func issue(iss Issuer, kind CertKind, cn string, dns []string, ips []netip.Addr) ([]byte, []byte, error) {
	c, k, err := iss(kind, cn, slices.Clone(dns), slices.Clone(ips))
	if err != nil {
		return nil, nil, err
	}
	if blk, _ := pem.Decode(c); blk == nil || blk.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("the issuer returned no PEM CERTIFICATE for %q; check the CA", cn)
	}
	if blk, _ := pem.Decode(k); blk == nil || !strings.HasSuffix(blk.Type, "PRIVATE KEY") {
		return nil, nil, fmt.Errorf("the issuer returned no PEM private key for %q; check the CA", cn)
	}
	return c, k, nil
}

// labels collects every distinct label of the bundle: the SAs', the label
// rules', the servers' default labels and the mapper's default.
func (g *generator) labels(b *Bundle) []label.Label {
	set := map[label.Label]bool{label.Default: true}
	for _, s := range b.States {
		set[s.Label] = true
	}
	for _, r := range g.app.Labels {
		set[r.Label] = true
	}
	for _, s := range g.app.Servers {
		set[s.DefaultLabel()] = true
	}
	out := make([]label.Label, 0, len(set))
	for l := range set {
		out = append(out, l)
	}
	slices.SortFunc(out, compareLabels)
	return out
}
