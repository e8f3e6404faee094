package kerneltests

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/verdict"
)

// The attacker's suite (issue 11): a guest with root inside it sends
// whatever frames it likes on its vif, with the real agent (the mlsgate
// binary, in a host namespace) keeping the real programs on every vif.
// Each attack asserts two things: nothing arrives where it was aimed (a
// receiver past the fast path: a raw socket in the destination namespace,
// or a packet capture on the far side of the link), and the reason counter
// the attack must meet rose by exactly what was sent.
//
// The lab: a host namespace running the agent with the API port at
// attackAPIPort; guests in namespaces of their own behind vif<vm>.0, each a
// point-to-point routed link (host 10.70.<vm>.1, fd00:70:<vm>::1 and
// fe80::1; guest 10.70.<vm>.7, fd00:70:<vm>::7) unless the test puts the
// vifs on a bridge, as Xen's xenbr0 does; and an "untrusted network"
// namespace behind up0 (host 203.0.113.1, 2001:db8:1::1; a server at
// 203.0.113.5, 2001:db8:1::5), which the host routes to. The guests keep
// quiet by themselves: no IPv6 address of their own (frames are written
// by hand), permanent neighbours both ways, so every frame a counter sees
// is one the test sent, or the host's own control traffic toward a guest.

const (
	attackAPIPort = 7443
	attackN       = 5 // frames of each kind
	// attackQuiet is how long a receiver listens for what must not arrive.
	attackQuiet = 600 * time.Millisecond
)

var (
	attackNet4    = netip.MustParseAddr("203.0.113.5")
	attackNetHost = netip.MustParseAddr("203.0.113.1")
	attackNet6    = netip.MustParseAddr("2001:db8:1::5")
	attackNet6Hst = netip.MustParseAddr("2001:db8:1::1")
	attackNetMAC  = net.HardwareAddr{0x02, 0x0e, 0, 0, 0, 0x05}
	attackUpMAC   = net.HardwareAddr{0x02, 0x0e, 0, 0, 0, 0x01}
	attackHostLL  = netip.MustParseAddr("fe80::1")
	attackBrMAC   = net.HardwareAddr{0x02, 0x0b, 0, 0, 0, 0x01}
	attackBcast   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// labGuest is one guest of the lab.
type labGuest struct {
	vm       uint32
	vif, ns  string
	mac      net.HardwareAddr // the guest's (loader.GuestMAC)
	hostMAC  net.HardwareAddr // where the guest sends: the vif, or the bridge
	addr4    netip.Addr
	host4    netip.Addr
	addr6    netip.Addr // fd00:70:<vm>::7 (routed guests only)
	host6    netip.Addr
	ll6      netip.Addr // EUI-64 from mac
	ethIndex int        // eth0 in the guest's namespace
	tx       int        // AF_PACKET socket on eth0, sends only
}

type lab struct {
	*agentEnv
	id      string
	netNS   string
	bridged bool
	guests  map[uint32]*labGuest
	// peers are declared besides the host-side addresses.
	peers []agent.PeerSpec
}

// newLab builds the host and the untrusted network; guests come with
// addGuest, the agent with startAgent.
func newLab(t *testing.T, bridged bool) *lab {
	e := newAgentEnv(t)
	l := &lab{agentEnv: e, id: strings.TrimPrefix(e.hostNS, "mlsg-h-"), bridged: bridged, guests: map[uint32]*labGuest{}}
	l.netNS = "mlsg-n-" + l.id
	run(t, "ip", "netns", "add", l.netNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.netNS).Run() })
	sysctls(t, e.hostNS, map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/ipv6/conf/all/forwarding":        "1",
		"net/ipv6/conf/default/addr_gen_mode": "1",
		// The host's own MLD reports, sent again at random within a
		// second of each carrier change (a guest's vif coming up on the
		// bridge), reached the guests' vifs during an attack and were
		// counted there. Send them at once, before the attacks begin.
		"net/ipv6/conf/default/mldv1_unsolicited_report_interval": "0",
		"net/ipv6/conf/default/mldv2_unsolicited_report_interval": "0",
	})
	sysctls(t, l.netNS, map[string]string{"net/ipv6/conf/default/addr_gen_mode": "1"})
	ip := func(ns string, args ...string) { run(t, append([]string{"ip", "-n", ns}, args...)...) }
	ip(l.netNS, "link", "set", "lo", "up")
	ip(e.hostNS, "link", "add", "up0", "address", attackUpMAC.String(), "type", "veth",
		"peer", "name", "eth0", "address", attackNetMAC.String(), "netns", l.netNS)
	ip(e.hostNS, "addr", "add", "203.0.113.1/24", "dev", "up0")
	ip(e.hostNS, "addr", "add", "2001:db8:1::1/64", "dev", "up0", "nodad")
	ip(e.hostNS, "link", "set", "up0", "up")
	ip(e.hostNS, "neigh", "replace", attackNet4.String(), "lladdr", attackNetMAC.String(), "dev", "up0", "nud", "permanent")
	ip(e.hostNS, "neigh", "replace", attackNet6.String(), "lladdr", attackNetMAC.String(), "dev", "up0", "nud", "permanent")
	ip(l.netNS, "addr", "add", "203.0.113.5/24", "dev", "eth0")
	ip(l.netNS, "addr", "add", "2001:db8:1::5/64", "dev", "eth0", "nodad")
	ip(l.netNS, "link", "set", "eth0", "up")
	ip(l.netNS, "route", "add", "default", "via", attackNetHost.String())
	ip(l.netNS, "-6", "route", "add", "default", "via", attackNet6Hst.String())
	ip(l.netNS, "neigh", "replace", attackNetHost.String(), "lladdr", attackUpMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(l.netNS, "neigh", "replace", attackNet6Hst.String(), "lladdr", attackUpMAC.String(), "dev", "eth0", "nud", "permanent")
	if bridged {
		// Without multicast snooping the bridge floods every group, as
		// many bridges do.
		ip(e.hostNS, "link", "add", "br0", "address", attackBrMAC.String(), "type", "bridge", "mcast_snooping", "0")
		ip(e.hostNS, "addr", "add", "10.70.0.1/24", "dev", "br0")
		ip(e.hostNS, "addr", "add", "fd00:70::1/64", "dev", "br0", "nodad")
		ip(e.hostNS, "addr", "add", attackHostLL.String()+"/64", "dev", "br0", "nodad")
		ip(e.hostNS, "link", "set", "br0", "up")
		// ARP may move a neighbour entry at once (the default waits 1 s).
		sysctls(t, e.hostNS, map[string]string{"net/ipv4/neigh/br0/locktime": "0"})
	}
	e.args = []string{"--api-port", strconv.Itoa(attackAPIPort)}
	return l
}

// sysctls writes /proc/sys/<key> = value inside a named namespace.
func sysctls(t *testing.T, ns string, kv map[string]string) {
	t.Helper()
	inNS(t, ns, func() error {
		keys := make([]string, 0, len(kv))
		for k := range kv {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if err := os.WriteFile("/proc/sys/"+k, []byte(kv[k]), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, kv[k], err)
			}
		}
		return nil
	})
}

// inNS runs fn on a thread switched into the named namespace, then
// switches the thread back. Sockets fn opens stay in that namespace. A
// thread that cannot go back is left locked, so the runtime discards it.
// (Threads are not simply discarded each time: a child started with
// Pdeathsig, such as the agent, dies with the thread that forked it.)
func inNS(t testing.TB, name string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer home.Close()
		ns, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(home) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in namespace %s: %v", name, err)
	}
}

// eui64 is the IPv6 link-local address a MAC gives (RFC 4291 appendix A).
func eui64(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10] = mac[0]^0x02, mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// addGuest creates vif<vm>.0 (with ifindex index when not 0) and the guest's
// namespace behind it. It declares nothing.
func (l *lab) addGuest(vm uint32, index int) *labGuest {
	t := l.t
	t.Helper()
	mac, err := net.ParseMAC(loader.GuestMAC(vm))
	if err != nil {
		t.Fatal(err)
	}
	g := &labGuest{vm: vm, vif: fmt.Sprintf("vif%d.0", vm), mac: mac, ll6: eui64(mac)}
	g.ns = fmt.Sprintf("mlsg-g%d-%s", vm, l.id)
	run(t, "ip", "netns", "add", g.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", g.ns).Run() })
	vifMAC := net.HardwareAddr{0x02, 0x0f, byte(vm >> 16), byte(vm >> 8), byte(vm), 0x01}
	ip := func(ns string, args ...string) { run(t, append([]string{"ip", "-n", ns}, args...)...) }
	sysctls(t, g.ns, map[string]string{"net/ipv6/conf/default/addr_gen_mode": "1"})
	add := []string{"link", "add", g.vif, "address", vifMAC.String()}
	if index != 0 {
		add = append(add, "index", strconv.Itoa(index))
	}
	ip(l.hostNS, append(add, "type", "veth", "peer", "name", "eth0", "address", mac.String(), "netns", g.ns)...)
	ip(g.ns, "link", "set", "lo", "up")
	if l.bridged {
		g.addr4 = netip.AddrFrom4([4]byte{10, 70, 0, byte(vm)})
		g.host4 = netip.MustParseAddr("10.70.0.1")
		g.addr6 = netip.MustParseAddr(fmt.Sprintf("fd00:70::%x", vm))
		g.host6 = netip.MustParseAddr("fd00:70::1")
		g.hostMAC = attackBrMAC
		ip(l.hostNS, "link", "set", g.vif, "master", "br0")
		ip(g.ns, "addr", "add", g.addr4.String()+"/24", "dev", "eth0")
	} else {
		g.addr4 = netip.AddrFrom4([4]byte{10, 70, byte(vm), 7})
		g.host4 = netip.AddrFrom4([4]byte{10, 70, byte(vm), 1})
		g.addr6 = netip.MustParseAddr(fmt.Sprintf("fd00:70:%x::7", vm))
		g.host6 = netip.MustParseAddr(fmt.Sprintf("fd00:70:%x::1", vm))
		g.hostMAC = vifMAC
		ip(l.hostNS, "addr", "add", g.host4.String()+"/24", "dev", g.vif)
		ip(l.hostNS, "addr", "add", g.host6.String()+"/64", "dev", g.vif, "nodad")
		ip(l.hostNS, "addr", "add", attackHostLL.String()+"/64", "dev", g.vif, "nodad")
		ip(g.ns, "addr", "add", g.addr4.String()+"/24", "dev", "eth0")
	}
	for _, a := range []netip.Addr{g.addr6, g.ll6} {
		ip(l.hostNS, "neigh", "replace", a.String(), "lladdr", mac.String(), "dev", l.l3dev(g), "nud", "permanent")
	}
	ip(l.hostNS, "neigh", "replace", g.addr4.String(), "lladdr", mac.String(), "dev", l.l3dev(g), "nud", "permanent")
	ip(l.hostNS, "link", "set", g.vif, "up")
	ip(g.ns, "link", "set", "eth0", "up")
	ip(g.ns, "neigh", "replace", g.host4.String(), "lladdr", g.hostMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(g.ns, "route", "add", "default", "via", g.host4.String())
	inNS(t, g.ns, func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		g.ethIndex = ifc.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		g.tx = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index})
	})
	t.Cleanup(func() { unix.Close(g.tx) })
	l.guests[vm] = g
	return g
}

