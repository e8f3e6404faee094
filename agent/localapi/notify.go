package localapi

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends state (e.g. "READY=1") to the service manager on
// $NOTIFY_SOCKET, as sd_notify(3) does; without the variable it does
// nothing. A path starting with '@' is an abstract socket.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	} else if !strings.HasPrefix(addr, "/") {
		return fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or @abstract name", addr)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify the service manager on %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify the service manager on %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}
