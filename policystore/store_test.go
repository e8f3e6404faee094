package policystore

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for expiry tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStorePersistsAndReplacesAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path)
	if _, err := s.SyncDir(filepath.Join("..", "examples", "analyst")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(path); !errors.Is(err, ErrStoreLocked) {
		t.Errorf("second open: %v, want ErrStoreLocked", err)
	}
	// A bad set is refused whole and the old one keeps serving.
	bad := mustApp(t, "zeta")
	bad.Servers[0].Hosts = []string{"eta.example"}
	if err := s.ReplaceLocal([]*Application{mustApp(t, "eta"), bad}, "test"); err == nil {
		t.Fatal("conflicting set accepted")
	}
	if r, _, err := s.Resolve("http://ws1.analyst.example/profile"); err != nil || r.App.Name != "analyst" {
		t.Fatalf("after refused replace: %v %v", r.App, err)
	}
	if _, ok := s.Get("eta"); ok {
		t.Fatal("half of a refused set was stored")
	}
	v1, _ := s.NextVersion("analyst")
	v2, _ := s.NextVersion("analyst")
	if v2 != v1+1 {
		t.Fatalf("versions %d then %d", v1, v2)
	}
	s.Close()

	s = openStore(t, path)
	if r, _, err := s.Resolve("http://ws1.analyst.example/profile"); err != nil || r.App.Name != "analyst" || r.Range.String() != "s6-s15/i5-i10" {
		t.Fatalf("after reopen: %v %v", r, err)
	}
	if v3, _ := s.NextVersion("analyst"); v3 != v2+1 {
		t.Fatalf("version after reopen %d, want %d", v3, v2+1)
	}
	if n := len(s.Entries()); n != 2 {
		t.Fatalf("%d entries after reopen", n)
	}
}

// authority runs a policy store with the analyst example as an authority on
// loopback and counts the requests it serves.
func authority(t *testing.T) (*httptest.Server, *Store, *int) {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "authority.db"))
	if _, err := st.SyncDir(filepath.Join("..", "examples", "analyst")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	h := Handler(&Catalog{Store: st}, 90*time.Second)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, st, &n
}

func TestCatalogCachesAuthority(t *testing.T) {
	srv, upstream, requests := authority(t)
	clock := &fakeClock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	local := openStore(t, filepath.Join(t.TempDir(), "host.db"))
	local.now = clock.Now
	cat := &Catalog{Store: local, Authority: &AuthorityClient{BaseURL: srv.URL, HTTP: &http.Client{Timeout: 2 * time.Second}}, Now: clock.Now}
	ctx := context.Background()

	r, err := cat.Resolve(ctx, "http://ws1.analyst.example/profile")
	if err != nil || r.App.Name != "analyst" || r.Server.Name != "ws1" || r.Range.String() != "s6-s15/i5-i10" {
		t.Fatalf("first resolve: %+v %v", r, err)
	}
	if *requests != 1 {
		t.Fatalf("%d authority requests, want 1", *requests)
	}
	e, _ := local.Get("analyst")
	if e.Source != SourceAuthority || !e.Expires.Equal(clock.Now().Add(90*time.Second)) {
		t.Fatalf("cached entry %+v", e)
	}
	// Cached: another URL of the same application costs no request.
	if _, err := cat.Resolve(ctx, "http://ws3.analyst.example/"); err != nil || *requests != 1 {
		t.Fatalf("cached resolve: %v, %d requests", err, *requests)
	}
	// Unknown everywhere.
	if _, err := cat.Resolve(ctx, "http://nobody.example/"); !errors.Is(err, ErrNoApplication) {
		t.Fatalf("unknown URL: %v", err)
	}
	// Expiry: refetched by name.
	clock.Add(91 * time.Second)
	before := *requests
	if _, err := cat.Resolve(ctx, "http://ws1.analyst.example/"); err != nil || *requests != before+1 {
		t.Fatalf("after expiry: %v, %d requests (was %d)", err, *requests, before)
	}
	// Explicit invalidation: the next request fetches again.
	if dropped, err := local.Invalidate("analyst"); err != nil || !dropped {
		t.Fatalf("invalidate: %v %v", dropped, err)
	}
	before = *requests
	if _, err := cat.App(ctx, "analyst"); err != nil || *requests != before+1 {
		t.Fatalf("after invalidate: %v, %d requests", err, *requests)
	}
	// The authority withdraws the application: an expired entry goes too.
	if err := upstream.ReplaceLocal(nil, "test"); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	if _, err := cat.App(ctx, "analyst"); !errors.Is(err, ErrNoApplication) {
		t.Fatalf("withdrawn: %v", err)
	}
	if _, ok := local.Get("analyst"); ok {
		t.Fatal("withdrawn application still cached")
	}
}