// l3dev is the host interface that holds the guest's host-side address.
func (l *lab) l3dev(g *labGuest) string {
	if l.bridged {
		return "br0"
	}
	return g.vif
}

// spec is the guest's declaration: strict (labeled only) unless permissive.
func (l *lab) spec(g *labGuest, permissive bool) agent.GuestSpec {
	r, err := label.ParseBounds("s0-s15/i0-i10")
	if err != nil {
		l.t.Fatal(err)
	}
	return agent.GuestSpec{Interface: g.vif, VM: g.vm, App: 1, Range: r, Addr4: g.addr4, Addr6: g.addr6,
		HostAddr4: g.host4, HostAddr6: attackHostLL, MAC: g.mac.String(), AllowUnlabeled: permissive}
}

// declare sends the guests' declarations and the host's own addresses as
// host peers (as the loader does), then waits until all are attached.
func (l *lab) declare(specs ...agent.GuestSpec) {
	t := l.t
	t.Helper()
	all, err := label.ParseBounds("s0-s15/i0-i15")
	if err != nil {
		t.Fatal(err)
	}
	var peers []agent.PeerSpec
	seen := map[netip.Addr]bool{}
	for _, g := range l.guests {
		for _, a := range []netip.Addr{g.host4, g.host6} {
			if a.IsValid() && !seen[a] {
				seen[a] = true
				peers = append(peers, agent.PeerSpec{Prefix: netip.PrefixFrom(a, a.BitLen()), Range: all, Kind: verdict.PeerHost})
			}
		}
	}
	peers = append(peers, l.peers...)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Prefix.String() < peers[j].Prefix.String() })
	l.put("/v1/peers", peers)
	for _, s := range specs {
		l.put("/v1/guests/"+s.Interface, s)
	}
	l.waitAttached(len(peers), specs...)
}

func (l *lab) waitAttached(peers int, specs ...agent.GuestSpec) {
	t := l.t
	t.Helper()
	for range 400 {
		st := l.status()
		ok := st.Maps.Peers >= peers
		for _, s := range specs {
			found := false
			for _, g := range st.Guests {
				found = found || (g.Interface == s.Interface && g.Attached)
			}
			ok = ok && found
		}
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("guests %v not attached within 4 s: %+v\n%s", specs, l.status(), l.log)
}

// send writes whole frames from the guest's eth0.
func (g *labGuest) send(t *testing.T, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		to := &unix.SockaddrLinklayer{Ifindex: g.ethIndex, Protocol: vethHtons(binary.BigEndian.Uint16(f[12:14]))}
		if err := unix.Sendto(g.tx, f, 0, to); err != nil {
			t.Fatalf("%s: send a %d-byte frame: %v", g.vif, len(f), err)
		}
	}
}

// rx is a receiver past the fast path. It keeps every frame it read, so
// that counting one kind does not lose the others.
type rx struct {
	name    string
	fd      int
	capture bool // AF_PACKET: count only frames received, not sent
	got     [][]byte
}

// capture opens an AF_PACKET socket on dev in ns that sees every frame dev
// receives.
func capture(t *testing.T, ns, dev string) *rx {
	t.Helper()
	r := &rx{name: ns + "/" + dev + " capture", capture: true}
	inNS(t, ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(vethHtons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		r.fd = fd
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: vethHtons(unix.ETH_P_ALL)})
	})
	t.Cleanup(func() { unix.Close(r.fd) })
	return r
}

// rawRx opens a raw IP socket in ns that gets a copy of every packet of
// proto the namespace delivers locally (after the vif's programs).
func rawRx(t *testing.T, ns string, family, proto int) *rx {
	t.Helper()
	r := &rx{name: fmt.Sprintf("%s raw af%d/%d", ns, family, proto)}
	inNS(t, ns, func() error {
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		r.fd = fd
		if err == nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		}
		return err
	})
	t.Cleanup(func() { unix.Close(r.fd) })
	return r
}

// sink binds a UDP socket in ns that takes (and never reads) what arrives
// at a, so that the host answers no datagram with a port unreachable (an
// ICMP error toward the guest would be counted too). It returns the socket.
func sink(t *testing.T, ns string, a netip.AddrPort) int {
	t.Helper()
	var fd int
	inNS(t, ns, func() error {
		var err error
		fd, err = unix.Socket(vethDomain(a.Addr()), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		return unix.Bind(fd, vethSockaddr(a.Addr(), a.Port()))
	})
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// count reads until want frames carrying marker arrived (then a short quiet
// spell more), or for wait in all; bounded in reads. It returns how many
// carried the marker.
func (r *rx) count(t *testing.T, marker []byte, want int, wait time.Duration) int {
	t.Helper()
	return r.countFn(t, func(b []byte) bool { return bytes.Contains(b, marker) }, want, wait)
}

func (r *rx) countFn(t *testing.T, match func([]byte) bool, want int, wait time.Duration) int {
	t.Helper()
	matched := func() int {
		n := 0
		for _, b := range r.got {
			if match(b) {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 65536)
	got := matched()
	for range 20000 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if want > 0 && got >= want {
			left = min(left, 100*time.Millisecond)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, from, err := unix.Recvfrom(r.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			if want > 0 && got >= want {
				break
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: recvfrom: %v", r.name, err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); r.capture && ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		r.got = append(r.got, b)
		if match(b) {
			got++
		}
	}
	return got
}

// counters is the agent's verdict counters as "direction/reason" → packets.
func (l *lab) counters() map[string]uint64 {
	c := map[string]uint64{}
	for dir, m := range l.status().Counters {
		for r, n := range m {
			c[dir+"/"+r] = n
		}
	}
	return c
}

// expectCounted checks that, since before, each listed counter rose by
// exactly the number given, that no other deny counter rose (the host's own
// control traffic may add allows), and logs every change.
func (l *lab) expectCounted(before map[string]uint64, want map[string]uint64) {
	t := l.t
	t.Helper()
	after := l.counters()
	var keys []string
	for k := range after {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := after[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var tbl strings.Builder
	for _, k := range keys {
		d := after[k] - before[k]
		if d == 0 && want[k] == 0 {
			continue
		}
		fmt.Fprintf(&tbl, "  %-28s +%d", k, d)
		if w, ok := want[k]; ok {
			fmt.Fprintf(&tbl, " (want +%d)", w)
		}
		tbl.WriteString("\n")
	}
	t.Logf("verdict counters since the attack began:\n%s", tbl.String())
	for _, k := range keys {
		d := after[k] - before[k]
		if w, ok := want[k]; ok {
			if d != w {
				t.Errorf("counter %s rose by %d, want exactly %d", k, d, w)
			}
			continue
		}
		if strings.Contains(k, "/deny_") && d != 0 {
			t.Errorf("counter %s rose by %d; the test sent nothing that should meet it", k, d)
		}
	}
}

// marker names one kind of frame of one test.
func marker(t *testing.T, kind string) []byte {
	return []byte("<mlsgate-attack " + t.Name() + " " + kind + ">")
}

// pad makes a payload of n bytes that carries m.
func pad(m []byte, n int) []byte {
	b := bytes.Repeat([]byte{'x'}, max(n, len(m)))
	copy(b, m)
	return b
}

// ipPkt describes an IPv4/IPv6 frame; serialize it with frame.
type ipPkt struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	hop            uint8 // TTL or hop limit; 0 is 64
	proto          layers.IPProtocol
	sport, dport   uint16
	syn            bool   // TCP: a SYN, else ACK|PSH
	icmpType       uint8  // ICMPv6
	payload        []byte // after the UDP/TCP header, or the ICMPv6 type/code/checksum
}

func (p ipPkt) frame() []byte {
	eth := &layers.Ethernet{SrcMAC: p.srcMAC, DstMAC: p.dstMAC}
	hop := p.hop
	if hop == 0 {
		hop = 64
	}
	ls := []gopacket.SerializableLayer{eth}
	if p.src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ls = append(ls, &layers.IPv4{Version: 4, IHL: 5, TTL: hop, Protocol: p.proto, SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()})
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ls = append(ls, &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: p.proto, SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()})
	}
	switch p.proto {
	case layers.IPProtocolUDP:
		ls = append(ls, &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)})
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: 1000, Window: 8192}
		if p.syn {
			tcp.SYN = true
		} else {
			tcp.ACK, tcp.PSH, tcp.Ack = true, true, 1
		}
		ls = append(ls, tcp)
	case layers.IPProtocolICMPv6:
		ls = append(ls, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmpType, 0)})
	default:
		panic(fmt.Sprintf("ipPkt: protocol %d", p.proto))
	}
	return serialize(append(ls, gopacket.Payload(p.payload))...)
}

