package kerneltests

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

var (
	diffCases = flag.Int("diff.cases", 100_000, "random cases in the differential test")
	diffSeed  = flag.Uint64("diff.seed", 0, "seed of the differential test (0: from the clock)")
)

const diffSPIBase = 0xc0000000

// The generated guest's link: its addresses, MAC and link-local address,
// and the host's end.
var (
	diffGuest4  = netip.MustParseAddr("10.0.0.7")
	diffHost4   = netip.MustParseAddr("10.0.0.1")
	diffGuest6  = netip.MustParseAddr("fd00::7")
	diffHostLL  = netip.MustParseAddr("fe80::1")
	diffGuestLL = verdict.LinkLocal([6]byte(macGuest))
	diffBcast4  = netip.MustParseAddr("255.255.255.255")
	macOther    = []byte{0x02, 0, 0, 0, 0, 0x99}
)

// gen draws policies and packets from small pools so that SPIs, addresses
// and labels collide often: a random 32-bit SPI would never hit an SA.
type gen struct{ r *rand.Rand }

func pick[T any](g *gen, xs ...T) T { return xs[g.r.IntN(len(xs))] }

func (g *gen) chance(p float64) bool { return g.r.Float64() < p }

var (
	poolV4 = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.7"),
		netip.MustParseAddr("10.0.1.9"), netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")}
	poolV6 = []netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::7"),
		netip.MustParseAddr("fd00:1::9"), netip.MustParseAddr("fe80::7"), netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("::ffff:10.0.0.1"), diffHostLL, diffGuestLL, netip.IPv6Unspecified(),
		netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::1:2"), netip.MustParseAddr("ff02::1:ff00:1"),
		netip.MustParseAddr("ff02::1:ff00:7")}
	poolPrefixes = []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/24"),
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.0.1.0/24"),
		netip.MustParsePrefix("fd00::1/128"), netip.MustParsePrefix("fd00::/16"), netip.MustParsePrefix("::/0"),
		netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("::ffff:0:0/96")}
	poolCats = []int{0, 1, 2, 5, 63, 64, 1023}
)

func (g *gen) label() label.Label {
	var l label.Label
	l.Secrecy.Sens = pick(g, uint8(0), 0, 2, 3, 5, 6, 9, 15)
	l.Integrity = pick(g, label.Integrity(0), 0, 1, 3, 5, 15)
	for _, c := range poolCats {
		if g.chance(0.3) {
			l.Secrecy.Cats.Add(c)
		}
	}
	return l
}

func (g *gen) bounds() label.Bounds {
	a, b := g.label(), g.label()
	if g.chance(0.15) {
		return label.Bounds{Low: label.Default, High: label.LabelLUB(a, b)}
	}
	return label.Bounds{Low: label.LabelGLB(a, b), High: label.LabelLUB(a, b)}
}

// inside draws a label within b (b valid): GLB(high, LUB(low, x)).
func (g *gen) inside(b label.Bounds) label.Label {
	return label.LabelGLB(b.High, label.LabelLUB(b.Low, g.label()))
}

func (g *gen) addr(fam verdict.Family) netip.Addr {
	if fam == verdict.AFInet {
		return pick(g, poolV4...)
	}
	return pick(g, poolV6...)
}

func (g *gen) family() verdict.Family { return pick(g, verdict.AFInet, verdict.AFInet6) }

func (g *gen) spi() uint32 {
	if g.chance(0.6) {
		return diffSPIBase + uint32(g.r.IntN(6))
	}
	return 0x1000 + uint32(g.r.IntN(6))
}

