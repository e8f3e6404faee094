package policystore

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mlsgate/mlsgate/ipsec"
	"github.com/mlsgate/mlsgate/label"
)

// The XFRM document an application's xfrm.yaml.tmpl renders. The store
// decodes it into these types (field names and values as `ip xfrm` writes
// them, so that an operator can write a template next to `ip xfrm policy`
// output), checks it, and puts the result into bundles as package ipsec's
// values, which the agent installs through netlink unchanged.

// XFRM directions, actions, protocols and modes the store generates and
// accepts.
const (
	dirOut = "out"
	dirIn  = "in"
	dirFwd = "fwd"

	actionAllow = "allow"
	actionBlock = "block"

	protoESP = "esp"

	modeTunnel    = "tunnel"
	modeTransport = "transport"
)

// AEADGCM is the only AEAD the store generates: AES-GCM for ESP (RFC 4106),
// under the kernel's name. Its key is the AES key followed by a 4-byte salt.
const AEADGCM = "rfc4106(gcm(aes))"

// GCMKeyLen is the length of the keys GenerateBundle draws for AEADGCM:
// a 16-byte AES-128 key and the 4-byte salt.
const GCMKeyLen = 16 + 4

// minSPI is the smallest SPI an SA may use: RFC 4303 reserves 0 and
// 1-255.
const minSPI = 256

// xfrmPolicy is one security policy database entry, the structured form of
// the paper's `spdadd <src> <dst> any -ctx 1 1 <context> -P out ipsec
// esp/tunnel/<src>-<dst>/require`.
type xfrmPolicy struct {
	// Dir is "out", "in" or "fwd".
	Dir string `json:"dir" yaml:"dir"`
	// Src and Dst select packets by address; the prefix must be masked
	// (10.0.0.7/32, not 10.0.0.7/24).
	Src netip.Prefix `json:"src" yaml:"src"`
	Dst netip.Prefix `json:"dst" yaml:"dst"`
	// Proto is the IP protocol number the policy selects; 0 means any.
	Proto uint8 `json:"proto,omitempty" yaml:"proto,omitempty"`
	// Context is the SELinux context of the policy (the paper's -ctx).
	// A flow matches the policy only when its context has association
	// polmatch on this one; empty means an unlabeled policy that every
	// flow matches.
	Context string `json:"context,omitempty" yaml:"context,omitempty"`
	// Action is "allow" or "block".
	Action string `json:"action" yaml:"action"`
	// Priority orders overlapping policies; as in the kernel, the lower
	// number wins.
	Priority uint32 `json:"priority" yaml:"priority"`
	// Templates are the transformations an allowed packet must go
	// through; none means "allow in clear".
	Templates []xfrmTemplate `json:"templates,omitempty" yaml:"templates,omitempty"`
}

// xfrmTemplate is one transformation of a policy: which SA (by endpoints,
// protocol, mode and reqid) a packet must use.
type xfrmTemplate struct {
	Src   netip.Addr `json:"src" yaml:"src"`
	Dst   netip.Addr `json:"dst" yaml:"dst"`
	Proto string     `json:"proto" yaml:"proto"`
	Mode  string     `json:"mode" yaml:"mode"`
	// Reqid ties the template to the SAs of the same reqid. It is never 0,
	// which the kernel reads as "any SA".
	Reqid uint32 `json:"reqid" yaml:"reqid"`
}

// xfrmState is one security association, carrying the security context
// (and so the label) of every packet sent on it.
type xfrmState struct {
	Src   netip.Addr `json:"src" yaml:"src"`
	Dst   netip.Addr `json:"dst" yaml:"dst"`
	SPI   uint32     `json:"spi" yaml:"spi"`
	Proto string     `json:"proto" yaml:"proto"`
	Mode  string     `json:"mode" yaml:"mode"`
	Reqid uint32     `json:"reqid" yaml:"reqid"`
	// Context is the SELinux context of the SA,
	// "system_u:system_r:<app type>:<level>": a socket sends on the SA
	// only when its own context is exactly this one.
	Context string `json:"context" yaml:"context"`
	// Label is the SA's label for the fast path: the context's level plus
	// the integrity SELinux does not carry.
	Label label.Label `json:"label" yaml:"label"`
	AEAD  xfrmAEAD    `json:"aead" yaml:"aead"`
	// ESN: 64-bit extended sequence numbers (both ends install the SA
	// with XFRM_STATE_ESN), so its sequence number never wraps; without
	// it the SA must be rotated before 2^32 packets.
	ESN bool `json:"esn,omitempty" yaml:"esn,omitempty"`
}

