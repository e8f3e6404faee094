package bpf

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// TestPrivilegedReadStateFresh: Objects.ReadState skips the array walks
// only on the first read after LoadPinned created every map, and its
// result is then what the full read gives; maps adopted from pins, and
// any later read, are read whole.
func TestPrivilegedReadStateFresh(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (bpffs mount, BPF maps)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	fs := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", fs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(fs, unix.MNT_DETACH) })
	dir := filepath.Join(fs, "mlsgate")
	o, err := LoadPinned(DefaultOptions(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !o.fresh.Load() {
		t.Fatal("maps created by this load are not marked fresh")
	}
	got, err := o.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	want, err := o.Maps.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fresh read %+v, full read %+v", got, want)
	}
	// Entries written after the first read: every later read sees them.
	if err := o.Vifs.Update(uint32(7), FastpathVif{VmId: 7, Flags: 1}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := o.SASlots.Update(uint32(3), FastpathSa{OwnerVm: 7, Flags: uint8(FastpathSaFlagSA_F_VALID)}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	check := func(o *Objects, where string) {
		t.Helper()
		st, err := o.ReadState()
		if err != nil {
			t.Fatal(err)
		}
		if st.Vifs[7].VmId != 7 || st.Slots[3].OwnerVm != 7 {
			t.Fatalf("%s: read vifs %v slots %v, want the entries written", where, st.Vifs, st.Slots)
		}
	}
	check(o, "second read")
	o.Close()
	again, err := LoadPinned(DefaultOptions(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.fresh.Load() {
		t.Fatal("maps adopted from pins are marked fresh")
	}
	check(again, "adopted pins")
}
