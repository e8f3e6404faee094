package backend

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/loader"
)

// ListenGuest opens the loader's API listener for guest g: TCP on g's
// host-side address and port, bound to g's host-side interface with
// SO_BINDTODEVICE, so that only connections arriving on that interface
// reach it (loader.GuestListeners.Listen).
func ListenGuest(g loader.Guest, port uint16) (net.Listener, error) {
	if g.Interface == "" || len(g.Interface) > maxIfName {
		return nil, fmt.Errorf("guest %s: interface name %q is empty or longer than %d bytes", g.Name, g.Interface, maxIfName)
	}
	if !g.HostAddr.IsValid() || g.HostAddr.IsUnspecified() {
		return nil, fmt.Errorf("guest %s: host-side address %s is not a unicast address; never listen on the wildcard", g.Name, g.HostAddr)
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
