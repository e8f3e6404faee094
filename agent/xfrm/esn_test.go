package xfrm

import (
	"math"
	"net/netip"
	"reflect"
	"testing"
)

// ESN: the flag in xfrm_usersa_info, the window in XFRMA_REPLAY_ESN_VAL
// (the kernel refuses an ESN SA without it, and a usersa replay_window
// beside it), and the sequence numbers read back.
func TestESNEncoding(t *testing.T) {
	s := State{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SPI: 0x0c000001, Proto: ProtoESP, Mode: ModeTunnel,
		Reqid: 7, ReplayWindow: 64, ESN: true, AEAD: &Algo{Name: "rfc4106(gcm(aes))", Key: make([]byte, 20), ICVBits: 128}}
	b, err := encodeSA(&s)
	if err != nil {
		t.Fatal(err)
	}
	if b[216]&128 == 0 || b[215] != 0 {
		t.Fatalf("flags %#x, usersa replay_window %d: want XFRM_STATE_ESN and 0", b[216], b[215])
	}
	d := decoder{}
	attrs, err := d.parseAttrs(b[sizeofUsersaInfo:])
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range attrs {
		if a.typ == attrReplayESNVal {
			found = true
			if got := ne.Uint32(a.data[20:]); got != 64 || ne.Uint32(a.data[0:]) != 2 || len(a.data) != sizeofReplayESN+8 {
				t.Fatalf("XFRMA_REPLAY_ESN_VAL: window %d, bmp_len %d, %d bytes", got, ne.Uint32(a.data[0:]), len(a.data))
			}
		}
	}
	if !found {
		t.Fatal("no XFRMA_REPLAY_ESN_VAL with ESN")
	}
	ev := onlyEvent(t, frame(msgNewSA, b))
	if ev.State == nil || !reflect.DeepEqual(*ev.State, s) {
		t.Fatalf("round trip: %v, want %v", ev.State, s)
	}
	s.ReplayWindow = 0
	if _, err := encodeSA(&s); err == nil {
		t.Fatal("an ESN SA without a replay window encoded")
	}
}

func TestSeqNumbersRead(t *testing.T) {
	s := State{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SPI: 0x0c000002, Proto: ProtoESP, Mode: ModeTransport, ReplayWindow: 32}
	b, err := encodeSA(&s)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel's dump of a non-ESN SA carries struct xfrm_replay_state.
	rs := make([]byte, 12)
	ne.PutUint32(rs[0:], 0xfffffff0) // oseq
	ne.PutUint32(rs[4:], 1000)       // seq
	ev := onlyEvent(t, frame(msgNewSA, appendAttr(b, attrReplayVal, rs)))
	if ev.State.OSeq != 0xfffffff0 || ev.State.Seq != 1000 || ev.State.SeqHeadroom() != 15 {
		t.Fatalf("oseq %#x seq %d headroom %d", ev.State.OSeq, ev.State.Seq, ev.State.SeqHeadroom())
	}
	// With ESN the high halves count too.
	s.ESN = true
	b, err = encodeSA(&s)
	if err != nil {
		t.Fatal(err)
	}
	b = b[:sizeofUsersaInfo] // the kernel's ESN attribute replaces ours
	esn := encodeReplayESN(32)
	ne.PutUint32(esn[4:], 5)  // oseq
	ne.PutUint32(esn[12:], 1) // oseq_hi
	ev = onlyEvent(t, frame(msgNewSA, appendAttr(b, attrReplayESNVal, esn)))
	if !ev.State.ESN || ev.State.OSeq != 1<<32|5 || ev.State.SeqHeadroom() != math.MaxUint64-(1<<32|5) {
		t.Fatalf("ESN: %v oseq %#x headroom %d", ev.State.ESN, ev.State.OSeq, ev.State.SeqHeadroom())
	}
	if (&State{OSeq: math.MaxUint32}).SeqHeadroom() != 0 {
		t.Fatal("an exhausted 32-bit SA has headroom")
	}
}
