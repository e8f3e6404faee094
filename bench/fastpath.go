package bench

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// FastpathCase is one program and packet measured at one SA count.
type FastpathCase struct {
	SAs int
	// Family is the packet's IP version, "ipv4" or "ipv6" (results from
	// before IPv6 was measured leave it empty: they are IPv4).
	Family      string         `json:",omitempty"`
	Name        string         // "empty", "parse", "esp", "plain", "secpath", "step …"
	Reason      verdict.Reason // what the packet got (empty and parse: none)
	NsPerPacket float64
	Ratio       float64 // to the empty program at the same SA count and family
}

// Packet families of FastpathCase.Family.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
)

// MapMemory is what the kernel charged for each map at one SA count.
type MapMemory struct {
	SAs   int
	Bytes map[string]uint64
	Total uint64
	Fill  time.Duration // planning and writing every map
}

// FastpathConfig says what to measure.
type FastpathConfig struct {
	SACounts []int // e.g. 10, 10_000, 1_000_000
	Repeat   int   // BPF_PROG_TEST_RUN repetitions per measurement
	Rounds   int   // measurements per case; the fastest is kept
	Progress func(format string, args ...any)
}

const ifindex = 1 // BPF_PROG_TEST_RUN runs packets on the namespace's loopback

var (
	benchGuest  = netip.MustParseAddr("10.0.0.7")
	benchHost   = netip.MustParseAddr("10.0.0.1")
	benchWeb    = netip.MustParseAddr("10.0.1.5")
	benchGuest6 = netip.MustParseAddr("fd00::7")
	benchHost6  = netip.MustParseAddr("fd00::1")
	benchWeb6   = netip.MustParseAddr("fd00:1::5")
	spiBase     = uint32(0xc0000000)
)

// benchPolicy: one guest with an IPv4 and an IPv6 address, n SAs owned by
// it in the host's SPI range (even slots IPv4, odd slots IPv6), a few peers
// of each family. The SAs the packets use sit in the middle of the range
// (benchSPI).
func benchPolicy(n int) *verdict.Policy {
	rng, _ := label.ParseBounds("s0-s15:c0.c1023/i0-i15")
	guestRange, _ := label.ParseBounds("s0-s9:c0.c511/i0-i9")
	l, _ := label.ParseLabel("s5:c1.c200,c400/i4")
	p := &verdict.Policy{
		Guests: map[uint32]verdict.Guest{ifindex: {VM: 7, App: 1, Range: guestRange, Addr4: benchGuest, Addr6: benchGuest6, AllowUnlabeled: true,
			// The link model: the frame source check runs on every packet.
			HostAddr4: benchHost, HostAddr6: netip.MustParseAddr("fe80::1"), MAC: [6]byte{2, 0, 0, 0, 0, 7}}},
		Peers: []verdict.Peer{
			{Prefix: netip.MustParsePrefix("10.0.0.1/32"), Kind: verdict.PeerHost, Range: rng},
			{Prefix: netip.MustParsePrefix("10.0.1.0/24"), App: 1, Kind: verdict.PeerWeb, Range: rng},
			{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Kind: verdict.PeerWeb, Range: guestRange},
			{Prefix: netip.MustParsePrefix("fd00::1/128"), Kind: verdict.PeerHost, Range: rng},
			{Prefix: netip.MustParsePrefix("fd00:1::/64"), App: 1, Kind: verdict.PeerWeb, Range: rng},
			{Prefix: netip.MustParsePrefix("::/0"), Kind: verdict.PeerWeb, Range: guestRange},
		},
		SPIBase: spiBase, SPISlots: uint32(max(n, 1)), Enforce: true,
	}
	p.SAs = make([]verdict.SA, n)
	for i := range p.SAs {
		p.SAs[i] = verdict.SA{SPI: spiBase + uint32(i), Family: verdict.AFInet, Daddr: benchHost, Owner: 7, App: 1, Label: l}
		if i%2 == 1 {
			p.SAs[i].Family, p.SAs[i].Daddr = verdict.AFInet6, benchHost6
		}
	}
	return p
}

