package loader

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/policystore"
)

// rotFakeAgent adds the rotation calls to fakeAgent.
type rotFakeAgent struct {
	*fakeAgent
	mu       sync.Mutex
	records  map[agent.SARef]agent.SARef
	declared int
}

func (a *rotFakeAgent) DeclareRotations(pairs []agent.RotationPair) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.records == nil {
		a.records = map[agent.SARef]agent.SARef{}
	}
	for _, p := range pairs {
		a.records[p.New] = p.Old
		a.declared++
	}
	return nil
}

func (a *rotFakeAgent) DropRotations(news []agent.SARef) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range news {
		delete(a.records, n)
	}
	return nil
}

func TestLoaderRotatesLoadedGuest(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	ra := &rotFakeAgent{fakeAgent: r.agent}
	r.host.Agent = ra
	cfg := DefaultRotationConfig()
	cfg.StateDir, cfg.Grace = t.TempDir(), time.Millisecond
	if err := r.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	before := map[uint32]bool{}
	for s := range r.xfrm.states {
		before[s] = true
	}
	out, err := r.l.RotateGuests(context.Background(), []string{res.Guest.Name}, false, "manual")
	if err != nil || len(out) != 1 || out[0].Result != "ok" {
		t.Fatalf("rotate: %+v %v", out, err)
	}
	if len(r.xfrm.states) != len(before) {
		t.Fatalf("host holds %d SAs after the rotation, want %d", len(r.xfrm.states), len(before))
	}
	for s := range r.xfrm.states {
		if before[s] {
			t.Fatalf("old SA %#x still on the host", s)
		}
	}
	if ra.declared != len(before) || len(ra.records) != 0 {
		t.Fatalf("agent: %d declared, %d records left", ra.declared, len(ra.records))
	}
	st, ev := r.l.SAStatus()
	if len(st) != 1 || st[0].Generation != 1 || len(st[0].SAs) != len(before) || len(ev) != 1 {
		t.Fatalf("status %+v events %+v", st, ev)
	}
	for _, s := range st[0].SAs {
		if before[s.SPI] {
			t.Fatalf("status shows old SPI %#x", s.SPI)
		}
	}
	want := `# HELP mlsgate_loader_sa_rotations_total Guest SA rotations by result: ok, rolled_back (undone before the guest switched), failed (the journal stays and the next start finishes it), refused_relabel (a successor would carry another label; nothing installed).
# TYPE mlsgate_loader_sa_rotations_total counter
mlsgate_loader_sa_rotations_total{result="failed"} 0
mlsgate_loader_sa_rotations_total{result="ok"} 1
mlsgate_loader_sa_rotations_total{result="refused_relabel"} 0
mlsgate_loader_sa_rotations_total{result="rolled_back"} 0
`
	if err := testutil.GatherAndCompare(r.l.Registry(), strings.NewReader(want), "mlsgate_loader_sa_rotations_total"); err != nil {
		t.Error(err)
	}
	if _, err := r.l.RotateGuests(context.Background(), []string{"vm99"}, false, "manual"); err == nil {
		t.Fatal("rotating an unknown guest succeeded")
	}
	// All guests, again: generation 2.
	if _, err := r.l.RotateGuests(context.Background(), nil, true, "manual"); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.l.SAStatus(); st[0].Generation != 2 {
		t.Fatalf("generation %d after two rotations", st[0].Generation)
	}
	if probs, err := testutil.GatherAndLint(r.l.Registry()); err != nil || len(probs) > 0 {
		t.Errorf("metrics lint: %v %v", probs, err)
	}
}

