package xfrm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	ctxSA  = "system_u:system_r:analyst_t:s6"
	ctxSPD = "system_u:object_r:ipsec_spd_t:s0-s15:c0.c1023"
)

// key is a recognisable key: the tests look for it in every printed form.
var key = []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10}

func sampleStates() []State {
	return []State{
		{
			Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
			SPI: 0x1000, Proto: ProtoESP, Mode: ModeTransport, Reqid: 7, Context: ctxSA,
			AEAD:         &Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128},
			ReplayWindow: 32,
		},
		{
			Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"),
			SPI: 0xc0ffee, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 9,
			Auth:         &Algo{Name: "hmac(sha256)", Key: key[:16], TruncBits: 128},
			Crypt:        &Algo{Name: "cbc(aes)", Key: key[:16]},
			ReplayWindow: 1024,
			Selector: &Selector{Src: netip.MustParsePrefix("fd01::/64"), Dst: netip.MustParsePrefix("fd02::5/128"),
				Proto: unix.IPPROTO_TCP, SrcPort: 0, DstPort: 443, Ifindex: 3},
			Lifetime: Lifetime{SoftBytes: 1 << 30, HardBytes: 1 << 31, SoftAddSeconds: 3000, HardAddSeconds: 3600},
		},
		{
			// No keys, no context, no replay window.
			Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("198.51.100.7"),
			SPI: 0xffffffff, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1,
			Crypt: &Algo{Name: "ecb(cipher_null)"},
		},
	}
}

func samplePolicies() []Policy {
	return []Policy{
		{
			Src: netip.MustParsePrefix("10.0.0.1/32"), Dst: netip.MustParsePrefix("10.0.0.2/32"),
			Dir: DirOut, Priority: 100, Context: ctxSPD,
			Templates: []Template{{Proto: ProtoESP, Mode: ModeTransport, Reqid: 7}},
		},
		{
			Src: netip.MustParsePrefix("10.1.0.0/16"), Dst: netip.MustParsePrefix("10.2.0.0/24"),
			Proto: unix.IPPROTO_UDP, SrcPort: 500, DstPort: 4500,
			Dir: DirFwd, Priority: 5, Index: 0x42,
			Templates: []Template{
				{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"), Proto: ProtoESP, Mode: ModeTunnel, Reqid: 3, SPI: 0x2000},
				{Proto: ProtoAH, Mode: ModeTransport, Reqid: 4, Optional: true},
			},
		},
		{
			Src: netip.MustParsePrefix("::/0"), Dst: netip.MustParsePrefix("fd00::7/128"),
			Dir: DirIn, Action: ActionBlock, Priority: 10000,
		},
	}
}

// frame wraps a payload in a netlink header as the kernel sends it.
func frame(typ uint16, payload []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(payload)+3)
	ne.PutUint32(b[0:], uint32(nlmsgHdrLen+len(payload)))
	ne.PutUint16(b[4:], typ)
	b = append(b, payload...)
	return append(b, make([]byte, align4(len(b))-len(b))...)
}

func mustEncodeSA(t testing.TB, s State) []byte {
	t.Helper()
	b, err := encodeSA(&s)
	if err != nil {
		t.Fatalf("encode %s: %v", s, err)
	}
	return b
}

func mustEncodePolicy(t testing.TB, p Policy) []byte {
	t.Helper()
	b, err := encodePolicy(&p)
	if err != nil {
		t.Fatalf("encode %s: %v", p, err)
	}
	return b
}

func onlyEvent(t *testing.T, b []byte) Event {
	t.Helper()
	evs, err := parseMessage(b)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if len(evs) != 1 {
		t.Fatalf("parse: %d events, want 1", len(evs))
	}
	return evs[0]
}

