package localapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// SocketPath reads an admin address: "unix:/path" or an absolute path. A
// TCP address is refused: the admin APIs are not served on TCP. flag and
// def name the flag and its default for the error.
func SocketPath(addr, flag, def string) (string, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok && filepath.IsAbs(addr) {
		path, ok = addr, true
	}
	if !ok || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s %q: the admin API is served only on a Unix socket, not on TCP (TCP carries only /metrics, /healthz and /readyz); give unix:/path, e.g. unix:%s", flag, addr, def)
	}
	return path, nil
}

// Client is an HTTP client that reaches the socket at path whatever the
// URL's host; timeout 0 means none (streams).
func Client(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}
