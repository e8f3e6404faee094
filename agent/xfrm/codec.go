package xfrm

import (
	"github.com/mlsgate/mlsgate/ipsec"

	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

// Message types (enum in include/uapi/linux/xfrm.h, XFRM_MSG_BASE = 0x10).
const (
	msgNewSA       = 0x10
	msgDelSA       = 0x11
	msgGetSA       = 0x12
	msgNewPolicy   = 0x13
	msgDelPolicy   = 0x14
	msgGetPolicy   = 0x15
	msgExpire      = 0x18
	msgUpdPolicy   = 0x19
	msgUpdSA       = 0x1a
	msgPolExpire   = 0x1b
	msgFlushSA     = 0x1c
	msgFlushPolicy = 0x1d
)

// Attribute types (enum xfrm_attr_type_t).
const (
	attrAlgAuth      = 1
	attrAlgCrypt     = 2
	attrTmpl         = 5
	attrSA           = 6
	attrPolicy       = 7
	attrSecCtx       = 8
	attrReplayVal    = 10
	attrPolicyType   = 16
	attrAlgAEAD      = 18
	attrAlgAuthTrunc = 20
	attrReplayESNVal = 23
)

// Multicast groups (enum xfrm_nlgroups).
const (
	groupExpire = 2
	groupSA     = 3
	groupPolicy = 4
)

// Struct sizes and the offsets used below; see the package documentation.
const (
	sizeofAddress        = 16
	sizeofSelector       = 56
	sizeofLifetimeCfg    = 64
	sizeofUsersaInfo     = 224
	sizeofUsersaID       = 24
	sizeofUserpolicyInfo = 168
	sizeofUserpolicyID   = 64
	sizeofUserTmpl       = 64
	sizeofUserExpire     = 232
	sizeofUserPolexpire  = 176
	sizeofUsersaFlush    = 1
	sizeofUserSecCtx     = 8
	sizeofAlgo           = 68
	sizeofAlgoAEAD       = 72
	sizeofAlgoAuth       = 72
	sizeofReplayESN      = 24
	sizeofUserpolicyType = 6

	algoNameLen = ipsec.AlgoNameLen
	nlaHdrLen   = 4
	nlmsgHdrLen = 16
)

// maxKeyLen keeps an algorithm attribute, and its key length in bits, well
// inside what a netlink attribute and the kernel accept.
const maxKeyLen = ipsec.MaxKeyLen

// Values the kernel gives fixed meanings.
const (
	secCtxDOILSM     = 1 // XFRM_SC_DOI_LSM
	secCtxAlgSELinux = 1 // XFRM_SC_ALG_SELINUX
	policyTypeMain   = 0 // XFRM_POLICY_TYPE_MAIN
	xfrmInf          = math.MaxUint64
	allAlgos         = math.MaxUint32 // a template accepting every algorithm
)

var ne = binary.NativeEndian

// ParseError is a malformed XFRM netlink message.
type ParseError struct {
	// Type is the netlink message type; 0 when the netlink header itself
	// is malformed.
	Type uint16
	// Offset is the byte offset of the problem from the start of the
	// netlink message (or of the buffer, for a bad header).
	Offset int
	Reason string
}

func (e *ParseError) Error() string {
	if e.Type == 0 {
		return fmt.Sprintf("xfrm netlink: at offset %d: %s", e.Offset, e.Reason)
	}
	return fmt.Sprintf("xfrm netlink: %s at offset %d: %s", msgName(e.Type), e.Offset, e.Reason)
}

func msgName(t uint16) string {
	switch t {
	case msgNewSA:
		return "XFRM_MSG_NEWSA"
	case msgDelSA:
		return "XFRM_MSG_DELSA"
	case msgGetSA:
		return "XFRM_MSG_GETSA"
	case msgNewPolicy:
		return "XFRM_MSG_NEWPOLICY"
	case msgDelPolicy:
		return "XFRM_MSG_DELPOLICY"
	case msgGetPolicy:
		return "XFRM_MSG_GETPOLICY"
	case msgExpire:
		return "XFRM_MSG_EXPIRE"
	case msgUpdPolicy:
		return "XFRM_MSG_UPDPOLICY"
	case msgUpdSA:
		return "XFRM_MSG_UPDSA"
	case msgPolExpire:
		return "XFRM_MSG_POLEXPIRE"
	case msgFlushSA:
		return "XFRM_MSG_FLUSHSA"
	case msgFlushPolicy:
		return "XFRM_MSG_FLUSHPOLICY"
	case unix.NLMSG_ERROR:
		return "NLMSG_ERROR"
	case unix.NLMSG_DONE:
		return "NLMSG_DONE"
	}
	return fmt.Sprintf("message type %d", t)
}

// decoder reads one message's payload and reports errors against the
// message's type and the payload's offset in it.
type decoder struct {
	typ  uint16
	base int // offset of the payload in the netlink message
}

func (d decoder) errorf(off int, format string, args ...any) error {
	return &ParseError{Type: d.typ, Offset: d.base + off, Reason: fmt.Sprintf(format, args...)}
}

// at is the decoder for a region starting off bytes into this one.
func (d decoder) at(off int) decoder { return decoder{typ: d.typ, base: d.base + off} }

func align4(n int) int { return (n + 3) &^ 3 }

// attr is one netlink attribute: its type (flags cleared), its payload and
// the payload's offset in the enclosing region.
type attr struct {
	typ  uint16
	data []byte
	off  int
}

// parseAttrs splits b into attributes. Trailing padding shorter than an
// attribute header is allowed; anything else that does not fit is an error.
func (d decoder) parseAttrs(b []byte) ([]attr, error) {
	var attrs []attr
	off := 0
	for len(b)-off >= nlaHdrLen {
		l := int(ne.Uint16(b[off:]))
		t := ne.Uint16(b[off+2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < nlaHdrLen {
			return nil, d.errorf(off, "attribute type %d has length %d, less than its header", t, l)
		}
		if l > len(b)-off {
			return nil, d.errorf(off, "attribute type %d has length %d, but %d bytes remain", t, l, len(b)-off)
		}
		attrs = append(attrs, attr{typ: t, data: b[off+nlaHdrLen : off+l], off: off + nlaHdrLen})
		off += align4(l)
	}
	if off < len(b) {
		for _, c := range b[off:] {
			if c != 0 {
				return nil, d.errorf(off, "%d stray bytes after the last attribute", len(b)-off)
			}
		}
	}
	return attrs, nil
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := nlaHdrLen + len(data)
	b = ne.AppendUint16(b, uint16(l))
	b = ne.AppendUint16(b, typ)
	b = append(b, data...)
	return append(b, make([]byte, align4(l)-l)...)
}

// Addresses (xfrm_address_t) are 16 bytes in network order; an IPv4 address
// fills the first 4.

func putAddr(b []byte, a netip.Addr) {
	switch {
	case a.Is4():
		v := a.As4()
		copy(b, v[:])
	case a.Is6():
		v := a.As16()
		copy(b, v[:])
	}
}

// getAddr reads an address of the given family; an all-zero address or an
// unknown family reads as the zero Addr ("unset").
func getAddr(b []byte, family uint16) netip.Addr {
	var a netip.Addr
	switch family {
	case unix.AF_INET:
		a = netip.AddrFrom4([4]byte(b[:4]))
	case unix.AF_INET6:
		a = netip.AddrFrom16([16]byte(b[:16]))
	default:
		return netip.Addr{}
	}
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// getPrefixAddr is getAddr for selectors, where the unspecified address is a
// real value (the start of 0.0.0.0/0).
func getPrefixAddr(b []byte, family uint16) netip.Addr {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([4]byte(b[:4]))
	case unix.AF_INET6:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}

// selector is struct xfrm_selector with the prefixes and family together.
type selector struct {
	src, dst         netip.Prefix
	proto            uint8
	srcPort, dstPort uint16
	ifindex          int32
	family           uint16
}

func putSelector(b []byte, s selector) {
	putAddr(b[0:], s.dst.Addr())
	putAddr(b[16:], s.src.Addr())
	binary.BigEndian.PutUint16(b[32:], s.dstPort)
	if s.dstPort != 0 {
		binary.BigEndian.PutUint16(b[34:], 0xffff)
	}
	binary.BigEndian.PutUint16(b[36:], s.srcPort)
	if s.srcPort != 0 {
		binary.BigEndian.PutUint16(b[38:], 0xffff)
	}
	ne.PutUint16(b[40:], s.family)
	if s.dst.IsValid() {
		b[42] = uint8(s.dst.Bits())
	}
	if s.src.IsValid() {
		b[43] = uint8(s.src.Bits())
	}
	b[44] = s.proto
	ne.PutUint32(b[48:], uint32(s.ifindex))
}

func (d decoder) getSelector(b []byte) (selector, error) {
	s := selector{
		family:  ne.Uint16(b[40:]),
		proto:   b[44],
		dstPort: binary.BigEndian.Uint16(b[32:]),
		srcPort: binary.BigEndian.Uint16(b[36:]),
		ifindex: int32(ne.Uint32(b[48:])),
	}
	maxBits := 0
	switch s.family {
	case unix.AF_INET:
		maxBits = 32
	case unix.AF_INET6:
		maxBits = 128
	case 0:
		if b[42] != 0 || b[43] != 0 {
			return s, d.errorf(42, "selector without a family has prefix lengths %d and %d", b[42], b[43])
		}
		return s, nil
	default:
		return s, d.errorf(40, "selector family %d is neither AF_INET nor AF_INET6", s.family)
	}
	if int(b[42]) > maxBits || int(b[43]) > maxBits {
		return s, d.errorf(42, "selector prefix lengths %d and %d exceed %d bits", b[42], b[43], maxBits)
	}
	s.dst = netip.PrefixFrom(getPrefixAddr(b[0:], s.family), int(b[42]))
	s.src = netip.PrefixFrom(getPrefixAddr(b[16:], s.family), int(b[43]))
	return s, nil
}

// matchesAll reports a selector of family fam that selects every packet of
// that family: what the kernel stores when an SA is added without one.
func (s selector) matchesAll(fam uint16) bool {
	if s.proto != 0 || s.srcPort != 0 || s.dstPort != 0 || s.ifindex != 0 {
		return false
	}
	if s.family == 0 {
		return true
	}
	return s.family == fam && s.src.Bits() == 0 && s.dst.Bits() == 0 &&
		s.src.Addr().IsUnspecified() && s.dst.Addr().IsUnspecified()
}

// putLifetime writes struct xfrm_lifetime_cfg, unlimited where l is 0.
func putLifetime(b []byte, l Lifetime) {
	inf := func(v uint64) uint64 {
		if v == 0 {
			return xfrmInf
		}
		return v
	}
	ne.PutUint64(b[0:], inf(l.SoftBytes))
	ne.PutUint64(b[8:], inf(l.HardBytes))
	ne.PutUint64(b[16:], inf(l.SoftPackets))
	ne.PutUint64(b[24:], inf(l.HardPackets))
	ne.PutUint64(b[32:], l.SoftAddSeconds)
	ne.PutUint64(b[40:], l.HardAddSeconds)
	ne.PutUint64(b[48:], l.SoftUseSeconds)
	ne.PutUint64(b[56:], l.HardUseSeconds)
}

func getLifetime(b []byte) Lifetime {
	fin := func(v uint64) uint64 {
		if v == xfrmInf {
			return 0
		}
		return v
	}
	return Lifetime{
		SoftBytes:      fin(ne.Uint64(b[0:])),
		HardBytes:      fin(ne.Uint64(b[8:])),
		SoftPackets:    fin(ne.Uint64(b[16:])),
		HardPackets:    fin(ne.Uint64(b[24:])),
		SoftAddSeconds: ne.Uint64(b[32:]),
		HardAddSeconds: ne.Uint64(b[40:]),
		SoftUseSeconds: ne.Uint64(b[48:]),
		HardUseSeconds: ne.Uint64(b[56:]),
	}
}

// encodeUsersaInfo writes struct xfrm_usersa_info for s.
func encodeUsersaInfo(s *State) []byte {
	b := make([]byte, sizeofUsersaInfo)
	fam := s.Family()
	if s.Selector != nil {
		sel := selector{src: s.Selector.Src, dst: s.Selector.Dst, proto: s.Selector.Proto,
			srcPort: s.Selector.SrcPort, dstPort: s.Selector.DstPort, ifindex: s.Selector.Ifindex, family: fam}
		if sel.src.IsValid() {
			sel.family = ipsec.AddrFamily(sel.src.Addr())
		}
		putSelector(b[0:], sel)
	} else {
		// No selector: the SA carries all traffic of its family, as the
		// kernel would record anyway.
		ne.PutUint16(b[40:], fam)
	}
	putAddr(b[56:], s.Dst)
	binary.BigEndian.PutUint32(b[72:], s.SPI)
	b[76] = uint8(s.Proto)
	putAddr(b[80:], s.Src)
	putLifetime(b[96:], s.Lifetime)
	ne.PutUint32(b[208:], s.Reqid)
	ne.PutUint16(b[212:], fam)
	b[214] = uint8(s.Mode)
	if s.ReplayWindow <= math.MaxUint8 && !s.ESN {
		b[215] = uint8(s.ReplayWindow)
	}
	if s.ESN {
		b[216] |= stateFlagESN // the window goes in XFRMA_REPLAY_ESN_VAL
	}
	return b
}

// stateFlagESN is XFRM_STATE_ESN in xfrm_usersa_info's flags.
const stateFlagESN = 128

// decodeUsersaInfo reads struct xfrm_usersa_info; b holds at least
// sizeofUsersaInfo bytes.
func (d decoder) decodeUsersaInfo(b []byte) (State, error) {
	fam := ne.Uint16(b[212:])
	if fam != unix.AF_INET && fam != unix.AF_INET6 {
		return State{}, d.errorf(212, "SA family %d is neither AF_INET nor AF_INET6", fam)
	}
	s := State{
		Dst:          getAddr(b[56:], fam),
		SPI:          binary.BigEndian.Uint32(b[72:]),
		Proto:        Proto(b[76]),
		Src:          getAddr(b[80:], fam),
		Lifetime:     getLifetime(b[96:]),
		Reqid:        ne.Uint32(b[208:]),
		Mode:         Mode(b[214]),
		ReplayWindow: uint32(b[215]),
		ESN:          b[216]&stateFlagESN != 0,
	}
	sel, err := d.getSelector(b[0:])
	if err != nil {
		return State{}, err
	}
	if !sel.matchesAll(fam) {
		s.Selector = &Selector{Src: sel.src, Dst: sel.dst, Proto: sel.proto,
			SrcPort: sel.srcPort, DstPort: sel.dstPort, Ifindex: sel.ifindex}
	}
	return s, nil
}

// encodeUsersaID writes struct xfrm_usersa_id.
func encodeUsersaID(dst netip.Addr, spi uint32, proto Proto) []byte {
	b := make([]byte, sizeofUsersaID)
	putAddr(b[0:], dst)
	binary.BigEndian.PutUint32(b[16:], spi)
	ne.PutUint16(b[20:], ipsec.AddrFamily(dst))
	b[22] = uint8(proto)
	return b
}

func (d decoder) decodeUsersaID(b []byte) (State, error) {
	fam := ne.Uint16(b[20:])
	if fam != unix.AF_INET && fam != unix.AF_INET6 {
		return State{}, d.errorf(20, "SA id family %d is neither AF_INET nor AF_INET6", fam)
	}
	return State{Dst: getAddr(b[0:], fam), SPI: binary.BigEndian.Uint32(b[16:]), Proto: Proto(b[22])}, nil
}

func policySelector(p *Policy) selector {
	return selector{src: p.Src, dst: p.Dst, proto: p.Proto, srcPort: p.SrcPort, dstPort: p.DstPort, family: p.Family()}
}

// encodeUserpolicyInfo writes struct xfrm_userpolicy_info.
func encodeUserpolicyInfo(p *Policy) []byte {
	b := make([]byte, sizeofUserpolicyInfo)
	putSelector(b[0:], policySelector(p))
	putLifetime(b[56:], Lifetime{})
	ne.PutUint32(b[152:], p.Priority)
	ne.PutUint32(b[156:], p.Index)
	b[160] = uint8(p.Dir)
	b[161] = uint8(p.Action)
	return b
}

func (d decoder) decodeUserpolicyInfo(b []byte) (Policy, error) {
	sel, err := d.getSelector(b[0:])
	if err != nil {
		return Policy{}, err
	}
	return Policy{
		Src: sel.src, Dst: sel.dst, Proto: sel.proto, SrcPort: sel.srcPort, DstPort: sel.dstPort,
		Priority: ne.Uint32(b[152:]),
		Index:    ne.Uint32(b[156:]),
		Dir:      Dir(b[160]),
		Action:   Action(b[161]),
	}, nil
}

// encodeUserpolicyID writes struct xfrm_userpolicy_id selecting p by its
// selector and direction (index 0).
func encodeUserpolicyID(p *Policy) []byte {
	b := make([]byte, sizeofUserpolicyID)
	putSelector(b[0:], policySelector(p))
	b[60] = uint8(p.Dir)
	return b
}

func (d decoder) decodeUserpolicyID(b []byte) (Policy, error) {
	sel, err := d.getSelector(b[0:])
	if err != nil {
		return Policy{}, err
	}
	return Policy{Src: sel.src, Dst: sel.dst, Proto: sel.proto, SrcPort: sel.srcPort, DstPort: sel.dstPort,
		Index: ne.Uint32(b[56:]), Dir: Dir(b[60])}, nil
}

// encodeTmpls writes the XFRMA_TMPL payload: one struct xfrm_user_tmpl per
// template. Unset endpoints take the policy's family.
func encodeTmpls(p *Policy) []byte {
	b := make([]byte, sizeofUserTmpl*len(p.Templates))
	for i, t := range p.Templates {
		u := b[i*sizeofUserTmpl:]
		fam := p.Family()
		if t.Dst.IsValid() {
			fam = ipsec.AddrFamily(t.Dst)
		}
		putAddr(u[0:], t.Dst)
		binary.BigEndian.PutUint32(u[16:], t.SPI)
		u[20] = uint8(t.Proto)
		ne.PutUint16(u[24:], fam)
		putAddr(u[28:], t.Src)
		ne.PutUint32(u[44:], t.Reqid)
		u[48] = uint8(t.Mode)
		if t.Optional {
			u[50] = 1
		}
		ne.PutUint32(u[52:], allAlgos)
		ne.PutUint32(u[56:], allAlgos)
		ne.PutUint32(u[60:], allAlgos)
	}
	return b
}

func (d decoder) decodeTmpls(b []byte) ([]Template, error) {
	if len(b)%sizeofUserTmpl != 0 {
		return nil, d.errorf(0, "XFRMA_TMPL of %d bytes is not a whole number of %d-byte templates", len(b), sizeofUserTmpl)
	}
	if len(b)/sizeofUserTmpl > ipsec.MaxTemplates {
		return nil, d.errorf(0, "XFRMA_TMPL holds %d templates, more than %d", len(b)/sizeofUserTmpl, ipsec.MaxTemplates)
	}
	ts := make([]Template, 0, len(b)/sizeofUserTmpl)
	for off := 0; off < len(b); off += sizeofUserTmpl {
		u := b[off:]
		fam := ne.Uint16(u[24:])
		if fam != 0 && fam != unix.AF_INET && fam != unix.AF_INET6 {
			return nil, d.errorf(off+24, "template family %d is neither AF_INET nor AF_INET6", fam)
		}
		ts = append(ts, Template{
			Dst:      getAddr(u[0:], fam),
			SPI:      binary.BigEndian.Uint32(u[16:]),
			Proto:    Proto(u[20]),
			Src:      getAddr(u[28:], fam),
			Reqid:    ne.Uint32(u[44:]),
			Mode:     Mode(u[48]),
			Optional: u[50] != 0,
		})
	}
	return ts, nil
}

// SecCtx is struct xfrm_user_sec_ctx with its context string: the
// XFRMA_SEC_CTX attribute's payload.
type SecCtx struct {
	// DOI and Alg identify the LSM; SELinux is DOI 1, Alg 1, which
	// [NewSecCtx] sets.
	DOI, Alg uint8
	// Context is the context without a trailing NUL.
	Context string
}

// NewSecCtx is the SELinux context ctx as the kernel takes it.
func NewSecCtx(ctx string) SecCtx {
	return SecCtx{DOI: secCtxDOILSM, Alg: secCtxAlgSELinux, Context: ctx}
}

// MarshalBinary encodes the header and the context with a trailing NUL,
// which ctx_len counts, as ip-xfrm(8) does.
func (c SecCtx) MarshalBinary() ([]byte, error) {
	if err := ipsec.CheckContext(c.Context); err != nil {
		return nil, err
	}
	n := len(c.Context) + 1
	b := make([]byte, sizeofUserSecCtx, sizeofUserSecCtx+n)
	ne.PutUint16(b[0:], uint16(sizeofUserSecCtx+n))
	ne.PutUint16(b[2:], attrSecCtx)
	b[4] = c.Alg
	b[5] = c.DOI
	ne.PutUint16(b[6:], uint16(n))
	b = append(b, c.Context...)
	return append(b, 0), nil
}

// UnmarshalBinary decodes an XFRMA_SEC_CTX payload. The header's len must
// be 8 + ctx_len and fit in b, as the kernel requires; trailing NULs are
// dropped from the context.
func (c *SecCtx) UnmarshalBinary(b []byte) error {
	return decoder{}.decodeSecCtx(b, c)
}

func (d decoder) decodeSecCtx(b []byte, c *SecCtx) error {
	if len(b) < sizeofUserSecCtx {
		return d.errorf(0, "XFRMA_SEC_CTX of %d bytes is shorter than its %d-byte header", len(b), sizeofUserSecCtx)
	}
	l, n := int(ne.Uint16(b[0:])), int(ne.Uint16(b[6:]))
	if l != sizeofUserSecCtx+n || l > len(b) {
		return d.errorf(0, "XFRMA_SEC_CTX: len %d, ctx_len %d, %d bytes: want len = 8 + ctx_len <= bytes", l, n, len(b))
	}
	*c = SecCtx{Alg: b[4], DOI: b[5], Context: strings.TrimRight(string(b[sizeofUserSecCtx:l]), "\x00")}
	return nil
}

// encodeAlgo writes struct xfrm_algo, xfrm_algo_auth or xfrm_algo_aead,
// by attribute type.
func encodeAlgo(typ uint16, a *Algo) []byte {
	hdr := sizeofAlgo
	if typ == attrAlgAEAD || typ == attrAlgAuthTrunc {
		hdr = sizeofAlgoAEAD
	}
	b := make([]byte, hdr, hdr+len(a.Key))
	copy(b, a.Name)
	ne.PutUint32(b[64:], uint32(8*len(a.Key)))
	switch typ {
	case attrAlgAEAD:
		ne.PutUint32(b[68:], uint32(a.ICVBits))
	case attrAlgAuthTrunc:
		ne.PutUint32(b[68:], uint32(a.TruncBits))
	}
	return append(b, a.Key...)
}

func (d decoder) decodeAlgo(typ uint16, b []byte) (*Algo, error) {
	hdr := sizeofAlgo
	if typ == attrAlgAEAD || typ == attrAlgAuthTrunc {
		hdr = sizeofAlgoAEAD
	}
	if len(b) < hdr {
		return nil, d.errorf(0, "algorithm attribute %d of %d bytes is shorter than its %d-byte header", typ, len(b), hdr)
	}
	bits := ne.Uint32(b[64:])
	n := (uint64(bits) + 7) / 8
	if n > uint64(len(b)-hdr) {
		return nil, d.errorf(64, "algorithm key of %d bits, but %d bytes follow", bits, len(b)-hdr)
	}
	name := b[:algoNameLen]
	if i := strings.IndexByte(string(name), 0); i >= 0 {
		name = name[:i]
	}
	a := &Algo{Name: string(name), Key: append([]byte(nil), b[hdr:hdr+int(n)]...)}
	switch typ {
	case attrAlgAEAD:
		a.ICVBits = int(ne.Uint32(b[68:]))
	case attrAlgAuthTrunc:
		a.TruncBits = int(ne.Uint32(b[68:]))
	}
	return a, nil
}

// encodeReplayESN writes struct xfrm_replay_state_esn for a replay window
// too large for xfrm_usersa_info's byte.
func encodeReplayESN(window uint32) []byte {
	words := (window + 31) / 32
	b := make([]byte, sizeofReplayESN+4*int(words))
	ne.PutUint32(b[0:], words)
	ne.PutUint32(b[20:], window)
	return b
}

// encodeSA is the payload of XFRM_MSG_NEWSA or _UPDSA: the SA's header and
// its algorithm, context and replay attributes.
func encodeSA(s *State) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b := encodeUsersaInfo(s)
	if s.AEAD != nil {
		b = appendAttr(b, attrAlgAEAD, encodeAlgo(attrAlgAEAD, s.AEAD))
	}
	if s.Auth != nil {
		b = appendAttr(b, attrAlgAuthTrunc, encodeAlgo(attrAlgAuthTrunc, s.Auth))
	}
	if s.Crypt != nil {
		b = appendAttr(b, attrAlgCrypt, encodeAlgo(attrAlgCrypt, s.Crypt))
	}
	if s.Context != "" {
		c, err := NewSecCtx(s.Context).MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = appendAttr(b, attrSecCtx, c)
	}
	if s.ReplayWindow > math.MaxUint8 || s.ESN {
		b = appendAttr(b, attrReplayESNVal, encodeReplayESN(s.ReplayWindow))
	}
	return b, nil
}

// decodeSAAttrs fills s from the attributes that follow an SA's header
// (which starts at off in the message body d reads).
func (d decoder) decodeSAAttrs(s *State, b []byte) error {
	attrs, err := d.parseAttrs(b)
	if err != nil {
		return err
	}
	var authLegacy *Algo
	for _, a := range attrs {
		ad := d.at(a.off)
		switch a.typ {
		case attrAlgAEAD:
			if s.AEAD, err = ad.decodeAlgo(a.typ, a.data); err != nil {
				return err
			}
		case attrAlgAuthTrunc:
			if s.Auth, err = ad.decodeAlgo(a.typ, a.data); err != nil {
				return err
			}
		case attrAlgAuth:
			// The kernel sends the legacy form beside the truncated
			// one; it is used only when alone.
			if authLegacy, err = ad.decodeAlgo(a.typ, a.data); err != nil {
				return err
			}
		case attrAlgCrypt:
			if s.Crypt, err = ad.decodeAlgo(a.typ, a.data); err != nil {
				return err
			}
		case attrSecCtx:
			var c SecCtx
			if err := ad.decodeSecCtx(a.data, &c); err != nil {
				return err
			}
			s.Context = c.Context
		case attrReplayESNVal:
			if len(a.data) < sizeofReplayESN {
				return ad.errorf(0, "XFRMA_REPLAY_ESN_VAL of %d bytes is shorter than %d", len(a.data), sizeofReplayESN)
			}
			s.ReplayWindow = ne.Uint32(a.data[20:])
			// oseq, seq, oseq_hi, seq_hi
			s.OSeq = uint64(ne.Uint32(a.data[12:]))<<32 | uint64(ne.Uint32(a.data[4:]))
			s.Seq = uint64(ne.Uint32(a.data[16:]))<<32 | uint64(ne.Uint32(a.data[8:]))
		case attrReplayVal:
			// struct xfrm_replay_state: oseq, seq, bitmap
			if len(a.data) < 12 {
				return ad.errorf(0, "XFRMA_REPLAY_VAL of %d bytes is shorter than 12", len(a.data))
			}
			s.OSeq, s.Seq = uint64(ne.Uint32(a.data[0:])), uint64(ne.Uint32(a.data[4:]))
		}
	}
	if s.Auth == nil {
		s.Auth = authLegacy
	}
	return nil
}

// decodeSA reads an SA message body: xfrm_usersa_info and attributes.
func (d decoder) decodeSA(b []byte) (State, error) {
	if len(b) < sizeofUsersaInfo {
		return State{}, d.errorf(0, "%d bytes, shorter than struct xfrm_usersa_info (%d)", len(b), sizeofUsersaInfo)
	}
	s, err := d.decodeUsersaInfo(b)
	if err != nil {
		return State{}, err
	}
	if err := d.at(sizeofUsersaInfo).decodeSAAttrs(&s, b[sizeofUsersaInfo:]); err != nil {
		return State{}, err
	}
	return s, nil
}

// encodePolicy is the payload of XFRM_MSG_NEWPOLICY or _UPDPOLICY.
func encodePolicy(p *Policy) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b := encodeUserpolicyInfo(p)
	if len(p.Templates) > 0 {
		b = appendAttr(b, attrTmpl, encodeTmpls(p))
	}
	if p.Context != "" {
		c, err := NewSecCtx(p.Context).MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = appendAttr(b, attrSecCtx, c)
	}
	return b, nil
}

// decodePolicyAttrs fills p from the attributes after a policy's header and
// reports the policy type (main unless XFRMA_POLICY_TYPE says otherwise).
// The XFRMA_POLICY attribute of a delete notification, when present,
// replaces p's header fields.
func (d decoder) decodePolicyAttrs(p *Policy, b []byte) (uint8, error) {
	attrs, err := d.parseAttrs(b)
	if err != nil {
		return 0, err
	}
	ptype := uint8(policyTypeMain)
	for _, a := range attrs {
		ad := d.at(a.off)
		switch a.typ {
		case attrPolicy:
			if len(a.data) < sizeofUserpolicyInfo {
				return 0, ad.errorf(0, "XFRMA_POLICY of %d bytes is shorter than struct xfrm_userpolicy_info (%d)", len(a.data), sizeofUserpolicyInfo)
			}
			full, err := ad.decodeUserpolicyInfo(a.data)
			if err != nil {
				return 0, err
			}
			full.Templates, full.Context = p.Templates, p.Context
			*p = full
		case attrTmpl:
			if p.Templates, err = ad.decodeTmpls(a.data); err != nil {
				return 0, err
			}
		case attrSecCtx:
			var c SecCtx
			if err := ad.decodeSecCtx(a.data, &c); err != nil {
				return 0, err
			}
			p.Context = c.Context
		case attrPolicyType:
			if len(a.data) < 1 {
				return 0, ad.errorf(0, "empty XFRMA_POLICY_TYPE")
			}
			ptype = a.data[0]
		}
	}
	return ptype, nil
}

// decodePolicy reads a policy message body: xfrm_userpolicy_info and
// attributes.
func (d decoder) decodePolicy(b []byte) (Policy, uint8, error) {
	if len(b) < sizeofUserpolicyInfo {
		return Policy{}, 0, d.errorf(0, "%d bytes, shorter than struct xfrm_userpolicy_info (%d)", len(b), sizeofUserpolicyInfo)
	}
	p, err := d.decodeUserpolicyInfo(b)
	if err != nil {
		return Policy{}, 0, err
	}
	ptype, err := d.at(sizeofUserpolicyInfo).decodePolicyAttrs(&p, b[sizeofUserpolicyInfo:])
	if err != nil {
		return Policy{}, 0, err
	}
	return p, ptype, nil
}