func (g *gen) policy() *verdict.Policy {
	p := &verdict.Policy{Guests: map[uint32]verdict.Guest{}, SPIBase: diffSPIBase, SPISlots: 64, APIPort: apiPort, Enforce: true}
	gu := verdict.Guest{VM: 7, App: 1, Range: g.bounds()}
	switch {
	case g.chance(0.03): // no guest: unmanaged
	case g.chance(0.04): // an undeclared vif of the agent's patterns
		p.Guests[probeIfindex] = verdict.Guest{Deny: verdict.DenyUndeclared}
	default:
		gu = verdict.Guest{VM: pick(g, uint32(7), 8), App: pick(g, uint32(1), 2), Range: g.bounds(),
			AllowUnlabeled: g.chance(0.7), Audit: g.chance(0.1)}
		if g.chance(0.7) {
			gu.Addr4 = diffGuest4
		}
		if g.chance(0.7) {
			gu.Addr6 = diffGuest6
		}
		if g.chance(0.85) {
			gu.MAC = [6]byte(macGuest)
		}
		if g.chance(0.85) {
			gu.HostAddr4 = diffHost4
		}
		if g.chance(0.85) {
			gu.HostAddr6 = diffHostLL
		}
		if g.chance(0.05) { // a guest the planner refuses
			switch g.r.IntN(4) {
			case 0:
				gu.MAC[0] |= 1
			case 1:
				gu.HostAddr6 = netip.MustParseAddr("fd00::1")
			case 2: // the same VM on another vif with another range
				p.Guests[probeIfindex+1] = verdict.Guest{VM: gu.VM, App: gu.App, Range: label.Bounds{High: label.LabelLUB(gu.Range.High, g.label())}, MAC: [6]byte{2, 0, 0, 0, 0, 8}}
				if p.Guests[probeIfindex+1].Range == gu.Range {
					gu.MAC[0] |= 1
				}
			default: // its MAC claimed by another guest
				gu.MAC = [6]byte(macGuest)
				p.Guests[probeIfindex+1] = verdict.Guest{VM: 99, App: 1, Range: gu.Range, MAC: gu.MAC}
			}
		}
		p.Guests[probeIfindex] = gu
	}
	slots := map[uint32]bool{}
	keys := map[string]bool{}
	for range g.r.IntN(6) {
		sa := verdict.SA{SPI: g.spi(), Family: g.family(), Owner: pick(g, uint32(7), 8), App: pick(g, uint32(1), 2), Label: g.label()}
		if g.chance(0.5) { // one the guest may use
			sa.Owner, sa.App, sa.Label = gu.VM, gu.App, g.inside(gu.Range)
		}
		if g.chance(0.85) {
			sa.Daddr = g.addr(sa.Family).Unmap()
			if verdict.FamilyOf(sa.Daddr) != sa.Family || sa.Daddr.IsUnspecified() {
				continue
			}
		}
		inSlots := sa.SPI >= p.SPIBase && sa.SPI-p.SPIBase < p.SPISlots
		key := fmt.Sprint(sa.SPI, sa.Family, sa.Dest())
		if (inSlots && slots[sa.SPI]) || keys[key] {
			continue
		}
		slots[sa.SPI], keys[key] = inSlots, true
		p.SAs = append(p.SAs, sa)
	}
	seen := map[netip.Prefix]bool{}
	for range g.r.IntN(5) {
		pe := verdict.Peer{Prefix: pick(g, poolPrefixes...), App: pick(g, uint32(0), 1, 2), Range: g.bounds(),
			Kind: pick(g, verdict.PeerWeb, verdict.PeerGuest, verdict.PeerHost)}
		if g.chance(0.5) { // one that accepts the guest's labels
			pe.App = pick(g, uint32(0), gu.App)
			pe.Range = label.Bounds{Low: label.Default, High: label.LabelLUB(gu.Range.High, g.label())}
		}
		if seen[pe.Prefix] {
			continue
		}
		seen[pe.Prefix] = true
		p.Peers = append(p.Peers, pe)
	}
	return p
}

