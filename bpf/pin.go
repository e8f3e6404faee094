package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/mlsgate/mlsgate/label"
	"golang.org/x/sys/unix"
)

// The agent keeps the fast path alive across its own restarts and crashes
// by pinning it in bpffs:
//
//	<dir>/maps/<map>                         every map, by name (mlsg_…; see load.go)
//	<dir>/links/<ifindex>_ingress|_egress    the tcx links of each vif
//
// A pinned link keeps its program attached, and a pinned map keeps its
// contents, with no process holding them: killing the agent leaves the
// last policy enforcing (fail closed). A new agent loads its programs
// against the same pinned maps and swaps them into the pinned links.

// ErrPinnedMismatch is returned when pinned maps exist but do not match
// what this build would create (another version, other sizes).
var ErrPinnedMismatch = errors.New("pinned maps do not match this build")

// LoadPinned loads the vif programs with their maps pinned under
// dir/maps: existing pins are reused with their contents, missing ones are
// created and pinned.
func LoadPinned(opts Options, dir string) (*Objects, error) {
	mapDir := filepath.Join(dir, "maps")
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory %s: %w (is bpffs mounted on /sys/fs/bpf?)", mapDir, err)
	}
	spec, err := LoadFastpath()
	if err != nil {
		return nil, fmt.Errorf("parse fastpath object: %w", err)
	}
	if err := Configure(spec, opts); err != nil {
		return nil, err
	}
	for _, m := range spec.Maps {
		if m.Name == ".rodata" || strings.HasPrefix(m.Name, ".") {
			continue
		}
		m.Pinning = ebpf.PinByName
	}
	// Fresh: no pin of ours is there, so every map is created empty by
	// this load (the pin directory is locked: nobody pins in between).
	fresh := true
	for _, m := range spec.Maps {
		if m.Pinning != ebpf.PinByName {
			continue
		}
		if _, err := os.Lstat(filepath.Join(mapDir, m.Name)); !errors.Is(err, os.ErrNotExist) {
			fresh = false
		}
	}
	o := &Objects{Options: opts}
	o.fresh.Store(fresh)
	err = spec.LoadAndAssign(o, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapDir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("%w: %v; the pins in %s come from another version or other --spi-slots: remove them with 'mlsgate agent cleanup' (traffic on managed vifs is then unfiltered until the agent starts)", ErrPinnedMismatch, err, mapDir)
	}
	if err != nil {
		return nil, fmt.Errorf("load fastpath: %w", verifierError(err))
	}
	o.LegacyPinsRemoved, err = removeLegacyPins(mapDir)
	if err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// removeLegacyPins unpins the maps an agent from before the mlsg_ prefix
// left under mapDir, and returns their names. It is safe while those
// maps are in use: a pin is one reference, and the programs that the
// pinned links still run hold their own, so the old programs keep
// enforcing the last policy with their maps until the agent has filled
// the new maps and swapped its programs into the links (Agent.reconcile:
// maps first, then attach); then the old maps go with the old programs.
// Only the legacy names are touched, and only when they are BPF maps.
func removeLegacyPins(mapDir string) ([]string, error) {
	var removed []string
	for _, n := range legacyMapNames {
		path := filepath.Join(mapDir, n)
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("legacy pin %s is not a map this build can read (%v); remove it by hand or with 'mlsgate agent cleanup'", path, err)
		}
		m.Close()
		if err := os.Remove(path); err != nil {
			return removed, fmt.Errorf("unpin legacy map %s: %w", path, err)
		}
		removed = append(removed, n)
	}
	return removed, nil
}

// linkPath names the pinned tcx link of one direction of a vif.
func linkPath(dir string, ifindex int, dirName string) string {
	return filepath.Join(dir, "links", fmt.Sprintf("%d_%s", ifindex, dirName))
}

