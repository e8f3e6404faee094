package updatedaemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

// DefaultClientTimeout bounds one request of a Client whose Timeout is 0:
// connecting, the handshake, and the daemon applying the bundle.
const DefaultClientTimeout = 2 * time.Minute

// maxAnswerBytes bounds what the Client reads of an answer.
const maxAnswerBytes = 16 << 20

// Client is the loader's side of the protocol. TLS must present the
// loader's Client certificate and trust the policy store's CA: build it with
// ca.CA.ClientTLS(loaderCert, "") and leave ServerName empty, so that each
// guest's certificate is checked against the address dialled. A Client is
// safe for concurrent use and keeps connections to the guests open for
// reuse; do not copy it after first use.
type Client struct {
	TLS *tls.Config
	// Timeout bounds each request, on top of the context's deadline; 0
	// means DefaultClientTimeout.
	Timeout time.Duration

	once sync.Once
	hc   *http.Client
	err  error

	// warming holds, per address, the Connect in progress: a request to
	// that address waits for it and then uses its connection, instead of
	// opening a second one at the same time (two handshakes at once on a
	// guest's one emulated CPU each take twice as long).
	warmMu  sync.Mutex
	warming map[string]chan struct{}
	// onAwait, when set (tests), runs when a request starts waiting for a
	// Connect in progress.
	onAwait func(addr string)
	// dials counts the connections opened, resumed those of them that
	// resumed an earlier session (for tests).
	dials, resumed atomic.Int32
}

// sessionCacheSize bounds the TLS sessions the Client keeps: one per guest
// address (the cache is keyed by the address dialled), more than a host's
// guests (VM numbers 2-254).
const sessionCacheSize = 256

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultClientTimeout
}

func (c *Client) init() error {
	c.once.Do(func() {
		if c.TLS == nil {
			c.err = errors.New("updatedaemon.Client has no TLS configuration; build one with ca.CA.ClientTLS(loaderCert, \"\")")
			return
		}
		if len(c.TLS.Certificates) == 0 && c.TLS.GetClientCertificate == nil {
			c.err = errors.New("updatedaemon.Client's TLS configuration presents no client certificate; every update daemon would refuse it: give it the loader's Client certificate")
			return
		}
		cfg := c.TLS.Clone()
		if cfg.MinVersion < tls.VersionTLS13 {
			cfg.MinVersion = tls.VersionTLS13
		}
		if cfg.ClientSessionCache == nil {
			// A new connection to a guest resumes the session of the
			// last one (its push's): the key exchange is done again but
			// no certificate is signed or verified, and both ends check
			// the other's certificate (revocation, validity, name)
			// again in VerifyConnection.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(sessionCacheSize)
		}
		d := &net.Dialer{Timeout: c.timeout(), KeepAlive: 30 * time.Second}
		tr := &http.Transport{
			Proxy:       nil, // guests are reached directly, never through a proxy
			DialContext: d.DialContext,
			// Each guest's certificate is checked against the host
			// dialled, whatever ServerName the configuration carries.
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, _, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				c.dials.Add(1)
				t0 := time.Now()
				raw, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				t1 := time.Now()
				tc := cfg.Clone()
				tc.ServerName = host
				conn := tls.Client(raw, tc)
				if err := conn.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, &handshakeError{err}
				}
				if conn.ConnectionState().DidResume {
					c.resumed.Add(1)
				}
				return &recordingConn{Conn: conn, dial: t1.Sub(t0), handshake: time.Since(t1)}, nil
			},
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     KeepAliveIdle - time.Minute,
		}
		c.hc = &http.Client{Transport: tr}
	})
	return c.err
}

// handshakeError marks an error of the client's own TLS handshake.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// recordingConn keeps the first error reading from a connection. In TLS
// 1.3 the client's handshake ends before the server has checked the
// client's certificate, so a refusal arrives as an alert on the first read;
// http.Transport may report only the broken connection that follows, and
// this lets the Client tell the daemon's refusal from a network failure.
type recordingConn struct {
	net.Conn
	mu      sync.Mutex
	readErr error
	// dial and handshake are how long the connection took to open; the
	// first request on it reports them.
	dial, handshake time.Duration
	reported        bool
}

