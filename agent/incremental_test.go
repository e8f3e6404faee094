package agent

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
)

// TestIncrementalAgentMatchesFullPlan drives the agent's incremental path
// with random interleaved changes: kernel SAs added, updated, rotated
// (declared successors, some relabelling) and deleted, one at a time or as
// a complete set; guests declared, redeclared and removed; interfaces
// appearing and going; peer lists and static SAs replaced. After each
// reconcile the full plan over the same inputs must find nothing to
// correct (what the safety net counts as drift), the SA counters and
// rotation verdicts must be the full computation's, and the maps must hold
// the agent's state. The bpf package's TestIncrementalMatchesFullPlan
// checks the label-id invariant at every map write.
func TestIncrementalAgentMatchesFullPlan(t *testing.T) {
	steps := 700
	if testing.Short() {
		steps = 150
	}
	for seed := range uint64(2) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { propAgent(t, seed, steps) })
	}
}

func propAgent(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	cfg := testConfig(t)
	cfg.SPISlots = 64
	k := &fakeKernel{}
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: &fakeLinks{}, SAs: &fakeSAs{}})
	if err != nil {
		t.Fatal(err)
	}
	a.applied = &bpf.State{}
	a.linksSync = true

	host := netip.MustParseAddr("10.99.0.1")
	gaddr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + i)}) }
	contexts := []string{"system_u:system_r:analyst_t:s6", "system_u:system_r:analyst_t:s9:c1", "system_u:system_r:analyst_t:s3:c0.c3", "system_u:system_r:other_t:s2", "", "not a context"}
	ranges := []string{"s0-s15:c0.c1023/i0-i10", "s5-s9:c0.c3/i1-i7", "s0-s3/i0-i1"}
	kernel := map[saID]KernelSA{} // the test's own view
	newSA := func() KernelSA {
		spi := cfg.SPIBase + uint32(rng.IntN(int(cfg.SPISlots)))
		if rng.IntN(4) == 0 {
			spi = 0x1000 + uint32(rng.IntN(32))
		}
		src := gaddr(rng.IntN(6)) // guests 0-4 may be declared; 5 never is
		dst := host
		if rng.IntN(3) == 0 {
			src, dst = host, gaddr(rng.IntN(6))
		}
		return KernelSA{Src: src, Dst: dst, SPI: spi, Proto: 50, Context: contexts[rng.IntN(len(contexts))]}
	}
	// Two SAs never share an SPI in the host's range: the host allocates
	// each once (the plan refuses a second, tested in the bpf package).
	free := func(s KernelSA) bool {
		for id := range kernel {
			if id.spi == s.SPI {
				return false
			}
		}
		for _, r := range a.desiredRotations() { // premapped successors hold their SPI too
			if r.New.SPI == s.SPI && r.New.Daddr != s.Dst {
				return false
			}
		}
		return true
	}
	guest := func(i int) GuestSpec {
		r, err := label.ParseBounds(ranges[rng.IntN(len(ranges))])
		if err != nil {
			t.Fatal(err)
		}
		return GuestSpec{Interface: fmt.Sprintf("vif%d.0", i), VM: uint32(1 + i), App: uint32(1 + rng.IntN(2)), Range: r, Addr4: gaddr(i)}
	}
	kinds := map[string]int{}
	a.onSAs(nil)
	a.reconcile()
	for step := range steps {
		var did string
		switch op := rng.IntN(100); {
		case op < 30:
			s := newSA()
			if !free(s) {
				did = "skip"
				break
			}
			kernel[saID{s.Dst, s.SPI, s.Proto}] = s
			a.onSADelta([]SAChange{{SA: s}})
			did = "sa add"
		case op < 40: // an SA's context changes in place
			for id, s := range kernel {
				s.Context = contexts[rng.IntN(len(contexts))]
				kernel[id] = s
				a.onSADelta([]SAChange{{SA: s}})
				did = "sa update"
				break
			}
		case op < 55:
			for id, s := range kernel {
				delete(kernel, id)
				a.onSADelta([]SAChange{{SA: KernelSA{Dst: s.Dst, SPI: s.SPI, Proto: s.Proto}, Gone: true}})
				did = "sa delete"
				break
			}
		case op < 63: // a declared rotation, its successor installed with the same or another context
			for _, s := range kernel {
				n := s
				n.SPI = cfg.SPIBase + uint32(rng.IntN(int(cfg.SPISlots)))
				if !free(n) {
					break
				}
				_, err := a.DeclareRotation(SARef{s.SPI, s.Dst}, SARef{n.SPI, n.Dst})
				did = fmt.Sprintf("rotation declared (%v)", err)
				a.reconcile()
				if err == nil && rng.IntN(2) == 0 {
					if rng.IntN(3) == 0 {
						n.Context = contexts[rng.IntN(3)]
					}
					kernel[saID{n.Dst, n.SPI, n.Proto}] = n
					a.onSADelta([]SAChange{{SA: n}})
					did += ", successor installed"
				}
				break
			}
		case op < 66: // the complete set, as after a resync
			var all []KernelSA
			for _, s := range kernel {
				all = append(all, s)
			}
			a.onSAs(all)
			did = "full set"
		case op < 78:
			i := rng.IntN(5)
			did = fmt.Sprintf("guest %d declared (%v)", i, a.SetGuest(guest(i)))
		case op < 84:
			_, err := a.RemoveGuest(fmt.Sprintf("vif%d.0", rng.IntN(5)))
			did = fmt.Sprintf("guest removed (%v)", err)
		case op < 90:
			i := rng.IntN(6)
			a.onLink(LinkEvent{Name: fmt.Sprintf("vif%d.0", i), Index: 100 + i, Deleted: rng.IntN(3) == 0})
			did = "link"
		case op < 95:
			var ps []PeerSpec
			for i := range rng.IntN(3) {
				r, _ := label.ParseBounds(ranges[rng.IntN(len(ranges))])
				ps = append(ps, PeerSpec{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 24), App: uint32(rng.IntN(2)), Range: r})
			}
			did = fmt.Sprintf("peers (%v)", a.SetPeers(ps))
		default:
			var ss []SASpec
			for range rng.IntN(3) {
				l, _ := label.ParseLabel("s4/i3")
				ss = append(ss, SASpec{SPI: 0x2000 + uint32(rng.IntN(4)), Daddr: host, Owner: uint32(1 + rng.IntN(5)), App: 1, Label: l})
			}
			did = fmt.Sprintf("statics (%v)", a.SetStaticSAs(ss))
		}
		kinds[strings.SplitN(did, " (", 2)[0]]++
		where := fmt.Sprintf("seed %d step %d (%s)", seed, step, did)
		checkBindings(t, a, kernel, where+", before its reconcile")
		a.reconcile()
		checkBindings(t, a, kernel, where)
		a.mu.Lock()
		if a.lastErr != nil {
			a.mu.Unlock()
			t.Fatalf("%s: reconcile: %v", where, a.lastErr)
		}
		if a.inc.eng == nil {
			a.mu.Unlock()
			t.Fatalf("%s: the incremental state was dropped", where)
		}
		p, st := a.policyFor(a.desired, a.present, a.kernelSAs)
		full, err := bpf.PlanFrom(p, a.applied)
		if err != nil {
			a.mu.Unlock()
			t.Fatalf("%s: full plan: %v", where, err)
		}
		if n := bpf.Changes(a.applied, full); n != 0 {
			a.mu.Unlock()
			t.Fatalf("%s: the full plan differs from the incremental state in %d entries", where, n)
		}
		got, want := a.saView, st
		got.rotations, want.rotations = nil, nil
		if !reflect.DeepEqual(got, want) {
			a.mu.Unlock()
			t.Fatalf("%s: counters %+v, full computation %+v", where, got, want)
		}
		verdicts := map[saKey]string{}
		for _, v := range st.rotations {
			verdicts[v.key] = v.result
		}
		if !reflect.DeepEqual(verdicts, a.rot.seen) && !(len(verdicts) == 0 && len(a.rot.seen) == 0) {
			a.mu.Unlock()
			t.Fatalf("%s: rotation verdicts %v, full computation %v", where, a.rot.seen, verdicts)
		}
		applied := a.applied
		a.mu.Unlock()
		k.mu.Lock()
		inMaps := k.state
		k.mu.Unlock()
		if n := bpf.Changes(inMaps, applied); n != 0 { // labels: those of the state (the maps keep old ones)
			t.Fatalf("%s: the maps differ from the agent's state in %d entries", where, n)
		}
	}
	st := a.Status()
	t.Logf("seed %d: %d steps; finally %+v; ops %v", seed, steps, st.SAs, kinds)
}

// checkBindings: what DeclareRotation and DropRotation learn of an SA
// (binding, by the incremental machinery) is what the full plan makes of
// it, for every kernel SA, static SA and rotation end, changes pending or
// not.
func checkBindings(t *testing.T, a *Agent, kernel map[saID]KernelSA, where string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inc.eng == nil {
		return
	}
	keys := map[saKey]bool{}
	for id := range kernel {
		keys[saKey{id.spi, id.dst}] = true
	}
	for _, s := range a.desired.SAs {
		keys[saKey{s.SPI, s.Daddr}] = true
	}
	for _, r := range a.desired.Rotations {
		keys[r.Old.key()], keys[r.New.key()] = true, true
	}
	for k := range keys {
		if got, want := a.binding(k), a.bindingFull(k); got != want {
			t.Fatalf("%s: spi %#x dst %s: incremental binding %+v, full plan %+v", where, k.spi, k.daddr, got, want)
		}
	}
}