func TestLoaderRotatesOnSoftExpire(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	r.host.Agent = &rotFakeAgent{fakeAgent: r.agent}
	cfg := DefaultRotationConfig()
	cfg.StateDir, cfg.Grace, cfg.SoftPackets = t.TempDir(), time.Millisecond, 1000
	if err := r.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if r.host.Lifetime.SoftPackets != 1000 {
		t.Fatalf("host SA lifetime %+v", r.host.Lifetime)
	}
	if _, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile"); err != nil {
		t.Fatal(err)
	}
	st, _ := r.l.SAStatus()
	s0 := st[0].SAs[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := make(chan xfrm.Event)
	done := make(chan struct{})
	go func() { r.l.WatchExpires(ctx, ev); close(done) }()
	state := func(spi uint32, dst string) *xfrm.State {
		return &xfrm.State{SPI: spi, Dst: netip.MustParseAddr(dst), Proto: xfrm.ProtoESP}
	}
	ev <- xfrm.Event{Kind: xfrm.ExpireSA, Hard: true, State: state(s0.SPI, s0.Dst)} // hard: the kernel deleted it; not ours to act on
	ev <- xfrm.Event{Kind: xfrm.ExpireSA, State: state(0xdead, s0.Dst)}             // not a guest's
	ev <- xfrm.Event{Kind: xfrm.ExpireSA, State: state(s0.SPI, s0.Dst)}             // soft: rotate
	ev <- xfrm.Event{Kind: xfrm.ExpireSA, State: state(s0.SPI, s0.Dst)}             // a repeat for the old SA: ignored
	cancel()
	<-done
	st, ev2 := r.l.SAStatus()
	if st[0].Generation != 1 || len(ev2) != 1 || ev2[0].Trigger != "soft_limit" {
		t.Fatalf("after a soft expire: generation %d, rotations %+v", st[0].Generation, ev2)
	}
	bad := DefaultRotationConfig()
	bad.StateDir, bad.SoftPackets = t.TempDir(), 1<<32
	r2 := newRig(t, policystore.SystemPolicy{})
	r2.host.Agent = &rotFakeAgent{fakeAgent: r2.agent}
	if err := r2.l.EnableRotation(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "headroom") {
		t.Fatalf("a soft packet limit past 2^31: %v", err)
	}
	bad = DefaultRotationConfig()
	bad.StateDir, bad.MinSeqHeadroom = t.TempDir(), 1<<32-1
	if err := r2.l.EnableRotation(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "every SA without ESN") {
		t.Fatalf("a headroom no SA without ESN can have: %v", err)
	}
}

// TestLoaderRotationSurvivesRestart: a new loader on the same state
// directory knows the sets in force and goes on rotating them, never
// handing out an SPI in use.
func TestLoaderRotationSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	r := newRig(t, policystore.SystemPolicy{})
	r.host.Agent = &rotFakeAgent{fakeAgent: r.agent}
	cfg := DefaultRotationConfig()
	cfg.StateDir, cfg.Grace = dir, time.Millisecond
	if err := r.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.l.RotateGuests(context.Background(), []string{res.Guest.Name}, false, "manual"); err != nil {
		t.Fatal(err)
	}
	st1, _ := r.l.SAStatus()

	r2 := newRig(t, policystore.SystemPolicy{})
	r2.host.Agent = &rotFakeAgent{fakeAgent: r2.agent}
	if err := r2.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	st2, _ := r2.l.SAStatus()
	if len(st2) != 1 || st2[0].Generation != 1 || len(st2[0].SAs) != len(st1[0].SAs) || st2[0].SAs[0].SPI != st1[0].SAs[0].SPI {
		t.Fatalf("after a restart: %+v, before %+v", st2, st1)
	}
	for _, s := range st2[0].SAs {
		if spi, err := r2.l.allocSPI(); err != nil || spi == s.SPI {
			t.Fatalf("restarted loader handed out spi %#x in use (%v)", spi, err)
		}
	}
	if _, err := r2.l.RotateGuests(context.Background(), nil, true, "manual"); err != nil {
		t.Fatal(err)
	}
	// The guest is destroyed: nothing of it is kept.
	r2.l.TornDown(&res.Guest)
	r3 := newRig(t, policystore.SystemPolicy{})
	r3.host.Agent = &rotFakeAgent{fakeAgent: r3.agent}
	if err := r3.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if st, _ := r3.l.SAStatus(); len(st) != 0 {
		t.Fatalf("a destroyed guest's set is still in force after a restart: %+v", st)
	}
}

