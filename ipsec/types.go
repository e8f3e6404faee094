package ipsec

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/mlsgate/mlsgate/label"
)

// Proto is the IP protocol of an IPsec transform. In JSON and YAML it is
// written by name ("esp"), as ip-xfrm(8) writes it.
type Proto uint8

// IP protocol numbers of the IPsec transforms (IPPROTO_ESP, _AH, _COMP).
const (
	ProtoESP  Proto = 50
	ProtoAH   Proto = 51
	ProtoComp Proto = 108
)

func (p Proto) String() string {
	switch p {
	case ProtoESP:
		return "esp"
	case ProtoAH:
		return "ah"
	case ProtoComp:
		return "comp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Mode is an SA's or template's encapsulation mode (XFRM_MODE_*).
type Mode uint8

// Modes the package names. Other kernel modes pass through as numbers.
const (
	ModeTransport Mode = 0
	ModeTunnel    Mode = 1
)

func (m Mode) String() string {
	switch m {
	case ModeTransport:
		return "transport"
	case ModeTunnel:
		return "tunnel"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Dir is a policy's direction (XFRM_POLICY_IN, _OUT, _FWD).
type Dir uint8

// Policy directions, numbered as the kernel numbers them.
const (
	DirIn  Dir = 0
	DirOut Dir = 1
	DirFwd Dir = 2
)

func (d Dir) String() string {
	switch d {
	case DirIn:
		return "in"
	case DirOut:
		return "out"
	case DirFwd:
		return "fwd"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// Action is what a policy does with the packets it selects.
type Action uint8

// Policy actions (XFRM_POLICY_ALLOW, XFRM_POLICY_BLOCK).
const (
	ActionAllow Action = 0
	ActionBlock Action = 1
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionBlock:
		return "block"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Kernel limits and numbers the values are checked against. They are
// spelled out, not taken from golang.org/x/sys, so that the policy store can
// use this package without a kernel dependency.
const (
	// MaxTemplates is XFRM_MAX_DEPTH, the most templates a policy may
	// carry.
	MaxTemplates = 6
	// MaxContextLen bounds a context so that it fits, with its NUL and
	// the 8-byte header, in a netlink attribute and in the kernel's
	// page-sized limit.
	MaxContextLen = 4096 - 8 - 1
	// AlgoNameLen is CRYPTO_MAX_ALG_NAME, the size of an algorithm's
	// name field, NUL included.
	AlgoNameLen = 64
	// MaxKeyLen keeps an algorithm attribute, and its key length in
	// bits, well inside what a netlink attribute and the kernel accept.
	MaxKeyLen = 1024

	afInet  = 2  // AF_INET
	afInet6 = 10 // AF_INET6
)

// DefaultReplayWindow is the anti-replay window the policy store gives an
// SA, in packets (strongSwan's default).
const DefaultReplayWindow = 32

// Algo is one of an SA's algorithms, named as the kernel's crypto API names
// it ("rfc4106(gcm(aes))", "hmac(sha256)", "cbc(aes)").
type Algo struct {
	Name string `json:"name"`
	// Key is the key as the kernel takes it; for rfc4106 the AES key
	// followed by the 4-byte salt.
	Key []byte `json:"key"`
	// ICVBits is the integrity check value's length, for an AEAD only.
	ICVBits int `json:"icv_bits"`
	// TruncBits is the truncated ICV length, for authentication only; 0
	// means the algorithm's default.
	TruncBits int `json:"trunc_bits,omitempty"`
}

// String names the algorithm and its sizes, never the key.
func (a Algo) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d-bit key", a.Name, 8*len(a.Key))
	if a.ICVBits != 0 {
		fmt.Fprintf(&b, ", icv %d", a.ICVBits)
	}
	if a.TruncBits != 0 {
		fmt.Fprintf(&b, ", trunc %d", a.TruncBits)
	}
	b.WriteString(")")
	return b.String()
}

// GoString keeps %#v from printing the key.
func (a Algo) GoString() string { return "ipsec.Algo{" + a.String() + "}" }

// Selector chooses the packets an SA or policy applies to. The zero Src and
// Dst of an SA's selector mean "any address of the SA's family".
type Selector struct {
	Src     netip.Prefix `json:"src"`
	Dst     netip.Prefix `json:"dst"`
	Proto   uint8        `json:"proto,omitempty"`
	SrcPort uint16       `json:"src_port,omitempty"`
	DstPort uint16       `json:"dst_port,omitempty"`
	// Ifindex limits the selector to one interface; 0 means any.
	Ifindex int32 `json:"ifindex,omitempty"`
}

// Lifetime bounds an SA. Zero fields mean no limit. When a soft limit is
// reached the kernel reports a soft [ExpireSA]; at a hard limit it reports a
// hard one and removes the SA.
type Lifetime struct {
	SoftBytes   uint64 `json:"soft_bytes,omitempty"`
	HardBytes   uint64 `json:"hard_bytes,omitempty"`
	SoftPackets uint64 `json:"soft_packets,omitempty"`
	HardPackets uint64 `json:"hard_packets,omitempty"`
	// SoftAddSeconds and HardAddSeconds count from the SA's creation,
	// SoftUseSeconds and HardUseSeconds from its first use.
	SoftAddSeconds uint64 `json:"soft_add_seconds,omitempty"`
	HardAddSeconds uint64 `json:"hard_add_seconds,omitempty"`
	SoftUseSeconds uint64 `json:"soft_use_seconds,omitempty"`
	HardUseSeconds uint64 `json:"hard_use_seconds,omitempty"`
}

// State is one security association as this package installs and reads it.
type State struct {
	Src netip.Addr `json:"src"`
	Dst netip.Addr `json:"dst"`
	SPI uint32     `json:"spi"`
	// Proto is the transform's IP protocol, normally [ProtoESP].
	Proto Proto `json:"proto"`
	Mode  Mode  `json:"mode"`
	// Reqid ties the SA to the policy templates of the same reqid.
	Reqid uint32 `json:"reqid"`
	// Context is the SA's SELinux context, without a trailing NUL; ""
	// means an unlabeled SA. The policy store writes
	// "system_u:system_r:<app type>:<level>": a socket sends on the SA only
	// when its own context is exactly this one.
	Context string `json:"context"`
	// Label is the SA's label for the fast path: the context's level plus
	// the integrity SELinux does not carry. The policy store sets it; the
	// kernel neither takes nor reports it, so SAs read back have none.
	Label label.Label `json:"label"`
	// AEAD is the authenticated cipher; it excludes Auth and Crypt.
	AEAD *Algo `json:"aead,omitempty"`
	// Auth and Crypt are a separate integrity algorithm (sent as
	// XFRMA_ALG_AUTH_TRUNC) and cipher.
	Auth  *Algo `json:"auth,omitempty"`
	Crypt *Algo `json:"enc,omitempty"`
	// ReplayWindow is the anti-replay window in packets; 0 turns
	// replay protection off. The policy store gives its SAs
	// [DefaultReplayWindow].
	ReplayWindow uint32 `json:"replay_window,omitempty"`
	// Selector limits the traffic the SA carries; nil means all traffic
	// of the SA's family. A selector that matches everything reads back
	// as nil.
	Selector *Selector `json:"selector,omitempty"`
	Lifetime Lifetime  `json:"lifetime,omitzero"`
	// ESN turns on 64-bit extended sequence numbers (RFC 4303 2.2.1,
	// XFRM_STATE_ESN): the sequence number cannot wrap within the SA's
	// life. Both ends of an SA must agree. It needs a replay window.
	ESN bool `json:"esn,omitempty"`
	// OSeq and Seq are read back from the kernel, never installed: the
	// last sequence number sent on the SA (outbound) and the highest
	// received (inbound), all 64 bits with ESN. Without ESN they must
	// stay below 2^32: SeqHeadroom says how far.
	OSeq uint64 `json:"-"`
	Seq  uint64 `json:"-"`
}

// SeqHeadroom is how many more packets the SA can carry before its
// sequence number, sent or received, is exhausted: 2^32-1 minus the
// larger of OSeq and Seq without ESN (the kernel then drops every
// packet: RFC 4303 requires a new SA first), 2^64-1 minus it with ESN.
func (s *State) SeqHeadroom() uint64 {
	used := max(s.OSeq, s.Seq)
	if s.ESN {
		return math.MaxUint64 - used
	}
	if used >= math.MaxUint32 {
		return 0
	}
	return math.MaxUint32 - used
}

// Family is the SA's address family, AF_INET or AF_INET6, taken from its
// destination; 0 when the destination is unset.
func (s *State) Family() uint16 { return AddrFamily(s.Dst) }

// String describes the SA for logs and errors, without its keys.
func (s State) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s spi 0x%x %s->%s %s reqid %d", s.Proto, s.SPI, s.Src, s.Dst, s.Mode, s.Reqid)
	if s.Context != "" {
		fmt.Fprintf(&b, " ctx %s", s.Context)
	}
	if s.AEAD != nil {
		fmt.Fprintf(&b, " aead %s", s.AEAD)
	}
	if s.Auth != nil {
		fmt.Fprintf(&b, " auth %s", s.Auth)
	}
	if s.Crypt != nil {
		fmt.Fprintf(&b, " enc %s", s.Crypt)
	}
	if s.ReplayWindow != 0 {
		fmt.Fprintf(&b, " replay-window %d", s.ReplayWindow)
	}
	if s.ESN {
		b.WriteString(" esn")
	}
	if s.Selector != nil {
		fmt.Fprintf(&b, " sel %s", s.Selector)
	}
	return b.String()
}

// GoString keeps %#v from printing keys.
func (s State) GoString() string { return "ipsec.State{" + s.String() + "}" }

func (sel Selector) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s->%s", sel.Src, sel.Dst)
	if sel.Proto != 0 {
		fmt.Fprintf(&b, " proto %d", sel.Proto)
	}
	if sel.SrcPort != 0 || sel.DstPort != 0 {
		fmt.Fprintf(&b, " ports %d->%d", sel.SrcPort, sel.DstPort)
	}
	if sel.Ifindex != 0 {
		fmt.Fprintf(&b, " ifindex %d", sel.Ifindex)
	}
	return b.String()
}

// Template is one transformation a policy requires: the SA a packet must
// use, found by protocol, mode, reqid and, in tunnel mode, endpoints.
type Template struct {
	// Src and Dst are the tunnel endpoints; leave them unset in transport
	// mode, where the packet's own addresses are used.
	Src   netip.Addr `json:"src"`
	Dst   netip.Addr `json:"dst"`
	Proto Proto      `json:"proto"`
	Mode  Mode       `json:"mode"`
	// Reqid selects SAs of the same reqid; 0 means any SA.
	Reqid uint32 `json:"reqid"`
	// SPI selects one SA; 0 means any.
	SPI uint32 `json:"spi,omitempty"`
	// Optional lets a packet through without this transformation (the
	// kernel's "level use").
	Optional bool `json:"optional,omitempty"`
}

func (t Template) String() string {
	s := fmt.Sprintf("%s %s reqid %d", t.Proto, t.Mode, t.Reqid)
	if t.Src.IsValid() || t.Dst.IsValid() {
		s += fmt.Sprintf(" %s->%s", t.Src, t.Dst)
	}
	if t.SPI != 0 {
		s += fmt.Sprintf(" spi 0x%x", t.SPI)
	}
	if t.Optional {
		s += " optional"
	}
	return s
}

// Policy is one security policy database entry.
type Policy struct {
	Dir Dir `json:"dir"`
	// Src and Dst select packets by address; both of one family.
	Src netip.Prefix `json:"src"`
	Dst netip.Prefix `json:"dst"`
	// Proto selects an IP protocol; 0 means any. SrcPort and DstPort,
	// when not 0, select one port each.
	Proto   uint8  `json:"proto,omitempty"`
	SrcPort uint16 `json:"src_port,omitempty"`
	DstPort uint16 `json:"dst_port,omitempty"`
	// Context is the policy's SELinux context: a flow uses the policy
	// only when its context has association polmatch on this one. ""
	// means an unlabeled policy every flow matches.
	Context string `json:"context,omitempty"`
	Action  Action `json:"action"`
	// Priority orders overlapping policies; the lower number wins.
	Priority uint32 `json:"priority"`
	// Index is the kernel's id of the policy, read back from dumps; 0
	// when adding lets the kernel choose.
	Index uint32 `json:"index,omitempty"`
	// Templates are the transformations an allowed packet must go
	// through; none means "allow in clear".
	Templates []Template `json:"templates,omitempty"`
}

func (p Policy) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s->%s", p.Src, p.Dst)
	if p.Proto != 0 {
		fmt.Fprintf(&b, " proto %d", p.Proto)
	}
	if p.SrcPort != 0 || p.DstPort != 0 {
		fmt.Fprintf(&b, " ports %d->%d", p.SrcPort, p.DstPort)
	}
	fmt.Fprintf(&b, " dir %s %s priority %d", p.Dir, p.Action, p.Priority)
	if p.Context != "" {
		fmt.Fprintf(&b, " ctx %s", p.Context)
	}
	for _, t := range p.Templates {
		fmt.Fprintf(&b, " tmpl [%s]", t)
	}
	return b.String()
}

// Family is the policy's address family, from its selector.
func (p *Policy) Family() uint16 { return AddrFamily(p.Src.Addr()) }

// AddrFamily is a's address family, AF_INET or AF_INET6; 0 when a is
// unset.
func AddrFamily(a netip.Addr) uint16 {
	switch {
	case a.Is4():
		return afInet
	case a.Is6():
		return afInet6
	}
	return 0
}

// Validate checks what the package itself can check before the kernel sees
// the SA: addresses, mode, algorithms and context. The kernel checks the
// rest (that the algorithms exist, key lengths, the context's validity).
func (s *State) Validate() error {
	if !s.Src.IsValid() || !s.Dst.IsValid() {
		return fmt.Errorf("SA spi 0x%x: source %v and destination %v must both be set", s.SPI, s.Src, s.Dst)
	}
	if AddrFamily(s.Src) != AddrFamily(s.Dst) {
		return fmt.Errorf("SA spi 0x%x: source %s and destination %s are of different families", s.SPI, s.Src, s.Dst)
	}
	if s.Proto == 0 {
		return fmt.Errorf("SA spi 0x%x to %s: no protocol; ESP is %d", s.SPI, s.Dst, ProtoESP)
	}
	if s.Mode != ModeTransport && s.Mode != ModeTunnel {
		return fmt.Errorf("SA spi 0x%x to %s: %s: want transport or tunnel", s.SPI, s.Dst, s.Mode)
	}
	if err := CheckContext(s.Context); err != nil {
		return fmt.Errorf("SA spi 0x%x to %s: %w", s.SPI, s.Dst, err)
	}
	if s.AEAD != nil && (s.Auth != nil || s.Crypt != nil) {
		return fmt.Errorf("SA spi 0x%x to %s: an AEAD excludes separate auth and enc algorithms", s.SPI, s.Dst)
	}
	for _, a := range []struct {
		kind string
		algo *Algo
	}{{"aead", s.AEAD}, {"auth", s.Auth}, {"enc", s.Crypt}} {
		if a.algo == nil {
			continue
		}
		if err := a.algo.check(a.kind); err != nil {
			return fmt.Errorf("SA spi 0x%x to %s: %w", s.SPI, s.Dst, err)
		}
	}
	if s.Selector != nil {
		if err := s.Selector.check(); err != nil {
			return fmt.Errorf("SA spi 0x%x to %s: selector: %w", s.SPI, s.Dst, err)
		}
	}
	if s.ESN && (s.ReplayWindow == 0 || (s.Proto != ProtoESP && s.Proto != ProtoAH)) {
		return fmt.Errorf("SA spi 0x%x to %s: ESN needs ESP or AH and a replay window (the kernel keeps the high sequence bits there); set ReplayWindow", s.SPI, s.Dst)
	}
	return nil
}

func (a *Algo) check(kind string) error {
	if a.Name == "" || len(a.Name) >= AlgoNameLen || strings.IndexByte(a.Name, 0) >= 0 {
		return fmt.Errorf("%s algorithm name %q: want 1 to %d bytes without NUL", kind, a.Name, AlgoNameLen-1)
	}
	if len(a.Key) > MaxKeyLen {
		return fmt.Errorf("%s %s: key of %d bytes is longer than %d", kind, a.Name, len(a.Key), MaxKeyLen)
	}
	if a.ICVBits < 0 || a.TruncBits < 0 {
		return fmt.Errorf("%s %s: negative icv or truncation length", kind, a.Name)
	}
	if kind != "aead" && a.ICVBits != 0 {
		return fmt.Errorf("%s %s: an ICV length belongs to an AEAD", kind, a.Name)
	}
	if kind != "auth" && a.TruncBits != 0 {
		return fmt.Errorf("%s %s: a truncation length belongs to an auth algorithm", kind, a.Name)
	}
	return nil
}

func (sel *Selector) check() error {
	if !sel.Src.IsValid() && !sel.Dst.IsValid() {
		return nil
	}
	if !sel.Src.IsValid() || !sel.Dst.IsValid() {
		return fmt.Errorf("%s: set both prefixes or neither", sel)
	}
	if AddrFamily(sel.Src.Addr()) != AddrFamily(sel.Dst.Addr()) {
		return fmt.Errorf("%s: prefixes of different families", sel)
	}
	return nil
}

// CheckContext checks that ctx fits the kernel's attribute and has no NUL.
func CheckContext(ctx string) error {
	if len(ctx) > MaxContextLen {
		return fmt.Errorf("security context of %d bytes is longer than %d", len(ctx), MaxContextLen)
	}
	if strings.IndexByte(ctx, 0) >= 0 {
		return fmt.Errorf("security context %q contains a NUL byte", ctx)
	}
	return nil
}

// Validate checks what the package itself can check before the kernel sees
// the policy: the selector, direction, action, context and templates.
func (p *Policy) Validate() error {
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return fmt.Errorf("policy %s: source and destination prefixes must both be set (0.0.0.0/0 for any)", p)
	}
	fam := AddrFamily(p.Src.Addr())
	if AddrFamily(p.Dst.Addr()) != fam {
		return fmt.Errorf("policy %s: source and destination of different families", p)
	}
	if p.Dir > DirFwd {
		return fmt.Errorf("policy %s: want direction in, out or fwd", p)
	}
	if p.Action > ActionBlock {
		return fmt.Errorf("policy %s: want action allow or block", p)
	}
	if err := CheckContext(p.Context); err != nil {
		return fmt.Errorf("policy %s: %w", p, err)
	}
	if len(p.Templates) > MaxTemplates {
		return fmt.Errorf("policy %s: %d templates, the kernel takes at most %d", p, len(p.Templates), MaxTemplates)
	}
	for i, t := range p.Templates {
		if t.Proto == 0 {
			return fmt.Errorf("policy %s: template %d has no protocol", p, i)
		}
		if t.Src.IsValid() != t.Dst.IsValid() {
			return fmt.Errorf("policy %s: template %d: set both endpoints or neither", p, i)
		}
		if t.Src.IsValid() && AddrFamily(t.Src) != AddrFamily(t.Dst) {
			return fmt.Errorf("policy %s: template %d: endpoints of different families", p, i)
		}
		if t.Mode == ModeTunnel && !t.Src.IsValid() {
			return fmt.Errorf("policy %s: template %d: a tunnel template needs its endpoints", p, i)
		}
	}
	return nil
}

// Text forms, used by JSON: names as ip-xfrm(8) writes them, a number for
// a value without a name (so a kernel value read back still round-trips).

func (p Proto) MarshalText() ([]byte, error) {
	return nameOrNumber(p.String(), "proto(", uint8(p)), nil
}
func (m Mode) MarshalText() ([]byte, error) { return nameOrNumber(m.String(), "mode(", uint8(m)), nil }
func (d Dir) MarshalText() ([]byte, error)  { return nameOrNumber(d.String(), "dir(", uint8(d)), nil }
func (a Action) MarshalText() ([]byte, error) {
	return nameOrNumber(a.String(), "action(", uint8(a)), nil
}

func (p *Proto) UnmarshalText(b []byte) error {
	return parseNamed(b, "proto", (*uint8)(p), map[string]uint8{"esp": uint8(ProtoESP), "ah": uint8(ProtoAH), "comp": uint8(ProtoComp)})
}

func (m *Mode) UnmarshalText(b []byte) error {
	return parseNamed(b, "mode", (*uint8)(m), map[string]uint8{"transport": uint8(ModeTransport), "tunnel": uint8(ModeTunnel)})
}

func (d *Dir) UnmarshalText(b []byte) error {
	return parseNamed(b, "dir", (*uint8)(d), map[string]uint8{"in": uint8(DirIn), "out": uint8(DirOut), "fwd": uint8(DirFwd)})
}

func (a *Action) UnmarshalText(b []byte) error {
	return parseNamed(b, "action", (*uint8)(a), map[string]uint8{"allow": uint8(ActionAllow), "block": uint8(ActionBlock)})
}

func nameOrNumber(name, unnamed string, v uint8) []byte {
	if strings.HasPrefix(name, unnamed) {
		return strconv.AppendUint(nil, uint64(v), 10)
	}
	return []byte(name)
}

func parseNamed(b []byte, what string, dst *uint8, names map[string]uint8) error {
	if v, ok := names[string(b)]; ok {
		*dst = v
		return nil
	}
	if n, err := strconv.ParseUint(string(b), 10, 8); err == nil {
		*dst = uint8(n)
		return nil
	}
	known := make([]string, 0, len(names))
	for n := range names {
		known = append(known, strconv.Quote(n))
	}
	slices.Sort(known)
	return fmt.Errorf("%s %q: want %s or a number", what, b, strings.Join(known, ", "))
}
