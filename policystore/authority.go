package policystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsgate/mlsgate/internal/httpjson"
)

// ErrAuthority marks failures to reach or understand the application
// authority.
var ErrAuthority = errors.New("application authority")

// AuthorityClient fetches applications from an upstream application
// authority: another policy store's HTTP API (see Handler). Many hosts
// share one authority this way; each keeps a cache in its own Store.
type AuthorityClient struct {
	// BaseURL is the authority's address, e.g. "https://authority.example:7443".
	BaseURL string
	// HTTP is the client to use; its Timeout bounds every request. nil means
	// a client with a 5 s timeout.
	HTTP *http.Client
}

// appResponse is the wire form of one application with its resolution.
type appResponse struct {
	App     *Application `json:"app"`
	Server  string       `json:"server,omitempty"`
	Pattern string       `json:"pattern,omitempty"`
	// TTL is how long the caller may cache the answer, in seconds.
	TTL int64 `json:"ttl"`
}

type errorResponse struct {
	Error string `json:"error"`
}

func (c *AuthorityClient) client() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 5 * time.Second}
}

// errNotFound is the authority's 404: it does not know the name or URL.
var errNotFound = errors.New("not found")

func (c *AuthorityClient) get(ctx context.Context, path string, q url.Values) (*appResponse, error) {
	u := strings.TrimSuffix(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrAuthority, c.BaseURL, err)
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrAuthority, c.BaseURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w %s: read answer: %v", ErrAuthority, c.BaseURL, err)
	}
	if len(body) > MaxFileSize {
		return nil, fmt.Errorf("%w %s: answer larger than %d bytes", ErrAuthority, c.BaseURL, MaxFileSize)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, errNotFound
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		_ = json.Unmarshal(body, &e)
		return nil, fmt.Errorf("%w %s: %s: %s", ErrAuthority, c.BaseURL, resp.Status, e.Error)
	}
	var ar appResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		return nil, fmt.Errorf("%w %s: answer does not decode: %v", ErrAuthority, c.BaseURL, err)
	}
	if ar.App == nil {
		return nil, fmt.Errorf("%w %s: answer has no application", ErrAuthority, c.BaseURL)
	}
	if err := ar.App.Validate(); err != nil {
		return nil, fmt.Errorf("%w %s: application %q is invalid: %v", ErrAuthority, c.BaseURL, ar.App.Name, err)
	}
	return &ar, nil
}

// App fetches one application by name.
func (c *AuthorityClient) App(ctx context.Context, name string) (*Application, time.Duration, error) {
	ar, err := c.get(ctx, "/v1/apps/"+url.PathEscape(name), nil)
	if err != nil {
		return nil, 0, err
	}
	if ar.App.Name != name {
		return nil, 0, fmt.Errorf("%w %s: asked for %q, got %q", ErrAuthority, c.BaseURL, name, ar.App.Name)
	}
	return ar.App, time.Duration(ar.TTL) * time.Second, nil
}

// Resolve asks the authority which application a URL belongs to.
func (c *AuthorityClient) Resolve(ctx context.Context, rawURL string) (*Application, time.Duration, error) {
	ar, err := c.get(ctx, "/v1/resolve", url.Values{"url": {rawURL}})
	if err != nil {
		return nil, 0, err
	}
	// Never trust the authority's claim blindly: the application it sends
	// must itself claim the URL.
	ix, err := NewIndex([]*Application{ar.App})
	if err != nil {
		return nil, 0, err
	}
	if _, err := ix.Resolve(rawURL); err != nil {
		return nil, 0, fmt.Errorf("%w %s: answered application %q, which does not claim %q", ErrAuthority, c.BaseURL, ar.App.Name, rawURL)
	}
	return ar.App, time.Duration(ar.TTL) * time.Second, nil
}

// Catalog is what the loader asks: the local Store first, then, on a miss
// or an expired cache entry, the application authority.
type Catalog struct {
	Store *Store
	// Authority is optional; without it the catalog knows only local
	// applications.
	Authority *AuthorityClient
	// TTL is used when the authority gives none (default 10 minutes);
	// MaxTTL caps what it gives (default 24 hours).
	TTL, MaxTTL time.Duration
	// StaleGrace is how long past expiry a cached application may still be
	// served while the authority cannot be reached (default 0: never; the
	// safe choice, since the authority may have revoked it).
	StaleGrace time.Duration
	// Now is the clock (tests inject one); nil means time.Now.
	Now func() time.Time

	fetchMu sync.Mutex // one fetch at a time: no thundering herd on the authority
	stats   catalogStats
}

