package bpf

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// DumpMaps are the map names `mlsgate bpf dump` accepts, in its order.
var DumpMaps = []string{MapVifs, MapLabels, MapAccepts, MapSASlots, MapSAs, MapPeers, MapVerdicts, MapGuestCtr, MapEventsLost}

// OpenPinned opens the maps pinned under dir/maps read-only, for
// inspection: no programs are loaded and nothing is written.
func OpenPinned(dir string) (*Maps, error) {
	m := &Maps{}
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	for name, dst := range map[string]**ebpf.Map{MapVifs: &m.Vifs, MapVifsBig: &m.VifsBig, MapLabels: &m.Labels, MapAccepts: &m.Accepts,
		MapSASlots: &m.SASlots, MapSAs: &m.SAs, MapPeers: &m.Peers, MapVerdicts: &m.Verdicts, MapGuestCtr: &m.GuestCtr, MapEventsLost: &m.EventsLost} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), ro)
		if err != nil {
			m.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no pinned map %s under %s/maps: is the agent (of this version) running with --pin-dir %s?", name, dir, dir)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*dst = mp
	}
	return m, nil
}

// Dump is what the pinned maps hold, decoded far enough to print.
type Dump struct {
	State      *State
	Verdicts   [2][verdict.NumReasons]Counter
	Guests     map[uint16][2][verdict.NumReasons]Counter // by counter slot
	EventsLost uint64
}

// ReadDump reads every map for Dump.
func (m *Maps) ReadDump() (*Dump, error) {
	s, err := m.ReadState()
	if err != nil {
		return nil, err
	}
	d := &Dump{State: s, Guests: map[uint16][2][verdict.NumReasons]Counter{}}
	if d.Verdicts, err = m.Counters(); err != nil {
		return nil, err
	}
	slots := map[uint16]bool{0: true}
	for _, v := range s.Vifs {
		slots[v.Slot] = true
	}
	for sl := range slots {
		c, err := m.GuestCounters(sl)
		if err != nil {
			return nil, err
		}
		d.Guests[sl] = c
	}
	var per []uint64
	if err := m.EventsLost.Lookup(uint32(0), &per); err != nil {
		return nil, fmt.Errorf("read %s: %w", MapEventsLost, err)
	}
	for _, n := range per {
		d.EventsLost += n
	}
	return d, nil
}

// Write prints the maps named in which (all of DumpMaps when empty) with
// labels as text, reasons and flags by name, and guests by VM and
// interface (ifname: ifindex to name; "" when unknown).
func (d *Dump) Write(w io.Writer, which []string, ifname func(uint32) string) error {
	if len(which) == 0 {
		which = DumpMaps
	}
	for _, n := range which {
		if !slices.Contains(DumpMaps, n) && n != MapVifsBig {
			return fmt.Errorf("no map %q; want one of %s", n, strings.Join(DumpMaps, ", "))
		}
	}
	s := d.State
	text := func(id uint32) string {
		if l, ok := s.Labels[id]; ok {
			return LabelOf(l).String()
		}
		return fmt.Sprintf("?%d", id)
	}
	rng := func(lo, hi uint32) string {
		l, lok := s.Labels[lo]
		h, hok := s.Labels[hi]
		if !lok || !hok {
			return text(lo) + "-" + text(hi)
		}
		return label.Bounds{Low: LabelOf(l), High: LabelOf(h)}.String()
	}
	vmOf := map[uint16]string{}
	for _, k := range sortedKeys(s.Vifs) {
		v := s.Vifs[k]
		vmOf[v.Slot] = fmt.Sprintf("vm %d %s (ifindex %d)", v.VmId, orDash(ifname(k)), k)
	}
	for _, n := range which {
		fmt.Fprintf(w, "%s:\n", n)
		switch n {
		case MapVifs, MapVifsBig:
			for _, k := range sortedKeys(s.Vifs) {
				if (n == MapVifs) != (k < VifsMax) {
					continue
				}
				v := s.Vifs[k]
				fmt.Fprintf(w, "  ifindex %d %s: vm %d app %d range %s flags %s slot %d", k, orDash(ifname(k)), v.VmId, v.AppId,
					rng(v.RangeLo, v.RangeHi), vifFlags(v.Flags), v.Slot)
				if v.Deny != 0 {
					fmt.Fprintf(w, " deny %s", verdict.Reason(v.Deny))
				}
				if a := netip.AddrFrom4(v.Addr4); v.Addr4 != ([4]byte{}) {
					fmt.Fprintf(w, " addr4 %s", a)
				}
				if v.Addr6 != ([16]byte{}) {
					fmt.Fprintf(w, " addr6 %s", netip.AddrFrom16(v.Addr6))
				}
				if v.Mac != ([6]byte{}) {
					fmt.Fprintf(w, " mac %x", v.Mac)
				}
				fmt.Fprintln(w)
			}
		case MapLabels:
			for _, k := range sortedKeys(s.Labels) {
				fmt.Fprintf(w, "  %d: %s\n", k, text(k))
			}
		case MapAccepts:
			for _, k := range sortedKeys(s.Accepts) {
				var ids []string
				a := s.Accepts[k]
				for r := range uint32(RangesMax) {
					if a.Ranges[r/64]>>(r%64)&1 == 1 {
						ids = append(ids, fmt.Sprint(r))
					}
				}
				fmt.Fprintf(w, "  label %d (%s): within peer ranges [%s]\n", k, text(k), strings.Join(ids, " "))
			}
		case MapSASlots:
			for _, k := range sortedKeys(s.Slots) {
				v := s.Slots[k]
				fmt.Fprintf(w, "  slot %d: %s\n", k, saText(v, text))
			}
		case MapSAs:
			keys := make([]FastpathSaKey, 0, len(s.SAs))
			for k := range s.SAs {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(a, b int) bool { return keys[a].Spi < keys[b].Spi })
			for _, k := range keys {
				fmt.Fprintf(w, "  spi %#x: %s\n", k.Spi, saText(s.SAs[k], text))
			}
		case MapPeers:
			keys := make([]FastpathPeerKey, 0, len(s.Peers))
			for k := range s.Peers {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(a, b int) bool { return fmt.Sprint(keys[a]) < fmt.Sprint(keys[b]) })
			for _, k := range keys {
				v := s.Peers[k]
				fmt.Fprintf(w, "  %s: app %d range %s (range id %d) kind %s flags %s\n", peerPrefix(k), v.AppId, rng(v.RangeLo, v.RangeHi),
					v.RangeId, peerKind(v.Kind), peerFlags(v.Flags))
			}
		case MapVerdicts:
			writeCounters(w, "  ", d.Verdicts)
		case MapGuestCtr:
			slots := make([]uint16, 0, len(d.Guests))
			for sl := range d.Guests {
				slots = append(slots, sl)
			}
			slices.Sort(slots)
			for _, sl := range slots {
				who := vmOf[sl]
				if sl == 0 {
					who = "guests without a slot"
				}
				fmt.Fprintf(w, "  slot %d, %s:\n", sl, orDash(who))
				writeCounters(w, "    ", d.Guests[sl])
			}
		case MapEventsLost:
			fmt.Fprintf(w, "  %d denial events found the ring full\n", d.EventsLost)
		}
	}
	return nil
}