// packet draws a frame: mostly well formed, sometimes cut short or lying
// about its lengths.
func (g *gen) packet(p *verdict.Policy) verdict.Packet {
	pkt := verdict.Packet{Ifindex: probeIfindex, Dir: pick(g, verdict.Ingress, verdict.Egress), RootSocket: g.chance(0.5)}
	var f rawFrame
	switch n := g.r.IntN(20); {
	case n < 6:
		f = g.control(pkt.Dir)
	case n == 6:
		f.ethertype = 0x0806
		f.l4 = make([]byte, 28)
	case n == 7:
		f.ethertype = pick(g, uint16(0x88cc), 0x8847, 0x0842)
		f.l4 = make([]byte, g.r.IntN(40)+1)
	default:
		fam := g.family()
		f.src, f.dst = g.addr(fam), g.addr(fam)
		if fam == verdict.AFInet {
			f.src, f.dst = f.src.Unmap(), f.dst.Unmap()
			if !f.src.Is4() || !f.dst.Is4() {
				f.src, f.dst = netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.0.1")
			}
		} else if f.src.Is4() || f.dst.Is4() {
			f.src, f.dst = netip.MustParseAddr("fd00::7"), netip.MustParseAddr("fd00::1")
		}
		if g.chance(0.6) { // the guest's own address as source, or destination toward it
			if pkt.Dir == verdict.Ingress {
				f.src = map[bool]netip.Addr{true: netip.MustParseAddr("10.0.0.7"), false: netip.MustParseAddr("fd00::7")}[fam == verdict.AFInet]
			} else {
				f.dst = map[bool]netip.Addr{true: netip.MustParseAddr("10.0.0.7"), false: netip.MustParseAddr("fd00::7")}[fam == verdict.AFInet]
			}
		}
		if g.chance(0.05) {
			f.smac = macOther
		}
		f.proto = pick(g, uint8(17), 17, 6, 50, 50, 50, 58, 1, 59, 132)
		switch f.proto {
		case 17:
			f.l4 = udpBytes(pick(g, uint16(68), 67, 500, 4500, 546, 547, 9000), pick(g, uint16(67), 68, 500, 4500, 546, 547, 53), make([]byte, g.r.IntN(16)))
			if g.chance(0.3) && len(f.l4) >= 12 {
				f.l4[8] = 1 // ESP-in-UDP rather than the non-ESP marker
			}
		case 6:
			f.l4 = tcpFlagBytes(pick(g, uint16(40000), apiPort), pick(g, uint16(443), apiPort), pick(g, uint8(0x02), 0x12, 0x10))
		case 50:
			spi := g.spi()
			if len(p.SAs) > 0 && g.chance(0.7) {
				sa := p.SAs[g.r.IntN(len(p.SAs))]
				spi = sa.SPI
				if sa.Family == fam && g.chance(0.7) {
					f.dst = sa.Dest()
				}
			}
			f.l4 = espBytes(spi, 1, g.r.IntN(24))
		case 58:
			f.l4 = append([]byte{pick(g, uint8(128), 129, 130, 133, 134, 135, 136, 137, 143, 1)}, make([]byte, 7)...)
		default:
			f.l4 = make([]byte, g.r.IntN(20))
		}
		if fam == verdict.AFInet && g.chance(0.1) {
			f.ipv4Opts = g.r.IntN(10) + 1
		}
		if g.chance(0.05) {
			f.laterFrag = true
		}
		if fam == verdict.AFInet6 && g.chance(0.25) {
			for range g.r.IntN(10) + 1 {
				f.ext = append(f.ext, pick(g, uint8(0), 43, 60, 44, 51))
			}
			f.extLen = pick(g, uint8(0), 0, 1, 2, 20)
		}
		if g.chance(0.05) {
			f.lenDelta = pick(g, -30, -9, -1, 1, 4)
		}
	}
	if g.chance(0.1) {
		f.vlans = g.r.IntN(4)
	}
	frame := f.bytes()
	if g.chance(0.08) {
		frame = frame[:14+g.r.IntN(len(frame)-14)+1]
	}
	// BPF_PROG_TEST_RUN refuses an untagged IP frame shorter than the fixed
	// IP header; such frames are covered behind VLAN tags.
	if f.vlans == 0 && f.src.IsValid() {
		min := 14 + 20
		if f.src.Is6() {
			min = 14 + 40
		}
		for len(frame) < min {
			frame = append(frame, 0)
		}
	}
	pkt.Frame = frame
	if g.chance(0.25) {
		pkt.Secpath = &verdict.Secpath{SPI: g.spi(), Family: g.family()}
		if len(p.SAs) > 0 && g.chance(0.7) {
			sa := p.SAs[g.r.IntN(len(p.SAs))]
			pkt.Secpath = &verdict.Secpath{SPI: sa.SPI, Family: sa.Family}
		}
	}
	return pkt
}

