package policystore

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/ipsec"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
)

var updateGoldens = flag.Bool("update", false, "rewrite the golden files under testdata/bundle")

const goldenDir = "testdata/bundle/analyst"

func analystApp(t testing.TB) *Application {
	t.Helper()
	app, err := LoadFile("../examples/analyst/analyst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// counterSPI hands out start, start+1, ...
func counterSPI(start uint32) func() (uint32, error) {
	next := start
	return func() (uint32, error) {
		next++
		return next - 1, nil
	}
}

// fakeIssuer returns PEM blocks whose contents echo the request, so tests
// can see what was asked.
func fakeIssuer(kind CertKind, cn string, dns []string, ips []netip.Addr) ([]byte, []byte, error) {
	body := fmt.Sprintf("%s cn=%s dns=%v ips=%v", kind, cn, dns, ips)
	c := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte(body)})
	k := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("key of " + cn)})
	return c, k, nil
}

func analystRequest() BundleRequest {
	return BundleRequest{
		Guest:          "vm7",
		GuestAddr:      netip.MustParseAddr("10.70.0.7"),
		HostAddr:       netip.MustParseAddr("10.70.0.1"),
		MapperUpstream: "http://10.70.0.1:7070",
		SPI:            counterSPI(0x4000),
		Issuer:         fakeIssuer,
		Version:        3,
		Now:            time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC),
	}
}

// deterministicJSON is the bundle as JSON without what is random (keys)
// and without the module texts, which have golden files of their own.
func deterministicJSON(t *testing.T, b *Bundle) []byte {
	t.Helper()
	c := *b
	c.States = append([]ipsec.State(nil), b.States...)
	for i := range c.States {
		aead := *c.States[i].AEAD
		aead.Key = nil
		c.States[i].AEAD = &aead
	}
	c.Modules = append([]selinux.Module(nil), b.Modules...)
	for i := range c.Modules {
		for _, f := range []*string{&c.Modules[i].TE, &c.Modules[i].IF, &c.Modules[i].FC} {
			if *f != "" {
				*f = "(see golden file)"
			}
		}
	}
	out, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *updateGoldens {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./policystore/ -run TestBundleAnalystGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the generated output; review the change and rerun with -update.\n--- got ---\n%s", path, got)
	}
}