// benchSPI is the SPI of an SA of family fam in the middle of n SAs laid
// out by benchPolicy (n >= 2 for IPv6).
func benchSPI(n int, fam verdict.Family) uint32 {
	i := n / 2 &^ 1
	if fam == verdict.AFInet6 {
		i++
	}
	return spiBase + uint32(i)
}

// frame is an Ethernet frame carrying an IPv4 or IPv6 packet (by src's
// family) with the given L4 protocol and bytes.
func frame(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Is6() {
		return frame6(src, dst, proto, l4)
	}
	f := make([]byte, 14+20, 14+20+len(l4))
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 7})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8], ip[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	return append(f, l4...)
}

func frame6(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	f := make([]byte, 14+40, 14+40+len(l4))
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 7})
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6], ip[7] = proto, 64
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(f, l4...)
}

// espFrame is an ESP packet from the guest to the host (family of fam)
// under spi.
func espFrame(fam verdict.Family, spi uint32) []byte {
	l4 := make([]byte, 8+64)
	binary.BigEndian.PutUint32(l4, spi)
	binary.BigEndian.PutUint32(l4[4:], 1)
	if fam == verdict.AFInet6 {
		return frame(benchGuest6, benchHost6, 50, l4)
	}
	return frame(benchGuest, benchHost, 50, l4)
}

// udpFrame is a plain UDP packet from the guest to a web peer of family
// fam: unlabeled, or, with a secpath, one the host decrypted.
func udpFrame(fam verdict.Family) []byte {
	l4 := make([]byte, 8+64)
	binary.BigEndian.PutUint16(l4, 40000)
	binary.BigEndian.PutUint16(l4[2:], 9000)
	binary.BigEndian.PutUint16(l4[4:], 8+64)
	if fam == verdict.AFInet6 {
		return frame(benchGuest6, benchWeb6, 17, l4)
	}
	return frame(benchGuest, benchWeb, 17, l4)
}

// skbCtx is struct __sk_buff (192 bytes) as BPF_PROG_TEST_RUN takes and
// returns it. The probe program reads the direction and the secpath from
// cb[0..3] and writes its reason into cb[4] (bpf/fastpath_test.c).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Rest                                                                        [192 - 68]byte
}

// probeCtx is the probe's input for an ingress packet with secpath sp
// (nil: none).
func probeCtx(sp *verdict.Secpath) *skbCtx {
	in := &skbCtx{}
	in.CB[0] = uint32(verdict.Ingress)
	if sp != nil {
		in.CB[1], in.CB[2], in.CB[3] = 1, sp.SPI, uint32(sp.Family)
	}
	return in
}

// fastpathRun is one program and packet to time.
type fastpathRun struct {
	family  string
	name    string
	prog    *ebpf.Program
	frame   []byte
	secpath *verdict.Secpath // the probe's: only with prog the probe
	want    verdict.Reason   // verdict.NumReasons: a baseline, no verdict
}