// TestStructSizes holds the sizes this package uses to the ones measured
// with a C compile of <linux/xfrm.h> (kernel headers 6.1, x86-64; see the
// package documentation) and to vishvananda/netlink's independent Go copies.
func TestStructSizes(t *testing.T) {
	cases := []struct {
		name      string
		ours, c   int
		otherCopy int
	}{
		{"xfrm_selector", sizeofSelector, 56, nl.SizeofXfrmSelector},
		{"xfrm_lifetime_cfg", sizeofLifetimeCfg, 64, nl.SizeofXfrmLifetimeCfg},
		{"xfrm_usersa_info", sizeofUsersaInfo, 224, nl.SizeofXfrmUsersaInfo},
		{"xfrm_usersa_id", sizeofUsersaID, 24, nl.SizeofXfrmUsersaId},
		{"xfrm_userpolicy_info", sizeofUserpolicyInfo, 168, nl.SizeofXfrmUserpolicyInfo},
		{"xfrm_userpolicy_id", sizeofUserpolicyID, 64, nl.SizeofXfrmUserpolicyId},
		{"xfrm_user_tmpl", sizeofUserTmpl, 64, nl.SizeofXfrmUserTmpl},
		{"xfrm_user_expire", sizeofUserExpire, 232, nl.SizeofXfrmUserExpire},
		{"xfrm_algo", sizeofAlgo, 68, nl.SizeofXfrmAlgo},
		{"xfrm_algo_aead", sizeofAlgoAEAD, 72, nl.SizeofXfrmAlgoAEAD},
		{"xfrm_algo_auth", sizeofAlgoAuth, 72, nl.SizeofXfrmAlgoAuth},
		{"xfrm_replay_state_esn", sizeofReplayESN, 24, nl.SizeofXfrmReplayStateEsn},
		{"xfrm_usersa_flush", sizeofUsersaFlush, 1, nl.SizeofXfrmUsersaFlush},
		{"xfrm_user_polexpire", sizeofUserPolexpire, 176, -1},
		{"xfrm_user_sec_ctx", sizeofUserSecCtx, 8, -1},
		{"xfrm_userpolicy_type", sizeofUserpolicyType, 6, -1},
	}
	for _, c := range cases {
		if c.ours != c.c || (c.otherCopy >= 0 && c.ours != c.otherCopy) {
			t.Errorf("sizeof(%s): ours %d, C %d, vishvananda/netlink %d", c.name, c.ours, c.c, c.otherCopy)
		}
	}
}

// TestConstants holds the message, attribute and group numbers to
// vishvananda/netlink's copy of the same enums.
func TestConstants(t *testing.T) {
	pairs := []struct {
		name       string
		ours, them int
	}{
		{"NEWSA", msgNewSA, nl.XFRM_MSG_NEWSA}, {"DELSA", msgDelSA, nl.XFRM_MSG_DELSA},
		{"GETSA", msgGetSA, nl.XFRM_MSG_GETSA}, {"NEWPOLICY", msgNewPolicy, nl.XFRM_MSG_NEWPOLICY},
		{"DELPOLICY", msgDelPolicy, nl.XFRM_MSG_DELPOLICY}, {"GETPOLICY", msgGetPolicy, nl.XFRM_MSG_GETPOLICY},
		{"EXPIRE", msgExpire, nl.XFRM_MSG_EXPIRE}, {"UPDPOLICY", msgUpdPolicy, nl.XFRM_MSG_UPDPOLICY},
		{"UPDSA", msgUpdSA, nl.XFRM_MSG_UPDSA}, {"POLEXPIRE", msgPolExpire, nl.XFRM_MSG_POLEXPIRE},
		{"FLUSHSA", msgFlushSA, nl.XFRM_MSG_FLUSHSA}, {"FLUSHPOLICY", msgFlushPolicy, nl.XFRM_MSG_FLUSHPOLICY},
		{"ALG_AUTH", attrAlgAuth, nl.XFRMA_ALG_AUTH}, {"ALG_CRYPT", attrAlgCrypt, nl.XFRMA_ALG_CRYPT},
		{"TMPL", attrTmpl, nl.XFRMA_TMPL}, {"SA", attrSA, nl.XFRMA_SA}, {"POLICY", attrPolicy, nl.XFRMA_POLICY},
		{"SEC_CTX", attrSecCtx, nl.XFRMA_SEC_CTX}, {"REPLAY_VAL", attrReplayVal, nl.XFRMA_REPLAY_VAL},
		{"POLICY_TYPE", attrPolicyType, nl.XFRMA_POLICY_TYPE}, {"ALG_AEAD", attrAlgAEAD, nl.XFRMA_ALG_AEAD},
		{"ALG_AUTH_TRUNC", attrAlgAuthTrunc, nl.XFRMA_ALG_AUTH_TRUNC}, {"REPLAY_ESN_VAL", attrReplayESNVal, nl.XFRMA_REPLAY_ESN_VAL},
		{"GRP_EXPIRE", groupExpire, nl.XFRMNLGRP_EXPIRE}, {"GRP_SA", groupSA, nl.XFRMNLGRP_SA}, {"GRP_POLICY", groupPolicy, nl.XFRMNLGRP_POLICY},
	}
	for _, p := range pairs {
		if p.ours != p.them {
			t.Errorf("%s: ours %d, vishvananda/netlink %d", p.name, p.ours, p.them)
		}
	}
}