// AttachPinned attaches the vif programs to ifindex with tcx links pinned
// under dir/links, or, where links are pinned already, swaps the programs
// in those links atomically (tcx link update): a packet sees the old
// program or the new one, never none. It returns "updated", "attached" or
// "clsact" (a kernel without tcx; filters persist without pins).
func AttachPinned(dir string, ifindex int, ingress, egress *ebpf.Program) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		return "", err
	}
	mode := "attached"
	var attached []link.Link
	undo := func() {
		for _, l := range attached {
			l.Unpin()
			l.Close()
		}
	}
	for _, h := range []struct {
		name string
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{"ingress", ingress, ebpf.AttachTCXIngress}, {"egress", egress, ebpf.AttachTCXEgress}} {
		path := linkPath(dir, ifindex, h.name)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if ok, _ := linkOnIfindex(l, ifindex); ok {
				err = l.Update(h.prog)
				l.Close()
				if err != nil {
					undo()
					return "", fmt.Errorf("update pinned %s link of ifindex %d: %w", h.name, ifindex, err)
				}
				mode = "updated"
				continue
			}
			// A link left by an interface that is gone (the index was
			// reused): drop it.
			l.Unpin()
			l.Close()
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.at})
		if errors.Is(err, ebpf.ErrNotSupported) && len(attached) == 0 && mode == "attached" {
			_, err := attachClsact(ifindex, ingress, egress)
			return "clsact", err
		}
		if err != nil {
			undo()
			return "", fmt.Errorf("attach tcx %s to ifindex %d: %w", h.name, ifindex, err)
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			undo()
			return "", fmt.Errorf("pin %s: %w", path, err)
		}
		attached = append(attached, l)
	}
	for _, l := range attached {
		l.Close() // the pin holds it now
	}
	return mode, nil
}

func linkOnIfindex(l link.Link, ifindex int) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, err
	}
	tcx := info.TCX()
	if tcx == nil {
		return false, nil
	}
	return int(tcx.Ifindex) == ifindex, nil
}