func TestCatalogAuthorityDown(t *testing.T) {
	srv, _, _ := authority(t)
	clock := &fakeClock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	local := openStore(t, filepath.Join(t.TempDir(), "host.db"))
	local.now = clock.Now
	cat := &Catalog{Store: local, Authority: &AuthorityClient{BaseURL: srv.URL, HTTP: &http.Client{Timeout: time.Second}}, Now: clock.Now}
	ctx := context.Background()
	if _, err := cat.App(ctx, "analyst"); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	clock.Add(2 * time.Minute)
	_, err := cat.App(ctx, "analyst")
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired with authority down and no grace: %v", err)
	}
	cat.StaleGrace = time.Hour
	if a, err := cat.App(ctx, "analyst"); err != nil || a.Name != "analyst" {
		t.Fatalf("within grace: %v", err)
	}
	if st := cat.Stats(); st.StaleServed != 1 || st.FetchErrors != 2 {
		t.Fatalf("stats %+v", st)
	}
	// A dead authority gives an error within the client timeout, not a hang.
	start := time.Now()
	if _, err := cat.Resolve(ctx, "http://feed.osint.example/"); !errors.Is(err, ErrAuthority) {
		t.Fatalf("dead authority: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("dead authority took %v", d)
	}
}

func TestLocalWinsOverAuthority(t *testing.T) {
	local := openStore(t, filepath.Join(t.TempDir(), "host.db"))
	a := mustApp(t, "alpha")
	if err := local.ReplaceLocal([]*Application{a}, "test"); err != nil {
		t.Fatal(err)
	}
	if err := local.PutCached(mustApp(t, "alpha"), "http://authority", time.Now().Add(time.Hour)); err == nil {
		t.Fatal("a cached application replaced a local one")
	}
	// A cached application that claims a local host is refused.
	b := mustApp(t, "beta")
	b.Servers[0].Hosts = []string{"alpha.example"}
	if err := local.PutCached(b, "http://authority", time.Now().Add(time.Hour)); err == nil {
		t.Fatal("cached application claiming a local host accepted")
	}
}

func TestHandlerRefusesBadRequests(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "s.db"))
	if _, err := st.SyncDir(filepath.Join("..", "examples", "analyst")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(&Catalog{Store: st}, time.Minute))
	defer srv.Close()
	for _, c := range []struct {
		path string
		code int
	}{
		{"/v1/resolve", 400},
		{"/v1/resolve?url=ftp://x/", 400},
		{"/v1/resolve?url=http://nobody.example/", 404},
		{"/v1/resolve?url=http://ws1.analyst.example/" + strings.Repeat("a", MaxURLLen), 400},
		{"/v1/resolve?url=http://ws1.analyst.example/" + strings.Repeat("a", 2*MaxURLLen), 414},
		{"/v1/apps/nosuch", 404},
		{"/v1/apps/analyst", 200},
		{"/v1/resolve?url=http://ws3.analyst.example/public.html", 200},
	} {
		resp, err := http.Get(srv.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.code || err != nil {
			t.Errorf("%.60s: %d (%v), want %d", c.path, resp.StatusCode, err, c.code)
		}
		if c.code >= 400 && body["error"] == "" {
			t.Errorf("%.60s: no error reason", c.path)
		}
	}
}