// times repeats a frame.
func times(n int, f []byte) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = f
	}
	return out
}

// attackARP is an Ethernet/IPv4 ARP frame padded to the 60-byte minimum.
func attackARP(ethSrc, ethDst net.HardwareAddr, op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	f := serialize(&layers.Ethernet{SrcMAC: ethSrc, DstMAC: ethDst, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: sha, SourceProtAddress: spa.AsSlice(), DstHwAddress: tha, DstProtAddress: tpa.AsSlice()})
	if len(f) < 60 {
		f = append(f, make([]byte, 60-len(f))...)
	}
	return f
}

// isARP reports whether b is an ARP frame of operation op whose sender is spa.
func isARP(b []byte, op uint16, spa netip.Addr) bool {
	if len(b) < 42 || binary.BigEndian.Uint16(b[12:]) != 0x0806 || binary.BigEndian.Uint16(b[20:]) != op {
		return false
	}
	return netip.AddrFrom4([4]byte(b[28:32])) == spa
}

// ndNS is a neighbour solicitation body for target with a source
// link-layer address option (RFC 4861 4.3), then extra.
func ndNS(target netip.Addr, sll net.HardwareAddr, extra []byte) []byte {
	b := make([]byte, 4, 28+len(extra))
	t16 := target.As16()
	b = append(b, t16[:]...)
	b = append(b, 1, 1)
	b = append(b, sll...)
	return append(b, extra...)
}

// solicited is the solicited-node multicast group of a and its MAC.
func solicited(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	s := a.As16()
	g := [16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: s[13], 14: s[14], 15: s[15]}
	return netip.AddrFrom16(g), net.HardwareAddr{0x33, 0x33, 0xff, s[13], s[14], s[15]}
}

func mcastMAC(a netip.Addr) net.HardwareAddr {
	s := a.As16()
	return net.HardwareAddr{0x33, 0x33, s[12], s[13], s[14], s[15]}
}

// --- The attacks ---

// TestPrivilegedAttackDHCPv4Channel: a strict guest uses DHCP's ports as a
// channel to the untrusted network, both ways (issue 11, item 1).
func TestPrivilegedAttackDHCPv4Channel(t *testing.T) {
	l := newLab(t, false)
	g, other := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(g, false), l.spec(other, false))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(netip.IPv4Unspecified(), 67))
	netCap := capture(t, l.netNS, "eth0")
	guestCap := capture(t, g.ns, "eth0")
	// Both ends listen, so that neither answers with a port unreachable.
	server := sink(t, l.netNS, netip.AddrPortFrom(attackNet4, 67))
	sink(t, g.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 68))

	out, back, zero, foreign := marker(t, "out"), marker(t, "back"), marker(t, "from-zero"), marker(t, "other-host-address")
	before := l.counters()
	// To the host-side address of another guest's link.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: other.host4,
		proto: layers.IPProtocolUDP, sport: 68, dport: 67, payload: pad(foreign, 300)}.frame())...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: attackNet4,
		proto: layers.IPProtocolUDP, sport: 68, dport: 67, payload: pad(out, 1024)}.frame())...)
	// The DHCP exemption's source, 0.0.0.0, toward anything but broadcast.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: netip.IPv4Unspecified(), dst: attackNet4,
		proto: layers.IPProtocolUDP, sport: 68, dport: 67, payload: pad(zero, 300)}.frame())...)
	// The untrusted side answers from 67 to the guest's 68.
	for range attackN {
		if err := unix.Sendto(server, pad(back, 1024), 0, &unix.SockaddrInet4{Addr: g.addr4.As4(), Port: 68}); err != nil {
			t.Fatalf("send from %s:67: %v", attackNet4, err)
		}
	}
	if n := netCap.count(t, out, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d DHCP-port datagrams (68->67, 1 KB) from the strict guest reached %s on the untrusted network", n, attackN, attackNet4)
	}
	if n := netCap.count(t, zero, 0, 50*time.Millisecond); n != 0 {
		t.Errorf("%d datagrams from 0.0.0.0:68 reached %s", n, attackNet4)
	}
	if n := hostUDP.count(t, foreign, 0, 100*time.Millisecond); n != 0 {
		t.Errorf("%d of %d DHCP datagrams to another guest's host-side address %s reached the host", n, attackN, other.host4)
	}
	if n := guestCap.count(t, back, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d datagrams 67->68 from %s reached the strict guest", n, attackN, attackNet4)
	}
	l.expectCounted(before, map[string]uint64{
		"ingress/deny_unlabeled": 2 * attackN, // not DHCP: not to broadcast or the guest's host
		"ingress/deny_spoofed":   attackN,     // 0.0.0.0 only to 255.255.255.255:67
		"egress/deny_unlabeled":  attackN,
	})
}

// TestPrivilegedAttackDHCPv6Channel: the same over DHCPv6's ports.
func TestPrivilegedAttackDHCPv6Channel(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	netCap := capture(t, l.netNS, "eth0")
	guestCap := capture(t, g.ns, "eth0")

	server := sink(t, l.netNS, netip.AddrPortFrom(attackNet6, 547))
	out, back := marker(t, "out"), marker(t, "back")
	before := l.counters()
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr6, dst: attackNet6,
		proto: layers.IPProtocolUDP, sport: 546, dport: 547, payload: pad(out, 1024)}.frame())...)
	for range attackN {
		if err := unix.Sendto(server, pad(back, 1024), 0, &unix.SockaddrInet6{Addr: g.addr6.As16(), Port: 546}); err != nil {
			t.Fatalf("send from [%s]:547: %v", attackNet6, err)
		}
	}
	if n := netCap.count(t, out, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d DHCPv6-port datagrams (546->547, 1 KB) from the strict guest reached %s", n, attackN, attackNet6)
	}
	if n := guestCap.count(t, back, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d datagrams 547->546 from %s reached the strict guest", n, attackN, attackNet6)
	}
	l.expectCounted(before, map[string]uint64{
		"ingress/deny_unlabeled": attackN,
		"egress/deny_unlabeled":  attackN,
	})
}

// TestPrivilegedAttackNDChannel: ICMPv6 types 130-137/143 with a wrong
// source, destination, hop limit or size (issue 11, item 2).
func TestPrivilegedAttackNDChannel(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	netCap := capture(t, l.netNS, "eth0")
	guestCap := capture(t, g.ns, "eth0")
	hostICMP := rawRx(t, l.hostNS, unix.AF_INET6, unix.IPPROTO_ICMPV6)

	mq, na, nsHop, mldBig, nsBig, rs := marker(t, "mld-query-out"), marker(t, "na-back"), marker(t, "ns-hop64"),
		marker(t, "mld-report-1k"), marker(t, "ns-1k"), marker(t, "rs-foreign-ll")
	hostSol, hostSolMAC := solicited(attackHostLL)
	allNodes, allRouters := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2")
	mld := func(m []byte, n int) []byte { return pad(append(make([]byte, 20), m...), n) }

	before := l.counters()
	// An MLD query with 1 KB to a server on the untrusted network.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr6, dst: attackNet6,
		proto: layers.IPProtocolICMPv6, icmpType: 130, payload: mld(mq, 1024)}.frame())...)
	// A neighbour solicitation for the host with hop limit 64 (RFC 4861: 255).
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: hostSolMAC, src: g.ll6, dst: hostSol, hop: 64,
		proto: layers.IPProtocolICMPv6, icmpType: 135, payload: ndNS(attackHostLL, g.mac, nsHop)}.frame())...)
	// An MLD report of 1 KB to all nodes.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: mcastMAC(allNodes), src: g.ll6, dst: allNodes, hop: 1,
		proto: layers.IPProtocolICMPv6, icmpType: 131, payload: mld(mldBig, 1024)}.frame())...)
	// A well-formed solicitation for the host, 1 KB long.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: hostSolMAC, src: g.ll6, dst: hostSol, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 135, payload: ndNS(attackHostLL, g.mac, pad(nsBig, 1000))}.frame())...)
	// A router solicitation from a link-local address that is not the guest's.
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: mcastMAC(allRouters), src: netip.MustParseAddr("fe80::99"), dst: allRouters, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 133, payload: append(make([]byte, 4), rs...)}.frame())...)
	// From the untrusted network: a 1 KB neighbour advertisement to the guest.
	inNS(t, l.netNS, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		f := ipPkt{srcMAC: attackNetMAC, dstMAC: attackUpMAC, src: attackNet6, dst: g.addr6, hop: 255,
			proto: layers.IPProtocolICMPv6, icmpType: 136, payload: pad(append(make([]byte, 20), na...), 1024)}.frame()
		for range attackN {
			if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: vethHtons(unix.ETH_P_IPV6)}); err != nil {
				return err
			}
		}
		return nil
	})
	if n := netCap.count(t, mq, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d 1 KB MLD queries from the guest reached %s on the untrusted network", n, attackN, attackNet6)
	}
	if n := guestCap.count(t, na, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d 1 KB neighbour advertisements from %s reached the guest", n, attackN, attackNet6)
	}
	for _, c := range []struct {
		what string
		m    []byte
	}{{"neighbour solicitations with hop limit 64", nsHop}, {"1 KB MLD reports", mldBig}, {"1 KB neighbour solicitations", nsBig},
		{"router solicitations from a foreign link-local source", rs}} {
		if n := hostICMP.count(t, c.m, 0, 100*time.Millisecond); n != 0 {
			t.Errorf("%d of %d %s reached the host", n, attackN, c.what)
		}
	}
	l.expectCounted(before, map[string]uint64{
		"ingress/deny_control": 4 * attackN,
		"ingress/deny_spoofed": attackN,
		"egress/deny_control":  attackN,
	})
}