// TestUsersaInfoLayout checks the bytes of one SA header at the C offsets,
// and reads them back through vishvananda/netlink's struct.
func TestUsersaInfoLayout(t *testing.T) {
	s := State{
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		SPI: 0x01020304, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 0x0a0b0c0d, ReplayWindow: 32,
		Lifetime: Lifetime{HardAddSeconds: 77},
	}
	b := encodeUsersaInfo(&s)
	if len(b) != 224 {
		t.Fatalf("length %d, want 224", len(b))
	}
	want := map[int][]byte{
		40:  {2, 0},                         // sel.family: the SA's, as the kernel records it
		56:  {10, 0, 0, 2},                  // id.daddr
		72:  {1, 2, 3, 4},                   // id.spi, big-endian
		76:  {50},                           // id.proto
		80:  {10, 0, 0, 1},                  // saddr
		96:  bytes.Repeat([]byte{0xff}, 32), // lft byte and packet limits: XFRM_INF
		136: {77, 0, 0, 0, 0, 0, 0, 0},      // lft.hard_add_expires_seconds
		208: {0x0d, 0x0c, 0x0b, 0x0a},       // reqid, host order
		212: {2, 0},                         // family AF_INET
		214: {1},                            // mode tunnel
		215: {32},                           // replay_window
		216: {0},                            // flags
	}
	for off, w := range want {
		if got := b[off : off+len(w)]; !bytes.Equal(got, w) {
			t.Errorf("offset %d: % x, want % x", off, got, w)
		}
	}
	v := nl.DeserializeXfrmUsersaInfo(b)
	if v.Reqid != s.Reqid || v.Family != unix.AF_INET || v.Mode != 1 || v.ReplayWindow != 32 ||
		v.Id.Proto != 50 || v.Sel.Family != unix.AF_INET || v.Lft.HardAddExpiresSeconds != 77 ||
		v.Lft.SoftByteLimit != xfrmInf || v.Id.Daddr.ToIP().String() != "10.0.0.2" {
		t.Errorf("vishvananda/netlink reads %+v", *v)
	}
}

func TestUserpolicyLayout(t *testing.T) {
	p := samplePolicies()[1]
	b := encodeUserpolicyInfo(&p)
	if len(b) != 168 {
		t.Fatalf("length %d, want 168", len(b))
	}
	v := nl.DeserializeXfrmUserpolicyInfo(b)
	if v.Priority != 5 || v.Index != 0x42 || v.Dir != 2 || v.Action != 0 ||
		v.Sel.Family != unix.AF_INET || v.Sel.PrefixlenS != 16 || v.Sel.PrefixlenD != 24 || v.Sel.Proto != unix.IPPROTO_UDP ||
		v.Sel.Sport != nl.Swap16(500) || v.Sel.SportMask != 0xffff || v.Sel.Dport != nl.Swap16(4500) ||
		v.Sel.Saddr.ToIP().String() != "10.1.0.0" || v.Sel.Daddr.ToIP().String() != "10.2.0.0" || v.Lft.HardPacketLimit != xfrmInf {
		t.Errorf("vishvananda/netlink reads %+v", *v)
	}
	for off, w := range map[int][]byte{152: {5, 0, 0, 0}, 156: {0x42, 0, 0, 0}, 160: {2}, 161: {0}} {
		if got := b[off : off+len(w)]; !bytes.Equal(got, w) {
			t.Errorf("offset %d: % x, want % x", off, got, w)
		}
	}
	id := encodeUserpolicyID(&p)
	if len(id) != 64 || id[60] != 2 || !bytes.Equal(id[:56], b[:56]) {
		t.Errorf("xfrm_userpolicy_id % x", id)
	}
	if vi := nl.DeserializeXfrmUserpolicyId(id); vi.Dir != 2 || vi.Index != 0 {
		t.Errorf("vishvananda/netlink reads the id as %+v", *vi)
	}
}

func TestUserTmplLayout(t *testing.T) {
	p := samplePolicies()[1]
	b := encodeTmpls(&p)
	if len(b) != 2*64 {
		t.Fatalf("length %d, want 128", len(b))
	}
	v := nl.DeserializeXfrmUserTmpl(b)
	if v.XfrmId.Proto != uint8(ProtoESP) || v.XfrmId.Daddr.ToIP().String() != "192.0.2.2" || v.Saddr.ToIP().String() != "192.0.2.1" ||
		v.Family != unix.AF_INET || v.Reqid != 3 || v.Mode != 1 || v.Optional != 0 || v.XfrmId.Spi != nl.Swap32(0x2000) ||
		v.Aalgos != allAlgos || v.Ealgos != allAlgos || v.Calgos != allAlgos {
		t.Errorf("template 0: vishvananda/netlink reads %+v", *v)
	}
	v = nl.DeserializeXfrmUserTmpl(b[64:])
	if v.XfrmId.Proto != uint8(ProtoAH) || v.Family != unix.AF_INET || v.Reqid != 4 || v.Mode != 0 || v.Optional != 1 ||
		!v.XfrmId.Daddr.ToIP().IsUnspecified() {
		t.Errorf("template 1: vishvananda/netlink reads %+v", *v)
	}
	for off, w := range map[int][]byte{20: {uint8(ProtoESP)}, 24: {2, 0}, 28: {192, 0, 2, 1}, 44: {3, 0, 0, 0}, 48: {1}, 50: {0}, 64 + 50: {1}} {
		if got := b[off : off+len(w)]; !bytes.Equal(got, w) {
			t.Errorf("offset %d: % x, want % x", off, got, w)
		}
	}
}

