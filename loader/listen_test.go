package loader

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// TestListenGuestNeverWildcard: a guest without a unicast host-side
// address or an interface gets no listener, rather than one on every
// address.
func TestListenGuestNeverWildcard(t *testing.T) {
	for name, g := range map[string]Guest{
		"unspecified v4": {Name: "vm7", Interface: "vif7.0", HostAddr: netip.IPv4Unspecified(), Addr: netip.MustParseAddr("10.71.7.2")},
		"unspecified v6": {Name: "vm7", Interface: "vif7.0", HostAddr: netip.IPv6Unspecified(), Addr: netip.MustParseAddr("10.71.7.2")},
		"no address":     {Name: "vm7", Interface: "vif7.0", Addr: netip.MustParseAddr("10.71.7.2")},
		"no interface":   {Name: "vm7", HostAddr: netip.MustParseAddr("127.0.0.1"), Addr: netip.MustParseAddr("10.71.7.2")},
		"long interface": {Name: "vm7", Interface: strings.Repeat("v", 16), HostAddr: netip.MustParseAddr("127.0.0.1"), Addr: netip.MustParseAddr("10.71.7.2")},
	} {
		if ln, err := ListenGuest(g, 0); err == nil {
			ln.Close()
			t.Errorf("%s: ListenGuest opened %s", name, ln.Addr())
		}
		gl := &GuestListeners{Listen: func(Guest, uint16) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }}
		if err := gl.Open(g); err == nil && name != "long interface" {
			t.Errorf("%s: GuestListeners.Open accepted it", name)
		}
		gl.CloseAll()
	}
}