// TestPrivilegedAttackRogueRouterAdvertisement: a guest announces itself
// as a router to a host that takes router advertisements on its vif
// (accept_ra 2: a host that is not a router, or one set so), and sends a
// redirect: the host must not get a default route through the guest.
func TestPrivilegedAttackRogueRouterAdvertisement(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	sysctls(t, l.hostNS, map[string]string{"net/ipv6/conf/" + g.vif + "/accept_ra": "2"})
	l.start()
	l.declare(l.spec(g, false))
	allNodes := netip.MustParseAddr("ff02::1")
	// RFC 4861 4.2: hop limit 64, flags 0, router lifetime 1800 s, then a
	// source link-layer address option.
	ra := []byte{64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}
	ra = append(ra, g.mac...)
	// RFC 4861 4.5: a redirect of traffic for the untrusted server to the
	// guest itself.
	rd := make([]byte, 4, 36)
	ll, dst := g.ll6.As16(), attackNet6.As16()
	rd = append(append(rd, ll[:]...), dst[:]...)
	before := l.counters()
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: mcastMAC(allNodes), src: g.ll6, dst: allNodes, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 134, payload: ra}.frame())...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.ll6, dst: attackHostLL, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 137, payload: rd}.frame())...)
	time.Sleep(200 * time.Millisecond)
	out, err := exec.Command("ip", "-n", l.hostNS, "-6", "route", "show", "default").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -6 route show default: %v\n%s", err, out)
	}
	if strings.Contains(string(out), g.ll6.String()) {
		t.Errorf("the host routes through the guest after its router advertisement:\n%s", out)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_control": 2 * attackN})
}

// TestPrivilegedAttackARPChannel: on a bridge shared by guests (xenbr0), a
// 1,114-byte frame with the ARP ethertype, and an ARP request for another
// guest, go from one guest to the other (issue 11, item 2).
func TestPrivilegedAttackARPChannel(t *testing.T) {
	l := newLab(t, true)
	a, b := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(a, true), l.spec(b, true))
	bCap := capture(t, b.ns, "eth0")

	big := marker(t, "arp-1114")
	f := serialize(&layers.Ethernet{SrcMAC: a.mac, DstMAC: b.mac, EthernetType: layers.EthernetTypeARP}, gopacket.Payload(pad(big, 1100)))
	if len(f) != 1114 {
		t.Fatalf("frame is %d bytes, want 1114", len(f))
	}
	whoHas := attackARP(a.mac, attackBcast, layers.ARPRequest, a.mac, a.addr4, make(net.HardwareAddr, 6), b.addr4)
	before := l.counters()
	a.send(t, times(attackN, f)...)
	a.send(t, times(attackN, whoHas)...)
	if n := bCap.count(t, big, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d 1,114-byte ARP-ethertype frames went from %s to %s", n, attackN, a.vif, b.vif)
	}
	if n := bCap.countFn(t, func(p []byte) bool { return isARP(p, layers.ARPRequest, a.addr4) }, 0, 100*time.Millisecond); n != 0 {
		t.Errorf("%d of %d ARP requests for another guest's address (%s) reached it", n, attackN, b.addr4)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_control": 2 * attackN})
}

// hostNeigh returns the MAC the host's neighbour table holds for a.
func (l *lab) hostNeigh(a netip.Addr) string {
	out, err := exec.Command("ip", "-n", l.hostNS, "neigh", "show", a.String(), "dev", "br0").CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip neigh show %s: %v\n%s", a, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// fdbPort returns the bridge port br0 has learnt mac on.
func (l *lab) fdbPort(mac net.HardwareAddr) string {
	out, err := exec.Command("bridge", "-n", l.hostNS, "fdb", "show", "br", "br0").CombinedOutput()
	if err != nil {
		l.t.Fatalf("bridge fdb show: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == mac.String() && f[1] == "dev" {
			return f[2]
		}
	}
	return ""
}

// bridgedPair is two permissive guests on br0 that the host and the bridge
// already know: the host's neighbour entry for b is reachable (not
// permanent, so that ARP could move it) and the bridge has learnt b's MAC.
func bridgedPair(t *testing.T) (*lab, *labGuest, *labGuest) {
	if _, err := exec.LookPath("bridge"); err != nil {
		t.Skip("needs iproute2's bridge: make deps-kernel")
	}
	l := newLab(t, true)
	a, b := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(a, true), l.spec(b, true))
	for _, a := range []netip.Addr{b.addr4, b.addr6} {
		run(t, "ip", "-n", l.hostNS, "neigh", "replace", a.String(), "lladdr", b.mac.String(), "dev", "br0", "nud", "reachable")
	}
	// b speaks once, legitimately, so the bridge learns where it is.
	b.send(t, attackARP(b.mac, attackBcast, layers.ARPRequest, b.mac, b.addr4, make(net.HardwareAddr, 6), b.host4))
	for range 100 {
		if l.fdbPort(b.mac) == b.vif {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := l.fdbPort(b.mac); p != b.vif {
		t.Fatalf("br0 has %s on %q, want %s", b.mac, p, b.vif)
	}
	return l, a, b
}

// TestPrivilegedAttackARPImpersonation: a guest claims another guest's
// address with its own MAC, so the host's neighbour entry moves to it and
// the host sends it the other guest's traffic (issue 11, item 4).
func TestPrivilegedAttackARPImpersonation(t *testing.T) {
	l, a, b := bridgedPair(t)
	if got := l.hostNeigh(b.addr4); got != b.mac.String() {
		t.Fatalf("host's neighbour for %s is %q before the attack, want %s", b.addr4, got, b.mac)
	}
	before := l.counters()
	// A reply to the host, and a gratuitous request, both "b.addr4 is at a.mac".
	a.send(t, times(attackN, attackARP(a.mac, attackBrMAC, layers.ARPReply, a.mac, b.addr4, attackBrMAC, a.host4))...)
	a.send(t, times(attackN, attackARP(a.mac, attackBcast, layers.ARPRequest, a.mac, b.addr4, make(net.HardwareAddr, 6), b.addr4))...)
	time.Sleep(100 * time.Millisecond)
	if got := l.hostNeigh(b.addr4); got != b.mac.String() {
		t.Errorf("after %s's ARP the host sends %s's traffic to %s (want %s)", a.vif, b.addr4, got, b.mac)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_control": 2 * attackN})
}

// TestPrivilegedAttackForgedSourceMAC: a guest sends with another guest's
// MAC as its Ethernet source: the bridge moves that MAC to it, and an ARP
// that names the other guest whole moves the host's neighbour entry.
func TestPrivilegedAttackForgedSourceMAC(t *testing.T) {
	l, a, b := bridgedPair(t)
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(a.host4, 9000))
	forged, own := marker(t, "forged-mac"), marker(t, "own-mac")
	udp := func(src net.HardwareAddr, m []byte) []byte {
		return ipPkt{srcMAC: src, dstMAC: attackBrMAC, src: a.addr4, dst: a.host4, proto: layers.IPProtocolUDP,
			sport: 9001, dport: 9000, payload: m}.frame()
	}
	before := l.counters()
	a.send(t, times(attackN, attackARP(b.mac, attackBrMAC, layers.ARPReply, b.mac, b.addr4, attackBrMAC, a.host4))...)
	a.send(t, times(attackN, udp(b.mac, forged))...)
	// The same datagram with a's own MAC: allowed (the guest is permissive).
	a.send(t, times(attackN, udp(a.mac, own))...)
	if n := hostUDP.count(t, own, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d datagrams with the guest's own MAC arrived: the lab is broken", n, attackN)
	}
	if n := hostUDP.count(t, forged, 0, 200*time.Millisecond); n != 0 {
		t.Errorf("%d of %d datagrams with %s's MAC as source reached the host", n, attackN, b.vif)
	}
	if p := l.fdbPort(b.mac); p != b.vif {
		t.Errorf("br0 now sends %s (%s's MAC) to %q", b.mac, b.vif, p)
	}
	if got := l.hostNeigh(b.addr4); got != b.mac.String() {
		t.Errorf("host's neighbour for %s is %q, want %s", b.addr4, got, b.mac)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_spoofed": 2 * attackN, "ingress/allow_default": attackN})
}

// TestPrivilegedAttackAPIPortAsSource: with TCP source port = the API port
// a strict guest reaches any TCP port on its own host-side address and on
// another guest's; and the API port itself on another guest's host-side
// address (issue 11, item 3).
func TestPrivilegedAttackAPIPortAsSource(t *testing.T) {
	l := newLab(t, false)
	g, other := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(g, false), l.spec(other, false))
	hostTCP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_TCP)
	own, foreign, api := marker(t, "sport-api-own-host"), marker(t, "sport-api-other-host"), marker(t, "dport-api-other-host")
	tcp := func(dst netip.Addr, sport, dport uint16, m []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: dst, proto: layers.IPProtocolTCP,
			sport: sport, dport: dport, syn: true, payload: m}.frame()
	}
	before := l.counters()
	g.send(t, times(attackN, tcp(g.host4, attackAPIPort, 22, own))...)
	g.send(t, times(attackN, tcp(other.host4, attackAPIPort, 22, foreign))...)
	g.send(t, times(attackN, tcp(other.host4, 40000, attackAPIPort, api))...)
	for _, c := range []struct {
		what string
		m    []byte
	}{{"SYNs from port 7443 to " + g.host4.String() + ":22", own}, {"SYNs from port 7443 to " + other.host4.String() + ":22", foreign},
		{"SYNs to the API port of another guest's host address " + other.host4.String(), api}} {
		if n := hostTCP.count(t, c.m, 0, 300*time.Millisecond); n != 0 {
			t.Errorf("%d of %d %s reached the host", n, attackN, c.what)
		}
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_unlabeled": 3 * attackN})
}

// TestPrivilegedAttackIKEPortAsSource: with UDP source port 500 or 4500 a
// strict guest reaches host UDP 53 (issue 11, item 3).
func TestPrivilegedAttackIKEPortAsSource(t *testing.T) {
	l := newLab(t, false)
	g, other := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(g, false), l.spec(other, false))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	kinds := []struct {
		what         string
		dst          netip.Addr
		sport, dport uint16
	}{
		{"500->53 to its host address", g.host4, 500, 53},
		{"4500->53 (non-ESP marker) to its host address", g.host4, 4500, 53},
		{"500->53 to another guest's host address", other.host4, 500, 53},
		{"53->500 to its host address", g.host4, 53, 500},
		{"500->500 to another guest's host address", other.host4, 500, 500},
	}
	before := l.counters()
	ms := make([][]byte, len(kinds))
	for i, k := range kinds {
		ms[i] = marker(t, fmt.Sprintf("%d", i))
		// Four zero bytes first: the non-ESP marker of UDP-encapsulated IKE.
		g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: k.dst, proto: layers.IPProtocolUDP,
			sport: k.sport, dport: k.dport, payload: append(make([]byte, 4), ms[i]...)}.frame())...)
	}
	for i, k := range kinds {
		if n := hostUDP.count(t, ms[i], 0, 200*time.Millisecond); n != 0 {
			t.Errorf("%d of %d datagrams %s reached the host", n, attackN, k.what)
		}
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_unlabeled": uint64(len(kinds)) * attackN})
}