// MeasureFastpath loads the vif programs with room for the largest SA count,
// and the test programs over the same maps; it fills the maps for each count
// and times, for IPv4 and IPv6, the empty program, the parser, and the full
// verdict on an ESP packet, a plain packet and a decrypted packet with a
// secpath, all in the same run. ESP and plain go through the vif ingress
// program; the secpath packet goes through the probe, which runs the same
// decision with the secpath read from skb->cb, since BPF_PROG_TEST_RUN
// cannot hand a program a packet the kernel decrypted.
func MeasureFastpath(cfg FastpathConfig) ([]FastpathCase, []MapMemory, error) {
	if cfg.Repeat <= 0 || cfg.Rounds <= 0 || len(cfg.SACounts) == 0 {
		return nil, nil, fmt.Errorf("fastpath bench: need SA counts, repeat > 0 and rounds > 0")
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	most := 2
	for _, n := range cfg.SACounts {
		if n < 2 {
			return nil, nil, fmt.Errorf("fastpath bench: %d SAs: want at least 2 (one IPv4 and one IPv6 SA)", n)
		}
		most = max(most, n)
	}
	opts := bpf.Options{SPIBase: spiBase, SPISlots: uint32(most), Enforce: true}
	objs, err := bpf.Load(opts, nil)
	if err != nil {
		return nil, nil, err
	}
	defer objs.Close()
	maps := &objs.Maps
	// The test programs share the vif programs' maps, so that the probe
	// decides on the same SAs; empty and parse_only use none.
	test, err := bpf.LoadTest(opts, &ebpf.CollectionOptions{MapReplacements: maps.ByName()})
	if err != nil {
		return nil, nil, err
	}
	defer test.Close()

	var cases []FastpathCase
	var mem []MapMemory
	var prev *bpf.State
	for _, n := range cfg.SACounts {
		progress("fastpath: filling %d SAs", n)
		pol := benchPolicy(n)
		start := time.Now()
		next, err := bpf.Plan(pol)
		if err != nil {
			return nil, nil, err
		}
		if err := maps.Apply(prev, next); err != nil {
			return nil, nil, err
		}
		prev = next
		mm, err := memory(maps)
		if err != nil {
			return nil, nil, err
		}
		mm.SAs, mm.Fill = n, time.Since(start)
		mem = append(mem, mm)

		var runs []fastpathRun
		for _, f := range []struct {
			name string
			fam  verdict.Family
		}{{FamilyIPv4, verdict.AFInet}, {FamilyIPv6, verdict.AFInet6}} {
			esp := espFrame(f.fam, benchSPI(n, f.fam))
			plain := udpFrame(f.fam)
			runs = append(runs,
				fastpathRun{f.name, "empty", test.MlsgEmpty, esp, nil, verdict.NumReasons},
				fastpathRun{f.name, "parse", test.MlsgParse, esp, nil, verdict.NumReasons},
				fastpathRun{f.name, "esp", objs.MlsgIngress, esp, nil, verdict.AllowLabeled},
				fastpathRun{f.name, "plain", objs.MlsgIngress, plain, nil, verdict.AllowDefault},
				fastpathRun{f.name, "secpath", test.MlsgProbe, plain, &verdict.Secpath{SPI: benchSPI(n, f.fam), Family: f.fam}, verdict.AllowLabeled},
				// The path cut after each step (bpf/fastpath_test.c): what
				// the floor of each verdict is made of.
				fastpathRun{f.name, "step vif+counter", test.MlsgStVif, esp, nil, verdict.NumReasons},
				fastpathRun{f.name, "step +parse", test.MlsgStParse, esp, nil, verdict.NumReasons},
				fastpathRun{f.name, "step +sa lookup", test.MlsgStSa, esp, nil, verdict.NumReasons},
				fastpathRun{f.name, "step +xfrm helper", test.MlsgStXfrm, plain, nil, verdict.NumReasons},
				fastpathRun{f.name, "step +peer lpm", test.MlsgStPeer, plain, nil, verdict.NumReasons},
				fastpathRun{f.name, "step +peer+accepts", test.MlsgStAccepts, plain, nil, verdict.NumReasons},
			)
		}
		for _, r := range runs {
			if r.want == verdict.NumReasons {
				continue
			}
			// Measure only what takes the intended path.
			pkt := verdict.Packet{Ifindex: ifindex, Frame: r.frame, Secpath: r.secpath}
			if got := verdict.Decide(pol, pkt); got != r.want {
				return nil, nil, fmt.Errorf("fastpath bench: %s %s packet gets %s from the reference, want %s", r.family, r.name, got, r.want)
			}
			var err error
			if r.prog == test.MlsgProbe {
				err = checkProbeReason(r.prog, r.frame, r.secpath, r.want)
			} else {
				err = checkKernelReason(maps, r.prog, r.frame, r.want)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("fastpath bench: %s %s packet: %w", r.family, r.name, err)
			}
		}
		// Rounds interleave the programs, so that a slow spell of the
		// machine (a VM here) hits baseline and verdict alike; the fastest
		// round of each is kept.
		best := make([]float64, len(runs))
		for round := range cfg.Rounds {
			for i, r := range runs {
				var ctx *skbCtx
				if r.prog == test.MlsgProbe {
					ctx = probeCtx(r.secpath)
				}
				ns, err := testRunNs(r.prog, r.frame, ctx, cfg.Repeat)
				if err != nil {
					return nil, nil, fmt.Errorf("benchmark %s %s: %w", r.family, r.name, err)
				}
				if round == 0 || ns < best[i] {
					best[i] = ns
				}
			}
		}
		floor := map[string]float64{}
		for i, r := range runs {
			if r.name == "empty" {
				floor[r.family] = best[i]
			}
		}
		for i, r := range runs {
			c := FastpathCase{SAs: n, Family: r.family, Name: r.name, Reason: r.want, NsPerPacket: best[i], Ratio: best[i] / floor[r.family]}
			progress("fastpath: %d SAs %s %-7s %6.1f ns/packet  %.2fx empty", n, r.family, r.name, c.NsPerPacket, c.Ratio)
			cases = append(cases, c)
		}
	}
	return cases, mem, nil
}

// checkProbeReason runs the packet once through the probe with secpath sp
// and checks the reason it wrote into cb[4].
func checkProbeReason(prog *ebpf.Program, frame []byte, sp *verdict.Secpath, want verdict.Reason) error {
	var out skbCtx
	if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: *probeCtx(sp), ContextOut: &out}); err != nil {
		return err
	}
	if got := verdict.Reason(out.CB[4]); got != want {
		return fmt.Errorf("probe gives %s, want %s", got, want)
	}
	return nil
}

