package kerneltests

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Frames are built two ways: with gopacket for the readable table tests, and
// byte by byte (rawFrame) where a test needs fields gopacket will not write:
// long IPv6 extension chains, lying length fields, ESP (gopacket cannot
// serialise it: the SPI and sequence number are written after the IP header).

var (
	macGuest = []byte{0x02, 0, 0, 0, 0, 7}
	macHost  = []byte{0x02, 0, 0, 0, 0, 1}
)

// serialize builds a frame from gopacket layers, fixing lengths and checksums.
func serialize(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	for _, l := range ls {
		if n, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			for _, nl := range ls {
				if ip, ok := nl.(gopacket.NetworkLayer); ok {
					n.SetNetworkLayerForChecksum(ip)
				}
			}
		}
	}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func espPayload(spi, seq uint32, body []byte) gopacket.Payload {
	b := binary.BigEndian.AppendUint32(nil, spi)
	b = binary.BigEndian.AppendUint32(b, seq)
	return append(b, body...)
}

// ipLayers returns the Ethernet (with VLAN tags) and IP layers of a packet
// from src to dst with the given L4 protocol.
func ipLayers(src, dst netip.Addr, proto layers.IPProtocol, vlans ...uint16) []gopacket.SerializableLayer {
	eth := &layers.Ethernet{SrcMAC: macGuest, DstMAC: macHost}
	var ls []gopacket.SerializableLayer
	ls = append(ls, eth)
	inner := layers.EthernetTypeIPv4
	if src.Is6() {
		inner = layers.EthernetTypeIPv6
	}
	if len(vlans) > 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		for i, id := range vlans {
			next := layers.EthernetTypeDot1Q
			if i == len(vlans)-1 {
				next = inner
			}
			ls = append(ls, &layers.Dot1Q{VLANIdentifier: id, Type: next})
		}
	} else {
		eth.EthernetType = inner
	}
	if src.Is4() {
		ls = append(ls, &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
	} else {
		ls = append(ls, &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
	}
	return ls
}

// rawFrame describes a frame for the byte-level builder.
type rawFrame struct {
	vlans     int
	ethertype uint16 // used when src is not valid
	src, dst  netip.Addr
	proto     uint8
	ipv4Opts  int     // 4-byte option words
	laterFrag bool    // a fragment that is not the first
	ext       []uint8 // IPv6 extension headers, in order
	extLen    uint8   // hdr ext len of each (8-byte units beyond the first 8)
	l4        []byte
	// lenDelta is added to the IPv4 total length / IPv6 payload length.
	lenDelta int
	smac     []byte // the source MAC; nil: macGuest
	hop      uint8  // IPv4 TTL / IPv6 hop limit; 0: 64
}

func (r rawFrame) bytes() []byte {
	b := append([]byte{}, macHost...)
	if r.smac != nil {
		b = append(b, r.smac...)
	} else {
		b = append(b, macGuest...)
	}
	hop := r.hop
	if hop == 0 {
		hop = 64
	}
	et := r.ethertype
	if r.src.IsValid() {
		et = 0x0800
		if r.src.Is6() {
			et = 0x86dd
		}
	}
	for range r.vlans {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	b = binary.BigEndian.AppendUint16(b, et)
	if !r.src.IsValid() {
		return append(b, r.l4...)
	}
	if r.src.Is4() {
		hl := 20 + 4*r.ipv4Opts
		tot := hl + len(r.l4) + r.lenDelta
		h := make([]byte, hl)
		h[0] = 0x40 | byte(hl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(tot))
		if r.laterFrag {
			binary.BigEndian.PutUint16(h[6:], 0x2000|185)
		}
		h[8] = hop
		h[9] = r.proto
		s, d := r.src.As4(), r.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		for i := 20; i < hl; i++ {
			h[i] = 1 // NOP options
		}
		b = append(b, h...)
		return append(b, r.l4...)
	}
	var exts []byte
	for i, t := range r.ext {
		next := r.proto
		if i+1 < len(r.ext) {
			next = r.ext[i+1]
		}
		var e []byte
		switch t {
		case 44: // fragment: always 8 bytes
			e = make([]byte, 8)
			if r.laterFrag {
				binary.BigEndian.PutUint16(e[2:], 185<<3)
			}
		case 51: // AH: length in 4-byte units minus 2
			e = make([]byte, 4*(int(r.extLen)+2))
			e[1] = r.extLen
		default:
			e = make([]byte, 8*(int(r.extLen)+1))
			e[1] = r.extLen
		}
		e[0] = next
		exts = append(exts, e...)
	}
	first := r.proto
	if len(r.ext) > 0 {
		first = r.ext[0]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(exts)+len(r.l4)+r.lenDelta))
	h[6] = first
	h[7] = hop
	s, d := r.src.As16(), r.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	b = append(b, h...)
	b = append(b, exts...)
	return append(b, r.l4...)
}

func udpBytes(sport, dport uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	b = append(b, 0, 0)
	return append(b, payload...)
}

func tcpBytes(sport, dport uint16) []byte { return tcpFlagBytes(sport, dport, 0) }

// tcpFlagBytes is a 20-byte TCP header with the given flags byte (0x02
// SYN, 0x10 ACK).
func tcpFlagBytes(sport, dport uint16, flags uint8) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = append(b, make([]byte, 16)...)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

// arpBody is a 28-byte Ethernet/IPv4 ARP body.
func arpBody(op uint16, sha []byte, spa netip.Addr, tha []byte, tpa netip.Addr) []byte {
	b := []byte{0, 1, 0x08, 0x00, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.AsSlice()...)
	b = append(b, tha...)
	return append(b, tpa.AsSlice()...)
}

func espBytes(spi, seq uint32, body int) []byte {
	return []byte(espPayload(spi, seq, make([]byte, body)))
}