// TestPrivilegedAttackNDImpersonation: ARP's impersonation in IPv6. On a
// bridge shared by guests, a neighbour advertisement from the guest's own
// link-local address to the host, well formed, whose target is another
// guest's address and whose link-layer option is the sender's MAC, moves
// the host's neighbour entry for the other guest to the sender.
func TestPrivilegedAttackNDImpersonation(t *testing.T) {
	l, a, b := bridgedPair(t)
	if got := l.hostNeigh(b.addr6); got != b.mac.String() {
		t.Fatalf("host's neighbour for %s is %q before the attack, want %s", b.addr6, got, b.mac)
	}
	na := func(target netip.Addr, tll net.HardwareAddr) []byte {
		body := []byte{0x20, 0, 0, 0} // override
		t16 := target.As16()
		body = append(body, t16[:]...)
		body = append(body, 2, 1) // target link-layer address option
		body = append(body, tll...)
		return ipPkt{srcMAC: a.mac, dstMAC: attackBrMAC, src: a.ll6, dst: attackHostLL, hop: 255,
			proto: layers.IPProtocolICMPv6, icmpType: 136, payload: body}.frame()
	}
	before := l.counters()
	a.send(t, times(attackN, na(b.addr6, a.mac))...)
	time.Sleep(100 * time.Millisecond)
	if got := l.hostNeigh(b.addr6); got != b.mac.String() {
		t.Errorf("after %s's neighbour advertisement the host sends %s's traffic to %s (want %s)", a.vif, b.addr6, got, b.mac)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_control": attackN})
}

// TestPrivilegedAttackBridgeUnspecifiedSource: ND and MLD from :: (which a
// guest may send, for duplicate address detection) to the link's groups
// are flooded by a shared bridge to the other guests: toward a guest,
// control comes from the host-side address only.
func TestPrivilegedAttackBridgeUnspecifiedSource(t *testing.T) {
	l := newLab(t, true)
	a, b := l.addGuest(7, 0), l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(a, false), l.spec(b, false))
	bCap := capture(t, b.ns, "eth0")
	allNodes, mldv2 := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::16")
	kinds := []struct {
		what string
		typ  uint8
		hop  uint8
		dst  netip.Addr
	}{
		{"MLDv2 reports to ff02::16", 143, 1, mldv2},
		{"MLD reports to ff02::1", 131, 1, allNodes},
		{"neighbour solicitations to ff02::1", 135, 255, allNodes},
	}
	ms := make([][]byte, len(kinds))
	before := l.counters()
	for i, k := range kinds {
		ms[i] = marker(t, fmt.Sprint(i))
		a.send(t, times(attackN, ipPkt{srcMAC: a.mac, dstMAC: mcastMAC(k.dst), src: netip.IPv6Unspecified(), dst: k.dst, hop: k.hop,
			proto: layers.IPProtocolICMPv6, icmpType: k.typ, payload: pad(append(make([]byte, 20), ms[i]...), 500)}.frame())...)
	}
	for i, k := range kinds {
		if n := bCap.count(t, ms[i], 0, 300*time.Millisecond); n != 0 {
			t.Errorf("%d of %d %s from :: (500 bytes) went from %s to %s", n, attackN, k.what, a.vif, b.vif)
		}
	}
	// Refused where the rules say: at a's ingress or at b's egress, once.
	after := l.counters()
	in, eg := after["ingress/deny_control"]-before["ingress/deny_control"], after["egress/deny_control"]-before["egress/deny_control"]
	if want := uint64(len(kinds)) * attackN; in+eg != want {
		t.Errorf("deny_control rose by %d in all (ingress %d, egress %d), want %d", in+eg, in, eg, want)
	}
	// The split between the two ends is the fast path's choice; nothing
	// else may be denied.
	l.expectCounted(before, map[string]uint64{"ingress/deny_control": in, "egress/deny_control": eg})
}

// TestPrivilegedAttackBridgeControlRedirect: on a bridge shared by
// guests, a strict guest sends control traffic to its host-side address
// (DHCP, IKE, the API port: allowed where it leaves) in frames addressed to
// another guest's MAC. The bridge delivers them to that guest, which is
// permissive and accepts the first guest's address as a peer: toward a
// guest, a packet that is not addressed to it (at the IP layer) is no data
// for it.
func TestPrivilegedAttackBridgeControlRedirect(t *testing.T) {
	l := newLab(t, true)
	a, b := l.addGuest(7, 0), l.addGuest(8, 0)
	all, err := label.ParseBounds("s0-s15/i0-i15")
	if err != nil {
		t.Fatal(err)
	}
	l.peers = []agent.PeerSpec{{Prefix: netip.PrefixFrom(a.addr4, 32), Range: all, Kind: verdict.PeerGuest},
		{Prefix: netip.PrefixFrom(a.addr6, 128), Range: all, Kind: verdict.PeerGuest}}
	l.start()
	l.declare(l.spec(a, false), l.spec(b, true))
	bCap := capture(t, b.ns, "eth0")
	dhcp6 := netip.MustParseAddr("ff02::1:2")
	kinds := []struct {
		what         string
		src, dst     netip.Addr
		dstMAC       net.HardwareAddr
		proto        layers.IPProtocol
		sport, dport uint16
	}{
		{"DHCP 68->67 to the host, in frames for b's MAC,", a.addr4, a.host4, b.mac, layers.IPProtocolUDP, 68, 67},
		{"IKE 500->500 to the host, in frames for b's MAC,", a.addr4, a.host4, b.mac, layers.IPProtocolUDP, 500, 500},
		{"TCP SYNs to the host's API port, in frames for b's MAC,", a.addr4, a.host4, b.mac, layers.IPProtocolTCP, 40000, attackAPIPort},
		{"DHCP 68->67 to 255.255.255.255", a.addr4, netip.MustParseAddr("255.255.255.255"), attackBcast, layers.IPProtocolUDP, 68, 67},
		{"DHCPv6 546->547 to ff02::1:2", a.addr6, dhcp6, mcastMAC(dhcp6), layers.IPProtocolUDP, 546, 547},
	}
	ms := make([][]byte, len(kinds))
	before := l.counters()
	for i, k := range kinds {
		ms[i] = marker(t, fmt.Sprint(i))
		a.send(t, times(attackN, ipPkt{srcMAC: a.mac, dstMAC: k.dstMAC, src: k.src, dst: k.dst, proto: k.proto,
			sport: k.sport, dport: k.dport, syn: true, payload: pad(ms[i], 500)}.frame())...)
	}
	for i, k := range kinds {
		if n := bCap.count(t, ms[i], 0, 300*time.Millisecond); n != 0 {
			t.Errorf("%d of %d %s (500 bytes, from strict %s) reached permissive %s", n, attackN, k.what, a.vif, b.vif)
		}
	}
	after := l.counters()
	var denied uint64
	want := map[string]uint64{"ingress/allow_control": uint64(len(kinds)) * attackN}
	for k := range after {
		if strings.HasPrefix(k, "egress/deny_") {
			denied += after[k] - before[k]
			want[k] = after[k] - before[k]
		}
	}
	if denied != uint64(len(kinds))*attackN {
		t.Errorf("%s's egress denied %d, want %d", b.vif, denied, uint64(len(kinds))*attackN)
	}
	l.expectCounted(before, want)
}

