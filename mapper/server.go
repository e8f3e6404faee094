package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/mlsgate/mlsgate/internal/httpjson"
)

// Server timeouts. A lookup may wait for MaxForwards upstreams in turn, so
// the write timeout leaves room for that on top of the configured
// ForwardTimeout.
const (
	serverReadHeaderTimeout = 5 * time.Second
	serverReadTimeout       = 15 * time.Second
	serverIdleTimeout       = 2 * time.Minute
	serverMaxHeaderBytes    = 64 << 10
)

// Handler returns the mapper's HTTP API:
//
//	GET  /v1/label?url=URL            → Answer
//	POST /v1/lookup {"url","hops","via"} → Answer (what mappers send each other)
//	GET  /v1/stats                    → Stats
//	GET  /healthz                     → {"status":"ok","id":...,"policy":...,"rules":N}
//
// Errors are JSON {"error": reason} with a 4xx status for bad requests
// (400 bad URL or body, 404, 405, 413 body over 64 KiB) and 508 for a loop
// or the hop limit.
func (m *Mapper) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/label", m.handleLabel)
	mux.HandleFunc("/v1/lookup", m.handleLookup)
	mux.HandleFunc("/v1/stats", m.handleStats)
	mux.HandleFunc("/healthz", m.handleHealth)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint "+cut(r.URL.Path)+"; use GET /v1/label?url=, POST /v1/lookup, GET /v1/stats or GET /healthz")
	})
	return mux
}

// Serve answers the HTTP API on ln, a TCP or Unix listener, until Shutdown.
// It may be called for several listeners; all share one http.Server with
// read, write and idle timeouts. It returns nil after Shutdown.
func (m *Mapper) Serve(ln net.Listener) error {
	err := m.server().Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops every Serve call: it closes the listeners and waits for
// requests in progress until ctx ends.
func (m *Mapper) Shutdown(ctx context.Context) error {
	return m.server().Shutdown(ctx)
}

func (m *Mapper) server() *http.Server {
	m.srvOnce.Do(func() {
		errLog := m.cfg.ErrorLog
		if errLog == nil {
			errLog = log.New(io.Discard, "", 0)
		}
		m.srv = &http.Server{
			Handler:           m.Handler(),
			ReadHeaderTimeout: serverReadHeaderTimeout,
			ReadTimeout:       serverReadTimeout,
			WriteTimeout:      time.Duration(m.cfg.MaxForwards)*m.cfg.ForwardTimeout + 10*time.Second,
			IdleTimeout:       serverIdleTimeout,
			MaxHeaderBytes:    serverMaxHeaderBytes,
			ErrorLog:          errLog,
		}
	})
	return m.srv
}

func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	allowed := methods[0]
	for _, m := range methods[1:] {
		allowed += ", " + m
	}
	w.Header().Set("Allow", allowed)
	writeError(w, http.StatusMethodNotAllowed, "method "+cut(r.Method)+" not allowed on "+r.URL.Path+"; use "+allowed)
	return false
}

func (m *Mapper) handleLabel(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		m.stats.invalid.Add(1)
		writeError(w, http.StatusBadRequest, "bad query string: "+err.Error()+"; percent-encode the url parameter")
		return
	}
	urls := q["url"]
	if len(urls) != 1 {
		m.stats.invalid.Add(1)
		writeError(w, http.StatusBadRequest, "want exactly one url parameter, e.g. /v1/label?url=https%3A%2F%2Fexample.org%2F")
		return
	}
	m.answer(w, r, Request{URL: urls[0]})
}

func (m *Mapper) handleLookup(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	var req Request
	if err := dec.Decode(&req); err != nil {
		m.stats.invalid.Add(1)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body is over 64 KiB; send one lookup {\"url\",\"hops\",\"via\"}")
			return
		}
		writeError(w, http.StatusBadRequest, "body is not a lookup: "+cut(err.Error())+`; send {"url":"https://...","hops":0,"via":[]}`)
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		m.stats.invalid.Add(1)
		writeError(w, http.StatusBadRequest, "body has data after the lookup object; send one JSON object")
		return
	}
	if req.URL == "" {
		m.stats.invalid.Add(1)
		writeError(w, http.StatusBadRequest, `lookup has no "url"; send {"url":"https://..."}`)
		return
	}
	m.answer(w, r, req)
}

func (m *Mapper) answer(w http.ResponseWriter, r *http.Request, req Request) {
	a, err := m.Resolve(r.Context(), req)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, a)
	case errors.Is(err, ErrLoop), errors.Is(err, ErrHopLimit):
		writeError(w, http.StatusLoopDetected, err.Error())
	default: // ErrInvalidURL, ErrBadRequest
		writeError(w, http.StatusBadRequest, err.Error())
	}
}

func (m *Mapper) handleStats(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	writeJSON(w, http.StatusOK, m.Stats())
}

func (m *Mapper) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	p := m.Policy()
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "ok",
		"id":     m.cfg.ID,
		"policy": p.File,
		"rules":  len(p.Maps) + len(p.Forwards),
	})
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// writeJSON is how every handler of the package answers.
var writeJSON = httpjson.Write