// xfrmAEAD is the SA's authenticated cipher. The key is drawn by
// GenerateBundle and never comes from a template: its YAML name is "-", so
// a template that writes one is refused as an unknown field.
type xfrmAEAD struct {
	Name    string `json:"name" yaml:"name"`
	Key     []byte `json:"key" yaml:"-"`
	ICVBits int    `json:"icv_bits" yaml:"icv_bits"`
}

// Validate checks the policy on its own.
func (p *xfrmPolicy) Validate() error {
	switch p.Dir {
	case dirOut, dirIn, dirFwd:
	default:
		return fmt.Errorf("dir %q: want %q, %q or %q", p.Dir, dirOut, dirIn, dirFwd)
	}
	if err := checkPrefix("src", p.Src); err != nil {
		return err
	}
	if err := checkPrefix("dst", p.Dst); err != nil {
		return err
	}
	if p.Src.Addr().Is4() != p.Dst.Addr().Is4() {
		return fmt.Errorf("src %v and dst %v are of different address families; one policy selects one family", p.Src, p.Dst)
	}
	if p.Context != "" {
		if _, err := parseMLSContext(p.Context); err != nil {
			return err
		}
	}
	switch p.Action {
	case actionAllow:
	case actionBlock:
		if len(p.Templates) > 0 {
			return errors.New("a block policy has templates; drop them (a blocked packet is transformed by nothing)")
		}
	default:
		return fmt.Errorf("action %q: want %q or %q", p.Action, actionAllow, actionBlock)
	}
	for i := range p.Templates {
		if err := p.Templates[i].Validate(); err != nil {
			return fmt.Errorf("templates[%d]: %w", i, err)
		}
		if p.Templates[i].Src.Is4() != p.Src.Addr().Is4() && p.Templates[i].Mode == modeTransport {
			return fmt.Errorf("templates[%d]: transport mode cannot change the address family of %v→%v", i, p.Src, p.Dst)
		}
	}
	return nil
}

// Validate checks the template on its own.
func (t *xfrmTemplate) Validate() error {
	if err := checkAddr("src", t.Src); err != nil {
		return err
	}
	if err := checkAddr("dst", t.Dst); err != nil {
		return err
	}
	if t.Src.Is4() != t.Dst.Is4() {
		return fmt.Errorf("tunnel endpoints %v and %v are of different address families", t.Src, t.Dst)
	}
	if t.Src == t.Dst {
		return fmt.Errorf("tunnel endpoints are both %v; src is this end, dst the other", t.Src)
	}
	if t.Proto != protoESP {
		return fmt.Errorf("proto %q: only %q is supported (the fast path reads labels from ESP SAs)", t.Proto, protoESP)
	}
	if err := checkMode(t.Mode); err != nil {
		return err
	}
	if t.Reqid == 0 {
		return errors.New("reqid 0 would match any SA; give the reqid of the SAs this template uses")
	}
	return nil
}

// Validate checks the state on its own: its addresses, SPI, context, label
// and cipher, and that the context's level is the label's secrecy.
func (s *xfrmState) Validate() error {
	if err := checkAddr("src", s.Src); err != nil {
		return err
	}
	if err := checkAddr("dst", s.Dst); err != nil {
		return err
	}
	if s.Src.Is4() != s.Dst.Is4() {
		return fmt.Errorf("src %v and dst %v are of different address families", s.Src, s.Dst)
	}
	if s.Src == s.Dst {
		return fmt.Errorf("src and dst are both %v; an SA runs between two hosts", s.Src)
	}
	if s.SPI < minSPI {
		return fmt.Errorf("spi %d is reserved (RFC 4303 reserves 0-255); take SPIs from the host's range", s.SPI)
	}
	if s.Proto != protoESP {
		return fmt.Errorf("proto %q: only %q is supported (the fast path reads labels from ESP SAs)", s.Proto, protoESP)
	}
	if err := checkMode(s.Mode); err != nil {
		return err
	}
	if s.Reqid == 0 {
		return errors.New("reqid 0: give the reqid of the policy template that uses this SA")
	}
	ctx, err := parseMLSContext(s.Context)
	if err != nil {
		return err
	}
	if ctx.Range.Low != ctx.Range.High {
		return fmt.Errorf("context %q has the range %v; an SA carries one level: write %s:%s:%s:%v", s.Context, ctx.Range, ctx.User, ctx.Role, ctx.Type, ctx.Range.Low)
	}
	if err := s.Label.Validate(); err != nil {
		return fmt.Errorf("label: %w", err)
	}
	if ctx.Range.Low != s.Label.Secrecy {
		return fmt.Errorf("context %q is at %v but the label is %v: the kernel and the fast path would disagree; make the context's level %v", s.Context, ctx.Range.Low, s.Label, s.Label.Secrecy)
	}
	if err := s.AEAD.Validate(); err != nil {
		return fmt.Errorf("aead: %w", err)
	}
	return nil
}