type catalogStats struct {
	hits, misses, fetches, fetchErrors, stale atomic.Uint64
}

// CatalogStats counts what the catalog did.
type CatalogStats struct {
	Hits, Misses, Fetches, FetchErrors, StaleServed uint64
}

// Stats returns a snapshot of the counters.
func (c *Catalog) Stats() CatalogStats {
	return CatalogStats{
		Hits: c.stats.hits.Load(), Misses: c.stats.misses.Load(), Fetches: c.stats.fetches.Load(),
		FetchErrors: c.stats.fetchErrors.Load(), StaleServed: c.stats.stale.Load(),
	}
}

func (c *Catalog) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Catalog) expiry(ttl time.Duration) time.Time {
	if ttl <= 0 {
		ttl = c.TTL
		if ttl <= 0 {
			ttl = 10 * time.Minute
		}
	}
	maxTTL := c.MaxTTL
	if maxTTL <= 0 {
		maxTTL = 24 * time.Hour
	}
	return c.now().Add(min(ttl, maxTTL))
}

// Resolve returns the application of a URL.
func (c *Catalog) Resolve(ctx context.Context, rawURL string) (Resolution, error) {
	r, e, err := c.Store.Resolve(rawURL)
	switch {
	case err == nil && !e.Expired(c.now()):
		c.stats.hits.Add(1)
		return r, nil
	case err == nil:
		if _, ferr := c.refresh(ctx, e); ferr != nil {
			return Resolution{}, ferr
		}
		return c.resolveStored(rawURL)
	case !errors.Is(err, ErrNoApplication) || c.Authority == nil:
		c.stats.misses.Add(1)
		return Resolution{}, err
	}
	c.stats.misses.Add(1)
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	// Someone else may have fetched it while we waited.
	if r, e, err := c.Store.Resolve(rawURL); err == nil && !e.Expired(c.now()) {
		return r, nil
	}
	c.stats.fetches.Add(1)
	app, ttl, err := c.Authority.Resolve(ctx, rawURL)
	if err != nil {
		if errors.Is(err, errNotFound) {
			return Resolution{}, fmt.Errorf("%w %q: neither this store nor the authority %s knows it", ErrNoApplication, rawURL, c.Authority.BaseURL)
		}
		c.stats.fetchErrors.Add(1)
		return Resolution{}, err
	}
	if err := c.Store.PutCached(app, c.Authority.BaseURL, c.expiry(ttl)); err != nil {
		return Resolution{}, err
	}
	return c.resolveStored(rawURL)
}

func (c *Catalog) resolveStored(rawURL string) (Resolution, error) {
	r, _, err := c.Store.Resolve(rawURL)
	return r, err
}

// App returns an application by name, fetching it on a miss.
func (c *Catalog) App(ctx context.Context, name string) (*Application, error) {
	if e, ok := c.Store.Get(name); ok {
		if !e.Expired(c.now()) {
			c.stats.hits.Add(1)
			return e.App, nil
		}
		return c.refresh(ctx, e)
	}
	c.stats.misses.Add(1)
	if c.Authority == nil {
		return nil, fmt.Errorf("%w: no application named %q (and no authority configured)", ErrNoApplication, name)
	}
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	c.stats.fetches.Add(1)
	app, ttl, err := c.Authority.App(ctx, name)
	if err != nil {
		if errors.Is(err, errNotFound) {
			return nil, fmt.Errorf("%w: no application named %q here or at %s", ErrNoApplication, name, c.Authority.BaseURL)
		}
		c.stats.fetchErrors.Add(1)
		return nil, err
	}
	if err := c.Store.PutCached(app, c.Authority.BaseURL, c.expiry(ttl)); err != nil {
		return nil, err
	}
	return app, nil
}

