package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

func newStateAgent(t *testing.T, dir string) (*Agent, error) {
	t.Helper()
	cfg := testConfig(t)
	cfg.StateDir = dir
	k := &fakeKernel{}
	return New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: &fakeLinks{}, SAs: &fakeSAs{}})
}

func randomGuest(rng *rand.Rand, r label.Bounds) GuestSpec {
	i := rng.IntN(40)
	return GuestSpec{Interface: fmt.Sprintf("vif%d.0", i+1), VM: uint32(i + 1), App: uint32(1 + rng.IntN(3)), Range: r,
		Addr4: netip.AddrFrom4([4]byte{10, 1, byte(i), 7}), Audit: rng.IntN(2) == 0}
}

func sortedGuests(m map[string]GuestSpec) []GuestSpec {
	out := make([]GuestSpec, 0, len(m))
	for _, g := range m {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b GuestSpec) int { return strings.Compare(a.Interface, b.Interface) })
	return out
}

// TestDesiredJournalSurvivesCrashes declares and removes guests one at a
// time and, at random points, "crashes" (the agent is dropped without any
// Close, and sometimes the journal gets the torn beginning of a record
// that was never acknowledged, or a whole record whose checksum a crash
// garbled), then starts a new agent on the state directory: it must hold
// exactly the acknowledged guests. The journal is compacted often (a small
// journalMin), so crashes fall before, after and between compactions.
func TestDesiredJournalSurvivesCrashes(t *testing.T) {
	defer func(n int64) { journalMin = n }(journalMin)
	journalMin = 2 << 10
	dir := filepath.Join(t.TempDir(), "state")
	r, _ := label.ParseBounds("s0-s15/i0-i10")
	rng := rand.New(rand.NewPCG(13, 1))
	acked := map[string]GuestSpec{}
	a, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	crashes, torn := 0, 0
	for step := range 600 {
		if rng.IntN(4) == 0 && len(acked) > 0 {
			iface := fmt.Sprintf("vif%d.0", rng.IntN(40)+1)
			found, err := a.RemoveGuest(iface)
			if err != nil {
				t.Fatalf("step %d: remove %s: %v", step, iface, err)
			}
			if _, ok := acked[iface]; ok != found {
				t.Fatalf("step %d: remove %s found %v, want %v", step, iface, found, ok)
			}
			delete(acked, iface)
		} else {
			g := randomGuest(rng, r)
			if err := a.SetGuest(g); err != nil {
				t.Fatalf("step %d: set %s: %v", step, g.Interface, err)
			}
			acked[g.Interface] = g
		}
		if rng.IntN(10) != 0 {
			continue
		}
		crashes++
		switch rng.IntN(3) {
		case 0: // the crash tore the next record
			rec, err := appendRecord(nil, journalOp{Set: new(randomGuest(rng, r))})
			if err != nil {
				t.Fatal(err)
			}
			appendFile(t, filepath.Join(dir, journalFile), rec[:1+rng.IntN(len(rec)-1)])
			torn++
		case 1: // a whole line, garbled
			rec, _ := appendRecord(nil, journalOp{Remove: "vif1.0"})
			rec[0] ^= 1
			appendFile(t, filepath.Join(dir, journalFile), rec)
			torn++
		}
		// No Close: what is on disk is all the next agent gets.
		if a, err = newStateAgent(t, dir); err != nil {
			t.Fatalf("step %d: restart after a crash: %v", step, err)
		}
		if got, want := a.desired.Guests, sortedGuests(acked); !slices.Equal(got, want) {
			t.Fatalf("step %d: after the crash the agent holds %d guests, want the %d acknowledged:\n got %+v\nwant %+v", step, len(got), len(want), got, want)
		}
		if fi, err := os.Stat(filepath.Join(dir, journalFile)); err != nil || fi.Size() != 0 {
			t.Fatalf("step %d: the journal is not folded into desired.json at start: %v %v", step, fi, err)
		}
	}
	if crashes < 30 || torn < 15 {
		t.Fatalf("only %d crashes (%d with a torn record): the test exercised too little", crashes, torn)
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestDesiredJournalReplayIsIdempotent: a crash after desired.json was
// written whole but before the journal was emptied replays records that
// desired.json already holds; the result is the same state.
func TestDesiredJournalReplayIsIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := label.ParseBounds("s0-s15/i0-i10")
	rng := rand.New(rand.NewPCG(13, 2))
	acked := map[string]GuestSpec{}
	for range 50 {
		g := randomGuest(rng, r)
		if err := a.SetGuest(g); err != nil {
			t.Fatal(err)
		}
		acked[g.Interface] = g
	}
	for _, iface := range []string{"vif1.0", "vif2.0", "vif3.0"} {
		if _, err := a.RemoveGuest(iface); err != nil {
			t.Fatal(err)
		}
		delete(acked, iface)
	}
	jpath := filepath.Join(dir, journalFile)
	journal, err := os.ReadFile(jpath)
	if err != nil || len(journal) == 0 {
		t.Fatalf("journal %q %v: want the records of 53 changes", journal, err)
	}
	peers := []PeerSpec{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), App: 1, Range: r}}
	if err := a.SetPeers(peers); err != nil { // writes desired.json whole
		t.Fatal(err)
	}
	if fi, err := os.Stat(jpath); err != nil || fi.Size() != 0 {
		t.Fatalf("journal after a whole write: %v %v, want empty", fi, err)
	}
	if err := os.WriteFile(jpath, journal, 0o600); err != nil { // the emptying never happened
		t.Fatal(err)
	}
	b, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.desired.Guests, sortedGuests(acked); !slices.Equal(got, want) {
		t.Fatalf("replayed twice: %+v\nwant %+v", got, want)
	}
	if !slices.Equal(b.desired.Peers, peers) {
		t.Fatalf("peers %+v, want %+v", b.desired.Peers, peers)
	}
}

