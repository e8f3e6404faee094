package kerneltests

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mlsgate/mlsgate/verdict"
)

// FuzzFastpathVerdict feeds arbitrary frames to the C program (through the
// probe, BPF_PROG_TEST_RUN) and to the Go reference, for a strict guest (no
// unlabeled traffic) and a permissive one, and fails on any difference in
// verdict or reason. flags: bit 0 egress, bit 1 sent by a root socket,
// bit 2 with a secpath of SPI spi.
//
//	go test -run '^$' -fuzz FuzzFastpathVerdict -fuzztime 10m ./kernel-tests/
//
// Root only; skipped otherwise. The programs are not attached anywhere, so
// the runs need no namespace of their own (the fuzzer calls the function
// on goroutines of its choosing; BPF_PROG_TEST_RUN uses the loopback of
// whichever namespace the thread is in).
func FuzzFastpathVerdict(f *testing.F) {
	requirePrivileged(f)
	strict, open := tablePolicy(), tablePolicy()
	g := strict.Guests[probeIfindex]
	g.AllowUnlabeled = false
	strict.Guests[probeIfindex] = g
	type target struct {
		name string
		pol  *verdict.Policy
		p    *prober
	}
	var targets []target
	for _, t := range []struct {
		name string
		pol  *verdict.Policy
	}{{"strict", strict}, {"permissive", open}} {
		p := newProber(f, tableOptions())
		if err := p.install(t.pol); err != nil {
			f.Fatalf("%s: install: %v", t.name, err)
		}
		targets = append(targets, target{t.name, t.pol, p})
	}

	// Seeds: one frame of every kind the table tests use.
	for _, s := range []struct {
		frame []byte
		flags uint8
		spi   uint32
	}{
		{arp(), 0, 0},
		{arp()[:42], 0, 0},
		{arpReply(hostV4, guestV4), 1, 0},
		{udp(netip.IPv4Unspecified(), bcast4, 68, 67, make([]byte, 240)), 0, 0},
		{udp(hostV4, guestV4, 67, 68, make([]byte, 240)), 1, 0},
		{udp(guestLL, netip.MustParseAddr("ff02::1:2"), 546, 547, make([]byte, 60)), 0, 0},
		{icmp6Hop(guestLL, netip.MustParseAddr("ff02::1:ff00:1"), 135, 255, 20), 0, 0},
		{icmp6Hop(hostLL, netip.MustParseAddr("ff02::1"), 134, 255, 48), 1, 0},
		{icmp6Hop(guestLL, netip.MustParseAddr("ff02::16"), 143, 1, 28), 0, 0},
		{udp(guestV4, hostV4, 4500, 4500, make([]byte, 28)), 0, 0},
		{udp(hostV4, guestV4, 500, 500, make([]byte, 28)), 3, 0},
		{tcp(guestV4, hostV4, 40000, apiPort), 0, 0},
		{tcpAck(guestV4, hostV4, apiPort, 40000, true), 0, 0},
		{tcp(hostV4, guestV4, 40000, apiPort), 3, 0},
		{esp(guestV4, hostV4, 0xc0000001), 0, 0},
		{esp(guestV6, hostV6, 0xc0000005), 0, 0},
		{esp(openV4, guestV4, 0x2001), 1, 0},
		{tcp(guestV4, openV4, 40000, 443), 4, 0x3000},
		{udp(guestV4, openV4, 1000, 9000, nil), 0, 0},
		{rawFrame{src: guestV6, dst: hostV6, proto: 50, ext: []uint8{0, 60, 43, 51}, l4: espBytes(0xc0000005, 1, 16)}.bytes(), 0, 0},
		{vlanTagged(esp(guestV4, hostV4, 0xc0000001)), 0, 0},
	} {
		f.Add(s.frame, s.flags, s.spi)
	}

	f.Fuzz(func(t *testing.T, frame []byte, flags uint8, spi uint32) {
		pkt := verdict.Packet{Ifindex: probeIfindex, Frame: frame, RootSocket: flags&2 != 0}
		if flags&1 != 0 {
			pkt.Dir = verdict.Egress
		}
		if flags&4 != 0 {
			pkt.Secpath = &verdict.Secpath{SPI: spi, Family: verdict.AFInet}
			if flags&8 != 0 {
				pkt.Secpath.Family = verdict.AFInet6
			}
		}
		for _, tg := range targets {
			ret, got, err := tg.p.run(pkt)
			if err != nil {
				// BPF_PROG_TEST_RUN refuses frames it cannot build an skb
				// from (under 14 bytes, an untagged IP frame shorter than
				// its fixed header, more than a page): nothing to compare.
				if !refusedByTestRun(frame) {
					t.Fatalf("%s: test run refused a frame it should take: %v (frame %x)", tg.name, err, frame)
				}
				return
			}
			ref := verdict.Decide(tg.pol, pkt)
			wantRet := uint32(retAllow)
			if tg.pol.Drops(pkt.Ifindex, ref) {
				wantRet = retDrop
			}
			if got != ref || ret != wantRet {
				t.Fatalf("%s guest: kernel %s (tc %#x), reference %s (tc %#x)\n dir %s root %v secpath %+v\n frame %x",
					tg.name, got, ret, ref, wantRet, pkt.Dir, pkt.RootSocket, pkt.Secpath, frame)
			}
		}
	})
}

// refusedByTestRun: frames BPF_PROG_TEST_RUN answers with EINVAL (too
// short for the Ethernet header or, untagged, for the IP header; larger
// than the page it copies the data into).
func refusedByTestRun(f []byte) bool {
	if len(f) < 14 || len(f) > 3000 {
		return true
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		return len(f) < 14+20
	case 0x86dd:
		return len(f) < 14+40
	}
	return false
}