// Validate checks the cipher name, key length and ICV size.
func (a *xfrmAEAD) Validate() error {
	if a.Name != AEADGCM {
		return fmt.Errorf("name %q: only %q is supported", a.Name, AEADGCM)
	}
	switch len(a.Key) {
	case 16 + 4, 24 + 4, 32 + 4:
	default:
		return fmt.Errorf("key of %d bytes: %s wants an AES key of 16, 24 or 32 bytes plus a 4-byte salt", len(a.Key), AEADGCM)
	}
	switch a.ICVBits {
	case 64, 96, 128:
	default:
		return fmt.Errorf("icv_bits %d: %s allows 64, 96 or 128", a.ICVBits, AEADGCM)
	}
	return nil
}

func checkAddr(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s is missing; give an IPv4 or IPv6 address", field)
	case a.Is4In6():
		return fmt.Errorf("%s %v is an IPv4-mapped IPv6 address; write the IPv4 address %v", field, a, a.Unmap())
	case a.Zone() != "":
		return fmt.Errorf("%s %v has a zone; XFRM selectors take plain addresses", field, a)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("%s %v is not a unicast address", field, a)
	}
	return nil
}

func checkPrefix(field string, p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%s is missing or not a prefix; write address/bits, e.g. 10.0.0.7/32", field)
	case p.Addr().Is4In6():
		return fmt.Errorf("%s %v is IPv4-mapped; write the IPv4 prefix", field, p)
	case p != p.Masked():
		return fmt.Errorf("%s %v has host bits set; write %v", field, p, p.Masked())
	}
	return nil
}

func checkMode(m string) error {
	if m != modeTunnel && m != modeTransport {
		return fmt.Errorf("mode %q: want %q or %q", m, modeTunnel, modeTransport)
	}
	return nil
}

// parseMLSContext parses an SELinux context that must carry an MLS part.
func parseMLSContext(s string) (label.Context, error) {
	c, err := label.ParseContext(s)
	if err != nil {
		return c, fmt.Errorf("context: %w", err)
	}
	if !c.HasRange {
		return c, fmt.Errorf("context %q has no MLS level; the kernel compares levels, so write %s:s0 or the right level", s, s)
	}
	return c, nil
}

// xfrmDoc is the document xfrm.yaml.tmpl renders.
type xfrmDoc struct {
	Policies []xfrmPolicy `yaml:"policies"`
	States   []xfrmState  `yaml:"states"`
}

// xfrmLines are the rendered lines where each policy and state starts, for
// error messages.
type xfrmLines struct {
	policies, states []int
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// decodeXFRM decodes the rendered XFRM document strictly: unknown fields,
// a key in the YAML, or a second document are errors. The errors name the
// rendered line and quote it.
func decodeXFRM(rendered []byte) (*xfrmDoc, xfrmLines, error) {
	var doc xfrmDoc
	dec := yaml.NewDecoder(bytes.NewReader(rendered))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, xfrmLines{}, quoteYAMLError(rendered, err)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		return nil, xfrmLines{}, errors.New("the rendered YAML has more than one document (a \"---\" line); render one")
	}
	var root yaml.Node
	if err := yaml.Unmarshal(rendered, &root); err != nil {
		return nil, xfrmLines{}, quoteYAMLError(rendered, err)
	}
	var lines xfrmLines
	if len(root.Content) == 1 && root.Content[0].Kind == yaml.MappingNode {
		m := root.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			var dst *[]int
			switch m.Content[i].Value {
			case "policies":
				dst = &lines.policies
			case "states":
				dst = &lines.states
			default:
				continue
			}
			for _, item := range m.Content[i+1].Content {
				*dst = append(*dst, item.Line)
			}
		}
	}
	return &doc, lines, nil
}

// quoteYAMLError adds the rendered line(s) a YAML error refers to.
func quoteYAMLError(rendered []byte, err error) error {
	msg := err.Error()
	var quoted []string
	for _, m := range yamlLineRE.FindAllStringSubmatch(msg, 3) {
		n, _ := strconv.Atoi(m[1])
		quoted = append(quoted, fmt.Sprintf("rendered line %d is %q", n, renderedLine(rendered, n)))
	}
	if len(quoted) == 0 {
		return err
	}
	return fmt.Errorf("%w (%s)", err, strings.Join(quoted, "; "))
}