// TestDesiredJournalRefusesDamage: a bad record followed by others is no
// torn tail but damage; the agent refuses to start rather than drop the
// changes it acknowledged.
func TestDesiredJournalRefusesDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	g := guest7(t)
	for i := range 3 {
		g.VM = uint32(i + 1)
		if err := a.SetGuest(g); err != nil {
			t.Fatal(err)
		}
	}
	jpath := filepath.Join(dir, journalFile)
	b, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20 // inside the second of three records
	if err := os.WriteFile(jpath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newStateAgent(t, dir); err == nil || !strings.Contains(err.Error(), journalFile) || !strings.Contains(err.Error(), "record 2") {
		t.Fatalf("start on a damaged journal: %v, want a refusal naming %s and its record 2", err, journalFile)
	}
}

// TestSetGuestWritesLinear: declaring N guests one at a time writes O(N)
// bytes (each change a record, desired.json rewritten only when the
// journal outgrows it), not the O(N²) of rewriting the whole state per
// declaration.
func TestSetGuestWritesLinear(t *testing.T) {
	a, err := newStateAgent(t, filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := label.ParseBounds("s0-s15:c0.c1023/i0-i10")
	const n = 2000
	for i := range n {
		if err := a.SetGuest(GuestSpec{Interface: fmt.Sprintf("vif%d.0", i+1), VM: uint32(i + 1), App: 1, Range: r, Addr4: netip.AddrFrom4([4]byte{10, byte(100 + i/250), byte(i % 250), 7})}); err != nil {
			t.Fatal(err)
		}
	}
	whole, err := json.MarshalIndent(a.desired, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	final := int64(len(whole))
	// Records are about the size of a guest in desired.json; the whole
	// writes double at most the journal's bytes, and the last one is at
	// most the final state.
	if a.store.written > 5*final+5*journalMin {
		t.Fatalf("%d declarations wrote %d bytes for a state of %d: more than linear", n, a.store.written, final)
	}
}

// TestDesiredJournalWriteFailures: a declaration whose record cannot be
// written is refused and not recorded, and no later record is appended
// behind what may be a torn one: the next declaration first writes the
// state whole and empties the journal, and is refused while it cannot.
// A restart then holds exactly the acknowledged guests.
func TestDesiredJournalWriteFailures(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	g := guest7(t)
	guest := func(n int) GuestSpec {
		x := g
		x.Interface, x.VM, x.Addr4 = fmt.Sprintf("vif%d.0", n), uint32(n), netip.AddrFrom4([4]byte{10, 70, 0, byte(n)})
		return x
	}
	if err := a.SetGuest(guest(1)); err != nil {
		t.Fatal(err)
	}
	a.store.journal.Close() // every write and truncation of it fails now
	if err := a.SetGuest(guest(2)); err == nil {
		t.Fatal("a declaration whose record could not be written was acknowledged")
	}
	// What the failed write may have left: part of the record.
	rec, _ := appendRecord(nil, journalOp{Set: new(guest(2))})
	appendFile(t, filepath.Join(dir, journalFile), rec[:len(rec)/2])
	if err := a.SetGuest(guest(3)); err == nil {
		t.Fatal("a declaration was acknowledged while the journal could not be emptied")
	}
	if _, err := a.RemoveGuest("vif1.0"); err == nil {
		t.Fatal("a removal was acknowledged while the journal could not be emptied")
	}
	if got := a.Status().Guests; len(got) != 1 || got[0].Interface != "vif1.0" {
		t.Fatalf("the agent holds %+v after refused declarations, want vif1.0 alone", got)
	}
	// The journal works again (as after a transient error): the next
	// declaration writes the state whole, empties the journal, appends.
	f, err := os.OpenFile(filepath.Join(dir, journalFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.store.journal = f
	if err := a.SetGuest(guest(4)); err != nil {
		t.Fatal(err)
	}
	b, err := newStateAgent(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.desired.Guests, []GuestSpec{guest(1), guest(4)}; !slices.Equal(got, want) {
		t.Fatalf("after a restart %+v, want the acknowledged %+v", got, want)
	}
}
