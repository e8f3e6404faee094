package xfrm

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPrivilegedBatch applies policies as one batch with failures in the
// middle: every error comes back on the operation that caused it, with
// the single request's wording, and the kernel went on with the rest.
func TestPrivilegedBatch(t *testing.T) {
	requireRoot(t)
	h := newHandle(t, newNetNS(t))
	ps := testPolicies()
	var ops []Op
	for _, p := range ps {
		ops = append(ops, Op{Kind: OpAddPolicy, Policy: p})
	}
	dup := len(ops)
	ops = append(ops, Op{Kind: OpAddPolicy, Policy: ps[0]}) // EEXIST
	missing := ps[0]
	missing.Src = netip.MustParsePrefix("10.70.9.9/32")
	gone := len(ops)
	ops = append(ops, Op{Kind: OpDeletePolicy, Policy: missing}) // ENOENT
	upd := ps[1]
	upd.Priority = 900
	ops = append(ops, Op{Kind: OpUpdatePolicy, Policy: upd})
	sa := len(ops)
	ops = append(ops, Op{Kind: OpAddState, State: State{
		Src: netip.MustParseAddr("10.70.0.7"), Dst: netip.MustParseAddr("10.70.0.1"),
		SPI: 0x4001, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1,
		AEAD: &Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128},
	}})
	extra := ps[0]
	extra.Dst = netip.MustParsePrefix("10.70.1.2/32")
	ops = append(ops, Op{Kind: OpAddPolicy, Policy: extra})

	errs, err := h.Apply(ops)
	if err != nil {
		t.Fatal(err)
	}
	esp := errs[sa] == nil
	if esp {
		t.Cleanup(func() { h.DeleteState(ops[sa].State.Dst, ops[sa].State.SPI, ProtoESP) })
	}
	for i, e := range errs {
		switch i {
		case dup:
			if !errors.Is(e, unix.EEXIST) {
				t.Errorf("op %d (%s): %v, want EEXIST", i, &ops[i], e)
			}
		case gone:
			if !errors.Is(e, unix.ENOENT) {
				t.Errorf("op %d (%s): %v, want ENOENT", i, &ops[i], e)
			}
		case sa:
			if e != nil && !errors.Is(e, ErrNoESP) && !errors.Is(e, ErrNoAlgorithm) {
				t.Errorf("op %d (%s): %v, want success or ErrNoESP/ErrNoAlgorithm", i, &ops[i], e)
			}
			if e != nil {
				t.Logf("as a caller sees it: %v", e)
			}
		default:
			if e != nil {
				t.Errorf("op %d (%s): %v", i, &ops[i], e)
			}
		}
	}
	got, err := h.Policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ps)+1 {
		t.Fatalf("%d policies after the batch, want %d (the kernel goes on after a failed operation)", len(got), len(ps)+1)
	}
	found := false
	for _, p := range got {
		if p.Dir == upd.Dir && p.Src == upd.Src && p.Dst == upd.Dst && p.Priority == 900 {
			found = true
		}
	}
	if !found {
		t.Errorf("the batch's update (priority 900) is not in force: %v", got)
	}

	// A batch longer than one datagram: 600 policies, then all deleted.
	var many, dels []Op
	for i := range 600 {
		p := ps[0]
		p.Dst = netip.MustParsePrefix(fmt.Sprintf("10.80.%d.%d/32", i/250, i%250+1))
		many = append(many, Op{Kind: OpAddPolicy, Policy: p})
		dels = append(dels, Op{Kind: OpDeletePolicy, Policy: p})
	}
	for _, batch := range [][]Op{many, dels} {
		errs, err := h.Apply(batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range errs {
			if e != nil {
				t.Fatalf("op %d of %d: %v", i, len(batch), e)
			}
		}
	}
	if got, _ := h.Policies(); len(got) != len(ps)+1 {
		t.Fatalf("%d policies after adding and deleting 600, want %d", len(got), len(ps)+1)
	}
}