func TestBundleAnalystGolden(t *testing.T) {
	app := analystApp(t)
	b, err := GenerateBundle(app, analystRequest(), nil)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bundle.json", deterministicJSON(t, b))
	files := map[string]string{"mapper.policy": b.MapperPolicy}
	for _, m := range b.Modules {
		files[m.Target+".te"], files[m.Target+".fc"] = m.TE, m.FC
		if m.IF != "" {
			files[m.Target+".if"] = m.IF
		}
	}
	for name, text := range files {
		golden(t, name, []byte(text))
	}

	// The JSON form reads back into the same bundle.
	whole, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var back Bundle
	if err := json.Unmarshal(whole, &back); err != nil {
		t.Fatalf("bundle JSON does not read back: %v", err)
	}
	if again, _ := json.Marshal(&back); !bytes.Equal(again, whole) {
		t.Error("bundle JSON changes on a round trip")
	}

	// Same inputs, same bundle, except for the keys.
	again, err := GenerateBundle(app, analystRequest(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(deterministicJSON(t, b), deterministicJSON(t, again)) {
		t.Error("two bundles from the same inputs differ")
	}
	keys := map[string]bool{}
	for _, s := range append(b.States, again.States...) {
		if len(s.AEAD.Key) != GCMKeyLen {
			t.Errorf("SA %d: key of %d bytes, want %d", s.SPI, len(s.AEAD.Key), GCMKeyLen)
		}
		if keys[string(s.AEAD.Key)] {
			t.Errorf("SA %d: key repeats", s.SPI)
		}
		keys[string(s.AEAD.Key)] = true
	}

	// The paper's analyst: one SA pair per (server, level).
	type pair struct {
		reqid uint32
		label string
	}
	got := map[pair]int{}
	for _, s := range b.States {
		got[pair{s.Reqid, s.Label.String()}]++
	}
	want := map[pair]int{{1, "s6/i5"}: 2, {1, "s10/i8"}: 2, {2, "s6/i5"}: 2, {3, "s0/i5"}: 2, {3, "s4/i5"}: 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("SAs by (reqid, label) = %v, want %v", got, want)
	}
	for _, p := range b.Policies {
		if p.Context == "" {
			continue
		}
		want := map[string]string{"10.70.1.1/32": "system_u:object_r:analyst_spd_t:s6-s15", "10.70.2.1/32": "system_u:object_r:analyst_spd_t:s6-s15", "10.70.3.1/32": "system_u:object_r:analyst_spd_t:s0-s5"}
		peer := p.Dst
		if p.Dir == ipsec.DirIn {
			peer = p.Src
		}
		if p.Context != want[peer.String()] {
			t.Errorf("policy %s %v→%v: context %q, want %q", p.Dir, p.Src, p.Dst, p.Context, want[peer.String()])
		}
	}

	// The mapper package parses the mapper policy, and maps as the
	// application says.
	pol, err := mapper.ParsePolicy("mapper.policy", []byte(b.MapperPolicy))
	if err != nil {
		t.Fatalf("the mapper refuses the generated policy: %v", err)
	}
	if n := len(pol.Maps); n != 2+4 {
		t.Errorf("mapper policy has %d map rules, want 6 (2 label rules, 4 server hosts)", n)
	}
	for u, want := range map[string]string{
		"https://ws1.analyst.example/profile/42":  "s10/i8",
		"https://ws1.analyst.example/index.html":  "s6/i5",
		"http://ws3.analyst.example:8080/a":       "s0/i5",
		"http://ws3.analyst.example/public.html":  "s4/i5",
		"https://open.analyst.example":            "s0/i5",
		"https://ws2.analyst.example.evil/":       "",
		"https://ws2.analyst.example/?q=profile/": "s6/i5",
	} {
		r, ok := pol.Match(u)
		switch {
		case want == "" && ok:
			t.Errorf("mapper maps %s to %v; want a miss", u, r.Target)
		case want != "" && (!ok || r.Target.Label.String() != want):
			t.Errorf("mapper maps %s: %v %v, want %s", u, r, ok, want)
		}
	}
	if fw := pol.MatchForwards("https://elsewhere.example/", 4); len(fw) != 1 || fw[0].Upstream != "http://10.70.0.1:7070" || fw[0].Bounds != app.Guest {
		t.Errorf("misses are forwarded by %+v; want one rule to the host mapper bounded by the guest range", fw)
	}

	// Certificates: keys only for the guest; servers' keys separate.
	for _, c := range b.Certificates {
		if (c.Kind == CertGuest) != (len(c.KeyPEM) > 0) {
			t.Errorf("certificate %s (%v): key present = %v", c.Name, c.Kind, len(c.KeyPEM) > 0)
		}
	}
	if len(b.ServerKeys) != 3 {
		t.Errorf("%d server keys, want 3", len(b.ServerKeys))
	}
	gp := b.GuestPart()
	if len(gp.ServerKeys) != 0 || len(gp.Modules) != 1 || gp.Modules[0].Target != selinux.TargetGuest {
		t.Errorf("GuestPart kept %d server keys and modules %v", len(gp.ServerKeys), gp.Modules)
	}
	if len(b.ServerKeys) != 3 || len(b.Modules) != 2 {
		t.Error("GuestPart changed the bundle it was called on")
	}
	gj, _ := json.Marshal(gp)
	if bytes.Contains(gj, []byte("key of ws1")) || bytes.Contains(gj, []byte(base64Of("key of ws1"))) {
		t.Error("the guest part's JSON carries a server key")
	}
}

func base64Of(s string) string {
	b, _ := json.Marshal([]byte(s))
	return strings.Trim(string(b), `"`)
}

func TestBundleWithoutIssuer(t *testing.T) {
	req := analystRequest()
	req.Issuer = nil
	b, err := GenerateBundle(analystApp(t), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Certificates) != 0 || len(b.ServerKeys) != 0 {
		t.Errorf("certificates without an issuer: %d certs, %d keys", len(b.Certificates), len(b.ServerKeys))
	}
	if !strings.Contains(strings.Join(b.Notes, "\n"), "no certificate issuer") {
		t.Errorf("notes do not say there are no certificates: %q", b.Notes)
	}
	req.NoCertificatesBecause = "the guest presents the certificate of its boot"
	if b, err = GenerateBundle(analystApp(t), req, nil); err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(b.Notes, "\n")
	if !strings.Contains(notes, "no certificates: the guest presents the certificate of its boot") || strings.Contains(notes, "no certificate issuer") {
		t.Errorf("notes with a reason for no certificates: %q", b.Notes)
	}
}

func TestBundleNotesSkippedLabels(t *testing.T) {
	app := analystApp(t)
	// A rule aimed at every server labels ws1's and ws2's URLs at s4,
	// outside their ranges: the application itself is refused.
	app.Labels = append(app.Labels, LabelRule{URL: `https?://[a-z0-9.]+\.analyst\.example/old/.*`, Label: mustLabel(t, "s4/i7")})
	if _, err := GenerateBundle(app, analystRequest(), nil); err == nil || !strings.Contains(err.Error(), `labels[2].label: label s4/i7 is outside the range s6-s15/i5-i10 of server "ws1"`) {
		t.Fatalf("an application labelling ws1 below its range: %v", err)
	}
	// Aimed at ws3 only, it shares the level s4 with the rule for
	// public.html: one SA pair, at the lower integrity, and a note.
	app.Labels[2].URL = `https?://ws3\.analyst\.example/old/.*`
	b, err := GenerateBundle(app, analystRequest(), nil)
	if err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(b.Notes, "\n")
	for _, want := range []string{"server ws3: labels s4/i5 and s4/i7 share the SELinux level s4"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	for _, s := range b.States {
		if s.Label.Secrecy.Sens == 4 && s.Label.Integrity != 5 {
			t.Errorf("SA %d at %v: the shared level should carry the lower integrity i5", s.SPI, s.Label)
		}
	}
}

func mustLabel(t testing.TB, s string) label.Label {
	t.Helper()
	l, err := label.ParseLabel(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBundleRequestErrors(t *testing.T) {
	boom := errors.New("SPI range exhausted")
	cases := map[string]struct {
		edit func(*Application, *BundleRequest)
		want string
	}{
		"spi allocator error": {func(_ *Application, r *BundleRequest) {
			r.SPI = func() (uint32, error) { return 0, boom }
		}, "allocate the SPI of the out SA toward ws1 at s6/i5: SPI range exhausted"},
		"spi reserved":     {func(_ *Application, r *BundleRequest) { r.SPI = counterSPI(7) }, "reserved SPI"},
		"spi twice":        {func(_ *Application, r *BundleRequest) { r.SPI = func() (uint32, error) { return 4096, nil } }, "returned 4096 twice"},
		"no spi allocator": {func(_ *Application, r *BundleRequest) { r.SPI = nil }, "no SPI allocator"},
		"family mismatch":  {func(_ *Application, r *BundleRequest) { r.HostAddr = netip.MustParseAddr("fd00::1") }, "different families"},
		"guest is host":    {func(_ *Application, r *BundleRequest) { r.HostAddr = r.GuestAddr }, "both have the address 10.70.0.7"},
		"no guest address": {func(_ *Application, r *BundleRequest) { r.GuestAddr = netip.Addr{} }, "guest address is missing"},
		"mapped guest":     {func(_ *Application, r *BundleRequest) { r.GuestAddr = netip.MustParseAddr("::ffff:10.70.0.7") }, "write the IPv4 address 10.70.0.7"},
		"bad guest name":   {func(_ *Application, r *BundleRequest) { r.Guest = "VM 7" }, `guest name "VM 7"`},
		"bad upstream":     {func(_ *Application, r *BundleRequest) { r.MapperUpstream = "10.70.0.1:7070" }, "give the host mapper's base URL"},
		"no upstream":      {func(_ *Application, r *BundleRequest) { r.MapperUpstream = "" }, "no mapper upstream"},
		"version 0":        {func(_ *Application, r *BundleRequest) { r.Version = 0 }, "version 0"},
		"no time":          {func(_ *Application, r *BundleRequest) { r.Now = time.Time{} }, "set BundleRequest.Now"},
		"reqid overflow":   {func(_ *Application, r *BundleRequest) { r.ReqidBase = 1<<32 - 2 }, "leaves no room"},
		"ipv6 guest": {func(_ *Application, r *BundleRequest) {
			r.GuestAddr, r.HostAddr = netip.MustParseAddr("fd00::7"), netip.MustParseAddr("fd00::1")
		}, `server "ws1" has no IPv6 address`},
		"server is host":    {func(a *Application, r *BundleRequest) { a.Servers[1].Addresses[0] = r.HostAddr }, `server "ws2" has the address 10.70.0.1`},
		"invalid app":       {func(a *Application, _ *BundleRequest) { a.Type = "Analyst" }, `application "analyst": type`},
		"rule with a space": {func(a *Application, _ *BundleRequest) { a.Labels[0].URL = `https?://ws1\.analyst\.example/a b` }, `write \s or \x20`},
		"issuer error": {func(_ *Application, r *BundleRequest) {
			r.Issuer = func(CertKind, string, []string, []netip.Addr) ([]byte, []byte, error) { return nil, nil, boom }
		}, "certificate for server ws1: SPI range exhausted"},
		"issuer not pem": {func(_ *Application, r *BundleRequest) {
			r.Issuer = func(CertKind, string, []string, []netip.Addr) ([]byte, []byte, error) {
				return []byte("x"), []byte("y"), nil
			}
		}, "no PEM CERTIFICATE"},
		"rand fails": {func(_ *Application, r *BundleRequest) { r.Rand = bytes.NewReader(make([]byte, 30)) }, "draw the key"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			app, req := analystApp(t), analystRequest()
			c.edit(app, &req)
			b, err := GenerateBundle(app, req, nil)
			if err == nil {
				t.Fatalf("no error; bundle with %d states", len(b.States))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q\ndoes not say %q", err, c.want)
			}
		})
	}
	if _, err := GenerateBundle(nil, analystRequest(), nil); err == nil {
		t.Error("nil application: no error")
	}
}

func TestBundleModulesCompile(t *testing.T) {
	if _, err := (selinux.Module{Name: "probe"}).Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	compile := func(t *testing.T, m selinux.Module) error {
		_, err := m.Package(context.Background(), t.TempDir())
		return err
	}
	apps := map[string]*Application{"analyst": analystApp(t), "sample": sampleApplication()}
	for name, app := range apps {
		b, err := GenerateBundle(app, analystRequest(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range b.Modules {
			t.Run(name+"/"+m.Name, func(t *testing.T) {
				if err := compile(t, m); err != nil {
					t.Fatalf("%s\n--- %s.te ---\n%s", err, m.Name, m.TE)
				}
			})
		}
	}
	// The harness itself must notice a module the toolchain refuses.
	t.Run("broken module is refused", func(t *testing.T) {
		bad := selinux.Module{Name: "mlsgate_bad", TE: "module mlsgate_bad 1.0;\nallow undeclared_t self:file read;\n", FC: "/x\tsystem_u:object_r:undeclared_t\n"}
		if err := compile(t, bad); err == nil {
			t.Fatal("checkmodule accepted a module that uses an undeclared type and class")
		}
	})
}

func TestCheckMapperPolicy(t *testing.T) {
	good := "# c\n\nmap a\\.b system_u:object_r:x_t:s3 i2\nmap c s4/i1\nforward .* http://10.0.0.1:7070 s0-s15/i0-i3\ndefault s0/i0\n"
	if n, err := checkMapperPolicy(good); err != nil {
		t.Fatalf("line %d: %v", n, err)
	}
	cases := []struct {
		text string
		line int
		want string
	}{
		{"map a( s0", 1, "bad regex"},
		{"# x\nmap a s3/i2 i4", 2, "carries its own integrity"},
		{"map a system_u:object_r:x_t", 1, "want"},
		{"map a u:r:t_t", 1, "bad sensitivity"},
		{"forward .* 10.0.0.1 s0", 1, "not supported"},
		{"forward .* unix:/run/m.sock s0-s1/i0-i1", 1, "not a base URL"}, // the mapper takes it; the store wants its host mapper's URL
		{"forward .* http://h:1 s9-s2", 1, "inverted"},
		{"default s0\ndefault s1", 2, "second default"},
		{"allow .* s0", 1, "unknown directive"},
		{"map a\x01 s0", 1, "control character"},
		{"map a s99", 1, "s99"},
	}
	for _, c := range cases {
		n, err := checkMapperPolicy(c.text)
		if err == nil || n != c.line || !strings.Contains(err.Error(), c.want) {
			t.Errorf("checkMapperPolicy(%q) = line %d, %v; want line %d, %q", c.text, n, err, c.line, c.want)
		}
	}
}

func TestXFRMValidate(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	goodTmpl := xfrmTemplate{Src: addr("10.0.0.7"), Dst: addr("10.0.0.1"), Proto: protoESP, Mode: modeTunnel, Reqid: 1}
	goodPol := func() xfrmPolicy {
		return xfrmPolicy{Dir: dirOut, Src: pfx("10.0.0.7/32"), Dst: pfx("10.70.1.1/32"), Context: "system_u:object_r:a_spd_t:s0-s3", Action: actionAllow, Priority: 1, Templates: []xfrmTemplate{goodTmpl}}
	}
	goodState := func() xfrmState {
		return xfrmState{Src: addr("10.0.0.7"), Dst: addr("10.0.0.1"), SPI: 4096, Proto: protoESP, Mode: modeTunnel, Reqid: 1,
			Context: "system_u:system_r:a_t:s2:c1", Label: mustLabel(t, "s2:c1/i3"), AEAD: xfrmAEAD{Name: AEADGCM, Key: make([]byte, 20), ICVBits: 128}}
	}
	if p := goodPol(); p.Validate() != nil {
		t.Fatalf("good policy: %v", p.Validate())
	}
	if s := goodState(); s.Validate() != nil {
		t.Fatalf("good state: %v", s.Validate())
	}
	polCases := map[string]struct {
		edit func(*xfrmPolicy)
		want string
	}{
		"dir":           {func(p *xfrmPolicy) { p.Dir = "sideways" }, `dir "sideways"`},
		"unmasked":      {func(p *xfrmPolicy) { p.Dst = netip.PrefixFrom(addr("10.70.1.1"), 24) }, "write 10.70.1.0/24"},
		"no src":        {func(p *xfrmPolicy) { p.Src = netip.Prefix{} }, "src is missing"},
		"families":      {func(p *xfrmPolicy) { p.Dst = pfx("fd00::1/128") }, "different address families"},
		"context":       {func(p *xfrmPolicy) { p.Context = "a_spd_t" }, "context"},
		"no level":      {func(p *xfrmPolicy) { p.Context = "u:r:a_spd_t" }, "no MLS level"},
		"action":        {func(p *xfrmPolicy) { p.Action = "drop" }, `action "drop"`},
		"block + tmpl":  {func(p *xfrmPolicy) { p.Action = actionBlock }, "block policy has templates"},
		"tmpl proto":    {func(p *xfrmPolicy) { p.Templates[0].Proto = "ah" }, `proto "ah"`},
		"tmpl mode":     {func(p *xfrmPolicy) { p.Templates[0].Mode = "beet" }, `mode "beet"`},
		"tmpl reqid":    {func(p *xfrmPolicy) { p.Templates[0].Reqid = 0 }, "reqid 0"},
		"tmpl same end": {func(p *xfrmPolicy) { p.Templates[0].Dst = p.Templates[0].Src }, "both 10.0.0.7"},
	}
	for name, c := range polCases {
		p := goodPol()
		p.Templates = []xfrmTemplate{goodTmpl}
		c.edit(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("policy %s: %v, want %q", name, err, c.want)
		}
	}
	stateCases := map[string]struct {
		edit func(*xfrmState)
		want string
	}{
		"spi":         {func(s *xfrmState) { s.SPI = 255 }, "reserved"},
		"same ends":   {func(s *xfrmState) { s.Dst = s.Src }, "both 10.0.0.7"},
		"families":    {func(s *xfrmState) { s.Dst = addr("fd00::1") }, "different address families"},
		"zoned":       {func(s *xfrmState) { s.Dst = addr("fe80::1%eth0") }, "zone"},
		"range ctx":   {func(s *xfrmState) { s.Context = "system_u:system_r:a_t:s2:c1-s3:c1" }, "an SA carries one level"},
		"label/ctx":   {func(s *xfrmState) { s.Label = mustLabel(t, "s2/i3") }, "make the context's level s2"},
		"aead name":   {func(s *xfrmState) { s.AEAD.Name = "cbc(aes)" }, `name "cbc(aes)"`},
		"aead key":    {func(s *xfrmState) { s.AEAD.Key = make([]byte, 16) }, "key of 16 bytes"},
		"aead icv":    {func(s *xfrmState) { s.AEAD.ICVBits = 32 }, "icv_bits 32"},
		"reqid":       {func(s *xfrmState) { s.Reqid = 0 }, "reqid 0"},
		"proto":       {func(s *xfrmState) { s.Proto = "ah" }, `proto "ah"`},
		"bad label":   {func(s *xfrmState) { s.Label.Integrity = 16 }, "label"},
		"bad context": {func(s *xfrmState) { s.Context = "nonsense" }, "context"},
	}
	for name, c := range stateCases {
		s := goodState()
		c.edit(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("state %s: %v, want %q", name, err, c.want)
		}
	}
}

var bundleSeed = flag.Uint64("bundle.seed", 0, "seed for the bundle property test (0: time-based)")

// randomApp builds a random valid application: guest bounds within
// s0-s15/i0-i15 over a few categories, 1-5 servers whose ranges meet the
// guest's, optional server labels (sometimes outside the guest range), and
// label rules aimed at one server, several, or every URL.
func randomApp(r *rand.Rand, v6 bool) *Application {
	cats := func() label.CategorySet {
		var s label.CategorySet
		for c := range 4 {
			if r.IntN(3) == 0 {
				s.Add(c)
			}
		}
		return s
	}
	bounds := func() label.Bounds {
		lo := label.Label{Secrecy: label.Level{Sens: uint8(r.IntN(16)), Cats: cats()}, Integrity: label.Integrity(r.IntN(16))}
		hi := label.Label{Secrecy: label.Level{Sens: lo.Secrecy.Sens + uint8(r.IntN(16-int(lo.Secrecy.Sens))), Cats: lo.Secrecy.Cats.Union(cats())}, Integrity: lo.Integrity + label.Integrity(r.IntN(16-int(lo.Integrity)))}
		return label.Bounds{Low: lo, High: hi}
	}
	within := func(b label.Bounds) label.Label {
		l := b.Low
		l.Secrecy.Sens += uint8(r.IntN(int(b.High.Secrecy.Sens-b.Low.Secrecy.Sens) + 1))
		l.Secrecy.Cats = l.Secrecy.Cats.Union(b.High.Secrecy.Cats.Intersect(cats()))
		l.Integrity += label.Integrity(r.IntN(int(b.High.Integrity-b.Low.Integrity) + 1))
		return l
	}
	addr := func(i, j int) netip.Addr {
		if v6 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i*16 + j + 1)})
		}
		return netip.AddrFrom4([4]byte{198, 51, byte(i), byte(j + 1)})
	}
	app := &Application{Name: "app", Type: "app_t", Guest: bounds(), LoadableFrom: []string{HostCaller}}
	n := 1 + r.IntN(5)
	for i := range n {
		s := Server{Name: fmt.Sprintf("s%d", i), Hosts: []string{fmt.Sprintf("s%d.app.example", i)}}
		if r.IntN(2) == 0 {
			s.Hosts = append(s.Hosts, fmt.Sprintf("alt%d.app.example", i))
		}
		for j := range 1 + r.IntN(2) {
			s.Addresses = append(s.Addresses, addr(i, j))
		}
		for {
			s.Range = bounds()
			if _, ok := s.Range.Intersect(app.Guest); ok {
				break
			}
		}
		if r.IntN(3) == 0 {
			l := within(s.Range)
			s.Label = &l
		}
		app.Servers = append(app.Servers, s)
	}
	for i := range r.IntN(5) {
		var url string
		switch r.IntN(4) {
		case 0:
			url = `.*`
		case 1:
			url = `https?://.*\.app\.example/r` + fmt.Sprint(i) + `(/.*)?`
		default:
			s := app.Servers[r.IntN(n)]
			url = `https?://` + regexp.QuoteMeta(s.Hosts[r.IntN(len(s.Hosts))]) + `/p` + fmt.Sprint(i) + `(/.*)?`
			if in, ok := s.Range.Intersect(app.Guest); ok {
				app.Labels = append(app.Labels, LabelRule{URL: url, Label: within(in)})
				continue
			}
		}
		// A label must lie within the range of every server whose URLs the
		// rule can match; drop the rule when the random one does not.
		app.Labels = append(app.Labels, LabelRule{URL: url, Label: within(app.Guest)})
		if app.Validate() != nil {
			app.Labels = app.Labels[:len(app.Labels)-1]
		}
	}
	return app
}

// TestBundleProperties: for random valid applications the bundle
// generates and its SAs and policies stay within the ranges.
func TestBundleProperties(t *testing.T) {
	seed := *bundleSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	r := rand.New(rand.NewPCG(seed, 0x62756e646c65))
	n := 250
	if testing.Short() {
		n = 50
	}
	for it := range n {
		v6 := r.IntN(4) == 0
		app := randomApp(r, v6)
		if err := app.Validate(); err != nil {
			t.Fatalf("seed %d, iteration %d: the generator made an invalid application: %v", seed, it, err)
		}
		req := analystRequest()
		if v6 {
			req.GuestAddr, req.HostAddr, req.MapperUpstream = netip.MustParseAddr("fd00::7"), netip.MustParseAddr("fd00::1"), "http://[fd00::1]:7070"
		}
		b, err := GenerateBundle(app, req, nil)
		fail := func(format string, args ...any) {
			t.Helper()
			j, _ := json.Marshal(app)
			t.Fatalf("seed %d, iteration %d: %s\napplication: %s", seed, it, fmt.Sprintf(format, args...), j)
		}
		if err != nil {
			fail("%v", err)
		}
		guestSec := label.Range{Low: app.Guest.Low.Secrecy, High: app.Guest.High.Secrecy}
		reqidServer := map[uint32]Server{}
		for _, p := range b.Policies {
			if err := p.Validate(); err != nil {
				fail("policy %+v: %v", p, err)
			}
			if p.Context == "" {
				continue
			}
			c, err := label.ParseContext(p.Context)
			if err != nil {
				fail("policy context %q: %v", p.Context, err)
			}
			if !guestSec.Contains(c.Range.Low) || !guestSec.Contains(c.Range.High) {
				fail("policy context range %v is not within the guest range %v", c.Range, guestSec)
			}
			peer := p.Dst
			if p.Dir == ipsec.DirIn {
				peer = p.Src
			}
			for _, s := range app.Servers {
				for _, a := range s.Addresses {
					if peer.Contains(a) {
						reqidServer[p.Templates[0].Reqid] = s
					}
				}
			}
		}
		levels := map[uint32]map[label.Level]bool{}
		for _, s := range b.States {
			if err := s.Validate(); err != nil {
				fail("state %d: %v", s.SPI, err)
			}
			if !app.Guest.Contains(s.Label) {
				fail("SA %d label %v is outside the guest range %v", s.SPI, s.Label, app.Guest)
			}
			srv, ok := reqidServer[s.Reqid]
			if !ok {
				fail("SA %d: reqid %d belongs to no server's policy", s.SPI, s.Reqid)
			}
			if !srv.Range.Contains(s.Label) {
				fail("SA %d label %v is outside the range %v of its server %s", s.SPI, s.Label, srv.Range, srv.Name)
			}
			if levels[s.Reqid] == nil {
				levels[s.Reqid] = map[label.Level]bool{}
			}
			levels[s.Reqid][s.Label.Secrecy] = true
		}
		// Completeness: a server's default label, when the guest may use it,
		// has its SA.
		for reqid, s := range reqidServer {
			if d := s.DefaultLabel(); app.Guest.Contains(d) && !levels[reqid][d.Secrecy] {
				fail("server %s: no SA at its default label %v", s.Name, d)
			}
		}
		if _, err := mapper.ParsePolicy("mapper.policy", []byte(b.MapperPolicy)); err != nil {
			fail("the mapper refuses the policy: %v\n%s", err, b.MapperPolicy)
		}
		// The paper's claim (section 4.2): policies generated together
		// from the templates comply by construction.
		if err := CheckBundle(app, b, SystemPolicy{}); err != nil {
			fail("generated bundle is not compliant: %v", err)
		}
	}
}