// testRunNs runs prog repeat times over frame with BPF_PROG_TEST_RUN (and
// the __sk_buff ctx, when not nil) and returns the kernel's mean time per
// run in ns. cilium/ebpf's Program.Benchmark takes no context, which the
// probe needs for its secpath; every case goes through here so that all
// are timed alike.
func testRunNs(prog *ebpf.Program, frame []byte, ctx *skbCtx, repeat int) (float64, error) {
	if repeat <= 0 || repeat > math.MaxUint32 {
		return 0, fmt.Errorf("repeat %d: want 1 to %d", repeat, uint32(math.MaxUint32))
	}
	// struct bpf_attr's test member, up to ctx_out.
	var attr struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration                        uint32
		ctxSizeIn, ctxSizeOut                   uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize                   uint32
		_                                       uint32
	}
	attr.progFD = uint32(prog.FD())
	attr.dataSizeIn = uint32(len(frame))
	attr.dataIn = uint64(uintptr(unsafe.Pointer(&frame[0])))
	attr.repeat = uint32(repeat)
	if ctx != nil {
		attr.ctxSizeIn = uint32(unsafe.Sizeof(*ctx))
		attr.ctxIn = uint64(uintptr(unsafe.Pointer(ctx)))
	}
	// The kernel gives up with EINTR when a signal is pending (the Go
	// runtime preempts with signals): try again, as cilium/ebpf does.
	for try := 0; ; try++ {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(frame)
		runtime.KeepAlive(ctx)
		switch {
		case errno == 0:
			return float64(attr.duration), nil
		case errno == unix.EINTR && try < 100:
			continue
		default:
			return 0, fmt.Errorf("BPF_PROG_TEST_RUN of %d repetitions: %w", repeat, errno)
		}
	}
}

// checkKernelReason runs the packet once and checks which counter moved.
func checkKernelReason(maps *bpf.Maps, prog *ebpf.Program, frame []byte, want verdict.Reason) error {
	before, err := maps.Counters()
	if err != nil {
		return err
	}
	if _, err := prog.Run(&ebpf.RunOptions{Data: frame}); err != nil {
		return err
	}
	after, err := maps.Counters()
	if err != nil {
		return err
	}
	for _, r := range verdict.Reasons() {
		if after[verdict.Ingress][r].Packets != before[verdict.Ingress][r].Packets {
			if r != want {
				return fmt.Errorf("kernel gives %s, want %s", r, want)
			}
			return nil
		}
	}
	return fmt.Errorf("no counter moved")
}

func memory(m *bpf.Maps) (MapMemory, error) {
	mm := MapMemory{Bytes: map[string]uint64{}}
	for name, mp := range map[string]*ebpf.Map{"vifs": m.Vifs, "labels": m.Labels, "accepts": m.Accepts, "sa_slots": m.SASlots,
		"sas": m.SAs, "peers": m.Peers, "verdicts": m.Verdicts, "events": m.Events} {
		info, err := mp.Info()
		if err != nil {
			return mm, fmt.Errorf("info of map %s: %w", name, err)
		}
		b, ok := info.Memlock()
		if !ok {
			continue
		}
		mm.Bytes[name] = b
		mm.Total += b
	}
	return mm, nil
}