// renderedLine returns line n (1-based) of text, or "" past the end.
func renderedLine(text []byte, n int) string {
	for i, l := range strings.Split(string(text), "\n") {
		if i+1 == n {
			return strings.TrimRight(l, "\r")
		}
	}
	return ""
}

// value is the policy as bundles carry it. The policy was validated, so
// every name has its kernel number.
func (p *xfrmPolicy) value() ipsec.Policy {
	v := ipsec.Policy{Src: p.Src, Dst: p.Dst, Proto: p.Proto, Context: p.Context, Priority: p.Priority}
	v.Dir = map[string]ipsec.Dir{dirIn: ipsec.DirIn, dirOut: ipsec.DirOut, dirFwd: ipsec.DirFwd}[p.Dir]
	v.Action = map[string]ipsec.Action{actionAllow: ipsec.ActionAllow, actionBlock: ipsec.ActionBlock}[p.Action]
	for _, t := range p.Templates {
		v.Templates = append(v.Templates, ipsec.Template{Src: t.Src, Dst: t.Dst, Proto: ipsec.ProtoESP, Mode: modeValue(t.Mode), Reqid: t.Reqid})
	}
	return v
}

// value is the SA as bundles carry it, with the store's replay window.
func (s *xfrmState) value() ipsec.State {
	return ipsec.State{
		Src: s.Src, Dst: s.Dst, SPI: s.SPI, Proto: ipsec.ProtoESP, Mode: modeValue(s.Mode), Reqid: s.Reqid,
		Context: s.Context, Label: s.Label, ReplayWindow: ipsec.DefaultReplayWindow, ESN: s.ESN,
		AEAD: &ipsec.Algo{Name: s.AEAD.Name, Key: s.AEAD.Key, ICVBits: s.AEAD.ICVBits},
	}
}

func modeValue(m string) ipsec.Mode {
	if m == modeTransport {
		return ipsec.ModeTransport
	}
	return ipsec.ModeTunnel
}

// CheckState applies the store's rules for an SA (those GenerateBundle
// applies to the rendered template) to a bundle's SA, for a receiver that
// must not trust that the bundle came from this store's code: ESP only,
// AES-GCM with a key of the right size, an MLS context at the label's
// level, the store's replay window, and none of what the store never
// writes (separate auth and enc algorithms, a selector, lifetimes).
func CheckState(s *ipsec.State) error {
	d := xfrmState{Src: s.Src, Dst: s.Dst, SPI: s.SPI, Proto: s.Proto.String(), Mode: s.Mode.String(), Reqid: s.Reqid, Context: s.Context, Label: s.Label, ESN: s.ESN}
	if s.AEAD != nil {
		d.AEAD = xfrmAEAD{Name: s.AEAD.Name, Key: s.AEAD.Key, ICVBits: s.AEAD.ICVBits}
	}
	if err := d.Validate(); err != nil {
		return err
	}
	switch {
	case s.AEAD.TruncBits != 0 || s.Auth != nil || s.Crypt != nil:
		return fmt.Errorf("SA spi %d carries algorithms besides its AEAD; the store writes one %s", s.SPI, AEADGCM)
	case s.Selector != nil || s.Lifetime != (ipsec.Lifetime{}):
		return fmt.Errorf("SA spi %d has a selector or lifetimes, which the store never writes", s.SPI)
	case s.ReplayWindow != ipsec.DefaultReplayWindow:
		return fmt.Errorf("SA spi %d has replay window %d, not the store's %d; regenerate the bundle", s.SPI, s.ReplayWindow, ipsec.DefaultReplayWindow)
	}
	return nil
}

// CheckPolicy applies the store's rules for a policy to a bundle's policy,
// as CheckState does for SAs.
func CheckPolicy(p *ipsec.Policy) error {
	d := xfrmPolicy{Dir: p.Dir.String(), Src: p.Src, Dst: p.Dst, Proto: p.Proto, Context: p.Context, Action: p.Action.String(), Priority: p.Priority}
	for _, t := range p.Templates {
		if t.SPI != 0 || t.Optional {
			return fmt.Errorf("policy %s: a template names an SPI or is optional, which the store never writes", p)
		}
		d.Templates = append(d.Templates, xfrmTemplate{Src: t.Src, Dst: t.Dst, Proto: t.Proto.String(), Mode: t.Mode.String(), Reqid: t.Reqid})
	}
	if p.SrcPort != 0 || p.DstPort != 0 || p.Index != 0 {
		return fmt.Errorf("policy %s: ports or a kernel index, which the store never writes", p)
	}
	return d.Validate()
}
