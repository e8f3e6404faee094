package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/internal/httpjson"
	"github.com/mlsgate/mlsgate/verdict"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// PublicHandler serves what anyone on the host may see, on TCP:
//
//	GET /metrics   Prometheus text
//	GET /healthz   the process answers
//	GET /readyz    200 once the first full reconcile succeeded
//
// Nothing that changes or reveals policy is reachable through it.
func (a *Agent) PublicHandler() http.Handler {
	mux := http.NewServeMux()
	a.public(mux)
	return mux
}

func (a *Agent) public(mux *http.ServeMux) {
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
}

// AdminHandler serves the agent's API, for its Unix socket only (the
// command wraps it with the socket's peer check, localapi):
//
//	GET    /metrics, /healthz, /readyz   as PublicHandler
//	GET    /v1/status               guests (with their mode), SAs, map fill, counters (JSON)
//	PUT    /v1/guests/{interface}   declare a guest (GuestSpec JSON)
//	DELETE /v1/guests/{interface}   forget it (its programs are detached)
//	PUT    /v1/peers                replace the peers ([]PeerSpec)
//	PUT    /v1/sas                  replace the static SAs ([]SASpec)
//	GET    /v1/events               denial events as JSON lines, as they come;
//	                                ?reason=&interface=&vm= filter them
//	POST   /v1/rotations            declare SA rotations, one or a batch (rotation.go)
//	POST   /v1/rotations/drop       drop the records of a batch of successors
//	DELETE /v1/rotations/{daddr}/{spi}  drop one rotation record
//
// Every change is logged ("policy change") with the caller's uid and pid
// and the old and the new spec, and counted (mlsgate_api_changes_total).
func (a *Agent) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	a.public(mux)
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
		err := a.cfg.checkManaged(g.Interface)
		var prev *GuestSpec
		if err == nil {
			prev, err = a.changeGuest(journalOp{Set: &g})
		}
		a.recordChange(r, changeGuestSet, guestOrNil(prev), g, err)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, g)
	})
	mux.HandleFunc("DELETE /v1/guests/{iface}", func(w http.ResponseWriter, r *http.Request) {
		iface := r.PathValue("iface")
		prev, err := a.changeGuest(journalOp{Remove: iface})
		if err == nil && prev == nil {
			writeJSON(w, http.StatusNotFound, errBody(fmt.Errorf("no guest declared on %s", iface)))
			return
		}
		a.recordChange(r, changeGuestRemove, guestOrNil(prev), nil, err)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"removed": true})
	})
	mux.HandleFunc("PUT /v1/peers", func(w http.ResponseWriter, r *http.Request) {
		var p []PeerSpec
		if !readJSON(w, r, &p) {
			return
		}
		old, err := a.changeDesired(func(d *Desired) { d.Peers = p })
		a.recordChange(r, changePeers, old.Peers, p, err)
		if err != nil {
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
		old, err := a.changeDesired(func(d *Desired) { d.SAs = s })
		a.recordChange(r, changeSAs, logSAs(old.SAs), logSAs(s), err)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"sas": len(s)})
	})
	mux.HandleFunc("GET /v1/events", a.serveEvents)
	a.rotationRoutes(mux)
	return mux
}

// The changes the API counts, by mlsgate_api_changes_total's change label.
const (
	changeGuestSet    = "guest_set"
	changeGuestRemove = "guest_rm"
	changePeers       = "peers"
	changeSAs         = "sas"

	changeRotation     = "rotation"
	changeRotationDrop = "rotation_rm"
)

var changeKinds = []string{changeGuestSet, changeGuestRemove, changePeers, changeSAs, changeRotation, changeRotationDrop}

// guestOrNil is the guest a change replaced or removed, or nil.
func guestOrNil(g *GuestSpec) any {
	if g == nil {
		return nil
	}
	return *g
}

// maxLoggedSAs bounds the SAs a change log line carries in full; a larger
// set is logged by count (they carry no keys either way).
const maxLoggedSAs = 64

func logSAs(s []SASpec) any {
	if len(s) > maxLoggedSAs {
		return map[string]int{"count": len(s)}
	}
	return s
}

// recordChange logs a change made through the API with who made it (the
// socket's peer) and what it replaced, and counts it.
func (a *Agent) recordChange(r *http.Request, change string, old, new any, err error) {
	result := "applied"
	if err != nil {
		result = "refused"
	}
	a.metrics.apiChanges.WithLabelValues(change, result).Inc()
	args := []any{"change", change, "result", result, "old", old, "new", new}
	if p, ok := localapi.PeerFrom(r.Context()); ok {
		args = append(args, "uid", p.UID, "gid", p.GID, "pid", p.PID)
	} else {
		args = append(args, "peer", "unknown")
	}
	if err != nil {
		args = append(args, "error", err)
	}
	a.log.Warn("policy change", args...)
}

// APIRefused logs and counts a caller the socket refused (localapi's
// Listener.OnRefuse).
func (a *Agent) APIRefused(p localapi.Peer, r *http.Request, err error) {
	a.metrics.apiRefused.Inc()
	a.log.Warn("api refused", "uid", p.UID, "gid", p.GID, "pid", p.PID, "method", r.Method, "path", r.URL.Path, "error", err)
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

// writeJSON is how every handler of the agent answers.
var writeJSON = httpjson.WriteIndent

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
