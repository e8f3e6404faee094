package loader

import (
	"context"
	"errors"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"net/netip"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

// stuckXFRM fails to delete the states whose SPI is in stuck.
type stuckXFRM struct {
	*fakeXFRM
	stuck map[uint32]bool
}

func (x *stuckXFRM) DeleteState(dst netip.Addr, spi uint32, proto xfrm.Proto) error {
	if x.stuck[spi] {
		return errors.New("netlink: device or resource busy")
	}
	return x.fakeXFRM.DeleteState(dst, spi, proto)
}

// TestTeardownKeepsSPIsOfUndeletedStates: an SPI whose host state could
// not be deleted at teardown is never handed out again; the others are.
func TestTeardownKeepsSPIsOfUndeletedStates(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	var stuck uint32
	for s := range r.xfrm.states {
		stuck = s
		break
	}
	r.host.XFRM = &stuckXFRM{fakeXFRM: r.xfrm, stuck: map[uint32]bool{stuck: true}}
	g := res.Guest
	if err := r.host.Forget(&g); err == nil {
		t.Fatal("Forget reported no error although a state could not be deleted")
	}
	r.l.TornDown(&g)
	holder, ok := r.l.spiInUse[stuck]
	if !ok || holder != "" {
		t.Fatalf("spi %#x (state not deleted) after teardown: reserved %v by %q; want reserved without a holder", stuck, ok, holder)
	}
	if n := len(r.l.spiInUse); n != 1 {
		t.Fatalf("%d SPIs still allocated after teardown, want only the undeleted one", n)
	}
}

// TestTeardownFreesRotatedSPIs: after a rotation the guest holds the
// successors' SPIs (allocated by the rotation without a holder); its
// teardown frees those, and the old ones were freed by the rotation.
func TestTeardownFreesRotatedSPIs(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	r.host.Agent = &rotFakeAgent{fakeAgent: r.agent}
	cfg := DefaultRotationConfig()
	cfg.StateDir, cfg.Grace = t.TempDir(), time.Millisecond
	if err := r.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r.l.RotateGuests(context.Background(), []string{res.Guest.Name}, false, "manual"); err != nil || out[0].Result != "ok" {
		t.Fatalf("rotate: %+v %v", out, err)
	}
	if n := len(r.l.spiInUse); n != len(r.xfrm.states) {
		t.Fatalf("%d SPIs allocated after the rotation, host holds %d SAs", n, len(r.xfrm.states))
	}
	g := res.Guest
	if err := r.host.Forget(&g); err != nil {
		t.Fatal(err)
	}
	r.l.TornDown(&g)
	if n := len(r.l.spiInUse); n != 0 {
		t.Fatalf("%d SPIs still allocated after the rotated guest was torn down: %v", n, r.l.spiInUse)
	}
}