// refresh refetches an expired cached entry.
func (c *Catalog) refresh(ctx context.Context, e *Entry) (*Application, error) {
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	if cur, ok := c.Store.Get(e.App.Name); ok && !cur.Expired(c.now()) {
		return cur.App, nil
	}
	if c.Authority == nil {
		return nil, fmt.Errorf("cached application %q expired and no authority is configured", e.App.Name)
	}
	c.stats.fetches.Add(1)
	app, ttl, err := c.Authority.App(ctx, e.App.Name)
	if err == nil {
		if err := c.Store.PutCached(app, c.Authority.BaseURL, c.expiry(ttl)); err != nil {
			return nil, err
		}
		return app, nil
	}
	if errors.Is(err, errNotFound) {
		// The authority withdrew it: so do we.
		if _, derr := c.Store.Invalidate(e.App.Name); derr != nil {
			return nil, derr
		}
		return nil, fmt.Errorf("%w: application %q was withdrawn by %s", ErrNoApplication, e.App.Name, c.Authority.BaseURL)
	}
	c.stats.fetchErrors.Add(1)
	if c.StaleGrace > 0 && c.now().Before(e.Expires.Add(c.StaleGrace)) {
		c.stats.stale.Add(1)
		return e.App, nil
	}
	return nil, fmt.Errorf("cached application %q expired at %s and the authority cannot be reached: %w", e.App.Name, e.Expires.Format(time.RFC3339), err)
}

// Handler serves the store's HTTP API; the same API makes a policy store
// an application authority for others:
//
//	GET    /v1/apps             names, sources and expiry of all applications
//	GET    /v1/apps/{name}      one application
//	GET    /v1/resolve?url=URL  the application a URL belongs to
//	DELETE /v1/cache/{name}     drop a cached application (DELETE /v1/cache: all)
//	GET    /healthz
//
// ttl is what answers tell clients to cache for.
func Handler(cat *Catalog, ttl time.Duration) http.Handler {
	mux := http.NewServeMux()
	ttlSec := int64(ttl / time.Second)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/apps", func(w http.ResponseWriter, _ *http.Request) {
		type item struct {
			Name    string    `json:"name"`
			Source  Source    `json:"source"`
			Origin  string    `json:"origin"`
			Expires time.Time `json:"expires,omitzero"`
		}
		var out []item
		for _, e := range cat.Store.Entries() {
			out = append(out, item{e.App.Name, e.Source, e.Origin, e.Expires})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/apps/{name}", func(w http.ResponseWriter, r *http.Request) {
		app, err := cat.App(r.Context(), r.PathValue("name"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, appResponse{App: app, TTL: ttlSec})
	})
	mux.HandleFunc("GET /v1/resolve", func(w http.ResponseWriter, r *http.Request) {
		u := r.URL.Query().Get("url")
		if u == "" {
			writeJSON(w, http.StatusBadRequest, errorResponse{"missing url parameter: GET /v1/resolve?url=http://host/path"})
			return
		}
		res, err := cat.Resolve(r.Context(), u)
		if err != nil {
			writeErr(w, err)
			return
		}
		ar := appResponse{App: res.App, Pattern: res.Pattern, TTL: ttlSec}
		if res.Server != nil {
			ar.Server = res.Server.Name
		}
		writeJSON(w, http.StatusOK, ar)
	})
	mux.HandleFunc("DELETE /v1/cache/{name}", func(w http.ResponseWriter, r *http.Request) {
		dropped, err := cat.Store.Invalidate(r.PathValue("name"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"dropped": dropped})
	})
	mux.HandleFunc("DELETE /v1/cache", func(w http.ResponseWriter, _ *http.Request) {
		n, err := cat.Store.InvalidateAll()
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"dropped": strconv.Itoa(n)})
	})
	return limitRequests(mux)
}

// limitRequests refuses oversized requests before any handler runs.
func limitRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.RawQuery)+len(r.URL.Path) > MaxURLLen+256 {
			writeJSON(w, http.StatusRequestURITooLong, errorResponse{fmt.Sprintf("request URI longer than %d bytes", MaxURLLen+256)})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		h.ServeHTTP(w, r)
	})
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNoApplication):
		code = http.StatusNotFound
	case errors.Is(err, ErrBadURL):
		code = http.StatusBadRequest
	case errors.Is(err, ErrAuthority):
		code = http.StatusBadGateway
	}
	writeJSON(w, code, errorResponse{err.Error()})
}

// writeJSON is how every handler of the package answers.
var writeJSON = httpjson.Write
