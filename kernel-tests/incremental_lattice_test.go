package kerneltests

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// TestPrivilegedIncrementalLattice: the incremental planner's Commits
// applied to real maps (peer ranges dropped, replaced and added, a new
// label, a guest moved to another VM) leave the accepts bits every peer
// reads for every SA's label, and the peers' range ids, as the lattice
// says, read back from the kernel.
func TestPrivilegedIncrementalLattice(t *testing.T) {
	requirePrivileged(t)
	fs := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", fs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(fs, unix.MNT_DETACH) })
	objs, err := bpf.LoadPinned(tableOptions(), filepath.Join(fs, "mlsgate"))
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	p := tablePolicy()
	st, err := bpf.Plan(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := objs.Maps.Apply(nil, st); err != nil {
		t.Fatal(err)
	}
	in, err := bpf.NewIncremental(p, st)
	if err != nil {
		t.Fatal(err)
	}
	check := func(where string) {
		t.Helper()
		got, err := objs.Maps.ReadState()
		if err != nil {
			t.Fatal(err)
		}
		var saLabels []uint32
		for _, v := range got.Slots {
			saLabels = append(saLabels, v.LabelId)
		}
		for _, v := range got.SAs {
			saLabels = append(saLabels, v.LabelId)
		}
		if len(saLabels) == 0 || len(got.Peers) == 0 {
			t.Fatalf("%s: %d SAs, %d peers in the maps: nothing to check", where, len(saLabels), len(got.Peers))
		}
		for k, pe := range got.Peers {
			r := label.Bounds{Low: bpf.LabelOf(got.Labels[pe.RangeLo]), High: bpf.LabelOf(got.Labels[pe.RangeHi])}
			if want, ok := in.State().RangeIDs[r]; !ok || uint32(pe.RangeId) != want {
				t.Errorf("%s: peer %+v has range id %d, the state %d (%v)", where, k, pe.RangeId, want, ok)
			}
			if pe.Flags != bpf.PeerFlags(r) {
				t.Errorf("%s: peer %+v flags %#x, want %#x", where, k, pe.Flags, bpf.PeerFlags(r))
			}
			for _, id := range saLabels {
				l := bpf.LabelOf(got.Labels[id])
				bit := got.Accepts[id].Ranges[pe.RangeId/64]&(1<<(pe.RangeId%64)) != 0
				if bit != r.Contains(l) {
					t.Errorf("%s: accepts[%d] (%v) bit %d (%v) is %v", where, id, l, pe.RangeId, r, bit)
				}
			}
		}
	}
	commit := func(where string) {
		t.Helper()
		prev, next, err := in.Commit()
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if err := objs.Maps.Apply(prev, next); err != nil {
			t.Fatalf("%s: apply: %v", where, err)
		}
		check(where)
	}
	check("full plan")
	mustSet := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Drop every peer but one, then bring new ranges in: the freed ids
	// are handed out again with other ranges.
	mustSet(in.SetPeers(p.Peers[:1]))
	commit("peers dropped")
	peers := []verdict.Peer{p.Peers[0],
		{Prefix: netip.MustParsePrefix("10.0.9.0/24"), App: 1, Kind: verdict.PeerWeb, Range: mustBounds("s9-s12:c0.c5/i7-i9")},
		{Prefix: netip.MustParsePrefix("10.0.8.0/24"), App: 1, Kind: verdict.PeerWeb, Range: mustBounds("s3-s9:c1.c7/i2-i8")}}
	mustSet(in.SetPeers(peers))
	l, err := label.ParseLabel("s9:c3/i7")
	if err != nil {
		t.Fatal(err)
	}
	mustSet(in.SetSA(verdict.SA{SPI: 0xc0000100, Daddr: netip.MustParseAddr("10.0.9.1"), Family: verdict.AFInet, Owner: 7, App: 1, Label: l}))
	commit("new ranges on freed ids, a new label")
	guests := map[uint32]verdict.Guest{}
	for k, g := range p.Guests {
		g.VM += 100
		guests[k] = g
	}
	// Counts a former guest left in the slots no vif holds now: a slot
	// handed to a new VM must be zeroed first.
	held := map[uint16]bool{}
	for _, v := range in.State().Vifs {
		held[v.Slot] = true
	}
	dirty := make([]bpf.FastpathCounter, ebpf.MustPossibleCPU())
	dirty[0] = bpf.FastpathCounter{Packets: 3, Bytes: 300}
	for slot := uint32(1); slot < 32; slot++ {
		if !held[uint16(slot)] {
			if err := objs.Maps.GuestCtr.Put(slot*2*uint32(verdict.NumReasons), dirty); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustSet(in.SetGuests(guests))
	commit("guests moved to other VMs")
	for k, v := range in.State().Vifs {
		c, err := objs.Maps.GuestCounters(v.Slot)
		if err != nil {
			t.Fatal(err)
		}
		if c != ([2][verdict.NumReasons]bpf.Counter{}) {
			t.Errorf("vif %d: slot %d counts %+v right after a new VM took it", k, v.Slot, c)
		}
	}
}
