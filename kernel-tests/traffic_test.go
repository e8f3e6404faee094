package kerneltests

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Helpers for real traffic between two network namespaces. Sockets are made
// with golang.org/x/sys/unix directly, so that every option is visible; a
// socket keeps the namespace it was opened in.

// vethInNS runs fn with the calling thread switched into ns, then switches
// it back to home. The caller's goroutine must be locked to its thread
// (enterNetNS does that).
func vethInNS(t testing.TB, ns, home netns.NsHandle, fn func()) {
	t.Helper()
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter namespace %s: %v", ns, err)
	}
	defer func() {
		if err := netns.Set(home); err != nil {
			// The thread is in the wrong namespace: nothing after this
			// can be trusted.
			panic(fmt.Sprintf("return to namespace %s: %v", home, err))
		}
	}()
	fn()
}

// vethSocket opens a socket in the calling thread's namespace, closed when
// the test ends.
func vethSocket(t testing.TB, domain, typ, proto int) int {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("socket(%d, %d, %d): %v", domain, typ, proto, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// vethSockaddr is addr:port as a unix.Sockaddr of addr's family.
func vethSockaddr(addr netip.Addr, port uint16) unix.Sockaddr {
	if addr.Is4() {
		return &unix.SockaddrInet4{Addr: addr.As4(), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: addr.As16(), Port: int(port)}
}

// vethDomain is the socket domain of addr's family.
func vethDomain(addr netip.Addr) int {
	if addr.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// vethBound opens a socket bound to addr:port (port 0: any); a UDP socket
// bound to an IPv6 address takes IPv6 only (raw sockets are per family anyway).
func vethBound(t testing.TB, typ, proto int, addr netip.Addr, port uint16) int {
	t.Helper()
	fd := vethSocket(t, vethDomain(addr), typ, proto)
	if addr.Is6() && typ == unix.SOCK_DGRAM {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			t.Fatalf("IPV6_V6ONLY: %v", err)
		}
	}
	if err := unix.Bind(fd, vethSockaddr(addr, port)); err != nil {
		t.Fatalf("bind %s: %v", netip.AddrPortFrom(addr, port), err)
	}
	return fd
}

// vethESPPayload is what follows the IP header of an ESP packet: the SPI and
// sequence number (RFC 4303), then the marker that names the kind of packet.
func vethESPPayload(spi, seq uint32, marker []byte) []byte {
	b := make([]byte, 8, 8+len(marker))
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], seq)
	return append(b, marker...)
}

// vethFrame is an Ethernet frame from src to dst carrying UDP (sport to
// dport) or, for proto 50, ESP whose SPI and sequence number are already at
// the head of payload (gopacket cannot serialise its ESP layer).
func vethFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, proto layers.IPProtocol,
	sport, dport uint16, payload []byte) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	var ip gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, Flags: layers.IPv4DontFragment,
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, ipl = v4, v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, ipl = v6, v6
	}
	ls := []gopacket.SerializableLayer{eth, ipl}
	switch proto {
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, err
		}
		ls = append(ls, udp)
	case layers.IPProtocolESP:
	default:
		return nil, fmt.Errorf("vethFrame: protocol %d, want UDP or ESP", proto)
	}
	ls = append(ls, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// vethReceiver is a socket that counts the marked packets it receives.
type vethReceiver struct {
	name string
	fd   int
	want int // marked packets that should arrive here
}

// vethDrain reads r until it has want packets and then until a short quiet
// spell, or until it has read maxReads datagrams or waited wait in all. It
// returns how many datagrams carried each marker; a datagram without one
// is counted under -1.
func vethDrain(t testing.TB, r *vethReceiver, markers [][]byte, maxReads int, wait time.Duration) map[int]int {
	t.Helper()
	const quiet = 50 * time.Millisecond
	got := make(map[int]int)
	setTimeout := func(d time.Duration) {
		tv := unix.NsecToTimeval(d.Nanoseconds())
		if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatalf("%s: SO_RCVTIMEO: %v", r.name, err)
		}
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 4096)
	marked := 0
	for range maxReads {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if marked >= r.want {
			left = min(left, quiet)
		}
		setTimeout(left)
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			if marked >= r.want {
				break
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: recvfrom: %v", r.name, err)
		}
		kind := -1
		for i, m := range markers {
			if bytes.Contains(buf[:n], m) {
				kind = i
				break
			}
		}
		got[kind]++
		if kind >= 0 {
			marked++
		}
	}
	return got
}