func TestUsersaIDLayout(t *testing.T) {
	b := encodeUsersaID(netip.MustParseAddr("fd00::2"), 0xaabbccdd, ProtoESP)
	want, _ := hex.DecodeString("fd000000000000000000000000000002" + "aabbccdd" + "0a00" + "32" + "00")
	if !bytes.Equal(b, want) {
		t.Errorf("xfrm_usersa_id\n got % x\nwant % x", b, want)
	}
	if v := nl.DeserializeXfrmUsersaId(b); v.Family != unix.AF_INET6 || v.Proto != uint8(ProtoESP) {
		t.Errorf("vishvananda/netlink reads %+v", *v)
	}
}

func TestAlgoLayout(t *testing.T) {
	a := &Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128}
	b := encodeAlgo(attrAlgAEAD, a)
	if len(b) != 72+20 {
		t.Fatalf("aead length %d", len(b))
	}
	if v := nl.DeserializeXfrmAlgoAEAD(b); v.AlgKeyLen != 160 || v.AlgICVLen != 128 || !bytes.Equal(v.AlgKey, key) ||
		string(bytes.TrimRight(v.AlgName[:], "\x00")) != a.Name {
		t.Errorf("aead: vishvananda/netlink reads name %q key bits %d icv %d", v.AlgName, v.AlgKeyLen, v.AlgICVLen)
	}
	b = encodeAlgo(attrAlgAuthTrunc, &Algo{Name: "hmac(sha256)", Key: key[:16], TruncBits: 96})
	if v := nl.DeserializeXfrmAlgoAuth(b); len(b) != 72+16 || v.AlgKeyLen != 128 || v.AlgTruncLen != 96 {
		t.Errorf("auth: vishvananda/netlink reads key bits %d trunc %d", v.AlgKeyLen, v.AlgTruncLen)
	}
	b = encodeAlgo(attrAlgCrypt, &Algo{Name: "cbc(aes)", Key: key[:16]})
	if v := nl.DeserializeXfrmAlgo(b); len(b) != 68+16 || v.AlgKeyLen != 128 || !bytes.Equal(v.AlgKey, key[:16]) {
		t.Errorf("crypt: vishvananda/netlink reads key bits %d", v.AlgKeyLen)
	}
}

// TestSecCtxGolden is the attribute ip-xfrm(8) sends for "ctx a:b:c:s0".
func TestSecCtxGolden(t *testing.T) {
	b, err := NewSecCtx("a:b:c:s0").MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		17, 0, // len = 8 + ctx_len
		8, 0, // exttype = XFRMA_SEC_CTX
		1,    // ctx_alg = XFRM_SC_ALG_SELINUX
		1,    // ctx_doi = XFRM_SC_DOI_LSM
		9, 0, // ctx_len, counting the NUL
		'a', ':', 'b', ':', 'c', ':', 's', '0', 0,
	}
	if !bytes.Equal(b, want) {
		t.Errorf("\n got % x\nwant % x", b, want)
	}
	// The algorithm byte comes before the DOI byte.
	other, _ := SecCtx{DOI: 3, Alg: 2, Context: "x"}.MarshalBinary()
	if other[4] != 2 || other[5] != 3 {
		t.Errorf("alg and doi at bytes 4 and 5: % x", other)
	}
	var back SecCtx
	if err := back.UnmarshalBinary(other); err != nil || back != (SecCtx{DOI: 3, Alg: 2, Context: "x"}) {
		t.Errorf("read back %+v, %v", back, err)
	}
	attr := appendAttr(nil, attrSecCtx, b)
	if len(attr) != 4+17+3 || ne.Uint16(attr) != 21 || ne.Uint16(attr[2:]) != attrSecCtx {
		t.Errorf("attribute % x", attr)
	}
}