// opening returns the connection's dial and handshake times the first
// time it is asked, and zeros after: a request on a kept-alive connection
// paid neither.
func (c *recordingConn) opening() (dial, handshake time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reported {
		return 0, 0
	}
	c.reported = true
	return c.dial, c.handshake
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.readErr == nil {
			c.readErr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

// Write, when the connection broke, reads what the peer sent before it
// broke it: a daemon that refuses the client certificate sends its alert
// and closes with the request unread, which resets the connection, and the
// alert is still in the receive buffer.
func (c *recordingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && c.refusal() == nil {
		c.Conn.SetReadDeadline(time.Now().Add(time.Second))
		c.Read(make([]byte, 1)) //nolint:errcheck // Read records the error
	}
	return n, err
}

// refusal returns the TLS alert the peer sent, if it sent one.
func (c *recordingConn) refusal() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var opErr *net.OpError
	if errors.As(c.readErr, &opErr) && opErr.Op == "remote error" {
		return c.readErr
	}
	return nil
}

// CloseIdleConnections closes the connections kept for reuse.
func (c *Client) CloseIdleConnections() {
	if c.init() == nil {
		c.hc.CloseIdleConnections()
	}
}

// Push sends the guest part of b (Bundle.GuestPart: the servers' keys and
// the host's module never leave the host) to the daemon at addr (host:port)
// and returns its report. A report that says AlreadyApplied is a success.
// Errors are *Error values naming addr; errors.Is tells ErrStale,
// ErrConflict, ErrWrongGuest, ErrTLS, ErrTimeout and the others apart. A
// failed apply returns the daemon's report with the error.
func (c *Client) Push(ctx context.Context, addr string, b *policystore.Bundle) (*Report, error) {
	if b == nil {
		return nil, &Error{Addr: addr, Code: CodeBadBundle, Reason: "no bundle to push"}
	}
	body, err := json.Marshal(b.GuestPart())
	if err != nil {
		return nil, &Error{Addr: addr, Code: CodeBadBundle, Reason: "encode the bundle: " + err.Error(), Err: err}
	}
	if len(body) > MaxBundleBytes {
		return nil, &Error{Addr: addr, Code: CodeTooLarge, Reason: fmt.Sprintf("bundle v%d of %s is %d bytes, over the daemon's limit of %d", b.Version, b.Application, len(body), MaxBundleBytes)}
	}
	var rep Report
	sum := sha256.Sum256(body)
	wire, err := c.doIdem(ctx, http.MethodPost, addr, "/v1/bundle", body, fmt.Sprintf("%s/%d/%x", b.Application, b.Version, sum[:8]), &rep)
	if err != nil {
		return nil, err
	}
	rep.Wire = wire
	return &rep, nil
}

// Connect opens an authenticated connection to the daemon at addr, if none
// is open, and keeps it for the next request (a status request on it
// checks both ends' certificates now rather than during the first push).
func (c *Client) Connect(ctx context.Context, addr string) error {
	if err := c.init(); err != nil {
		return &Error{Addr: addr, Code: CodeTLS, Reason: err.Error(), Err: err}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return &Error{Addr: addr, Code: CodeUnreachable, Reason: fmt.Sprintf("address %q: want host:port", addr), Err: err}
	}
	c.warmMu.Lock()
	if c.warming == nil {
		c.warming = map[string]chan struct{}{}
	}
	if ch, ok := c.warming[addr]; ok {
		c.warmMu.Unlock()
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan struct{})
	c.warming[addr] = ch
	c.warmMu.Unlock()
	defer func() {
		c.warmMu.Lock()
		delete(c.warming, addr)
		c.warmMu.Unlock()
		close(ch)
	}()
	_, err := c.send(ctx, http.MethodGet, addr, "/v1/status", nil, "", &Status{})
	return err
}

// awaitWarm waits for a Connect to addr in progress, or ctx.
func (c *Client) awaitWarm(ctx context.Context, addr string) {
	c.warmMu.Lock()
	ch := c.warming[addr]
	c.warmMu.Unlock()
	if ch == nil {
		return
	}
	if c.onAwait != nil {
		c.onAwait(addr)
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// Status asks the daemon at addr what it applied.
func (c *Client) Status(ctx context.Context, addr string) (*Status, error) {
	var st Status
	if _, err := c.do(ctx, http.MethodGet, addr, "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// do sends one request and decodes a 200 answer into out, or an error
// answer into an *Error. It returns where the request's time went (see
// Report.Wire).
func (c *Client) do(ctx context.Context, method, addr, path string, body []byte, out any) ([]Part, error) {
	return c.doIdem(ctx, method, addr, path, body, "", out)
}

func (c *Client) doIdem(ctx context.Context, method, addr, path string, body []byte, idem string, out any) ([]Part, error) {
	if err := c.init(); err != nil {
		return nil, &Error{Addr: addr, Code: CodeTLS, Reason: err.Error(), Err: err}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, &Error{Addr: addr, Code: CodeUnreachable, Reason: fmt.Sprintf("address %q: want host:port", addr), Err: err}
	}
	t0 := time.Now()
	c.awaitWarm(ctx, addr)
	waited := time.Since(t0)
	wire, err := c.send(ctx, method, addr, path, body, idem, out)
	var stale *staleConnError
	if errors.As(err, &stale) {
		// The kept connection died under the request (the daemon closed
		// it as idle while it was being sent): the request is idempotent,
		// so it goes once more, on another connection.
		wire, err = c.send(ctx, method, addr, path, body, idem, out)
		if errors.As(err, &stale) {
			err = stale.err
		}
	}
	if len(wire) > 0 {
		// Waiting for the connection Connect was opening is connecting.
		wire[0].Duration += waited
	}
	return wire, err
}

func (c *Client) send(ctx context.Context, method, addr, path string, body []byte, idem string, out any) ([]Part, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, rd)
	if err != nil {
		return nil, &Error{Addr: addr, Code: CodeUnreachable, Reason: err.Error(), Err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if idem != "" {
		// A push is idempotent (the daemon answers the same bundle
		// again with AlreadyApplied), and saying so lets the transport
		// send it again on a fresh connection when a kept-alive one
		// turns out to have been closed under it.
		req.Header.Set("Idempotency-Key", idem)
	}
	var mu sync.Mutex
	var used *recordingConn
	var dial, handshake time.Duration
	var gotConn, wrote, firstByte time.Time
	var reused bool
	start := time.Now()
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			gotConn, reused = time.Now(), info.Reused
			if rc, ok := info.Conn.(*recordingConn); ok {
				used = rc
				dial, handshake = rc.opening()
			}
		},
		WroteRequest:         func(httptrace.WroteRequestInfo) { mu.Lock(); wrote = time.Now(); mu.Unlock() },
		GotFirstResponseByte: func() { mu.Lock(); firstByte = time.Now(); mu.Unlock() },
	}))
	parts := func() []Part {
		mu.Lock()
		defer mu.Unlock()
		end := time.Now()
		if gotConn.IsZero() || wrote.IsZero() || firstByte.IsZero() {
			return nil
		}
		// What is left of getting the connection beyond dial and
		// handshake (the pool's bookkeeping) counts as connecting.
		connect := max(gotConn.Sub(start)-handshake, dial)
		return []Part{
			{Name: "connect", Duration: connect},
			{Name: "TLS handshake", Duration: handshake},
			{Name: "send", Duration: wrote.Sub(gotConn)},
			{Name: "daemon", Duration: firstByte.Sub(wrote)},
			{Name: "answer", Duration: end.Sub(firstByte)},
		}
	}
	failed := func(err error) error {
		mu.Lock()
		rc := used
		mu.Unlock()
		if rc != nil {
			if alert := rc.refusal(); alert != nil {
				err = alert
			}
		}
		return c.transportError(ctx, addr, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		mu.Lock()
		stale := reused && idem != "" && ctx.Err() == nil
		mu.Unlock()
		if stale {
			return nil, &staleConnError{failed(err)}
		}
		return nil, failed(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return nil, failed(err)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, &Error{Addr: addr, Code: CodeProtocol, Status: resp.StatusCode, Reason: fmt.Sprintf("the answer does not decode: %v", err), Err: err}
		}
		return parts(), nil
	}
	var eb errorBody
	if err := json.Unmarshal(data, &eb); err != nil || eb.Code == "" {
		return nil, &Error{Addr: addr, Code: CodeProtocol, Status: resp.StatusCode, Reason: fmt.Sprintf("%s answered %q: is an update daemon listening there?", addr, truncate(data, 200))}
	}
	return nil, &Error{Addr: addr, Code: eb.Code, Status: resp.StatusCode, Reason: eb.Error, Report: eb.Report}
}

// staleConnError is an idempotent request that failed without an answer on
// a kept-alive connection: worth one more try on another.
type staleConnError struct{ err error }

func (e *staleConnError) Error() string { return e.err.Error() }
func (e *staleConnError) Unwrap() error { return e.err }

// transportError names what went wrong before an answer arrived.
func (c *Client) transportError(ctx context.Context, addr string, err error) error {
	var ne net.Error
	var hs *handshakeError
	var opErr *net.OpError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return &Error{Addr: addr, Code: CodeTimeout, Reason: fmt.Sprintf("no answer within %s (%v); check that the guest runs and its update daemon listens there", c.timeout(), err), Err: err}
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return &Error{Addr: addr, Code: CodeTLS, Reason: fmt.Sprintf("the daemon refused the TLS handshake (%v): check that the loader's certificate is a Client certificate of the guest's CA, named as the daemon expects (--loader-name) and not revoked", err), Err: err}
	case errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid):
		return &Error{Addr: addr, Code: CodeTLS, Reason: fmt.Sprintf("the guest's certificate was refused (%v): it must be a Guest certificate of the policy store's CA naming the address dialled", err), Err: err}
	case errors.As(err, &hs):
		return &Error{Addr: addr, Code: CodeTLS, Reason: fmt.Sprintf("TLS handshake failed: %v", err), Err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Addr: addr, Code: CodeUnreachable, Reason: "connection refused: no update daemon listens there", Err: err}
	}
	return &Error{Addr: addr, Code: CodeUnreachable, Reason: err.Error(), Err: err}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
