package loader

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
)

// rotWorld is both ends of a guest's tunnel and the agent, checking after
// every kernel change that no sender holds an outbound state its receiver
// lacks (make-before-break).
type rotWorld struct {
	t          *testing.T
	mu         sync.Mutex
	hostAddr   netip.Addr
	guestAddr  netip.Addr
	host       map[uint32]xfrm.State
	guest      map[uint32]xfrm.State
	guestVer   uint64
	guestDig   string
	records    map[agent.SARef]agent.SARef // new → old
	refuse     bool                        // the agent refuses declarations
	pushFail   error
	violations []string
	pushes     int
}

func newRotWorld(t *testing.T, b *policystore.Bundle) *rotWorld {
	w := &rotWorld{t: t, hostAddr: b.HostAddr, guestAddr: b.GuestAddr, host: map[uint32]xfrm.State{}, guest: map[uint32]xfrm.State{}, records: map[agent.SARef]agent.SARef{}, guestVer: b.Version, guestDig: digestOf(b)}
	for _, s := range b.States {
		w.host[s.SPI] = s
		w.guest[s.SPI] = s
	}
	return w
}

func digestOf(b *policystore.Bundle) string {
	var spis []string
	for _, s := range b.States {
		spis = append(spis, fmt.Sprintf("%x:%x", s.SPI, s.AEAD.Key))
	}
	sort.Strings(spis)
	return strings.Join(spis, ",")
}

// check: every outbound state has its inbound twin, with the same key.
func (w *rotWorld) check(when string) {
	for spi, s := range w.host {
		if s.Src == w.hostAddr {
			if g, ok := w.guest[spi]; !ok || string(g.AEAD.Key) != string(s.AEAD.Key) {
				w.violations = append(w.violations, fmt.Sprintf("%s: host sends on %#x, the guest cannot receive it", when, spi))
			}
		}
	}
	for spi, s := range w.guest {
		if s.Src == w.guestAddr {
			if h, ok := w.host[spi]; !ok || string(h.AEAD.Key) != string(s.AEAD.Key) {
				w.violations = append(w.violations, fmt.Sprintf("%s: guest sends on %#x, the host cannot receive it", when, spi))
			}
		}
	}
}

func (w *rotWorld) AddState(s xfrm.State) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.host[s.SPI]; ok {
		return fmt.Errorf("add %#x: %w", s.SPI, fs.ErrExist)
	}
	w.host[s.SPI] = xfrm.State{Src: s.Src, Dst: s.Dst, SPI: s.SPI, Reqid: s.Reqid, Context: s.Context, AEAD: &xfrm.Algo{Key: s.AEAD.Key}}
	w.check(fmt.Sprintf("host add %#x", s.SPI))
	return nil
}

func (w *rotWorld) DeleteState(dst netip.Addr, spi uint32, _ xfrm.Proto) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.host[spi]; !ok {
		return errors.New("no such process")
	}
	delete(w.host, spi)
	w.check(fmt.Sprintf("host delete %#x", spi))
	return nil
}

// Push applies a guest part as the update daemon does: versions only go
// up, a repeat of the applied version and content is a no-op, adds before
// deletes.
func (w *rotWorld) Push(_ context.Context, _ *Guest, b *policystore.Bundle) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pushFail != nil {
		return w.pushFail
	}
	if len(b.ServerKeys) > 0 {
		return errors.New("server keys pushed to a guest")
	}
	w.pushes++
	d := digestOf(b)
	switch {
	case b.Version < w.guestVer:
		return fmt.Errorf("stale bundle v%d < v%d", b.Version, w.guestVer)
	case b.Version == w.guestVer && d == w.guestDig:
		return nil
	case b.Version == w.guestVer:
		return fmt.Errorf("v%d reused with other content", b.Version)
	}
	for _, s := range b.States {
		if err := s.Validate(); err != nil {
			return err
		}
		if _, ok := w.guest[s.SPI]; !ok {
			w.guest[s.SPI] = s
			w.check(fmt.Sprintf("guest add %#x (v%d)", s.SPI, b.Version))
		}
	}
	for spi := range w.guest {
		if !slices.ContainsFunc(b.States, func(s xfrm.State) bool { return s.SPI == spi }) {
			delete(w.guest, spi)
			w.check(fmt.Sprintf("guest delete %#x (v%d)", spi, b.Version))
		}
	}
	w.guestVer, w.guestDig = b.Version, d
	return nil
}

