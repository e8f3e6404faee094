package bpf

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mlsgate/mlsgate/verdict"
)

// Slots stay with their vif and VM, a new guest never takes a slot the
// maps still count for another, and past GuestsMax-1 guests the rest
// share slot 0.
func TestAssignGuestSlots(t *testing.T) {
	prev := map[uint32]FastpathVif{3: {VmId: 7}, 4: {VmId: 8}}
	AssignGuestSlots(prev, nil)
	if prev[3].Slot == 0 || prev[4].Slot == 0 || prev[3].Slot == prev[4].Slot {
		t.Fatalf("slots %d and %d: want distinct and nonzero", prev[3].Slot, prev[4].Slot)
	}
	next := map[uint32]FastpathVif{3: {VmId: 7}, 4: {VmId: 9}, 5: {VmId: 10}}
	AssignGuestSlots(next, prev)
	if next[3].Slot != prev[3].Slot {
		t.Errorf("vif 3 (same vm) moved from slot %d to %d", prev[3].Slot, next[3].Slot)
	}
	for _, k := range []uint32{4, 5} {
		if s := next[k].Slot; s == 0 || s == prev[3].Slot || s == prev[4].Slot {
			t.Errorf("vif %d (a new guest) got slot %d; prev used %d and %d", k, s, prev[3].Slot, prev[4].Slot)
		}
	}
	if got := newSlots(prev, next); len(got) != 2 {
		t.Errorf("new slots %v, want the two of vifs 4 and 5", got)
	}
	many := map[uint32]FastpathVif{}
	for i := range uint32(GuestsMax + 5) {
		many[i+1] = FastpathVif{VmId: i}
	}
	AssignGuestSlots(many, nil)
	zero, seen := 0, map[uint16]bool{}
	for _, v := range many {
		if v.Slot == 0 {
			zero++
		} else if seen[v.Slot] {
			t.Fatalf("slot %d handed out twice", v.Slot)
		}
		seen[v.Slot] = true
	}
	if zero != 6 {
		t.Errorf("%d guests on the shared slot 0, want 6 (GuestsMax-1 own slots)", zero)
	}
}

// TestPrivilegedZeroGuestSlots: zeroGuestSlots clears every per-CPU
// counter of the slots it is given, through the kernel's batch update of
// a per-CPU array (a value per possible CPU for each key), more slots
// than one batch holds, and leaves the other slots' counters alone.
func TestPrivilegedZeroGuestSlots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF maps)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	per := 2 * uint32(verdict.NumReasons)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: uint32(binary.Size(FastpathCounter{})), MaxEntries: GuestsMax * per})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ncpu := ebpf.MustPossibleCPU()
	busy := make([]FastpathCounter, ncpu)
	for i := range busy {
		busy[i] = FastpathCounter{Packets: uint64(i + 1), Bytes: 100}
	}
	for k := range GuestsMax * per {
		if err := m.Update(k, busy, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	var slots []uint16
	zeroed := map[uint16]bool{}
	for s := uint16(1); s < GuestsMax; s += 2 { // every other slot: > batchSize keys
		slots = append(slots, s)
		zeroed[s] = true
	}
	if len(slots)*int(per) <= batchSize {
		t.Fatalf("%d keys fit one batch of %d: the test must span batches", len(slots)*int(per), batchSize)
	}
	if err := (mapSet{GuestCtr: m}).zeroGuestSlots(slots); err != nil {
		t.Fatal(err)
	}
	var got []FastpathCounter
	for k := range GuestsMax * per {
		if err := m.Lookup(k, &got); err != nil {
			t.Fatal(err)
		}
		slot := uint16(k / per)
		for cpu, c := range got {
			if want := busy[cpu]; zeroed[slot] && c != (FastpathCounter{}) || !zeroed[slot] && c != want {
				t.Fatalf("slot %d key %d cpu %d: %+v (zeroed %v)", slot, k, cpu, c, zeroed[slot])
			}
		}
	}
}