// TestPrivilegedAttackSpoofUndeclaredFamily: a guest declared with an
// IPv4 address only, as the loader declares its guests, sends IPv6 from an
// address that is not its own (another guest's), as data and as ND.
func TestPrivilegedAttackSpoofUndeclaredFamily(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	spec := l.spec(g, true)
	spec.Addr6 = netip.Addr{}
	l.declare(spec)
	hostUDP6 := rawRx(t, l.hostNS, unix.AF_INET6, unix.IPPROTO_UDP)
	hostICMP := rawRx(t, l.hostNS, unix.AF_INET6, unix.IPPROTO_ICMPV6)
	sink(t, l.hostNS, netip.AddrPortFrom(g.host6, 9000))
	foreign := netip.MustParseAddr("fd00:70:8::7")
	mUDP, mNS := marker(t, "udp6-foreign-source"), marker(t, "ns-foreign-source")
	hostSol, hostSolMAC := solicited(attackHostLL)
	before := l.counters()
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: foreign, dst: g.host6, proto: layers.IPProtocolUDP,
		sport: 9001, dport: 9000, payload: mUDP}.frame())...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: hostSolMAC, src: foreign, dst: hostSol, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 135, payload: ndNS(attackHostLL, g.mac, mNS)}.frame())...)
	if n := hostUDP6.count(t, mUDP, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d IPv6 datagrams from %s (not the guest's) reached the host", n, attackN, foreign)
	}
	if n := hostICMP.count(t, mNS, 0, 100*time.Millisecond); n != 0 {
		t.Errorf("%d of %d neighbour solicitations from %s (not the guest's) reached the host", n, attackN, foreign)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_spoofed": 2 * attackN})
}

// TestPrivilegedAttackConflictingGuest: a guest declared with another
// guest's address (a declaration the planner must refuse) is denied
// everything, even from the address it claims; a guest not involved keeps
// working, and one more guest can still be declared (issue 11, item 5).
func TestPrivilegedAttackConflictingGuest(t *testing.T) {
	l := newLab(t, false)
	g7, g8, g9, g10 := l.addGuest(7, 0), l.addGuest(8, 0), l.addGuest(9, 0), l.addGuest(10, 0)
	l.start()
	l.declare(l.spec(g7, true), l.spec(g8, true))
	bad := l.spec(g9, true)
	bad.Addr4 = g8.addr4
	l.put("/v1/guests/"+bad.Interface, bad)
	l.declare(l.spec(g7, true), l.spec(g8, true), bad, l.spec(g10, true))
	for _, gs := range l.status().Guests {
		t.Logf("%+v", gs)
	}
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(netip.IPv4Unspecified(), 9000))
	udp := func(g *labGuest, src netip.Addr, m []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: src, dst: g.host4, proto: layers.IPProtocolUDP, sport: 9001, dport: 9000, payload: m}.frame()
	}
	m7, m9, m10 := marker(t, "vif7"), marker(t, "vif9-claimed-address"), marker(t, "vif10")
	before := l.counters()
	g7.send(t, times(attackN, udp(g7, g7.addr4, m7))...)
	g9.send(t, times(attackN, udp(g9, g8.addr4, m9))...)
	g10.send(t, times(attackN, udp(g10, g10.addr4, m10))...)
	if n := hostUDP.count(t, m7, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d datagrams from %s (not involved in the conflict) arrived", n, attackN, g7.vif)
	}
	if n := hostUDP.count(t, m10, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d datagrams from %s (declared after the conflict) arrived", n, attackN, g10.vif)
	}
	if n := hostUDP.count(t, m9, 0, 200*time.Millisecond); n != 0 {
		t.Errorf("%d of %d datagrams from %s, declared with %s's address, arrived", n, attackN, g9.vif, g8.vif)
	}
	l.expectCounted(before, map[string]uint64{"ingress/allow_default": 2 * attackN, "ingress/deny_unplanned": attackN})
}

// TestPrivilegedAttackLegitimateNetnsGuest: a guest as the loader makes
// and declares it (the netns backend's link, Host.Quarantine's
// declaration) with its own kernel doing what kernels do on a new link:
// IPv6 duplicate address detection, MLD reports and a router solicitation
// from its EUI-64 link-local address, ARP for its gateway; and a TCP
// exchange with the API port. None of it may be denied, either way.
func TestPrivilegedAttackLegitimateNetnsGuest(t *testing.T) {
	l := newLab(t, false)
	l.start()
	n := &backend.Netns{HostNS: l.hostNS, StateDir: t.TempDir()}
	spec := loader.BootSpec{VM: 60107, Name: "attack-legit", Addr: netip.MustParseAddr("10.77.0.7"),
		HostAddr: netip.MustParseAddr("10.77.0.1"), PrefixLen: 24, Template: "attack", UpdatedPort: 7444}
	g, err := n.Boot(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Destroy(context.Background(), g) })
	h := &loader.Host{Agent: loader.NewAgentClient("unix:" + l.sock)}
	if err := h.Quarantine(g); err != nil {
		t.Fatalf("quarantine %s: %v", g.Interface, err)
	}
	var declared agent.GuestSpec
	for _, gs := range l.status().Guests {
		if gs.Interface == g.Interface {
			declared = gs.GuestSpec
		}
	}
	l.waitAttached(1, declared)
	t.Logf("declared as %+v", declared)
	if declared.MAC != g.MAC || declared.HostAddr4 != g.HostAddr || declared.HostAddr6 != g.HostLL || !g.HostLL.IsValid() || g.MAC == "" {
		t.Fatalf("the loader declared %+v for guest %+v", declared, g)
	}

	// The guest's link comes up again inside the measured window.
	before := l.counters()
	run(t, "ip", "-n", g.Handle, "link", "set", "eth0", "down")
	run(t, "ip", "-n", g.Handle, "link", "set", "eth0", "up")
	run(t, "ip", "-n", g.Handle, "route", "replace", "default", "via", spec.HostAddr.String())
	mac, err := net.ParseMAC(g.MAC)
	if err != nil {
		t.Fatal(err)
	}
	ll := eui64(mac)
	settled := false
	for range 100 {
		out, _ := exec.Command("ip", "-n", g.Handle, "-6", "addr", "show", "dev", "eth0").CombinedOutput()
		if strings.Contains(string(out), ll.String()) && !strings.Contains(string(out), "tentative") {
			settled = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !settled {
		out, _ := exec.Command("ip", "-n", g.Handle, "-6", "addr", "show", "dev", "eth0").CombinedOutput()
		t.Fatalf("the guest's link-local address is not %s, or still tentative:\n%s", ll, out)
	}

	var ln net.Listener
	inNS(t, l.hostNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(g.HostAddr, attackAPIPort).String())
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Write(append([]byte("echo:"), buf[:n]...))
	}()
	var conn net.Conn
	inNS(t, g.Handle, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(g.HostAddr, attackAPIPort).String(), 5*time.Second)
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatalf("write to the API port: %v", err)
	}
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "echo:hello" {
		t.Errorf("API port exchange: read %q, %v", buf[:n], err)
	}
	// Router solicitations go out up to a second after the address
	// settles, MLD reports at random within a second: wait them out.
	time.Sleep(2500 * time.Millisecond)
	after := l.counters()
	if d := after["ingress/allow_control"] - before["ingress/allow_control"]; d < 5 {
		t.Errorf("ingress allow_control rose by %d: the guest's own control traffic (ARP, DAD, MLD, RS, TCP) was not seen", d)
	}
	l.expectCounted(before, map[string]uint64{})
	if t.Failed() {
		t.Logf("agent log:\n%s", l.log)
	}
}

// attackHelperEnv, when set in the environment, makes the test binary a
// helper instead of a test run (see attackHelper).
const attackHelperEnv = "MLSGATE_ATTACK_HELPER"