// control draws a link-control frame between the guest and its host-side
// address (ARP, DHCP, DHCPv6, ND/MLD, IKE, the API port) in direction dir,
// then often breaks one thing about it: an address, a port, the hop limit,
// the size, the MAC, a field of the ARP body.
func (g *gen) control(dir verdict.Direction) rawFrame {
	in := dir == verdict.Ingress
	// src, dst: the guest's side first from the guest, the host's toward it.
	ends := func(guest, host netip.Addr) (netip.Addr, netip.Addr) {
		if in {
			return guest, host
		}
		return host, guest
	}
	ports := func(guest, host uint16) (uint16, uint16) {
		if in {
			return guest, host
		}
		return host, guest
	}
	var f rawFrame
	if !in {
		f.smac = macHost
	}
	switch g.r.IntN(7) {
	case 0: // ARP
		f.ethertype = 0x0806
		sha, tha := macGuest, make([]byte, 6)
		if !in {
			sha, tha = macHost, macGuest
		}
		spa, tpa := ends(diffGuest4, diffHost4)
		if in && g.chance(0.2) {
			spa = netip.IPv4Unspecified()
		}
		if g.chance(0.2) {
			spa = pick(g, poolV4...)
		}
		if g.chance(0.2) {
			tpa = pick(g, poolV4...)
		}
		body := arpBody(pick(g, uint16(1), 2, 2, 3), sha, spa, tha, tpa)
		if g.chance(0.15) {
			body[g.r.IntN(14)] ^= 1 << g.r.IntN(8) // htype, ptype, hlen, plen, oper or sender MAC
		}
		f.l4 = append(body, make([]byte, pick(g, 0, 0, 18, 19, 1072))...)
	case 1: // DHCPv4
		f.proto = 17
		f.src, f.dst = ends(diffGuest4, pick(g, diffHost4, diffBcast4))
		if in && g.chance(0.4) {
			f.src = netip.IPv4Unspecified()
		}
		sp, dp := ports(68, 67)
		f.l4 = udpBytes(sp, dp, make([]byte, pick(g, 240, 300, 560, 600)))
	case 2: // DHCPv6
		f.proto = 17
		f.src, f.dst = ends(pick(g, diffGuestLL, diffGuest6, netip.IPv6Unspecified()), pick(g, diffHostLL, netip.MustParseAddr("ff02::1:2")))
		sp, dp := ports(546, 547)
		f.l4 = udpBytes(sp, dp, make([]byte, pick(g, 40, 560, 600)))
	case 3: // ND and MLD
		f.proto = 58
		t := pick(g, uint8(130), 131, 132, 133, 134, 135, 136, 137, 143)
		f.hop = 1
		if t >= 133 && t <= 137 {
			f.hop = 255
		}
		if g.chance(0.15) {
			f.hop = pick(g, uint8(1), 64, 255)
		}
		group := pick(g, netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2"), netip.MustParseAddr("ff02::16"),
			netip.MustParseAddr("ff02::1:ff00:1"), netip.MustParseAddr("ff02::1:ff00:7"), netip.MustParseAddr("ff02::1:ff12:3456"))
		if in {
			f.src, f.dst = pick(g, diffGuestLL, diffGuest6, netip.IPv6Unspecified()), pick(g, diffHostLL, group)
		} else {
			f.src, f.dst = pick(g, diffHostLL, netip.IPv6Unspecified()), pick(g, diffGuestLL, diffGuest6, group)
		}
		f.l4 = append([]byte{t}, make([]byte, pick(g, 7, 23, 560, 600))...)
		if (t == 133 || t == 135 || t == 136) && g.chance(0.7) {
			// RS, NS, NA as a guest or host sends them: a target, and
			// perhaps a link-layer address option
			f.l4 = make([]byte, 8)
			f.l4[0] = t
			if t != 133 {
				f.l4 = append(f.l4, pick(g, diffHostLL, diffGuestLL, diffGuest6, netip.MustParseAddr("fd00::8")).AsSlice()...)
			}
			if mac := pick(g, []byte(nil), macGuest, macGuest, macOther); mac != nil {
				opt := pick(g, byte(1), 2)
				f.l4 = append(append(f.l4, opt, 1), mac...)
			}
		}
	case 4, 5: // IKE, over IPv4 or IPv6
		f.proto = 17
		f.src, f.dst = ends(diffGuest4, diffHost4)
		if g.chance(0.3) {
			f.src, f.dst = ends(pick(g, diffGuest6, diffGuestLL), diffHostLL)
		}
		pair := pick(g, [2]uint16{500, 500}, [2]uint16{4500, 4500}, [2]uint16{500, 4500}, [2]uint16{4500, 53}, [2]uint16{53, 500})
		sp, dp := ports(pair[0], pair[1])
		body := make([]byte, 28)
		if g.chance(0.3) {
			body[0] = 1 // ESP in UDP, not the non-ESP marker
		}
		f.l4 = udpBytes(sp, dp, body)
	default: // the API port
		f.proto = 6
		f.src, f.dst = ends(diffGuest4, diffHost4)
		sp, dp := ports(pick(g, uint16(40000), apiPort), pick(g, uint16(apiPort), 40000, 22))
		f.l4 = tcpFlagBytes(sp, dp, pick(g, uint8(0x02), 0x12, 0x10))
	}
	if f.src.IsValid() && g.chance(0.2) {
		if g.chance(0.5) {
			f.src = g.addr(verdict.FamilyOf(f.src))
		} else {
			f.dst = g.addr(verdict.FamilyOf(f.dst))
		}
		if f.src.Is4() != f.dst.Is4() || f.src.Is4In6() || f.dst.Is4In6() {
			f.src, f.dst = f.src.Unmap(), f.dst.Unmap()
			if f.src.Is4() != f.dst.Is4() {
				f.src, f.dst = ends(diffGuest4, diffHost4)
			}
		}
	}
	if g.chance(0.05) {
		f.smac = macOther
	}
	return f
}

