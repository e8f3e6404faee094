package loader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mlsgate/mlsgate/internal/httpjson"
	"github.com/mlsgate/mlsgate/policystore"
)

// LoadRequest is the body of POST /v1/load.
type LoadRequest struct {
	URL string `json:"url"`
	// ID makes the request single-use: the same ID from the same caller
	// within ReplayWindow is refused as a replay. Guests must send one (at
	// most Limits.IDMaxLen printable ASCII bytes); the host may omit it.
	ID string `json:"id,omitempty"`
}

// LoadError is the body of a failed load.
type LoadError struct {
	Error  string  `json:"error"`
	Step   string  `json:"step,omitempty"`
	Reason string  `json:"reason"`
	Result *Result `json:"result,omitempty"`
}

// ReplayWindow is how long request IDs are remembered.
const ReplayWindow = 10 * time.Minute

type connKey struct{}

type connInfo struct {
	unix          bool
	guest         *guestListener // the guest listener that accepted it
	local, remote netip.Addr
}

// API serves POST /v1/load: to the host's command line on a Unix socket
// (the caller is the host) and to guests on their own links through
// GuestListeners (the caller is the guest whose listener accepted the
// connection, and only from that guest's address: never what the request
// claims). A TCP connection that did not arrive on a guest's listener is
// refused.
type API struct {
	Loader *Loader
	Pool   Pool
	// Mapper, when set, is the host's label mapper, served on the same
	// listeners (/v1/label, /v1/lookup), so that guests reach it on the API
	// port, which the fast path passes as host control traffic.
	Mapper http.Handler

	mu      sync.Mutex
	seen    replayCache
	buckets map[string]*bucket
}

// Server returns an http.Server for the API; serve it on a Unix listener
// for the host and on TCP listeners for guests.
func (a *API) Server() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/load", a.load)
	if a.Mapper != nil {
		mux.Handle("GET /v1/label", a.guestOrHost(a.Mapper))
		mux.Handle("POST /v1/lookup", a.guestOrHost(a.Mapper))
	}
	mux.Handle("GET /v1/status", hostOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.Loader.Status())
	})))
	a.rotationRoutes(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.Handle("GET /metrics", hostOnly(promhttp.HandlerFor(a.Loader.Registry(), promhttp.HandlerOpts{})))
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ci := connInfo{}
			if gc, ok := c.(*guestConn); ok {
				ci.guest = gc.l
			}
			if _, ok := c.LocalAddr().(*net.UnixAddr); ok {
				ci.unix = true
			}
			if t, ok := c.LocalAddr().(*net.TCPAddr); ok {
				ci.local = t.AddrPort().Addr().Unmap()
			}
			if t, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				ci.remote = t.AddrPort().Addr().Unmap()
			}
			return context.WithValue(ctx, connKey{}, ci)
		},
	}
}

func hostOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ci, _ := r.Context().Value(connKey{}).(connInfo); !ci.unix {
			writeJSON(w, http.StatusForbidden, LoadError{Error: "served on the host's socket only", Reason: "unauthorized"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// guestOrHost serves h to the host and to guests speaking from their own
// address on their own listener.
func (a *API) guestOrHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := a.caller(r); err != nil {
			writeJSON(w, http.StatusForbidden, LoadError{Error: err.Error(), Reason: "unauthorized"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// caller establishes who is asking from the connection alone: the host
// on the Unix socket, else the guest whose listener accepted the
// connection, provided it speaks from its own address. Refusals are
// counted.
func (a *API) caller(r *http.Request) (Caller, error) {
	ci, _ := r.Context().Value(connKey{}).(connInfo)
	if ci.unix {
		return Caller{Host: true}, nil
	}
	if ci.guest == nil {
		a.Loader.metrics.refused("not_a_guest")
		return Caller{}, fmt.Errorf("%w: %s did not arrive on a guest's own listener", ErrUnauthorized, ci.remote)
	}
	g := ci.guest.g
	if ci.guest.closed.Load() {
		a.Loader.metrics.refused("not_a_guest")
		return Caller{}, fmt.Errorf("%w: guest %s is gone (its listener on %s is closed)", ErrUnauthorized, g.Name, g.Interface)
	}
	if ci.remote != g.Addr {
		a.Loader.metrics.refused("wrong_source")
		return Caller{}, fmt.Errorf("%w: %s spoke on %s, the link of guest %s, whose address is %s", ErrUnauthorized, ci.remote, g.Interface, g.Name, g.Addr)
	}
	pg, app, ok := a.Pool.Find(g.Addr)
	if !ok || pg.VM != g.VM || pg.Interface != g.Interface {
		a.Loader.metrics.refused("not_a_guest")
		return Caller{}, fmt.Errorf("%w: guest %s on %s is not in the pool", ErrUnauthorized, g.Name, g.Interface)
	}
	return Caller{Addr: g.Addr, VM: g.VM, Interface: g.Interface, App: app}, nil
}

func (a *API) load(w http.ResponseWriter, r *http.Request) {
	caller, err := a.caller(r)
	if err != nil {
		a.Loader.metrics.failed(err)
		writeJSON(w, http.StatusForbidden, LoadError{Error: err.Error(), Reason: "unauthorized"})
		return
	}
	lim := a.Loader.cfg.Limits
	now := a.Loader.now()
	if !caller.Host {
		a.mu.Lock()
		ok := a.allow(caller.key(), now, lim)
		a.mu.Unlock()
		if !ok {
			a.Loader.metrics.refused("rate_limited")
			writeJSON(w, http.StatusTooManyRequests, LoadError{Error: fmt.Sprintf("%s: more than %d loads at once or %g per second; wait and retry", caller, lim.Burst, lim.Rate), Reason: "rate_limited"})
			return
		}
	}
	var req LoadRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
		}
		a.Loader.metrics.refused("bad_request")
		writeJSON(w, code, LoadError{Error: "request body: " + err.Error() + `; want {"url": "http://...", "id": "..."}`, Reason: "bad_request"})
		return
	}
	if req.URL == "" || len(req.URL) > policystore.MaxURLLen {
		a.Loader.metrics.refused("bad_request")
		writeJSON(w, http.StatusBadRequest, LoadError{Error: fmt.Sprintf("url: give an absolute http(s) URL of at most %d bytes", policystore.MaxURLLen), Reason: "bad_request"})
		return
	}
	if err := checkID(req.ID, !caller.Host, lim.IDMaxLen); err != nil {
		a.Loader.metrics.refused("bad_request")
		writeJSON(w, http.StatusBadRequest, LoadError{Error: err.Error(), Reason: "bad_request"})
		return
	}
	if req.ID != "" {
		a.mu.Lock()
		err := a.seen.add(caller.key(), req.ID, now, lim)
		a.mu.Unlock()
		switch {
		case errors.Is(err, errReplayed):
			a.Loader.metrics.refused("replayed")
			writeJSON(w, http.StatusConflict, LoadError{Error: fmt.Sprintf("request id %q was already used by %s", req.ID, caller), Reason: "replayed"})
			return
		case err != nil:
			a.Loader.metrics.refused("replay_cache_full")
			writeJSON(w, http.StatusTooManyRequests, LoadError{Error: fmt.Sprintf("%s: %v (%d within %v); wait and retry", caller, err, lim.ReplayPerCaller, ReplayWindow), Reason: "rate_limited"})
			return
		}
	}
	res, err := a.Loader.Load(r.Context(), caller, req.URL)
	if err != nil {
		le := LoadError{Error: err.Error(), Reason: failureReason(err), Result: res}
		var se *StepError
		if errors.As(err, &se) {
			le.Step = se.Step
		}
		code := http.StatusInternalServerError
		switch le.Reason {
		case "unauthorized":
			code = http.StatusForbidden
		case "unknown_url":
			code = http.StatusNotFound
		case "not_compliant":
			code = http.StatusUnprocessableEntity
		case "timeout":
			code = http.StatusGatewayTimeout
		case "limited":
			code = http.StatusTooManyRequests
		}
		writeJSON(w, code, le)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// checkID checks a request id: required when required, at most max
// bytes of printable ASCII.
func checkID(id string, required bool, max int) error {
	if id == "" {
		if required {
			return fmt.Errorf(`id: a guest must give a request id (at most %d printable ASCII bytes, new for each load): {"url": "...", "id": "..."}`, max)
		}
		return nil
	}
	if len(id) > max {
		return fmt.Errorf("id: %d bytes; give at most %d", len(id), max)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return fmt.Errorf("id: byte %d is %#x; use printable ASCII without spaces", i, id[i])
		}
	}
	return nil
}

// writeJSON is how every handler of the package answers.
var writeJSON = httpjson.WriteIndent
