package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mlsgate/mlsgate/bpf"
)

// driftKernel is a fakeKernel whose links and vifs entries a test can
// change behind the agent's back.
type driftKernel struct {
	*fakeKernel
	mu       sync.Mutex
	detached map[int]bool
	vifs     map[uint32]bpf.FastpathVif // nil: what was applied
}

func (k *driftKernel) LinkAttached(i int) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return !k.detached[i], nil
}

func (k *driftKernel) Attach(i int) (string, error) {
	k.mu.Lock()
	delete(k.detached, i)
	k.mu.Unlock()
	return k.fakeKernel.Attach(i)
}

func (k *driftKernel) ReadVifs() (map[uint32]bpf.FastpathVif, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.vifs != nil {
		return k.vifs, nil
	}
	st, _ := k.fakeKernel.ReadState()
	return st.Vifs, nil
}

func (k *driftKernel) Apply(prev, next *bpf.State) error {
	k.mu.Lock()
	k.vifs = nil
	k.mu.Unlock()
	return k.fakeKernel.Apply(prev, next)
}

func TestDriftRepairedAndCounted(t *testing.T) {
	k := &driftKernel{fakeKernel: &fakeKernel{}, detached: map[int]bool{}}
	links := &fakeLinks{ch: make(chan LinkEvent)}
	cfg := testConfig(t)
	cfg.DriftInterval = 0 // the test calls checkDrift itself
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: links, SAs: &fakeSAs{ch: make(chan []KernelSA)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, a.Ready, "agent never became ready")
	if err := a.SetGuest(guest7(t)); err != nil {
		t.Fatal(err)
	}
	links.ch <- LinkEvent{Name: "vif7.0", Index: 9}
	eventually(t, func() bool { return strings.Contains(strings.Join(k.events(), ","), "attach 9") }, "never attached: %v", k.events())

	if n := a.checkDrift(); n != 0 {
		t.Fatalf("checkDrift repaired %d things on an undisturbed kernel: %v", n, k.events())
	}
	// Behind the agent's back: the link is detached and the vifs entry
	// emptied; a stray entry appears for ifindex 12.
	before := len(k.events())
	k.mu.Lock()
	k.detached[9] = true
	k.vifs = map[uint32]bpf.FastpathVif{12: {VmId: 99, Flags: 1}}
	k.mu.Unlock()
	if n := a.checkDrift(); n != 3 {
		t.Errorf("checkDrift repaired %d things, want 3 (two vifs entries, one link): %v", n, k.events()[before:])
	}
	ev := strings.Join(k.events()[before:], ",")
	if i, j := strings.Index(ev, "apply"), strings.Index(ev, "attach 9"); i < 0 || j < 0 || i > j {
		t.Errorf("repairs %q: want the vifs entries rewritten, then the link attached", ev)
	}
	if got := testutil.ToFloat64(a.driftRepairs.WithLabelValues(driftLink)); got != 1 {
		t.Errorf("link repairs counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(a.driftRepairs.WithLabelValues(driftVif)); got != 2 {
		t.Errorf("vif repairs counted %v, want 2", got)
	}
	if st := a.Status(); len(st.Guests) != 1 || !st.Guests[0].Attached {
		t.Errorf("status after the repair: %+v", st)
	}
	if n := a.checkDrift(); n != 0 {
		t.Errorf("checkDrift after the repair repaired %d more", n)
	}
}

func TestDiffVifs(t *testing.T) {
	want := map[uint32]bpf.FastpathVif{1: {VmId: 1, Flags: 1}, 2: {VmId: 2, Flags: 1}}
	cur := map[uint32]bpf.FastpathVif{1: {VmId: 1, Flags: 1}, 2: {VmId: 2, Flags: 5}, 3: {VmId: 3, Flags: 1}}
	if got := diffVifs(cur, want); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Errorf("diffVifs = %v, want [2 3]", got)
	}
	if got := diffVifs(want, want); len(got) != 0 {
		t.Errorf("diffVifs of equal maps = %v", got)
	}
}