// attackHelper is the test binary re-executed as an unprivileged host
// process; it fails if it runs as root. "udp <src addr:port> <dst
// addr:port> <count> <hex payload>" sends count datagrams; "tcp <src addr>
// <dst addr:port> <count>" tries count connections, each given 300 ms (less
// than the first SYN retransmission, so each sends one SYN), and prints how
// many were established.
func attackHelper(args []string) int {
	if os.Geteuid() == 0 {
		fmt.Fprintln(os.Stderr, "attack helper: must not run as root")
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "attack helper:", err)
		return 2
	}
	switch {
	case len(args) == 5 && args[0] == "udp":
		src, err1 := netip.ParseAddrPort(args[1])
		dst, err2 := netip.ParseAddrPort(args[2])
		n, err3 := strconv.Atoi(args[3])
		payload, err4 := hex.DecodeString(args[4])
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return fail(err)
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrInet4{Addr: src.Addr().As4(), Port: int(src.Port())})
		}
		if err != nil {
			return fail(err)
		}
		for range n {
			// A drop at the vif's egress may come back as ENOBUFS: keep going.
			unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		}
		fmt.Printf("sent %d datagrams %s -> %s as uid %d\n", n, src, dst, os.Geteuid())
		return 0
	case len(args) == 4 && args[0] == "tcp":
		src, err1 := netip.ParseAddr(args[1])
		dst, err2 := netip.ParseAddrPort(args[2])
		n, err3 := strconv.Atoi(args[3])
		if err := errors.Join(err1, err2, err3); err != nil {
			return fail(err)
		}
		established := 0
		for range n {
			d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			if c, err := d.Dial("tcp4", dst.String()); err == nil {
				established++
				c.Close()
			}
		}
		fmt.Printf("established %d of %d connections %s -> %s as uid %d\n", established, n, src, dst, os.Geteuid())
		return 0
	}
	fmt.Fprintf(os.Stderr, "attack helper: bad arguments %q\n", args)
	return 2
}

// runUnprivileged runs the test binary as a helper with uid/gid 65534
// (nobody) in the named namespace.
func runUnprivileged(t *testing.T, ns string, args ...string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// nobody must be able to execute it: a copy in a 0755 directory.
	dir, err := os.MkdirTemp("", "mlsgate-attack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "helper")
	b, err := os.ReadFile(self)
	if err == nil {
		err = os.WriteFile(bin, b, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, ns, func() error {
		// The child is forked from this thread, so it starts in ns.
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{attackHelperEnv + "=1"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		t.Logf("unprivileged helper: %s", bytes.TrimSpace(out))
		if err != nil {
			return fmt.Errorf("helper %v: %w", args, err)
		}
		return nil
	})
}

// TestPrivilegedAttackUnprivilegedHostPort4500: a host process that is not
// root sends to a strict guest from UDP port 4500 (issue 11, item 3).
func TestPrivilegedAttackUnprivilegedHostPort4500(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	guestCap := capture(t, g.ns, "eth0")
	sink(t, g.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 9999))
	m := marker(t, "nobody-4500")
	before := l.counters()
	runUnprivileged(t, l.hostNS, "udp", netip.AddrPortFrom(g.host4, 4500).String(), netip.AddrPortFrom(g.addr4, 9999).String(),
		strconv.Itoa(attackN), hex.EncodeToString(append(make([]byte, 4), m...)))
	if n := guestCap.count(t, m, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d datagrams from an unprivileged host process on port 4500 reached the guest", n, attackN)
	}
	l.expectCounted(before, map[string]uint64{"egress/deny_unlabeled": attackN})
}

// TestPrivilegedAttackUnprivilegedHostIKE: the same with both ports IKE's:
// only root's IKE daemon speaks IKE to a guest.
func TestPrivilegedAttackUnprivilegedHostIKE(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	guestCap := capture(t, g.ns, "eth0")
	sink(t, g.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 4500))
	m := marker(t, "nobody-4500-4500")
	before := l.counters()
	runUnprivileged(t, l.hostNS, "udp", netip.AddrPortFrom(g.host4, 4500).String(), netip.AddrPortFrom(g.addr4, 4500).String(),
		strconv.Itoa(attackN), hex.EncodeToString(append(make([]byte, 4), m...)))
	if n := guestCap.count(t, m, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d IKE datagrams (4500->4500) from an unprivileged host process reached the guest", n, attackN)
	}
	l.expectCounted(before, map[string]uint64{"egress/deny_unlabeled": attackN})
}

// TestPrivilegedAttackUnprivilegedHostAPIPort: a host process that is not
// root connects to the API port (the update daemon's) of a guest.
func TestPrivilegedAttackUnprivilegedHostAPIPort(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	var ln net.Listener
	inNS(t, g.ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(g.addr4, attackAPIPort).String())
		return err
	})
	defer ln.Close()
	accepted := make(chan int, 1)
	go func() {
		n := 0
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- n
				return
			}
			n++
			c.Close()
		}
	}()
	before := l.counters()
	runUnprivileged(t, l.hostNS, "tcp", g.host4.String(), netip.AddrPortFrom(g.addr4, attackAPIPort).String(), strconv.Itoa(attackN))
	time.Sleep(100 * time.Millisecond)
	ln.Close()
	if n := <-accepted; n != 0 {
		t.Errorf("the guest accepted %d of %d connections to its API port from an unprivileged host process", n, attackN)
	}
	l.expectCounted(before, map[string]uint64{"egress/deny_unlabeled": attackN})
}

// TestPrivilegedAttackIfindexAbove65535: a guest on ifindex 70,000 is
// attached and filtered, and another guest can still be declared (issue
// 11, item 5).
func TestPrivilegedAttackIfindexAbove65535(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(70, 70000)
	other := l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(g, true))
	st := l.status()
	for _, gs := range st.Guests {
		if gs.Interface == g.vif && gs.Ifindex != 70000 {
			t.Fatalf("%s is on ifindex %d, want 70000", g.vif, gs.Ifindex)
		}
	}
	l.declare(l.spec(g, true), l.spec(other, true))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(netip.IPv4Unspecified(), 9000))
	good, spoof, good8, spoof8 := marker(t, "own-source"), marker(t, "spoofed-source"), marker(t, "vif8-own"), marker(t, "vif8-spoofed")
	udp := func(g *labGuest, src netip.Addr, m []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: src, dst: g.host4, proto: layers.IPProtocolUDP, sport: 9001, dport: 9000, payload: m}.frame()
	}
	before := l.counters()
	g.send(t, times(attackN, udp(g, g.addr4, good))...)
	g.send(t, times(attackN, udp(g, netip.MustParseAddr("10.70.70.99"), spoof))...)
	other.send(t, times(attackN, udp(other, other.addr4, good8))...)
	other.send(t, times(attackN, udp(other, netip.MustParseAddr("10.70.8.99"), spoof8))...)
	if n := hostUDP.count(t, good, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d allowed datagrams from the guest on ifindex 70000 arrived", n, attackN)
	}
	if n := hostUDP.count(t, good8, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d allowed datagrams from %s arrived", n, attackN, other.vif)
	}
	if n := hostUDP.count(t, spoof, 0, 200*time.Millisecond); n != 0 {
		t.Errorf("%d of %d spoofed datagrams from the guest on ifindex 70000 arrived: its vif is not filtered", n, attackN)
	}
	if n := hostUDP.count(t, spoof8, 0, 100*time.Millisecond); n != 0 {
		t.Errorf("%d of %d spoofed datagrams from %s arrived", n, attackN, other.vif)
	}
	l.expectCounted(before, map[string]uint64{"ingress/allow_default": 2 * attackN, "ingress/deny_spoofed": 2 * attackN})
}

// undeclaredVif runs a guest on vif9.0 that nobody declares and sends
// datagrams from it to the host; it returns how many arrived.
func undeclaredVif(t *testing.T, l *lab) (arrived int, before map[string]uint64) {
	g := l.addGuest(9, 0)
	l.start()
	declared := l.addGuest(8, 0)
	l.declare(l.spec(declared, true))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(g.host4, 9000))
	udp := func(m []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: g.host4, proto: layers.IPProtocolUDP, sport: 9001, dport: 9000, payload: m}.frame()
	}
	// Bounded wait until the agent has seen vif9.0: in deny mode its first
	// denial, in pass mode the first arrival.
	probe := marker(t, "probe")
	for range 100 {
		g.send(t, udp(probe))
		if l.counters()["ingress/deny_undeclared"] > 0 || hostUDP.count(t, probe, 1, 20*time.Millisecond) > 0 {
			break
		}
	}
	m := marker(t, "undeclared")
	before = l.counters()
	g.send(t, times(attackN, udp(m))...)
	return hostUDP.count(t, m, attackN, attackQuiet), before
}