// DetachPinned removes the pinned links of ifindex, which detaches the
// programs. A missing pin is not an error.
func DetachPinned(dir string, ifindex int) error {
	var errs []error
	for _, d := range []string{"ingress", "egress"} {
		path := linkPath(dir, ifindex, d)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			// Not a link we can load: remove the file so it is not
			// adopted later.
			errs = append(errs, os.Remove(path))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	return errors.Join(errs...)
}

// PinnedIfindexes lists the interfaces with pinned links under dir.
func PinnedIfindexes(dir string) ([]int, error) {
	ents, err := os.ReadDir(filepath.Join(dir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		if n, err := strconv.Atoi(num); ok && err == nil {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out, nil
}

// RemovePins removes every pin under dir: links first (which detaches the
// programs), then maps. dir must be on a bpffs: nothing is removed from any
// other filesystem. It takes no lock: 'agent cleanup' holds LockPinDir
// around it, so that it never runs under a live agent.
func RemovePins(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w at %s: the directory does not exist", ErrNothingPinned, dir)
		}
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type != BPFFSMagic {
		return fmt.Errorf("%s is %w (filesystem magic %#x); refusing to remove anything from it", dir, ErrNotBPFFS, fs.Type)
	}
	idx, err := PinnedIfindexes(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range idx {
		errs = append(errs, DetachPinned(dir, i))
	}
	errs = append(errs, os.RemoveAll(filepath.Join(dir, "links")), os.RemoveAll(filepath.Join(dir, "maps")))
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ReadState reads what the maps hold now back into a State, so that an
// agent that adopts pinned maps can apply its desired state as a diff
// against it. Array entries that are zero (unused vif slots, invalid SA
// slots) are absent from the result.
func (m *Maps) ReadState() (*State, error) { return m.readState(false) }

// ReadState is Maps.ReadState that, the first time after LoadPinned
// created every map, skips the walk of the vifs and SA slot arrays,
// which are all zero then (at 200k SA slots, ~0.1 s in the kernel). The
// result is the same.
func (o *Objects) ReadState() (*State, error) {
	return o.Maps.readState(o.fresh.Swap(false))
}

func (m *Maps) readState(fresh bool) (*State, error) {
	s := &State{
		Vifs: map[uint32]FastpathVif{}, Labels: map[uint32]FastpathMlsLabel{}, Slots: map[uint32]FastpathSa{},
		SAs: map[FastpathSaKey]FastpathSa{}, Peers: map[FastpathPeerKey]FastpathPeer{}, LabelIDs: map[label.Label]uint32{},
		Accepts: map[uint32]FastpathLabelAccepts{}, RangeIDs: map[label.Bounds]uint32{},
	}
	if err := readArrayUnless(fresh, m.Vifs, func(k uint32, v FastpathVif) {
		if v.Flags != 0 {
			s.Vifs[k] = v
		}
	}); err != nil {
		return nil, fmt.Errorf("read vifs: %w", err)
	}
	var (
		vk uint32
		vv FastpathVif
	)
	vit := m.VifsBig.Iterate()
	for vit.Next(&vk, &vv) {
		s.Vifs[vk] = vv
	}
	if err := vit.Err(); err != nil {
		return nil, fmt.Errorf("read vifs_big: %w", err)
	}
	if err := readArrayUnless(fresh, m.SASlots, func(k uint32, v FastpathSa) {
		if v.Flags&uint8(FastpathSaFlagSA_F_VALID) != 0 {
			s.Slots[k] = v
		}
	}); err != nil {
		return nil, fmt.Errorf("read sa_slots: %w", err)
	}
	var (
		sk FastpathSaKey
		sv FastpathSa
	)
	it := m.SAs.Iterate()
	for it.Next(&sk, &sv) {
		s.SAs[sk] = sv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read sas: %w", err)
	}
	var (
		pk FastpathPeerKey
		pv FastpathPeer
	)
	it = m.Peers.Iterate()
	for it.Next(&pk, &pv) {
		s.Peers[pk] = pv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read peers: %w", err)
	}
	// Labels: the default at id 0, and every id something refers to.
	used := map[uint32]bool{DefaultLabelID: true}
	for _, v := range s.Vifs {
		used[v.RangeLo], used[v.RangeHi] = true, true
	}
	for _, v := range s.Slots {
		used[v.LabelId] = true
	}
	for _, v := range s.SAs {
		used[v.LabelId] = true
	}
	for _, v := range s.Peers {
		used[v.RangeLo], used[v.RangeHi] = true, true
	}
	for id := range used {
		var kl FastpathMlsLabel
		if err := m.Labels.Lookup(id, &kl); err != nil {
			return nil, fmt.Errorf("read label %d: %w", id, err)
		}
		s.Labels[id] = kl
		l := LabelOf(kl)
		if prev, dup := s.LabelIDs[l]; !dup || id < prev {
			s.LabelIDs[l] = id
		}
		var acc FastpathLabelAccepts
		if err := m.Accepts.Lookup(id, &acc); err != nil {
			return nil, fmt.Errorf("read accepts %d: %w", id, err)
		}
		s.Accepts[id] = acc
	}
	// Peer ranges: each peer's bounds, by the labels read above.
	for _, v := range s.Peers {
		b := label.Bounds{Low: LabelOf(s.Labels[v.RangeLo]), High: LabelOf(s.Labels[v.RangeHi])}
		if id, dup := s.RangeIDs[b]; !dup || uint32(v.RangeId) < id {
			s.RangeIDs[b] = uint32(v.RangeId)
		}
	}
	return s, nil
}

// readArrayUnless is readArray unless the array is known to be all zero.
func readArrayUnless[V any](zero bool, m *ebpf.Map, fn func(uint32, V)) error {
	if zero {
		return nil
	}
	return readArray(m, fn)
}

// readArray walks an ARRAY map in batches.
func readArray[V any](m *ebpf.Map, fn func(uint32, V)) error {
	const chunk = 4096
	keys := make([]uint32, chunk)
	vals := make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			var k uint32
			var v V
			it := m.Iterate()
			for it.Next(&k, &v) {
				fn(k, v)
			}
			return it.Err()
		}
		if err != nil {
			return err
		}
	}
}

// PinnedLinkAttached reports whether both pinned tcx links of ifindex
// exist under dir and are still attached to that interface. A link
// detached or unpinned behind the agent's back (another agent, bpftool)
// reads false.
func PinnedLinkAttached(dir string, ifindex int) (bool, error) {
	for _, d := range []string{"ingress", "egress"} {
		l, err := link.LoadPinnedLink(linkPath(dir, ifindex, d), nil)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("load pinned %s link of ifindex %d: %w", d, ifindex, err)
		}
		ok, err := linkOnIfindex(l, ifindex)
		l.Close()
		if err != nil {
			return false, fmt.Errorf("pinned %s link of ifindex %d: %w", d, ifindex, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// ReadVifs reads the vifs map's entries in use (flags set), by ifindex.
func (m *Maps) ReadVifs() (map[uint32]FastpathVif, error) {
	vifs := map[uint32]FastpathVif{}
	if err := readArray(m.Vifs, func(k uint32, v FastpathVif) {
		if v.Flags != 0 {
			vifs[k] = v
		}
	}); err != nil {
		return nil, fmt.Errorf("read vifs: %w", err)
	}
	return vifs, nil
}