// DeclareRotations checks every pair as the agent does, then records them
// all (or none).
func (w *rotWorld) DeclareRotations(pairs []agent.RotationPair) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.refuse {
		return errors.New("agent: rotation refused")
	}
	for _, p := range pairs {
		if _, ok := w.host[p.Old.SPI]; !ok {
			return fmt.Errorf("predecessor %v unknown", p.Old)
		}
		if o, ok := w.records[p.New]; ok && o != p.Old {
			return fmt.Errorf("%v already succeeds %v", p.New, o)
		}
	}
	for _, p := range pairs {
		w.records[p.New] = p.Old
	}
	return nil
}

func (w *rotWorld) DropRotations(news []agent.SARef) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range news {
		delete(w.records, n)
	}
	return nil
}

func (w *rotWorld) spis(m map[uint32]xfrm.State) []uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []uint32
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func rotBundle(t *testing.T) *policystore.Bundle {
	t.Helper()
	l, err := label.ParseLabel("s2/i3")
	if err != nil {
		t.Fatal(err)
	}
	g, h := netip.MustParseAddr("10.70.0.7"), netip.MustParseAddr("10.70.0.1")
	st := func(src, dst netip.Addr, spi uint32) xfrm.State {
		return xfrm.State{Src: src, Dst: dst, SPI: spi, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: 1, ReplayWindow: xfrm.DefaultReplayWindow, Context: "system_u:system_r:analyst_t:s2", Label: l,
			AEAD: &xfrm.Algo{Name: policystore.AEADGCM, Key: []byte(fmt.Sprintf("key-of-%08x-xx", spi))[:20], ICVBits: 128}}
	}
	b := &policystore.Bundle{Application: "analyst", Version: 3, Guest: "vm7", GuestAddr: g, HostAddr: h,
		States: []xfrm.State{st(g, h, 0xc0000001), st(h, g, 0xc0000002)}}
	for _, s := range b.States {
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

type rotRig struct {
	w       *rotWorld
	r       *Rotator
	dir     string
	inUse   map[uint32]bool
	next    uint32
	version uint64
}

func newRotRig(t *testing.T, b *policystore.Bundle, dir string, w *rotWorld, rr *rotRig) *rotRig {
	if rr == nil {
		rr = &rotRig{w: w, dir: dir, inUse: map[uint32]bool{}, next: 0xc0000010, version: b.Version}
		for _, s := range b.States {
			rr.inUse[s.SPI] = true
		}
	}
	rr.r = &Rotator{
		Agent: w, XFRM: w, Push: w.Push, StateDir: dir,
		SPI: func() (uint32, error) {
			rr.next++
			rr.inUse[rr.next] = true
			return rr.next, nil
		},
		FreeSPIs: func(s []uint32) {
			for _, x := range s {
				delete(rr.inUse, x)
			}
		},
		NextVersion: func(string) (uint64, error) { rr.version++; return rr.version, nil },
		Sleep:       func(context.Context, time.Duration) error { return nil },
	}
	return rr
}

var rotTestGuest = &Guest{Name: "vm7", VM: 7, Interface: "vif7.0"}

func TestRotateMakeBeforeBreak(t *testing.T) {
	b := rotBundle(t)
	w := newRotWorld(t, b)
	rr := newRotRig(t, b, t.TempDir(), w, nil)
	cur := b
	for i := range 5 {
		nb, res, err := rr.r.Rotate(context.Background(), rotTestGuest, cur, "manual")
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if res.Result != "ok" || len(res.NewSPIs) != 2 {
			t.Fatalf("rotation %d: %+v", i, res)
		}
		var names []string
		for _, st := range res.Steps {
			names = append(names, st.Name)
		}
		if !slices.Equal(names, RotationSteps[1:]) {
			t.Fatalf("rotation %d timed steps %q, want %q", i, names, RotationSteps[1:])
		}
		for k, s := range nb.States {
			if s.SPI == cur.States[k].SPI || string(s.AEAD.Key) == string(cur.States[k].AEAD.Key) {
				t.Fatalf("rotation %d: state %d kept its SPI or key", i, k)
			}
			if s.Context != cur.States[k].Context || s.Label != cur.States[k].Label || s.Reqid != cur.States[k].Reqid {
				t.Fatalf("rotation %d: state %d changed its binding", i, k)
			}
		}
		want := []uint32{nb.States[0].SPI, nb.States[1].SPI}
		slices.Sort(want)
		if h, g := w.spis(w.host), w.spis(w.guest); !slices.Equal(h, want) || !slices.Equal(g, want) {
			t.Fatalf("rotation %d: host %x guest %x, want %x only", i, h, g, want)
		}
		cur = nb
	}
	if len(w.violations) > 0 {
		t.Fatalf("make-before-break broken:\n%s", strings.Join(w.violations, "\n"))
	}
	if len(w.records) != 0 {
		t.Fatalf("agent records left: %v", w.records)
	}
	if len(rr.inUse) != 2 {
		t.Fatalf("%d SPIs in use after the rotations, want 2 (the old ones freed)", len(rr.inUse))
	}
	if js, err := rr.r.pending(); err != nil || len(js) != 0 {
		t.Fatalf("journals left: %d %v", len(js), err)
	}
}

// TestRotateCrashAtEveryStep: the loader dies (no rollback runs) right
// after each step is journalled; a new loader's Recover leaves the guest
// with either the whole old set or the whole new one, on both ends, no
// agent record, no journal, and make-before-break held throughout.
func TestRotateCrashAtEveryStep(t *testing.T) {
	errCrash := errors.New("killed")
	for _, step := range RotationSteps[:len(RotationSteps)-1] {
		t.Run(step, func(t *testing.T) {
			b := rotBundle(t)
			w := newRotWorld(t, b)
			dir := t.TempDir()
			rr := newRotRig(t, b, dir, w, nil)
			rr.r.Inject = func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			}
			if _, _, err := rr.r.Rotate(context.Background(), rotTestGuest, b, "manual"); !errors.Is(err, errCrash) && (err == nil || !strings.Contains(err.Error(), "killed")) {
				t.Fatalf("rotate with a crash at %s: %v", step, err)
			}
			rr2 := newRotRig(t, b, dir, w, rr) // a new process, the same journal
			got, results, err := rr2.r.Recover(context.Background())
			if err != nil {
				t.Fatalf("recover: %v", err)
			}
			if len(results) != 1 {
				t.Fatalf("recover results %+v", results)
			}
			nb := got[rotTestGuest.Interface]
			if nb == nil {
				t.Fatal("recover returned no bundle for the guest")
			}
			var want []uint32
			for _, s := range nb.States {
				want = append(want, s.SPI)
			}
			slices.Sort(want)
			rolledBack := stepIndex(step) < stepIndex(stepGuestBoth)
			if rolledBack != (want[0] == 0xc0000001) {
				t.Fatalf("crash at %s: in force %x (rolled back: %v)", step, want, rolledBack)
			}
			if h, g := w.spis(w.host), w.spis(w.guest); !slices.Equal(h, want) || !slices.Equal(g, want) {
				t.Fatalf("crash at %s: host %x guest %x, want %x only (stale state left)", step, h, g, want)
			}
			if len(w.violations) > 0 {
				t.Fatalf("make-before-break broken:\n%s", strings.Join(w.violations, "\n"))
			}
			if len(w.records) != 0 {
				t.Fatalf("agent records left: %v", w.records)
			}
			if len(rr.inUse) != 2 {
				t.Fatalf("%d SPIs in use, want 2", len(rr.inUse))
			}
			if js, err := rr2.r.pending(); err != nil || len(js) != 0 {
				t.Fatalf("journals left: %d %v", len(js), err)
			}
			// And the guest rotates again afterwards.
			if _, _, err := rr2.r.Rotate(context.Background(), rotTestGuest, nb, "manual"); err != nil {
				t.Fatalf("rotate after recovery: %v", err)
			}
		})
	}
}

// TestRotateAgentRefusalInstallsNothing: the agent refuses the
// declaration; no successor is installed anywhere.
func TestRotateAgentRefusalInstallsNothing(t *testing.T) {
	b := rotBundle(t)
	w := newRotWorld(t, b)
	w.refuse = true
	rr := newRotRig(t, b, t.TempDir(), w, nil)
	_, res, err := rr.r.Rotate(context.Background(), rotTestGuest, b, "manual")
	if err == nil || res.Result != "rolled_back" {
		t.Fatalf("rotate against a refusing agent: %+v %v", res, err)
	}
	want := []uint32{0xc0000001, 0xc0000002}
	if h, g := w.spis(w.host), w.spis(w.guest); !slices.Equal(h, want) || !slices.Equal(g, want) {
		t.Fatalf("host %x guest %x after a refused rotation", h, g)
	}
	if len(rr.inUse) != 2 {
		t.Fatalf("the refused rotation's SPIs were not freed: %v", rr.inUse)
	}
}

// TestRotatePushFailureRollsBack: the guest cannot be reached for the
// switch; the host's successors go again.
func TestRotatePushFailureRollsBack(t *testing.T) {
	b := rotBundle(t)
	w := newRotWorld(t, b)
	w.pushFail = errors.New("guest unreachable")
	rr := newRotRig(t, b, t.TempDir(), w, nil)
	_, res, err := rr.r.Rotate(context.Background(), rotTestGuest, b, "manual")
	if err == nil || res.Result != "failed" {
		// The rollback push fails too: the journal stays for Recover.
		t.Fatalf("rotate with the guest unreachable: %+v %v", res, err)
	}
	w.pushFail = nil
	if _, _, err := rr.r.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []uint32{0xc0000001, 0xc0000002}
	if h, g := w.spis(w.host), w.spis(w.guest); !slices.Equal(h, want) || !slices.Equal(g, want) {
		t.Fatalf("host %x guest %x after recovery", h, g)
	}
	if len(w.violations) > 0 {
		t.Fatalf("make-before-break broken:\n%s", strings.Join(w.violations, "\n"))
	}
}

func TestCheckSuccessorRefusesRelabel(t *testing.T) {
	b := rotBundle(t)
	old := b.States[0]
	n := old
	n.SPI = 0xc0000099
	if err := checkSuccessor(old, n); err != nil {
		t.Fatalf("a label-preserving successor: %v", err)
	}
	for name, mut := range map[string]func(*xfrm.State){
		"context": func(s *xfrm.State) { s.Context = "system_u:system_r:analyst_t:s3"; s.Label.Secrecy.Sens = 3 },
		"label":   func(s *xfrm.State) { s.Label.Integrity = 1 },
		"reqid":   func(s *xfrm.State) { s.Reqid = 2 },
		"dst":     func(s *xfrm.State) { s.Dst = netip.MustParseAddr("10.70.0.9") },
		"spi":     func(s *xfrm.State) { s.SPI = old.SPI },
		"esn":     func(s *xfrm.State) { s.ESN = !s.ESN },
	} {
		m := n
		mut(&m)
		if err := checkSuccessor(old, m); err == nil {
			t.Errorf("%s changed: accepted", name)
		} else if name != "spi" && name != "esn" && !errors.Is(err, ErrRelabel) {
			t.Errorf("%s changed: %v, want ErrRelabel", name, err)
		}
	}
}

// TestRotateAbandonForGoneGuest: a rotation journalled for a guest that
// was destroyed is dropped with every host state of it.
func TestRotateAbandonForGoneGuest(t *testing.T) {
	b := rotBundle(t)
	w := newRotWorld(t, b)
	rr := newRotRig(t, b, t.TempDir(), w, nil)
	rr.r.Inject = func(s string) error {
		if s == stepHostOut {
			return errors.New("killed")
		}
		return nil
	}
	if _, _, err := rr.r.Rotate(context.Background(), rotTestGuest, b, "manual"); err == nil {
		t.Fatal("no error from the killed rotation")
	}
	if err := rr.r.Abandon(rotTestGuest.Interface); err != nil {
		t.Fatal(err)
	}
	if h := w.spis(w.host); len(h) != 0 {
		t.Fatalf("host states of the gone guest left: %x", h)
	}
	if len(w.records) != 0 || len(rr.inUse) != 0 {
		t.Fatalf("records %v, SPIs in use %v", w.records, rr.inUse)
	}
	if js, err := rr.r.pending(); err != nil || len(js) != 0 {
		t.Fatalf("journal left: %d %v", len(js), err)
	}
}
