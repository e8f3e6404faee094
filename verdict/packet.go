package verdict

import (
	"encoding/binary"
	"net/netip"
)

// The parser mirrors parse() in bpf/lib/parse.h step for step, limits
// included: a frame the kernel calls malformed is malformed here. It also
// reads what the C code reads only when the control rules need it (the
// IKE marker, TCP flags, the ND body: is_ike, bare_syn, nd_own), with the
// same bounds, so that the verifier does not walk them on every parser path.
const (
	vlanMax    = 2
	ipv6ExtMax = 8
	parseMax   = 512

	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherARP  = 0x0806
	etherVLAN = 0x8100
	etherQinQ = 0x88a8

	protoHopOpts  = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoESP      = 50
	protoAH       = 51
	protoICMPv6   = 58
	protoNone     = 59
	protoDstOpts  = 60
)

type headers struct {
	ethertype    uint16
	family       Family // 0 for non-IP
	proto        uint8
	sport, dport uint16
	icmpType     uint8
	// ndOK: an RS, NS or NA of the fixed length, or with one link-layer
	// address option (source for RS/NS, target for NA) that is the
	// frame's source MAC. ndTarget: an NS's or NA's target address.
	ndOK         bool
	ndTarget     netip.Addr
	ike          bool // UDP, both ports in {500, 4500}, the non-ESP marker on 4500
	hop          uint8
	tcpFlags     uint8
	l3off        int // where the IP (or ARP) header starts
	l4len        int
	smac         [6]byte
	spi          uint32
	saddr, daddr netip.Addr
}

func isV6Ext(p uint8) bool {
	return p == protoHopOpts || p == protoRouting || p == protoDstOpts || p == protoFragment || p == protoAH
}

// parse returns the headers of an Ethernet frame, or false when it is
// malformed (truncated, inconsistent lengths, too deep to look through).
func parse(f []byte) (h headers, ok bool) {
	n := len(f)
	if n < 14 {
		return h, false
	}
	proto := binary.BigEndian.Uint16(f[12:])
	h.smac = [6]byte(f[6:12])
	off := 14
	for i := 0; i < vlanMax; i++ {
		if proto != etherVLAN && proto != etherQinQ {
			break
		}
		if off+4 > n {
			return h, false
		}
		proto = binary.BigEndian.Uint16(f[off+2:])
		off += 4
	}
	if proto == etherVLAN || proto == etherQinQ {
		return h, false
	}
	h.ethertype = proto
	h.l3off = off
	h.proto = protoNone

	var l4len int
	switch proto {
	case etherIPv4:
		if off+20 > n {
			return h, false
		}
		ip := f[off:]
		hl := int(ip[0]&0x0f) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[0]>>4 != 4 || hl < 20 || tot < hl || tot > n-off || off+hl > n {
			return h, false
		}
		h.family = AFInet
		h.hop = ip[8]
		h.saddr = netip.AddrFrom4([4]byte(ip[12:16]))
		h.daddr = netip.AddrFrom4([4]byte(ip[16:20]))
		if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
			return h, true // a later fragment: no L4 header
		}
		h.proto = ip[9]
		off += hl
		l4len = tot - hl
	case etherIPv6:
		if off+40 > n {
			return h, false
		}
		ip := f[off:]
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if ip[0]>>4 != 6 || plen > n-off-40 {
			return h, false
		}
		h.family = AFInet6
		h.hop = ip[7]
		h.saddr = netip.AddrFrom16([16]byte(ip[8:24]))
		h.daddr = netip.AddrFrom16([16]byte(ip[24:40]))
		l3 := off
		next := ip[6]
		off += 40
		for i := 0; i < ipv6ExtMax; i++ {
			if !isV6Ext(next) {
				break
			}
			if off+8 > n {
				return h, false
			}
			ext := f[off:]
			switch next {
			case protoFragment:
				if binary.BigEndian.Uint16(ext[2:])&0xfff8 != 0 {
					return h, true // a later fragment
				}
				off += 8
			case protoAH:
				off += (int(ext[1]) + 2) * 4
			default:
				off += (int(ext[1]) + 1) * 8
			}
			next = ext[0]
			if off > parseMax {
				return h, false
			}
		}
		if isV6Ext(next) {
			return h, false
		}
		h.proto = next
		l4len = 40 + plen
		if off-l3 > l4len {
			return h, false
		}
		l4len -= off - l3
	default:
		h.proto = 0
		return h, true
	}
	if off > parseMax {
		return h, false
	}
	h.l4len = l4len

	switch h.proto {
	case protoUDP:
		if l4len < 8 || off+8 > n {
			return h, false
		}
		h.sport = binary.BigEndian.Uint16(f[off:])
		h.dport = binary.BigEndian.Uint16(f[off+2:])
		ikePort := func(p uint16) bool { return p == 500 || p == 4500 }
		switch {
		case !ikePort(h.sport) || !ikePort(h.dport):
		case h.sport == 500 && h.dport == 500:
			h.ike = true
		case l4len >= 12 && off+12 <= n && binary.BigEndian.Uint32(f[off+8:]) == 0:
			h.ike = true // the non-ESP marker: IKE, not ESP in UDP
		}
	case protoTCP:
		if l4len < 20 || off+20 > n {
			return h, false
		}
		h.sport = binary.BigEndian.Uint16(f[off:])
		h.dport = binary.BigEndian.Uint16(f[off+2:])
		h.tcpFlags = f[off+13]
	case protoICMPv6:
		if h.family != AFInet6 {
			break
		}
		if l4len < 4 || off+4 > n {
			return h, false
		}
		h.icmpType = f[off]
		h.ndTarget = netip.IPv6Unspecified()
		if t := h.icmpType; t == 133 || t == 135 || t == 136 {
			base := 24
			if t == 133 {
				base = 8
			}
			if t != 133 && l4len >= 24 && off+24 <= n {
				h.ndTarget = netip.AddrFrom16([16]byte(f[off+8 : off+24]))
			}
			opt := byte(1)
			if t == 136 {
				opt = 2
			}
			o := off + base
			switch {
			case l4len == base && o <= n:
				h.ndOK = true
			case l4len == base+8 && o+8 <= n && f[o] == opt && f[o+1] == 1 && [6]byte(f[o+2:o+8]) == h.smac:
				h.ndOK = true
			case l4len == base+8 && o+8 <= n && t == 135 && f[o] == 14 && f[o+1] == 1 && h.saddr.IsUnspecified():
				h.ndOK = true // duplicate address detection with the RFC 7527 nonce
			}
		}
	case protoESP:
		if l4len < 8 || off+8 > n {
			return h, false
		}
		h.spi = binary.BigEndian.Uint32(f[off:])
	}
	return h, true
}
