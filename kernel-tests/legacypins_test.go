package kerneltests

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/bpf"
)

// TestPrivilegedLegacyPinsUpgrade: an agent from before the mlsg_ prefix
// pinned its maps as maps/vifs, maps/peers, ... LoadPinned pins the
// prefixed maps beside them and unpins the legacy ones, while whoever
// still holds a legacy map (the old programs in the pinned links, until
// the agent swaps them) keeps it working.
func TestPrivilegedLegacyPinsUpgrade(t *testing.T) {
	requirePrivileged(t)
	dir := t.TempDir()
	fs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", fs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(fs, unix.MNT_DETACH) })
	pins := filepath.Join(fs, "mlsgate")
	if err := os.MkdirAll(filepath.Join(pins, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The old agent's vifs map, still held by "its program" (held here).
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vifs", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(pins, "maps", "vifs")); err != nil {
		t.Fatal(err)
	}
	if err := old.Put(uint32(1), uint64(42)); err != nil {
		t.Fatal(err)
	}
	// A file of another program under a name that is not legacy: untouched.
	other, err := ebpf.NewMap(&ebpf.MapSpec{Name: "other", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Pin(filepath.Join(pins, "maps", "other")); err != nil {
		t.Fatal(err)
	}

	objs, err := bpf.LoadPinned(bpf.DefaultOptions(), pins)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if !slices.Equal(objs.LegacyPinsRemoved, []string{"vifs"}) {
		t.Errorf("legacy pins removed: %v, want [vifs]", objs.LegacyPinsRemoved)
	}
	if _, err := os.Stat(filepath.Join(pins, "maps", "vifs")); !os.IsNotExist(err) {
		t.Errorf("legacy pin maps/vifs still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(pins, "maps", "other")); err != nil {
		t.Errorf("maps/other, not a legacy name, was touched: %v", err)
	}
	for name := range objs.Maps.ByName() {
		if _, err := os.Stat(filepath.Join(pins, "maps", name)); err != nil {
			t.Errorf("map %s not pinned: %v", name, err)
		}
		if len(name) > 15 {
			t.Errorf("map name %s is longer than the kernel's 15 characters", name)
		}
	}
	var v uint64
	if err := old.Lookup(uint32(1), &v); err != nil || v != 42 {
		t.Errorf("the legacy map, still held, reads %d, %v; want 42", v, err)
	}
	// A second load (a restart) finds nothing legacy and adopts the pins.
	again, err := bpf.LoadPinned(bpf.DefaultOptions(), pins)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if len(again.LegacyPinsRemoved) != 0 {
		t.Errorf("second load removed %v", again.LegacyPinsRemoved)
	}
	for name, m := range map[string]*ebpf.Program{"mlsg_ingress": objs.MlsgIngress, "mlsg_egress": objs.MlsgEgress} {
		info, err := m.Info()
		if err != nil || info.Name != name {
			t.Errorf("program name %q (%v), want %s", info.Name, err, name)
		}
	}
}

// TestPrivilegedBPFDump: `mlsgate bpf dump` reads the pinned maps of a
// loaded fast path read-only and decodes them.
func TestPrivilegedBPFDump(t *testing.T) {
	requirePrivileged(t)
	dir := t.TempDir()
	fs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", fs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(fs, unix.MNT_DETACH) })
	pins := filepath.Join(fs, "mlsgate")
	objs, err := bpf.LoadPinned(tableOptions(), pins)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	st, err := bpf.Plan(tablePolicy())
	if err != nil {
		t.Fatal(err)
	}
	if err := objs.Maps.Apply(nil, st); err != nil {
		t.Fatal(err)
	}
	m, err := bpf.OpenPinned(pins)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d, err := m.ReadDump()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := d.Write(&out, nil, func(uint32) string { return "" }); err != nil {
		t.Fatal(err)
	}
	g := tablePolicy().Guests[probeIfindex]
	for _, want := range []string{fmt.Sprintf("ifindex %d -: vm %d app %d range %s", probeIfindex, g.VM, g.App, g.Range), "flags valid,in_owner_range", "kind web"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dump lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := bpf.OpenPinned(filepath.Join(fs, "none")); err == nil || !strings.Contains(err.Error(), "--pin-dir") {
		t.Errorf("dump of a directory with no pins: %v; want an error naming --pin-dir", err)
	}
}