// TestSecCtxNUL reads contexts written with and without the trailing NUL.
func TestSecCtxNUL(t *testing.T) {
	for _, withNUL := range []bool{true, false} {
		str := ctxSA
		if withNUL {
			str += "\x00"
		}
		b := make([]byte, 8, 8+len(str))
		ne.PutUint16(b[0:], uint16(8+len(str)))
		ne.PutUint16(b[2:], attrSecCtx)
		b[4], b[5] = 1, 1
		ne.PutUint16(b[6:], uint16(len(str)))
		b = append(b, str...)
		var c SecCtx
		if err := c.UnmarshalBinary(b); err != nil {
			t.Fatalf("NUL %v: %v", withNUL, err)
		}
		if c != NewSecCtx(ctxSA) {
			t.Errorf("NUL %v: %+v", withNUL, c)
		}
	}
}

func TestSecCtxMalformed(t *testing.T) {
	good, _ := NewSecCtx(ctxSA).MarshalBinary()
	bad := map[string][]byte{
		"short header":       good[:7],
		"len beyond payload": good[:len(good)-1],
		"len != 8+ctx_len": func() []byte {
			b := bytes.Clone(good)
			ne.PutUint16(b[6:], uint16(len(ctxSA)))
			return b
		}(),
	}
	for name, b := range bad {
		var c SecCtx
		var pe *ParseError
		if err := c.UnmarshalBinary(b); !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a ParseError", name, err)
		}
	}
	for _, ctx := range []string{"a\x00b", strings.Repeat("x", MaxContextLen+1)} {
		if _, err := NewSecCtx(ctx).MarshalBinary(); err == nil {
			t.Errorf("context of %d bytes with NUL %v accepted", len(ctx), strings.Contains(ctx, "\x00"))
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	for _, s := range sampleStates() {
		for _, typ := range []uint16{msgNewSA, msgUpdSA} {
			ev := onlyEvent(t, frame(typ, mustEncodeSA(t, s)))
			want := map[uint16]Kind{msgNewSA: NewSA, msgUpdSA: UpdSA}[typ]
			if ev.Kind != want || ev.State == nil || !reflect.DeepEqual(*ev.State, s) {
				t.Errorf("%s: %s\n got %v\nwant %v", msgName(typ), ev.Kind, ev.State, s)
			}
		}
	}
}

// delSA builds XFRM_MSG_DELSA as xfrm_notify_sa does: the SA's id, then
// XFRMA_SA with its header, then its other attributes.
func delSA(t *testing.T, s State) []byte {
	full := mustEncodeSA(t, s)
	b := encodeUsersaID(s.Dst, s.SPI, s.Proto)
	b = appendAttr(b, attrSA, full[:sizeofUsersaInfo])
	return frame(msgDelSA, append(b, full[sizeofUsersaInfo:]...))
}

func TestDelSA(t *testing.T) {
	for _, s := range sampleStates() {
		ev := onlyEvent(t, delSA(t, s))
		if ev.Kind != DelSA || !reflect.DeepEqual(*ev.State, s) {
			t.Errorf("got %s %v\nwant %v", ev.Kind, ev.State, s)
		}
	}
	// Without XFRMA_SA the id still names the SA.
	s := sampleStates()[0]
	ev := onlyEvent(t, frame(msgDelSA, encodeUsersaID(s.Dst, s.SPI, s.Proto)))
	if ev.State.Dst != s.Dst || ev.State.SPI != s.SPI || ev.State.Proto != s.Proto {
		t.Errorf("bare id: %v", ev.State)
	}
}

func TestExpire(t *testing.T) {
	s := sampleStates()[0]
	for _, hard := range []bool{false, true} {
		b := encodeUsersaInfo(&s)
		b = append(b, make([]byte, sizeofUserExpire-sizeofUsersaInfo)...)
		if hard {
			b[224] = 1
		}
		b = appendAttr(b, 21, make([]byte, 8)) // XFRMA_MARK, not used here
		ev := onlyEvent(t, frame(msgExpire, b))
		want := s
		want.Context, want.AEAD = "", nil // expire messages carry neither
		if ev.Kind != ExpireSA || ev.Hard != hard || !reflect.DeepEqual(*ev.State, want) {
			t.Errorf("hard %v: %s hard %v %v", hard, ev.Kind, ev.Hard, ev.State)
		}
	}
}

func TestPolicyRoundTrip(t *testing.T) {
	for _, p := range samplePolicies() {
		for typ, kind := range map[uint16]Kind{msgNewPolicy: NewPolicy, msgUpdPolicy: UpdPolicy} {
			ev := onlyEvent(t, frame(typ, mustEncodePolicy(t, p)))
			if ev.Kind != kind || !reflect.DeepEqual(*ev.Policy, p) {
				t.Errorf("%s\n got %v\nwant %v", msgName(typ), ev.Policy, p)
			}
		}
	}
}

// TestDelPolicy builds XFRM_MSG_DELPOLICY as xfrm_notify_policy does: the
// policy's id, then XFRMA_POLICY with the whole header, the templates and
// the policy type, but no context.
func TestDelPolicy(t *testing.T) {
	for _, p := range samplePolicies() {
		full := mustEncodePolicy(t, p)
		b := encodeUserpolicyID(&p)
		b = appendAttr(b, attrPolicy, full[:sizeofUserpolicyInfo])
		if len(p.Templates) > 0 {
			b = appendAttr(b, attrTmpl, encodeTmpls(&p))
		}
		b = appendAttr(b, attrPolicyType, make([]byte, sizeofUserpolicyType))
		ev := onlyEvent(t, frame(msgDelPolicy, b))
		want := p
		want.Context = ""
		if ev.Kind != DelPolicy || !reflect.DeepEqual(*ev.Policy, want) {
			t.Errorf("\n got %v\nwant %v", ev.Policy, want)
		}
	}
}

func TestPolExpire(t *testing.T) {
	p := samplePolicies()[0]
	full := mustEncodePolicy(t, p)
	b := append(bytes.Clone(full[:sizeofUserpolicyInfo]), 1, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, full[sizeofUserpolicyInfo:]...)
	ev := onlyEvent(t, frame(msgPolExpire, b))
	if ev.Kind != ExpirePolicy || !ev.Hard || !reflect.DeepEqual(*ev.Policy, p) {
		t.Errorf("%s hard %v %v", ev.Kind, ev.Hard, ev.Policy)
	}
}

func TestFlush(t *testing.T) {
	ev := onlyEvent(t, frame(msgFlushSA, []byte{uint8(uint8(ProtoESP))}))
	if ev.Kind != FlushSA || ev.Proto != ProtoESP {
		t.Errorf("flush SA: %v", ev)
	}
	ev = onlyEvent(t, frame(msgFlushPolicy, appendAttr(nil, attrPolicyType, make([]byte, 6))))
	if ev.Kind != FlushPolicy {
		t.Errorf("flush policy: %v", ev)
	}
}

// TestSeveralMessages parses a buffer holding several messages and a type
// that is not an event.
func TestSeveralMessages(t *testing.T) {
	s, p := sampleStates()[1], samplePolicies()[1]
	var b []byte
	b = append(b, frame(msgNewSA, mustEncodeSA(t, s))...)
	b = append(b, frame(0x17, make([]byte, 40))...) // XFRM_MSG_ACQUIRE: not reported
	b = append(b, frame(msgNewPolicy, mustEncodePolicy(t, p))...)
	evs, err := parseMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != NewSA || evs[1].Kind != NewPolicy ||
		!reflect.DeepEqual(*evs[0].State, s) || !reflect.DeepEqual(*evs[1].Policy, p) {
		t.Errorf("%v", evs)
	}
}

// TestUnknownAttributes checks that attributes the package does not know,
// flagged or not, are skipped.
func TestUnknownAttributes(t *testing.T) {
	s := sampleStates()[0]
	b := mustEncodeSA(t, s)
	b = appendAttr(b, 31, []byte{1, 0, 0, 0})                               // XFRMA_IF_ID
	b = appendAttr(b, 200, []byte{1, 2, 3})                                 // from the future
	b = appendAttr(b, 201|unix.NLA_F_NESTED, appendAttr(nil, 1, []byte{9})) // nested
	b = appendAttr(b, attrReplayVal, make([]byte, 12))
	ev := onlyEvent(t, frame(msgNewSA, b))
	if !reflect.DeepEqual(*ev.State, s) {
		t.Errorf("\n got %v\nwant %v", ev.State, s)
	}
}

// TestLegacyAuth: the kernel dumps XFRMA_ALG_AUTH beside
// XFRMA_ALG_AUTH_TRUNC; the truncated form wins, the legacy one serves alone.
func TestLegacyAuth(t *testing.T) {
	s := sampleStates()[1]
	hdr := encodeUsersaInfo(&s)
	legacy := appendAttr(nil, attrAlgAuth, encodeAlgo(attrAlgAuth, s.Auth))
	trunc := appendAttr(nil, attrAlgAuthTrunc, encodeAlgo(attrAlgAuthTrunc, s.Auth))
	for name, c := range map[string]struct {
		attrs []byte
		trunc int
	}{
		"legacy first": {append(bytes.Clone(legacy), trunc...), 128},
		"trunc first":  {append(bytes.Clone(trunc), legacy...), 128},
		"legacy alone": {legacy, 0},
	} {
		ev := onlyEvent(t, frame(msgNewSA, append(bytes.Clone(hdr), c.attrs...)))
		if a := ev.State.Auth; a == nil || a.Name != s.Auth.Name || !bytes.Equal(a.Key, s.Auth.Key) || a.TruncBits != c.trunc {
			t.Errorf("%s: auth %v", name, a)
		}
	}
}

// TestMalformed truncates valid messages at every length, fixing the
// netlink length so the cut falls inside the XFRM payload: each result
// either parses or is a ParseError naming the message type; none panics.
func TestMalformed(t *testing.T) {
	msgs := [][]byte{
		frame(msgNewSA, mustEncodeSA(t, sampleStates()[1])),
		delSA(t, sampleStates()[0]),
		frame(msgNewPolicy, mustEncodePolicy(t, samplePolicies()[1])),
		frame(msgExpire, make([]byte, sizeofUserExpire)),
	}
	for _, m := range msgs {
		typ := ne.Uint16(m[4:])
		for n := nlmsgHdrLen; n < len(m); n++ {
			b := bytes.Clone(m[:n])
			ne.PutUint32(b, uint32(n))
			_, err := parseMessage(b)
			if err == nil {
				continue
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Type != typ || pe.Offset < 0 || pe.Offset > n ||
				!strings.Contains(err.Error(), msgName(typ)) {
				t.Errorf("%s cut at %d: %v", msgName(typ), n, err)
			}
		}
	}
	// Named cases: where the problem is and what the message says.
	s := sampleStates()[0]
	b := frame(msgNewSA, mustEncodeSA(t, s))
	ne.PutUint16(b[nlmsgHdrLen+sizeofUsersaInfo:], 0xfff0) // first attribute's length
	_, err := parseMessage(b)
	if want := fmt.Sprintf("XFRM_MSG_NEWSA at offset %d", nlmsgHdrLen+sizeofUsersaInfo); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("oversized attribute: %v, want %q", err, want)
	}
	b = frame(msgNewSA, mustEncodeSA(t, s))
	ne.PutUint16(b[nlmsgHdrLen+212:], 99) // family
	if _, err := parseMessage(b); err == nil || !strings.Contains(err.Error(), "offset 228") {
		t.Errorf("bad family: %v", err)
	}
	b = frame(msgNewSA, mustEncodeSA(t, s))
	ne.PutUint32(b, uint32(len(b)+4))
	var pe *ParseError
	if _, err := parseMessage(b); !errors.As(err, &pe) || pe.Offset != 0 {
		t.Errorf("netlink length past the buffer: %v", err)
	}
	if _, err := parseMessage([]byte{1, 2, 3}); !errors.As(err, &pe) {
		t.Errorf("3 bytes: %v", err)
	}
}

func TestParseAck(t *testing.T) {
	ack := func(code int32, flags uint16, tail []byte) message {
		b := binary.NativeEndian.AppendUint32(nil, uint32(code))
		hdr := make([]byte, nlmsgHdrLen)
		ne.PutUint32(hdr, nlmsgHdrLen)
		b = append(b, hdr...)
		return message{typ: unix.NLMSG_ERROR, flags: flags, data: append(b, tail...)}
	}
	if err := parseAck(ack(0, 0, nil)); err != nil {
		t.Errorf("ack: %v", err)
	}
	tlv := appendAttr(nil, unix.NLMSGERR_ATTR_MSG, []byte("Requested type not found\x00"))
	err := parseAck(ack(-int32(unix.EPROTONOSUPPORT), unix.NLM_F_CAPPED|unix.NLM_F_ACK_TLVS, tlv))
	var ke *kernelError
	if !errors.As(err, &ke) || !errors.Is(err, unix.EPROTONOSUPPORT) || ke.msg != "Requested type not found" {
		t.Errorf("capped ack with message: %v", err)
	}
	if err := parseAck(ack(-int32(unix.EEXIST), 0, nil)); !errors.Is(err, unix.EEXIST) || err.Error() != unix.EEXIST.Error() {
		t.Errorf("plain error: %v", err)
	}
}

func TestClassify(t *testing.T) {
	noESP := classify(&kernelError{errno: unix.EPROTONOSUPPORT, msg: "Requested type not found"}, ProtoESP, "", "")
	if !errors.Is(noESP, ErrNoESP) || !errors.Is(noESP, unix.EPROTONOSUPPORT) || !strings.Contains(noESP.Error(), "lacks the ESP transform") {
		t.Errorf("no ESP: %v", noESP)
	}
	if err := classify(&kernelError{errno: unix.EPROTONOSUPPORT}, ProtoAH, "", ""); errors.Is(err, ErrNoESP) {
		t.Errorf("AH classified as missing ESP: %v", err)
	}
	if err := classify(&kernelError{errno: unix.ENOSYS}, ProtoESP, "", "rfc4106(gcm(aes))"); !errors.Is(err, ErrNoAlgorithm) ||
		!strings.Contains(err.Error(), "lacks the algorithm rfc4106(gcm(aes))") {
		t.Errorf("no algorithm: %v", err)
	}
	if err := classify(errors.New("other"), ProtoESP, "", ""); errors.Is(err, ErrNoESP) || errors.Is(err, ErrNoAlgorithm) {
		t.Errorf("other error classified: %v", err)
	}
}

// TestNoKeysPrinted formats SAs, algorithms and events every way fmt can
// and looks for the key.
func TestNoKeysPrinted(t *testing.T) {
	s := sampleStates()[0]
	s2 := sampleStates()[1]
	ev := Event{Kind: NewSA, State: &s}
	values := []any{s, &s, s2, &s2, *s.AEAD, s.AEAD, s2.Auth, ev, &ev, []State{s}, struct{ S *State }{&s}}
	leaks := []string{hex.EncodeToString(key[:4]), fmt.Sprint(key[:4])[1:12], "\\xde\\xad", "0xde, 0xad", "222, 173"}
	for _, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			out := fmt.Sprintf(verb, v)
			for _, l := range leaks {
				if strings.Contains(strings.ToLower(out), strings.ToLower(l)) {
					t.Errorf("%s of %T prints the key (%q): %s", verb, v, l, out)
				}
			}
		}
	}
	if out := s.String(); !strings.Contains(out, "160-bit key") || !strings.Contains(out, ctxSA) {
		t.Errorf("String lost the key size or context: %s", out)
	}
}

