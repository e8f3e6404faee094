package updatedaemon

import (
	"errors"
	"os"
	"testing"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// TestPrivilegedWarm: the cipher warm-up leaves no SA behind where the
// kernel has the cipher, and says what the kernel lacks where it has not.
func TestPrivilegedWarm(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN for XFRM and network namespaces)")
	}
	h, err := xfrm.NewHandleAt(newNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ap := &SystemApplier{XFRM: h}
	took, err := ap.Warm()
	if err != nil {
		if !errors.Is(err, xfrm.ErrNoESP) && !errors.Is(err, xfrm.ErrNoAlgorithm) {
			t.Fatalf("warm-up: %v", err)
		}
		t.Logf("this kernel lacks the cipher (the QEMU guests of bench vmstart have it): %v", err)
	} else {
		t.Logf("warm-up took %v", took)
	}
	if states, err := h.States(); err != nil || len(states) != 0 {
		t.Fatalf("after the warm-up the kernel holds %v (%v), want no SA", states, err)
	}
	if _, err := (&SystemApplier{}).Warm(); err != nil {
		t.Fatalf("without an XFRM handle: %v", err)
	}
}
