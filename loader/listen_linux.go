package loader

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenGuest opens the loader's API listener for guest g: TCP on g's
// host-side address and port, bound to g's host-side interface with
// SO_BINDTODEVICE, so that only connections arriving on that interface
// reach it. It is GuestListeners' default Listen. (The one socket option
// the loader sets itself; everything else kernel-facing is in backends.)
func ListenGuest(g Guest, port uint16) (net.Listener, error) {
	if g.Interface == "" || len(g.Interface) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("guest %s: interface name %q is empty or longer than %d bytes", g.Name, g.Interface, unix.IFNAMSIZ-1)
	}
	if !g.HostAddr.IsValid() || g.HostAddr.IsUnspecified() || g.HostAddr.IsMulticast() {
		return nil, fmt.Errorf("guest %s: host-side address %s is not a unicast address; the loader never listens on the wildcard", g.Name, g.HostAddr)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, g.Interface)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("bind to device %s: %w", g.Interface, serr)
		}
		return nil
	}}
	return lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(g.HostAddr, port).String())
}