func TestValidate(t *testing.T) {
	base := sampleStates()[0]
	mut := func(f func(*State)) State { s := base; f(&s); return s }
	badStates := map[string]State{
		"no source":        mut(func(s *State) { s.Src = netip.Addr{} }),
		"mixed families":   mut(func(s *State) { s.Dst = netip.MustParseAddr("fd00::2") }),
		"no protocol":      mut(func(s *State) { s.Proto = 0 }),
		"bad mode":         mut(func(s *State) { s.Mode = 7 }),
		"NUL in context":   mut(func(s *State) { s.Context = "a\x00b" }),
		"aead and crypt":   mut(func(s *State) { s.Crypt = &Algo{Name: "cbc(aes)", Key: key[:16]} }),
		"long name":        mut(func(s *State) { s.AEAD = &Algo{Name: strings.Repeat("a", 64), Key: key} }),
		"icv on crypt":     mut(func(s *State) { s.AEAD = nil; s.Crypt = &Algo{Name: "cbc(aes)", Key: key[:16], ICVBits: 96} }),
		"half a selector":  mut(func(s *State) { s.Selector = &Selector{Src: netip.MustParsePrefix("10.0.0.0/8")} }),
		"oversized key":    mut(func(s *State) { s.AEAD = &Algo{Name: "x", Key: make([]byte, MaxKeyLen+1)} }),
		"trunc on an aead": mut(func(s *State) { s.AEAD = &Algo{Name: "x", Key: key, TruncBits: 96} }),
	}
	for name, s := range badStates {
		if _, err := encodeSA(&s); err == nil {
			t.Errorf("state %s accepted", name)
		}
	}
	pbase := samplePolicies()[0]
	pmut := func(f func(*Policy)) Policy {
		p := pbase
		p.Templates = append([]Template(nil), pbase.Templates...)
		f(&p)
		return p
	}
	badPolicies := map[string]Policy{
		"no source":          pmut(func(p *Policy) { p.Src = netip.Prefix{} }),
		"mixed families":     pmut(func(p *Policy) { p.Dst = netip.MustParsePrefix("::/0") }),
		"bad direction":      pmut(func(p *Policy) { p.Dir = 3 }),
		"bad action":         pmut(func(p *Policy) { p.Action = 2 }),
		"seven templates":    pmut(func(p *Policy) { p.Templates = make([]Template, 7) }),
		"template proto":     pmut(func(p *Policy) { p.Templates[0].Proto = 0 }),
		"tunnel no ends":     pmut(func(p *Policy) { p.Templates[0].Mode = ModeTunnel }),
		"half endpoints":     pmut(func(p *Policy) { p.Templates[0].Src = netip.MustParseAddr("10.0.0.1") }),
		"NUL in the context": pmut(func(p *Policy) { p.Context += "\x00" }),
	}
	for name, p := range badPolicies {
		if _, err := encodePolicy(&p); err == nil {
			t.Errorf("policy %s accepted", name)
		}
	}
	for _, s := range sampleStates() {
		if err := s.Validate(); err != nil {
			t.Errorf("sample %s: %v", s, err)
		}
	}
}
