package kerneltests

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// The two ends of the vif under test, as a Xen backend names them.
const (
	vethHostName  = "vif7.0"
	vethGuestName = "eth0"
	vethPort      = 9000
	// vethAddrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h): no
	// link-local address, so no DAD and no router solicitation from it.
	vethAddrGenModeNone = 1
)

var (
	vethHostMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0x07, 0x01}
	vethGuestMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x07, 0x07}

	vethHost4  = netip.MustParseAddr("10.199.7.1")
	vethHost4b = netip.MustParseAddr("10.199.7.2") // a peer that refuses the default label
	vethHost6  = netip.MustParseAddr("fd00:7::1")
	vethGuest4 = netip.MustParseAddr("10.199.7.7")
	vethGuest6 = netip.MustParseAddr("fd00:7::7")
	vethSpoof4 = netip.MustParseAddr("10.199.7.99")
)

// How a kind of packet is sent.
type vethVia int

const (
	vethViaESP       vethVia = iota // raw socket, IPPROTO_ESP
	vethViaUDP                      // UDP socket
	vethViaFrame                    // AF_PACKET on the guest's eth0: a whole UDP frame
	vethViaMalformed                // AF_PACKET: Ethernet type IPv4, then 10 bytes
)

// vethKind is one kind of packet the test sends N times.
type vethKind struct {
	name     string
	dir      verdict.Direction
	via      vethVia
	src, dst netip.Addr
	spi      uint32
	want     verdict.Reason
	rx       string // the receiver it lands on when allowed
}

func (k *vethKind) proto() layers.IPProtocol {
	if k.via == vethViaESP {
		return layers.IPProtocolESP
	}
	return layers.IPProtocolUDP
}

func (k *vethKind) macs() (src, dst net.HardwareAddr) {
	if k.dir == verdict.Ingress {
		return vethGuestMAC, vethHostMAC
	}
	return vethHostMAC, vethGuestMAC
}

// payload is what the kind carries after its IP (ESP) or UDP header.
func (k *vethKind) payload(seq uint32, marker []byte) []byte {
	if k.via == vethViaESP {
		return vethESPPayload(k.spi, seq, marker)
	}
	return marker
}

// frame is the packet as it crosses the vif.
func (k *vethKind) frame(seq uint32, marker []byte) ([]byte, error) {
	src, dst := k.macs()
	if k.via == vethViaMalformed {
		eth := make([]byte, 14, 24)
		copy(eth[0:6], dst)
		copy(eth[6:12], src)
		eth[12], eth[13] = 0x08, 0x00 // IPv4
		return append(eth, make([]byte, 10)...), nil
	}
	return vethFrame(src, dst, k.src, k.dst, k.proto(), vethPort+1, vethPort, k.payload(seq, marker))
}