// TestLoaderFinishesFailedRotation: a rotation that failed after the
// guest switched (its update daemon died before the old-out push) keeps
// its journal; whatever finishes it, the loader's record of the set in
// force must follow, or the next rotation starts from SAs that are gone
// and the finished rotation's states are never deleted. Both ways are
// tried: RunRotations' periodic Recover, and the next rotation of the
// guest (by hand, before that tick).
func TestLoaderFinishesFailedRotation(t *testing.T) {
	for _, how := range []string{"recover", "next rotation"} {
		t.Run(how, func(t *testing.T) {
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
			// The daemon dies once the guest holds old + new.
			r.l.rot.r.Inject = func(step string) error {
				if step == stepHostOut {
					r.push.mu.Lock()
					r.push.fail = errors.New("connection refused: no update daemon listens there")
					r.push.mu.Unlock()
				}
				return nil
			}
			out, err := r.l.RotateGuests(context.Background(), []string{res.Guest.Name}, false, "manual")
			if err == nil || out[0].Result != "failed" {
				t.Fatalf("rotation with the daemon gone: %+v %v", out, err)
			}
			r.l.rot.r.Inject = nil
			r.push.mu.Lock()
			r.push.fail = nil
			r.push.mu.Unlock()
			newSPIs := out[0].NewSPIs
			switch how {
			case "recover": // what RunRotations does on its next tick
				r.l.rot.run.Lock()
				r.l.recoverPending(context.Background(), r.l.rot)
				r.l.rot.run.Unlock()
				st, _ := r.l.SAStatus()
				for i, s := range st[0].SAs {
					if !slices.Contains(newSPIs, s.SPI) {
						t.Fatalf("after the rotation was finished, the loader records spi %#x (sa %d) in force, want one of %x", s.SPI, i, newSPIs)
					}
				}
			case "next rotation":
			}
			out, err = r.l.RotateGuests(context.Background(), []string{res.Guest.Name}, false, "manual")
			if err != nil || out[len(out)-1].Result != "ok" {
				t.Fatalf("the next rotation: %+v %v", out, err)
			}
			st, _ := r.l.SAStatus()
			var inForce []uint32
			for _, s := range st[0].SAs {
				inForce = append(inForce, s.SPI)
			}
			var host []uint32
			for spi := range r.xfrm.states {
				host = append(host, spi)
			}
			slices.Sort(inForce)
			slices.Sort(host)
			if !slices.Equal(host, inForce) {
				t.Fatalf("the host holds SPIs %x, the loader records %x in force (stale states of the failed rotation: %x)", host, inForce, newSPIs)
			}
		})
	}
}

// TestLoaderRotatesOnSeqHeadroom: a guest one of whose SAs on the host has
// used more than half its 32-bit sequence space is due; one with ESN is
// not, however far it went.
func TestLoaderRotatesOnSeqHeadroom(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	r.host.Agent = &rotFakeAgent{fakeAgent: r.agent}
	cfg := DefaultRotationConfig()
	cfg.StateDir, cfg.Grace = t.TempDir(), time.Millisecond
	if err := r.l.EnableRotation(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile"); err != nil {
		t.Fatal(err)
	}
	st, _ := r.l.SAStatus()
	s0 := st[0].SAs[0]
	var oseq uint64
	esn := false
	r.l.rot.dump = func() ([]xfrm.State, error) {
		return []xfrm.State{{Dst: netip.MustParseAddr(s0.Dst), SPI: s0.SPI, Proto: xfrm.ProtoESP, OSeq: oseq, ESN: esn}}, nil
	}
	for _, c := range []struct {
		oseq uint64
		esn  bool
		due  bool
	}{{1000, false, false}, {1<<31 - 1, false, false}, {1<<31 + 1, false, true}, {1 << 40, true, false}} {
		oseq, esn = c.oseq, c.esn
		got := r.l.rot.lowHeadroom()
		if (len(got) == 1) != c.due {
			t.Errorf("oseq %#x esn %v: due %v, want %v", c.oseq, c.esn, got, c.due)
		}
	}
	want := `# HELP mlsgate_loader_sa_seq_headroom Least sequence-number headroom among the guests' SAs on the host at the last check (packets left before a 32-bit sequence number is exhausted; 2^64 scale with ESN; -1 before a check).
# TYPE mlsgate_loader_sa_seq_headroom gauge
mlsgate_loader_sa_seq_headroom 1.8446742974197924e+19
`
	if err := testutil.GatherAndCompare(r.l.Registry(), strings.NewReader(want), "mlsgate_loader_sa_seq_headroom"); err != nil {
		t.Error(err)
	}
}
