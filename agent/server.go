package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/mlsgate/mlsgate/agent/verdict"
	"github.com/mlsgate/mlsgate/bpf"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the agent's HTTP API:
//
//	GET    /metrics                 Prometheus text
//	GET    /healthz                 the process answers
//	GET    /readyz                  200 once the first full reconcile succeeded
//	GET    /v1/status               guests, SAs, map fill, counters (JSON)
//	PUT    /v1/guests/{interface}   declare a guest (GuestSpec JSON)
//	DELETE /v1/guests/{interface}   forget it (its programs are detached)
//	PUT    /v1/peers                replace the peers ([]PeerSpec)
//	PUT    /v1/sas                  replace the static SAs ([]SASpec)
//	GET    /v1/events               denial events as JSON lines, as they come
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			st := a.Status()
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": st.Error})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		st := a.Status()
		if cr := a.metrics.counters; cr != nil {
			if c, err := cr.Counters(); err == nil {
				st.Counters = countersJSON(c)
			}
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("PUT /v1/guests/{iface}", func(w http.ResponseWriter, r *http.Request) {
		var g GuestSpec
		if !readJSON(w, r, &g) {
			return
		}
		if g.Interface == "" {
			g.Interface = r.PathValue("iface")
		}
		if g.Interface != r.PathValue("iface") {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("interface %q in the body differs from %q in the path", g.Interface, r.PathValue("iface"))))
			return
		}
		if err := a.SetGuest(g); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, g)
	})
	mux.HandleFunc("DELETE /v1/guests/{iface}", func(w http.ResponseWriter, r *http.Request) {
		found, err := a.RemoveGuest(r.PathValue("iface"))
		switch {
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, errBody(err))
		case !found:
			writeJSON(w, http.StatusNotFound, errBody(fmt.Errorf("no guest declared on %s", r.PathValue("iface"))))
		default:
			writeJSON(w, http.StatusOK, map[string]bool{"removed": true})
		}
	})
	mux.HandleFunc("PUT /v1/peers", func(w http.ResponseWriter, r *http.Request) {
		var p []PeerSpec
		if !readJSON(w, r, &p) {
			return
		}
		if err := a.SetPeers(p); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"peers": len(p)})
	})
	mux.HandleFunc("PUT /v1/sas", func(w http.ResponseWriter, r *http.Request) {
		var s []SASpec
		if !readJSON(w, r, &s) {
			return
		}
		if err := a.SetStaticSAs(s); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"sas": len(s)})
	})
	mux.HandleFunc("GET /v1/events", a.serveEvents)
	return mux
}

// maxBody bounds API request bodies: 100,000 static SAs fit.
const maxBody = 32 << 20

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
		}
		writeJSON(w, code, errBody(fmt.Errorf("request body: %w", err)))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, errBody(errors.New("request body: more than one JSON value")))
		return false
	}
	return true
}

func errBody(err error) map[string]string { return map[string]string{"error": err.Error()} }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// countersJSON names the counters: direction → reason → packets.
func countersJSON(c [2][verdict.NumReasons]bpf.Counter) map[string]map[string]uint64 {
	out := map[string]map[string]uint64{}
	for d, dir := range []string{"ingress", "egress"} {
		m := map[string]uint64{}
		for _, r := range verdict.Reasons() {
			if n := c[d][r].Packets; n > 0 {
				m[r.String()] = n
			}
		}
		out[dir] = m
	}
	return out
}
