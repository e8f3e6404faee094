package inguest

import (
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/verdict"
)

// vethPair joins two new namespaces with a veth pair, hostIf in host and
// guestIf in guest, addressed hostAddr/24 and guestAddr/24 and up.
func vethPair(t *testing.T, host, guest, hostIf, guestIf, hostAddr, guestAddr string) (hns, gns netns.NsHandle) {
	t.Helper()
	hns, gns = newNetNS(t, host), newNetNS(t, guest)
	ip(t, "link", "add", hostIf, "netns", host, "type", "veth", "peer", "name", guestIf, "netns", guest)
	for _, s := range []struct{ ns, dev, addr string }{{host, hostIf, hostAddr}, {guest, guestIf, guestAddr}} {
		ip(t, "-n", s.ns, "addr", "add", s.addr+"/24", "dev", s.dev)
		ip(t, "-n", s.ns, "link", "set", s.dev, "up")
	}
	return hns, gns
}

// udpExchange sends n datagrams from the namespace from to addr:port in
// the namespace to and returns how many arrived within a second each.
func udpExchange(t *testing.T, from, to netns.NsHandle, addr string, port, n int) int {
	t.Helper()
	var rx *net.UDPConn
	err := inNetNS(to, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s:%d: %v", addr, port, err)
	}
	defer rx.Close()
	var tx *net.UDPConn
	err = inNetNS(from, func() (err error) {
		tx, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("dial %s:%d: %v", addr, port, err)
	}
	defer tx.Close()
	got := 0
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		if _, err := tx.Write([]byte("mlsgate " + strconv.Itoa(i))); err != nil {
			t.Fatalf("send to %s:%d: %v", addr, port, err)
		}
		rx.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := rx.ReadFromUDP(buf); err == nil {
			got++
		}
	}
	return got
}

func TestGuestVethPair(t *testing.T) {
	requireGuest(t)
	hns, gns := vethPair(t, "vh", "vg", "vif5.0", "eth0", "10.89.0.1", "10.89.0.5")
	h, err := netlink.NewHandleAt(hns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName("vif5.0")
	if err != nil {
		t.Fatal(err)
	}
	if link.Type() != "veth" || link.Attrs().OperState == netlink.OperDown {
		t.Errorf("vif5.0 is %s in state %v, want an up veth", link.Type(), link.Attrs().OperState)
	}
	if got := udpExchange(t, gns, hns, "10.89.0.1", 9100, 3); got != 3 {
		t.Errorf("%d of 3 datagrams crossed the veth pair", got)
	}
}

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var ma, mi int
	if _, err := fmt.Sscanf(rel, "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	return ma > major || ma == major && mi >= minor
}

// TestGuestFastpathAttach loads the fast path and attaches it to a veth
// end. Debian 12's 6.1 kernel has no tcx (6.6+), so this is where the clsact
// fallback of bpf.Attach runs for real: traffic must cross the programs and
// be counted.
func TestGuestFastpathAttach(t *testing.T) {
	requireGuest(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	hns, gns := vethPair(t, "fh", "fg", "vif6.0", "eth0", "10.89.1.1", "10.89.1.6")
	start := time.Now()
	objs, err := bpf.Load(bpf.DefaultOptions(), nil)
	if err != nil {
		t.Fatalf("load the fast path: %v", err)
	}
	defer objs.Close()
	t.Logf("fast path loaded in %.1fs", time.Since(start).Seconds())

	// Attach and detach go through the host namespace's netlink, from a
	// thread that stays in it.
	runtime.LockOSThread()
	if err := netns.Set(hns); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("vif6.0")
	if err != nil {
		t.Fatal(err)
	}
	att, err := bpf.Attach(link.Attrs().Index, objs.MlsgIngress, objs.MlsgEgress)
	if err != nil {
		t.Fatalf("attach to vif6.0: %v", err)
	}
	wantMode := "clsact"
	if kernelAtLeast(t, 6, 6) {
		wantMode = "tcx"
	}
	if att.Mode != wantMode {
		t.Errorf("attached with %s, want %s on this kernel", att.Mode, wantMode)
	}
	if att.Mode == "clsact" && bpfFilters(t, link) != 1 {
		t.Errorf("want one direct-action bpf filter on vif6.0 ingress")
	}
	if err := objs.ResetCounters(); err != nil {
		t.Fatal(err)
	}

	// vif6.0 is not in the vifs map, so every packet passes as unmanaged and
	// is counted on the ingress hook (from the guest side).
	const n = 5
	if got := udpExchange(t, gns, hns, "10.89.1.1", 9200, n); got != n {
		t.Errorf("%d of %d datagrams crossed vif6.0 with the fast path attached", got, n)
	}
	c, err := objs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c[verdict.Ingress][verdict.PassUnmanaged].Packets; got < n {
		t.Errorf("ingress pass_unmanaged counted %d packets, want at least %d", got, n)
	}

	if err := att.Close(); err != nil {
		t.Fatalf("detach from vif6.0: %v", err)
	}
	if att.Mode == "clsact" && bpfFilters(t, link) != 0 {
		t.Errorf("a bpf filter is left on vif6.0 ingress after Close")
	}
}

// bpfFilters counts the direct-action bpf filters on the ingress hook of
// link, in the calling thread's namespace.
func bpfFilters(t *testing.T, link netlink.Link) int {
	t.Helper()
	filters, err := netlink.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatalf("list the ingress filters of %s: %v", link.Attrs().Name, err)
	}
	n := 0
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.DirectAction {
			n++
		}
	}
	return n
}