func writeCounters(w io.Writer, indent string, c [2][verdict.NumReasons]Counter) {
	for dir := range 2 {
		for _, r := range verdict.Reasons() {
			if v := c[dir][r]; v.Packets != 0 {
				fmt.Fprintf(w, "%s%s %s: %d packets, %d bytes\n", indent, verdict.Direction(dir), r, v.Packets, v.Bytes)
			}
		}
	}
}

func saText(v FastpathSa, text func(uint32) string) string {
	fam := verdict.Family(v.Family)
	var dst netip.Addr
	if fam == verdict.AFInet {
		dst = netip.AddrFrom4([4]byte(v.Daddr[:4]))
	} else {
		dst = netip.AddrFrom16(v.Daddr)
	}
	var flags []string
	if v.Flags&uint8(FastpathSaFlagSA_F_VALID) != 0 {
		flags = append(flags, "valid")
	}
	if v.Flags&uint8(FastpathSaFlagSA_F_IN_OWNER_RANGE) != 0 {
		flags = append(flags, "in_owner_range")
	}
	return fmt.Sprintf("dst %s owner vm %d app %d label %s flags %s", dst, v.OwnerVm, v.AppId, text(v.LabelId), orDash(strings.Join(flags, ",")))
}

func peerPrefix(k FastpathPeerKey) string {
	bits := int(k.Prefixlen) - 8
	if verdict.Family(k.Family) == verdict.AFInet {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits).String()
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits).String()
}

func vifFlags(f uint32) string {
	var out []string
	for _, x := range []struct {
		bit  FastpathVifFlag
		name string
	}{{FastpathVifFlagVIF_F_MANAGED, "managed"}, {FastpathVifFlagVIF_F_AUDIT, "audit"},
		{FastpathVifFlagVIF_F_ALLOW_UNLABELED, "allow_unlabeled"}, {FastpathVifFlagVIF_F_DEFAULT_IN_RANGE, "default_in_range"}} {
		if f&uint32(x.bit) != 0 {
			out = append(out, x.name)
		}
	}
	return orDash(strings.Join(out, ","))
}

func peerKind(k uint8) string {
	switch verdict.PeerKind(k) {
	case verdict.PeerWeb:
		return "web"
	case verdict.PeerGuest:
		return "guest"
	case verdict.PeerHost:
		return "host"
	}
	return fmt.Sprint(k)
}

func peerFlags(f uint8) string {
	if f&uint8(FastpathPeerFlagPEER_F_ACCEPTS_DEFAULT) != 0 {
		return "accepts_default"
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
