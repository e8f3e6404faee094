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

	"github.com/mlsgate/mlsgate/policystore"
)

// LoadRequest is the body of POST /v1/load.
type LoadRequest struct {
	URL string `json:"url"`
	// ID, when given, makes the request single-use: the same ID from the
	// same caller within ReplayWindow is refused as a replay.
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
	local, remote netip.Addr
}

// API serves POST /v1/load: to the host's command line on a Unix socket
// (the caller is the host) and to guests on TCP on the host side of their
// links (the caller is the pool's guest whose address the connection comes
// from, and only on that guest's own link: never what the request claims).
type API struct {
	Loader *Loader
	Pool   Pool
	// Mapper, when set, is the host's label mapper, served on the same
	// listeners (/v1/label, /v1/lookup), so that guests reach it on the API
	// port, which the fast path passes as host control traffic.
	Mapper http.Handler

	mu   sync.Mutex
	seen map[string]time.Time
}

// Server returns an http.Server for the API; serve it on a Unix listener
// for the host and on TCP listeners for guests.
func (a *API) Server() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/load", a.load)
	if a.Mapper != nil {
		mux.Handle("GET /v1/label", a.Mapper)
		mux.Handle("POST /v1/lookup", a.Mapper)
	}
	mux.Handle("GET /v1/status", hostOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.Loader.Status())
	})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.Handle("GET /metrics", hostOnly(promhttp.HandlerFor(a.Loader.Registry(), promhttp.HandlerOpts{})))
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ci := connInfo{}
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

// caller establishes who is asking from the connection alone.
func (a *API) caller(r *http.Request) (Caller, error) {
	ci, _ := r.Context().Value(connKey{}).(connInfo)
	if ci.unix {
		return Caller{Host: true}, nil
	}
	g, app, ok := a.Pool.Find(ci.remote)
	if !ok {
		return Caller{}, fmt.Errorf("%w: %s is not a guest of this host", ErrUnauthorized, ci.remote)
	}
	if g.HostAddr != ci.local {
		return Caller{}, fmt.Errorf("%w: guest vm%d (%s) spoke on %s, not on its own link %s", ErrUnauthorized, g.VM, ci.remote, ci.local, g.HostAddr)
	}
	return Caller{Addr: ci.remote, VM: g.VM, App: app}, nil
}

func (a *API) load(w http.ResponseWriter, r *http.Request) {
	caller, err := a.caller(r)
	if err != nil {
		a.Loader.metrics.failed(err)
		writeJSON(w, http.StatusForbidden, LoadError{Error: err.Error(), Reason: "unauthorized"})
		return
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
		writeJSON(w, code, LoadError{Error: "request body: " + err.Error() + `; want {"url": "http://..."}`, Reason: "bad_request"})
		return
	}
	if req.URL == "" || len(req.URL) > policystore.MaxURLLen {
		writeJSON(w, http.StatusBadRequest, LoadError{Error: fmt.Sprintf("url: give an absolute http(s) URL of at most %d bytes", policystore.MaxURLLen), Reason: "bad_request"})
		return
	}
	if req.ID != "" && a.replayed(caller.String()+"\x00"+req.ID) {
		writeJSON(w, http.StatusConflict, LoadError{Error: fmt.Sprintf("request id %q was already used by %s", req.ID, caller), Reason: "replayed"})
		return
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
		}
		writeJSON(w, code, le)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) replayed(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.seen == nil {
		a.seen = map[string]time.Time{}
	}
	for k, t := range a.seen {
		if now.Sub(t) > ReplayWindow {
			delete(a.seen, k)
		}
	}
	if _, dup := a.seen[key]; dup {
		return true
	}
	a.seen[key] = now
	return false
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