func TestPrivilegedVethVif(t *testing.T) {
	requirePrivileged(t)
	host := enterNetNS(t)
	const n = 5 // packets of each kind

	// The guest namespace; the test thread goes back to the host one.
	guest, err := netns.New()
	if err != nil {
		t.Fatalf("new guest namespace: %v", err)
	}
	t.Cleanup(func() { guest.Close() })
	if err := netns.Set(host); err != nil {
		t.Fatalf("back to the host namespace: %v", err)
	}
	gh, err := netlink.NewHandleAt(guest)
	if err != nil {
		t.Fatalf("netlink handle in the guest namespace: %v", err)
	}
	t.Cleanup(gh.Close)

	vif, eth0 := vethPair(t, guest, gh)
	t.Logf("%s ifindex %d, guest %s ifindex %d", vethHostName, vif.Attrs().Index, vethGuestName, eth0.Attrs().Index)

	objs, err := bpf.Load(bpf.DefaultOptions(), nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel cannot load the fast path: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	att, err := bpf.Attach(vif.Attrs().Index, objs.MlsgIngress, objs.MlsgEgress)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := att.Close(); err != nil {
			t.Errorf("detach from %s: %v", vethHostName, err)
		}
	})
	t.Logf("attached to %s with %s", vethHostName, att.Mode)

	pol := vethPolicy(t, uint32(vif.Attrs().Index))
	state, err := bpf.Plan(pol)
	if err != nil {
		t.Fatal(err)
	}
	maps := &objs.Maps
	if err := maps.Apply(nil, state); err != nil {
		t.Fatal(err)
	}

	kinds := []vethKind{
		// From the guest (tc ingress on vif7.0).
		{name: "esp4 own SA", dir: verdict.Ingress, via: vethViaESP, src: vethGuest4, dst: vethHost4, spi: 0xc0000010, want: verdict.AllowLabeled, rx: "host esp4"},
		{name: "esp4 SA label above range", dir: verdict.Ingress, via: vethViaESP, src: vethGuest4, dst: vethHost4, spi: 0xc0000011, want: verdict.DenyLabelRange, rx: "host esp4"},
		{name: "esp4 SA of vm 8", dir: verdict.Ingress, via: vethViaESP, src: vethGuest4, dst: vethHost4, spi: 0xc0000012, want: verdict.DenyForeignSA, rx: "host esp4"},
		{name: "esp4 unknown SPI", dir: verdict.Ingress, via: vethViaESP, src: vethGuest4, dst: vethHost4, spi: 0xc00000ff, want: verdict.DenyUnknownSA, rx: "host esp4"},
		{name: "esp6 own SA", dir: verdict.Ingress, via: vethViaESP, src: vethGuest6, dst: vethHost6, spi: 0xc0000020, want: verdict.AllowLabeled, rx: "host esp6"},
		{name: "udp4 to web peer", dir: verdict.Ingress, via: vethViaUDP, src: vethGuest4, dst: vethHost4, want: verdict.AllowDefault, rx: "host udp4"},
		{name: "udp4 to peer above i0", dir: verdict.Ingress, via: vethViaUDP, src: vethGuest4, dst: vethHost4b, want: verdict.DenyPeerRange, rx: "host udp4"},
		{name: "udp6 to web peer", dir: verdict.Ingress, via: vethViaUDP, src: vethGuest6, dst: vethHost6, want: verdict.AllowDefault, rx: "host udp6"},
		{name: "udp4 spoofed source", dir: verdict.Ingress, via: vethViaFrame, src: vethSpoof4, dst: vethHost4, want: verdict.DenySpoofed, rx: "host udp4"},
		{name: "ipv4 cut to 10 bytes", dir: verdict.Ingress, via: vethViaMalformed, want: verdict.DenyMalformed},
		// Toward the guest (tc egress on vif7.0).
		{name: "esp4 foreign SPI, own label", dir: verdict.Egress, via: vethViaESP, src: vethHost4, dst: vethGuest4, spi: 0x00001234, want: verdict.AllowLabeled, rx: "guest esp4"},
		{name: "esp4 foreign SPI, label above range", dir: verdict.Egress, via: vethViaESP, src: vethHost4, dst: vethGuest4, spi: 0x00001235, want: verdict.DenyLabelRange, rx: "guest esp4"},
		{name: "udp4 from web peer", dir: verdict.Egress, via: vethViaUDP, src: vethHost4, dst: vethGuest4, want: verdict.AllowDefault, rx: "guest udp4"},
		{name: "udp4 from peer above i0", dir: verdict.Egress, via: vethViaUDP, src: vethHost4b, dst: vethGuest4, want: verdict.DenyPeerRange, rx: "guest udp4"},
	}
	markers := make([][]byte, len(kinds))
	for i := range kinds {
		markers[i] = fmt.Appendf(nil, "<mlsgate-veth-kind-%02d>", i+1)
	}

	// The Go reference must give every kind the reason the test expects of
	// the kernel; otherwise the test, not the fast path, is wrong.
	for i := range kinds {
		k := &kinds[i]
		f, err := k.frame(1, markers[i])
		if err != nil {
			t.Fatalf("kind %d (%s): build frame: %v", i+1, k.name, err)
		}
		got := verdict.Decide(pol, verdict.Packet{Ifindex: uint32(vif.Attrs().Index), Dir: k.dir, Frame: f})
		if got != k.want {
			t.Fatalf("kind %d (%s): verdict.Decide says %s, the test expects %s", i+1, k.name, got, k.want)
		}
	}

	// Sockets. Receivers first, so nothing allowed is lost.
	host4 := vethBound(t, unix.SOCK_RAW, unix.IPPROTO_ESP, netip.IPv4Unspecified(), 0)
	rxs := map[string]*vethReceiver{
		"host esp4": {name: "host esp4", fd: host4},
		"host esp6": {name: "host esp6", fd: vethBound(t, unix.SOCK_RAW, unix.IPPROTO_ESP, netip.IPv6Unspecified(), 0)},
		"host udp4": {name: "host udp4", fd: vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, netip.IPv4Unspecified(), vethPort)},
		"host udp6": {name: "host udp6", fd: vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, netip.IPv6Unspecified(), vethPort)},
	}
	hostUDP := map[netip.Addr]int{
		vethHost4:  vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, vethHost4, vethPort+1),
		vethHost4b: vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, vethHost4b, vethPort+1),
	}
	var guestESP4, guestESP6, guestUDP4, guestUDP6, guestPacket int
	vethInNS(t, guest, host, func() {
		guestESP4 = vethBound(t, unix.SOCK_RAW, unix.IPPROTO_ESP, netip.IPv4Unspecified(), 0)
		guestESP6 = vethBound(t, unix.SOCK_RAW, unix.IPPROTO_ESP, netip.IPv6Unspecified(), 0)
		guestUDP4 = vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, vethGuest4, vethPort+1)
		guestUDP6 = vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, vethGuest6, vethPort+1)
		// Protocol 0: the packet socket sends and receives nothing.
		guestPacket = vethSocket(t, unix.AF_PACKET, unix.SOCK_RAW, 0)
		rxs["guest esp4"] = &vethReceiver{name: "guest esp4", fd: guestESP4}
		rxs["guest udp4"] = &vethReceiver{name: "guest udp4", fd: vethBound(t, unix.SOCK_DGRAM, unix.IPPROTO_UDP, netip.IPv4Unspecified(), vethPort)}
	})
	for i := range kinds {
		if kinds[i].want.Allowed() {
			rxs[kinds[i].rx].want += n
		}
	}

	// Only what this test sends from here on counts, apart from control
	// traffic (MLD reports), which the assertions leave out.
	if err := maps.ResetCounters(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	for i := range kinds {
		k := &kinds[i]
		for seq := uint32(1); seq <= n; seq++ {
			var fd int
			var to unix.Sockaddr
			var msg []byte
			switch k.via {
			case vethViaESP:
				switch {
				case k.dir == verdict.Egress:
					fd = host4
				case k.dst.Is4():
					fd = guestESP4
				default:
					fd = guestESP6
				}
				to, msg = vethSockaddr(k.dst, 0), k.payload(seq, markers[i])
			case vethViaUDP:
				switch {
				case k.dir == verdict.Egress:
					fd = hostUDP[k.src]
				case k.dst.Is4():
					fd = guestUDP4
				default:
					fd = guestUDP6
				}
				to, msg = vethSockaddr(k.dst, vethPort), k.payload(seq, markers[i])
			case vethViaFrame, vethViaMalformed:
				fd = guestPacket
				to = &unix.SockaddrLinklayer{Ifindex: eth0.Attrs().Index, Protocol: vethHtons(unix.ETH_P_IP)}
				if msg, err = k.frame(seq, markers[i]); err != nil {
					t.Fatalf("kind %d (%s): %v", i+1, k.name, err)
				}
			}
			// A drop on the host's own egress may come back as ENOBUFS.
			if err := unix.Sendto(fd, msg, 0, to); err != nil && !(errors.Is(err, unix.ENOBUFS) && k.dir == verdict.Egress && !k.want.Allowed()) {
				t.Fatalf("kind %d (%s), packet %d: send: %v", i+1, k.name, seq, err)
			}
		}
	}

	// Receive, each socket for a bounded number of reads and time.
	arrived := make(map[string]map[int]int)
	total := make([]int, len(kinds))
	for name, r := range rxs {
		got := vethDrain(t, r, markers, 4*n*len(kinds), 2*time.Second)
		arrived[name] = got
		for k, c := range got {
			if k < 0 {
				t.Errorf("%s: %d unmarked datagrams", name, c)
				continue
			}
			total[k] += c
		}
	}
	t.Logf("sent and received %d packets of %d kinds in %v", n*len(kinds), len(kinds), time.Since(start).Round(time.Millisecond))
	for i := range kinds {
		k := &kinds[i]
		want := 0
		if k.want.Allowed() {
			want = n
			if got := arrived[k.rx][i]; got != n {
				t.Errorf("kind %d (%s, %s): %d of %d arrived at %s", i+1, k.name, k.want, got, n, k.rx)
			}
		}
		if total[i] != want {
			t.Errorf("kind %d (%s, %s): %d arrived in all, want %d", i+1, k.name, k.want, total[i], want)
		}
	}

	// The kernel's counters: exactly what was sent, by direction and reason.
	var want [2][verdict.NumReasons]uint64
	for i := range kinds {
		want[kinds[i].dir][kinds[i].want] += n
	}
	got, err := maps.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "%-18s %8s %8s %8s %8s\n", "reason", "ingress", "want", "egress", "want")
	for _, r := range verdict.Reasons() {
		fmt.Fprintf(&tbl, "%-18s %8d %8s %8d %8s\n", r, got[verdict.Ingress][r].Packets, vethWant(r, want[verdict.Ingress][r]),
			got[verdict.Egress][r].Packets, vethWant(r, want[verdict.Egress][r]))
	}
	t.Logf("verdict counters (packets):\n%s", tbl.String())
	for _, d := range []verdict.Direction{verdict.Ingress, verdict.Egress} {
		for _, r := range verdict.Reasons() {
			if r == verdict.AllowControl || r == verdict.PassUnmanaged {
				continue
			}
			if got[d][r].Packets != want[d][r] {
				t.Errorf("%s %s: counted %d packets, sent %d", d, r, got[d][r].Packets, want[d][r])
			}
		}
	}
}

