package kerneltests

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/mlsgate/mlsgate/verdict"
)

// A guest on an interface index past the dense vifs array (70,000) is
// filtered like any other: the programs find it in the hash. The packets
// run with the index of a veth that has it (BPF_PROG_TEST_RUN
// takes an ifindex of the thread's namespace).
func TestPrivilegedFastpathLargeIfindex(t *testing.T) {
	requirePrivileged(t)
	enterNetNS(t)
	const big, bigDeny, bigNone = 70_000, 70_001, 70_002
	for _, i := range []int{big, bigDeny, bigNone} {
		la := netlink.NewLinkAttrs()
		la.Name, la.Index = "vifbig"+string(rune('0'+i-big)), i
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: la.Name + "p"}); err != nil {
			t.Fatalf("veth with ifindex %d: %v", i, err)
		}
		l, err := netlink.LinkByName(la.Name)
		if err != nil || l.Attrs().Index != i {
			t.Fatalf("veth %s: ifindex %v (%v), want %d", la.Name, l, err, i)
		}
	}
	p := newProber(t, tableOptions())
	pol := tablePolicy()
	pol.Guests[big] = pol.Guests[probeIfindex]
	pol.Guests[bigDeny] = verdict.Guest{Deny: verdict.DenyUndeclared}
	delete(pol.Guests, probeIfindex) // a run that ignored the ifindex would pass unmanaged
	if err := p.install(pol); err != nil {
		t.Fatal(err)
	}
	spoofed := esp(guestV4, hostV4, 0xc0000001)
	spoofed[6] = 0x04
	for _, c := range []struct {
		name    string
		ifindex uint32
		frame   []byte
		want    verdict.Reason
	}{
		{"esp in range", big, esp(guestV4, hostV4, 0xc0000001), verdict.AllowLabeled},
		{"esp of another guest", big, esp(guestV4, hostV4, 0xc0000003), verdict.DenyForeignSA},
		{"spoofed mac", big, spoofed, verdict.DenySpoofed},
		{"arp for the host", big, arp(), verdict.AllowControl},
		{"undeclared", bigDeny, esp(guestV4, hostV4, 0xc0000001), verdict.DenyUndeclared},
		{"no entry", bigNone, esp(guestV4, hostV4, 0xc0000001), verdict.PassUnmanaged},
		{"loopback, no entry", probeIfindex, esp(guestV4, hostV4, 0xc0000001), verdict.PassUnmanaged},
	} {
		pkt := verdict.Packet{Ifindex: c.ifindex, Frame: c.frame}
		if ref := verdict.Decide(pol, pkt); ref != c.want {
			t.Errorf("%s: reference %s, want %s", c.name, ref, c.want)
		}
		_, got, err := p.run(pkt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s (ifindex %d): kernel %s, want %s", c.name, c.ifindex, got, c.want)
		}
	}
}