// TestPrivilegedAttackUndeclaredVif: a vif that matches the agent's
// patterns but whose guest nobody declared is denied everything (issue 11,
// item 6).
func TestPrivilegedAttackUndeclaredVif(t *testing.T) {
	l := newLab(t, false)
	n, before := undeclaredVif(t, l)
	if n != 0 {
		t.Errorf("%d of %d datagrams from the undeclared vif9.0 reached the host", n, attackN)
	}
	if st := l.status(); st.Undeclared != "deny" || !slices.Contains(st.UndeclaredInterfaces, "vif9.0") {
		t.Errorf("status says undeclared %q on %v; want deny, with vif9.0 listed", st.Undeclared, st.UndeclaredInterfaces)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_undeclared": attackN})
}

// TestPrivilegedAttackUndeclaredVifPass: with `undeclared: pass` the agent
// keeps the old behaviour, for migration.
func TestPrivilegedAttackUndeclaredVifPass(t *testing.T) {
	l := newLab(t, false)
	cfg := filepath.Join(l.dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("undeclared: pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l.args = append(l.args, "--config", cfg)
	n, before := undeclaredVif(t, l)
	if n != attackN {
		t.Errorf("%d of %d datagrams from the undeclared vif9.0 arrived with undeclared: pass", n, attackN)
	}
	if st := l.status(); st.Undeclared != "pass" || !slices.Contains(st.UndeclaredInterfaces, "vif9.0") {
		t.Errorf("status says undeclared %q on %v; want pass, with vif9.0 listed", st.Undeclared, st.UndeclaredInterfaces)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_undeclared": 0})
}

// TestPrivilegedAttackRemovedGuest: a guest whose declaration is removed
// (the loader forgot it, or destroyed it and the domain lives on) keeps
// running on its vif: it must be denied like an undeclared one, not left
// unfiltered.
func TestPrivilegedAttackRemovedGuest(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(8, 0)
	l.start()
	l.declare(l.spec(g, true))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	sink(t, l.hostNS, netip.AddrPortFrom(g.host4, 9000))
	udp := func(m []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: g.hostMAC, src: g.addr4, dst: g.host4, proto: layers.IPProtocolUDP, sport: 9001, dport: 9000, payload: m}.frame()
	}
	declared, removed := marker(t, "declared"), marker(t, "removed")
	g.send(t, times(attackN, udp(declared))...)
	if n := hostUDP.count(t, declared, attackN, 2*time.Second); n != attackN {
		t.Fatalf("%d of %d datagrams from the declared guest arrived: the lab is broken", n, attackN)
	}
	req, _ := http.NewRequest("DELETE", "http://agent/v1/guests/"+g.vif, nil)
	resp, err := l.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("DELETE /v1/guests/%s: %s", g.vif, resp.Status)
	}
	// Bounded wait for the agent to act on the removal.
	probe := marker(t, "probe")
	for range 100 {
		g.send(t, udp(probe))
		if hostUDP.count(t, probe, 1, 20*time.Millisecond) == 0 {
			break
		}
	}
	before := l.counters()
	g.send(t, times(attackN, udp(removed))...)
	if n := hostUDP.count(t, removed, 0, attackQuiet); n != 0 {
		t.Errorf("%d of %d datagrams from %s arrived after its guest was removed", n, attackN, g.vif)
	}
	l.expectCounted(before, map[string]uint64{"ingress/deny_undeclared": attackN})
}

// TestPrivilegedAttackLegitimateControl: what a strict guest needs keeps
// working: DHCP from 0.0.0.0 to broadcast and to its host, ARP for its
// host, ND and RS with its host, DHCPv6 to ff02::1:2, IKE with its host
// both ways, and a TCP connection to the API port.
func TestPrivilegedAttackLegitimateControl(t *testing.T) {
	l := newLab(t, false)
	g := l.addGuest(7, 0)
	l.start()
	l.declare(l.spec(g, false))
	hostUDP := rawRx(t, l.hostNS, unix.AF_INET, unix.IPPROTO_UDP)
	hostUDP6 := rawRx(t, l.hostNS, unix.AF_INET6, unix.IPPROTO_UDP)
	hostICMP := rawRx(t, l.hostNS, unix.AF_INET6, unix.IPPROTO_ICMPV6)
	guestCap := capture(t, g.ns, "eth0")
	sink(t, l.hostNS, netip.AddrPortFrom(netip.IPv4Unspecified(), 67))
	ike := sink(t, l.hostNS, netip.AddrPortFrom(g.host4, 500))
	sink(t, l.hostNS, netip.AddrPortFrom(g.host4, 4500))
	sink(t, g.ns, netip.AddrPortFrom(g.addr4, 500))
	// The host listens to DHCPv6's group on the vif, as a relay would.
	inNS(t, l.hostNS, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		ifc, err := net.InterfaceByName(g.vif)
		if err != nil {
			return err
		}
		return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP,
			&unix.IPv6Mreq{Multiaddr: netip.MustParseAddr("ff02::1:2").As16(), Interface: uint32(ifc.Index)})
	})
	time.Sleep(50 * time.Millisecond)

	hostSol, hostSolMAC := solicited(attackHostLL)
	allRouters, dhcp6 := netip.MustParseAddr("ff02::2"), netip.MustParseAddr("ff02::1:2")
	bcast := netip.MustParseAddr("255.255.255.255")
	mDisc, mReq, mIKE, mNATT, mDHCP6, mIKEBack := marker(t, "dhcp-discover"), marker(t, "dhcp-renew"), marker(t, "ike-500"),
		marker(t, "ike-4500"), marker(t, "dhcpv6-solicit"), marker(t, "ike-from-host")
	udp4 := func(src, dst netip.Addr, dmac net.HardwareAddr, sport, dport uint16, payload []byte) []byte {
		return ipPkt{srcMAC: g.mac, dstMAC: dmac, src: src, dst: dst, proto: layers.IPProtocolUDP, sport: sport, dport: dport, payload: payload}.frame()
	}
	before := l.counters()
	g.send(t, times(attackN, udp4(netip.IPv4Unspecified(), bcast, attackBcast, 68, 67, pad(mDisc, 300)))...)
	g.send(t, times(attackN, udp4(g.addr4, g.host4, g.hostMAC, 68, 67, pad(mReq, 300)))...)
	g.send(t, times(attackN, udp4(g.addr4, g.host4, g.hostMAC, 500, 500, mIKE))...)
	g.send(t, times(attackN, udp4(g.addr4, g.host4, g.hostMAC, 4500, 4500, append(make([]byte, 4), mNATT...)))...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: mcastMAC(dhcp6), src: g.ll6, dst: dhcp6, hop: 1,
		proto: layers.IPProtocolUDP, sport: 546, dport: 547, payload: pad(mDHCP6, 100)}.frame())...)
	g.send(t, times(attackN, attackARP(g.mac, attackBcast, layers.ARPRequest, g.mac, g.addr4, make(net.HardwareAddr, 6), g.host4))...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: hostSolMAC, src: g.ll6, dst: hostSol, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 135, payload: ndNS(attackHostLL, g.mac, nil)}.frame())...)
	rsBody := append(make([]byte, 4), 1, 1)
	rsBody = append(rsBody, g.mac...)
	g.send(t, times(attackN, ipPkt{srcMAC: g.mac, dstMAC: mcastMAC(allRouters), src: g.ll6, dst: allRouters, hop: 255,
		proto: layers.IPProtocolICMPv6, icmpType: 133, payload: rsBody}.frame())...)
	// Root's IKE daemon on the host answers from 500 to 500.
	for range attackN {
		if err := unix.Sendto(ike, mIKEBack, 0, &unix.SockaddrInet4{Addr: g.addr4.As4(), Port: 500}); err != nil {
			t.Fatalf("IKE from the host: %v", err)
		}
	}
	for _, c := range []struct {
		what string
		r    *rx
		m    []byte
	}{
		{"DHCPDISCOVERs from 0.0.0.0 to 255.255.255.255", hostUDP, mDisc},
		{"DHCPREQUESTs to the host-side address", hostUDP, mReq},
		{"IKE datagrams 500->500 to the host-side address", hostUDP, mIKE},
		{"IKE datagrams 4500->4500 to the host-side address", hostUDP, mNATT},
		{"DHCPv6 solicits to ff02::1:2", hostUDP6, mDHCP6},
		{"IKE datagrams 500->500 from the host to the guest", guestCap, mIKEBack},
	} {
		if n := c.r.count(t, c.m, attackN, 2*time.Second); n != attackN {
			t.Errorf("%d of %d %s arrived", n, attackN, c.what)
		}
	}
	if n := hostICMP.countFn(t, func(b []byte) bool { return len(b) >= 14 && b[0] == 133 && bytes.Contains(b, g.mac) }, attackN, 2*time.Second); n != attackN {
		t.Errorf("%d of %d router solicitations from the guest's link-local address reached the host", n, attackN)
	}
	if n := guestCap.countFn(t, func(b []byte) bool { return isARP(b, layers.ARPReply, g.host4) }, attackN, 2*time.Second); n != attackN {
		t.Errorf("the host answered %d of %d ARP requests for its address", n, attackN)
	}
	isNA := func(b []byte) bool {
		// Ethernet, IPv6 (40), ICMPv6 type 136 whose target is the host's LL.
		ll := attackHostLL.As16()
		return len(b) >= 14+40+24 && binary.BigEndian.Uint16(b[12:]) == 0x86dd && b[20] == 58 && b[54] == 136 && bytes.Equal(b[62:78], ll[:])
	}
	if n := guestCap.countFn(t, isNA, attackN, 2*time.Second); n != attackN {
		t.Errorf("the host answered %d of %d neighbour solicitations for %s", n, attackN, attackHostLL)
	}
	l.expectCounted(before, map[string]uint64{"ingress/allow_control": 8 * attackN})

	// The API port: a real connection, the guest's kernel on both ends'
	// usual TCP dance, data both ways.
	before = l.counters()
	var ln net.Listener
	inNS(t, l.hostNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(g.host4, attackAPIPort).String())
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Write(append([]byte("echo:"), buf[:n]...))
	}()
	var conn net.Conn
	inNS(t, g.ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(g.host4, attackAPIPort).String(), 3*time.Second)
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatalf("write to the API port: %v", err)
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "echo:hello" {
		t.Errorf("API port exchange: read %q, %v; want \"echo:hello\"", buf[:n], err)
	}
	after := l.counters()
	if after["ingress/allow_control"]-before["ingress/allow_control"] < 3 || after["egress/allow_control"]-before["egress/allow_control"] < 2 {
		t.Errorf("the API connection was not counted as control: ingress +%d, egress +%d",
			after["ingress/allow_control"]-before["ingress/allow_control"], after["egress/allow_control"]-before["egress/allow_control"])
	}
	l.expectCounted(before, map[string]uint64{})
}