// vethWant prints an expected count, or "-" for the reasons not checked.
func vethWant(r verdict.Reason, n uint64) string {
	if r == verdict.AllowControl || r == verdict.PassUnmanaged {
		return "-"
	}
	return fmt.Sprint(n)
}

func vethHtons(v uint16) uint16 { return v<<8 | v>>8 }

// vethPair makes vif7.0 in the calling thread's namespace and its peer eth0
// in the guest's (reached through gh), with addresses, permanent neighbours
// both ways and both ends up. It returns both links.
func vethPair(t *testing.T, guest netns.NsHandle, gh *netlink.Handle) (vif, eth0 netlink.Link) {
	t.Helper()
	var err error
	la := netlink.NewLinkAttrs()
	la.Name = vethHostName
	la.HardwareAddr = vethHostMAC
	veth := &netlink.Veth{LinkAttrs: la, PeerName: vethGuestName, PeerHardwareAddr: vethGuestMAC,
		PeerNamespace: netlink.NsFd(guest)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", vethHostName, vethGuestName, err)
	}
	if vif, err = netlink.LinkByName(vethHostName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The namespaces take the pair with them; delete it anyway so
		// that nothing depends on when the thread goes.
		if err := netlink.LinkDel(vif); err != nil && !errors.Is(err, unix.ENODEV) {
			t.Errorf("delete %s: %v", vethHostName, err)
		}
	})
	if eth0, err = gh.LinkByName(vethGuestName); err != nil {
		t.Fatalf("guest %s: %v", vethGuestName, err)
	}

	type end struct {
		h     *netlink.Handle
		link  netlink.Link
		addrs []netip.Prefix
		neigh map[netip.Addr]net.HardwareAddr
	}
	hh := &netlink.Handle{} // the calling thread's namespace
	ends := []end{
		{hh, vif, []netip.Prefix{
			netip.PrefixFrom(vethHost4, 24), netip.PrefixFrom(vethHost4b, 24), netip.PrefixFrom(vethHost6, 64),
		}, map[netip.Addr]net.HardwareAddr{vethGuest4: vethGuestMAC, vethGuest6: vethGuestMAC}},
		{gh, eth0, []netip.Prefix{
			netip.PrefixFrom(vethGuest4, 24), netip.PrefixFrom(vethGuest6, 64),
		}, map[netip.Addr]net.HardwareAddr{vethHost4: vethHostMAC, vethHost4b: vethHostMAC, vethHost6: vethHostMAC}},
	}
	for _, e := range ends {
		name := e.link.Attrs().Name
		// No link-local address: nothing but MLD reports (control
		// traffic) crosses the link unasked.
		if err := e.h.LinkSetIP6AddrGenMode(e.link, vethAddrGenModeNone); err != nil {
			t.Fatalf("%s: addrgenmode none: %v", name, err)
		}
		if e.h == hh {
			// The host end's MLD reports (from ::, it has no link-local)
			// are repeated at random within a second of its addresses
			// coming up, and toward the guest they are deny_control: send
			// them at once, before the counters are reset, as the attack
			// lab does. /proc/sys/net is this thread's namespace.
			for _, k := range []string{"mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/"+k, []byte("0"), 0); err != nil {
					t.Fatalf("%s: %s: %v", name, k, err)
				}
			}
		}
		if err := e.h.LinkSetUp(e.link); err != nil {
			t.Fatalf("%s up: %v", name, err)
		}
		for _, p := range e.addrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD
			}
			if err := e.h.AddrAdd(e.link, a); err != nil {
				t.Fatalf("%s: add address %s: %v", name, p, err)
			}
		}
		for ip, mac := range e.neigh {
			fam := netlink.FAMILY_V4
			if ip.Is6() {
				fam = netlink.FAMILY_V6
			}
			nb := &netlink.Neigh{LinkIndex: e.link.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT,
				IP: ip.AsSlice(), HardwareAddr: mac}
			if err := e.h.NeighAdd(nb); err != nil {
				t.Fatalf("%s: neighbour %s: %v", name, ip, err)
			}
		}
	}

	// Both ends report up within milliseconds; bound the wait anyway.
	deadline := time.Now().Add(2 * time.Second)
	for _, e := range ends {
		for {
			l, err := e.h.LinkByIndex(e.link.Attrs().Index)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not up after 2s: %s", l.Attrs().Name, l.Attrs().OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return vif, eth0
}

// vethPolicy is the fast-path policy of the test: vm 7 of application 1
// behind ifindex, two web peers of which one refuses the default label, and
// SAs that its traffic may or may not use.
func vethPolicy(t *testing.T, ifindex uint32) *verdict.Policy {
	t.Helper()
	bounds := func(s string) label.Bounds {
		b, err := label.ParseBounds(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	lab := func(s string) label.Label {
		l, err := label.ParseLabel(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	opts := bpf.DefaultOptions()
	sa := func(spi uint32, daddr netip.Addr, owner uint32, l string) verdict.SA {
		return verdict.SA{SPI: spi, Family: verdict.FamilyOf(daddr), Daddr: daddr, Owner: owner, App: 1, Label: lab(l)}
	}
	web := bounds("s0-s15/i0-i15")
	return &verdict.Policy{
		Guests: map[uint32]verdict.Guest{ifindex: {
			VM: 7, App: 1, Range: bounds("s0-s5/i0-i5"),
			Addr4: vethGuest4, Addr6: vethGuest6, AllowUnlabeled: true,
		}},
		Peers: []verdict.Peer{
			{Prefix: netip.PrefixFrom(vethHost4, 32), Range: web, Kind: verdict.PeerWeb},
			{Prefix: netip.PrefixFrom(vethHost6, 128), Range: web, Kind: verdict.PeerWeb},
			{Prefix: netip.PrefixFrom(vethHost4b, 32), Range: bounds("s0-s15/i3-i15"), Kind: verdict.PeerWeb},
		},
		SAs: []verdict.SA{
			// Allocated by the host (in the slots): toward the host.
			sa(0xc0000010, vethHost4, 7, "s3/i2"),
			sa(0xc0000011, vethHost4, 7, "s9/i2"), // above the guest's range
			sa(0xc0000012, vethHost4, 8, "s3/i2"), // another VM's
			sa(0xc0000020, vethHost6, 7, "s3/i2"),
			// Chosen by a foreign peer (in the hash): toward the guest.
			sa(0x00001234, vethGuest4, 7, "s2/i1"),
			sa(0x00001235, vethGuest4, 7, "s12/i1"), // above the guest's range
		},
		SPIBase:  opts.SPIBase,
		SPISlots: opts.SPISlots,
		Enforce:  opts.Enforce,
		APIPort:  opts.APIPort,
	}
}
