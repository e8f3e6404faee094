package loader

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// GuestListeners serves the guest-facing API (POST /v1/load and the host
// mapper's lookups) to each guest on its own link only: one TCP listener
// per guest, on the guest's host-side address and the API port, bound to
// the guest's host-side interface (ListenGuest binds with SO_BINDTODEVICE). There is never a listener on the wildcard address, so
// the untrusted network reaches no VMLoad and no mapper, and a connection's
// caller is the guest whose listener accepted it: a guest that takes
// another's address still arrives on its own interface.
//
// The loader opens a guest's listener once the guest's link exists (after
// its boot) and closes it when the guest is destroyed or isolated.
type GuestListeners struct {
	// Port is the API port.
	Port uint16
	// Listen opens the listener of guest g on port; nil means
	// ListenGuest. Tests pass a loopback listener.
	Listen func(g Guest, port uint16) (net.Listener, error)

	mu      sync.Mutex
	srv     *http.Server
	byIface map[string]*guestListener
}

// guestListener is one guest's listener; its connections carry the guest.
type guestListener struct {
	net.Listener
	g      Guest
	closed atomic.Bool
}

func (l *guestListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &guestConn{Conn: c, l: l}, nil
}

func (l *guestListener) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

// guestConn is a connection accepted on a guest's listener.
type guestConn struct {
	net.Conn
	l *guestListener
}

// Serve serves srv (API.Server) on every open listener and on each one
// opened later.
func (gl *GuestListeners) Serve(srv *http.Server) {
	gl.mu.Lock()
	defer gl.mu.Unlock()
	gl.srv = srv
	for _, l := range gl.byIface {
		go srv.Serve(l)
	}
}

// Open opens g's listener (replacing one the interface had).
func (gl *GuestListeners) Open(g Guest) error {
	listen := gl.Listen
	if listen == nil {
		listen = ListenGuest
	}
	if g.Interface == "" || !g.HostAddr.IsValid() || g.HostAddr.IsUnspecified() || !g.Addr.IsValid() {
		return fmt.Errorf("loader: guest %s: listener needs its interface, host-side address and address (got %q, %s, %s)", g.Name, g.Interface, g.HostAddr, g.Addr)
	}
	ln, err := listen(g, gl.Port)
	if err != nil {
		return fmt.Errorf("loader: listen for guest %s on %s port %d: %w", g.Name, g.Interface, gl.Port, err)
	}
	l := &guestListener{Listener: ln, g: g}
	gl.mu.Lock()
	defer gl.mu.Unlock()
	if gl.byIface == nil {
		gl.byIface = map[string]*guestListener{}
	}
	if old, ok := gl.byIface[g.Interface]; ok {
		old.Close()
	}
	gl.byIface[g.Interface] = l
	if gl.srv != nil {
		go gl.srv.Serve(l)
	}
	return nil
}

// Close closes the listener of the guest on iface, if any. Requests on
// connections it accepted earlier are refused from then on.
func (gl *GuestListeners) Close(iface string) error {
	gl.mu.Lock()
	l, ok := gl.byIface[iface]
	delete(gl.byIface, iface)
	gl.mu.Unlock()
	if !ok {
		return nil
	}
	return l.Close()
}

// CloseAll closes every listener.
func (gl *GuestListeners) CloseAll() {
	gl.mu.Lock()
	ls := gl.byIface
	gl.byIface = nil
	gl.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}

// Addr is the address of the listener of the guest on iface.
func (gl *GuestListeners) Addr(iface string) (net.Addr, bool) {
	gl.mu.Lock()
	defer gl.mu.Unlock()
	l, ok := gl.byIface[iface]
	if !ok {
		return nil, false
	}
	return l.Addr(), true
}

// Len is the number of open listeners.
func (gl *GuestListeners) Len() int {
	gl.mu.Lock()
	defer gl.mu.Unlock()
	return len(gl.byIface)
}