// TestPrivilegedDifferential holds the kernel's verdict and reason equal to
// the Go reference on random policies and packets, and the per-CPU counters
// equal to the sum of the reasons.
func TestPrivilegedDifferential(t *testing.T) {
	requirePrivileged(t)
	enterNetNS(t)
	seed := *diffSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	g := &gen{r: rand.New(rand.NewPCG(seed, 0x6d6c7367))}
	opts := bpf.Options{SPIBase: diffSPIBase, SPISlots: 64, APIPort: apiPort, Enforce: true, EventSample: 0}
	p := newProber(t, opts)
	if err := p.maps.ResetCounters(); err != nil {
		t.Fatal(err)
	}

	var want [2][verdict.NumReasons]uint64
	var pol *verdict.Policy
	start := time.Now()
	for i := range *diffCases {
		// A new policy every few packets: installing is the slow part, and
		// several packets per policy also test that Apply's diffs leave
		// nothing stale behind.
		if i%4 == 0 {
			pol = g.policy()
			if err := p.install(pol); err != nil {
				if errors.Is(err, bpf.ErrPlan) {
					t.Fatalf("seed %d case %d: generator made a policy Plan refuses: %v", seed, i, err)
				}
				t.Fatalf("seed %d case %d: install: %v", seed, i, err)
			}
		}
		pkt := g.packet(pol)
		ref := verdict.Decide(pol, pkt)
		ret, got, err := p.run(pkt)
		if err != nil {
			t.Fatalf("seed %d case %d: %v (frame %x)", seed, i, err, pkt.Frame)
		}
		wantRet := uint32(retAllow)
		if pol.Drops(pkt.Ifindex, ref) {
			wantRet = retDrop
		}
		if got != ref || ret != wantRet {
			t.Fatalf("seed %d case %d: kernel %s (tc %#x), reference %s (tc %#x)\n dir %s secpath %+v\n frame %x\n policy %+v\n rerun: go test ./kernel-tests -run TestPrivilegedDifferential -args -diff.seed=%d",
				seed, i, got, ret, ref, wantRet, pkt.Dir, pkt.Secpath, pkt.Frame, pol, seed)
		}
		want[pkt.Dir][ref]++
	}
	elapsed := time.Since(start)

	counters, err := p.maps.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for d := range 2 {
		for _, r := range verdict.Reasons() {
			if got := counters[d][r].Packets; got != want[d][r] {
				t.Errorf("counter %s/%s = %d, want %d (seed %d)", verdict.Direction(d), r, got, want[d][r], seed)
			}
		}
	}
	// A generator that never reaches a reason would make this test pass
	// without testing it: every reason at least once in 1,000 cases (100
	// times in make test's 100,000).
	for _, r := range verdict.Reasons() {
		if n := want[0][r] + want[1][r]; n < max(uint64(*diffCases)/1000, 1) {
			t.Errorf("reason %s drawn %d times in %d cases: the generator does not reach it (seed %d)", r, n, *diffCases, seed)
		}
	}
	t.Logf("differential: %d cases (seed %d) in %v, kernel verdict and reason equal to the Go reference on every one", *diffCases, seed, elapsed.Round(time.Millisecond))
	for _, r := range verdict.Reasons() {
		t.Logf("  %-18s ingress %7d  egress %7d", r, want[0][r], want[1][r])
	}
}
