package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/label"
)

// fakeClock is a settable clock for cache expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestMapper(t *testing.T, cfg Config, policy string) *Mapper {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if policy != "" {
		if err := m.LoadBytes("test.policy", []byte(policy)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func lookup(t *testing.T, m *Mapper, u string) Answer {
	t.Helper()
	a, err := m.Lookup(context.Background(), u)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", u, err)
	}
	return a
}

func TestLoadKeepsLastGoodPolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.policy")
	if err := os.WriteFile(path, []byte("map https://a\\.org/.* s3/i1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newTestMapper(t, Config{ID: "m"}, "")
	if err := m.Load(path); err != nil {
		t.Fatal(err)
	}
	if a := lookup(t, m, "https://a.org/x"); a.Label != mustLabel(t, "s3/i1") || a.Rule != "m.policy:1" || a.Source != SourceRule {
		t.Fatalf("first policy: %+v", a)
	}
	if err := os.WriteFile(path, []byte("map https://a\\.org/.* s4/i1\nmap https://b\\.org/( s5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := m.Load(path)
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 2 {
		t.Fatalf("Load of a bad file: %v", err)
	}
	a := lookup(t, m, "https://a.org/y")
	if a.Label != mustLabel(t, "s3/i1") {
		t.Fatalf("after a bad load the mapper answers %v, want the old policy's s3/i1", a.Label)
	}
	if err := m.Load(filepath.Join(dir, "missing.policy")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v", err)
	}
	if st := m.Stats(); st.PolicyErrors != 2 || st.PolicyLoads != 1 {
		t.Errorf("stats: %+v", st)
	}
	if m.Policy().File != path {
		t.Errorf("policy in force is %q", m.Policy().File)
	}
}

func TestCacheTTLAndFlush(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	m := newTestMapper(t, Config{ID: "m", CacheTTL: time.Minute, DefaultTTL: 5 * time.Second, Now: clk.now},
		"map https://a\\.org/.* s3\n")

	if a := lookup(t, m, "HTTPS://A.ORG:443/x"); a.Source != SourceRule || a.URL != "https://a.org/x" {
		t.Fatalf("first lookup: %+v", a)
	}
	a := lookup(t, m, "https://a.org/x")
	if a.Source != SourceCache || a.Origin != SourceRule || a.Label != mustLabel(t, "s3") {
		t.Fatalf("second lookup: %+v", a)
	}
	if a := lookup(t, m, "https://b.org/"); a.Source != SourceDefault {
		t.Fatalf("unknown URL: %+v", a)
	}
	if a := lookup(t, m, "https://b.org/"); a.Source != SourceCache || a.Origin != SourceDefault {
		t.Fatalf("default not cached: %+v", a)
	}

	clk.advance(6 * time.Second) // past the default TTL, within the rule TTL
	if a := lookup(t, m, "https://b.org/"); a.Source != SourceDefault {
		t.Errorf("default answer outlived DefaultTTL: %+v", a)
	}
	if a := lookup(t, m, "https://a.org/x"); a.Source != SourceCache {
		t.Errorf("rule answer expired early: %+v", a)
	}
	clk.advance(time.Minute)
	if a := lookup(t, m, "https://a.org/x"); a.Source != SourceRule {
		t.Errorf("rule answer outlived CacheTTL: %+v", a)
	}

	// A new policy flushes the cache.
	if err := m.LoadBytes("v2.policy", []byte("map https://a\\.org/.* s7\n")); err != nil {
		t.Fatal(err)
	}
	if a := lookup(t, m, "https://a.org/x"); a.Source != SourceRule || a.Label != mustLabel(t, "s7") || a.Rule != "v2.policy:1" {
		t.Errorf("after a policy change: %+v", a)
	}
	st := m.Stats()
	if st.Lookups != 8 || st.CacheHits != 3 || st.Defaults != 2 || st.RuleHits != 3 {
		t.Errorf("stats: %+v", st)
	}
}

func TestCacheStaleGenerationIgnored(t *testing.T) {
	c := newCache(8, time.Now)
	c.put("k", 1, Answer{URL: "k"}, time.Hour)
	if _, ok := c.get("k", 2); ok {
		t.Fatal("an answer from policy generation 1 was served under generation 2")
	}
	if _, ok := c.get("k", 1); ok {
		t.Fatal("the stale entry was not dropped")
	}
}

func TestCacheLRUBound(t *testing.T) {
	c := newCache(4, time.Now) // one shard below cacheShards entries
	for i, k := range []string{"a", "b", "c", "d"} {
		c.put(k, 0, Answer{Rule: k}, time.Hour)
		_ = i
	}
	c.get("a", 0) // a is now the most recent; b the least
	c.put("e", 0, Answer{}, time.Hour)
	if _, ok := c.get("b", 0); ok {
		t.Error("least recently used entry b survived")
	}
	for _, k := range []string{"a", "c", "d", "e"} {
		if _, ok := c.get(k, 0); !ok {
			t.Errorf("entry %s evicted", k)
		}
	}
	big := newCache(1000, time.Now)
	for i := 0; i < 5000; i++ {
		big.put(strings.Repeat("x", i%97)+string(rune('a'+i%26))+strings.Repeat("y", i/97), 0, Answer{}, time.Hour)
	}
	if n := big.len(); n > 1000+cacheShards {
		t.Errorf("cache of 1000 holds %d entries", n)
	}
}

func TestLookupErrors(t *testing.T) {
	m := newTestMapper(t, Config{ID: "m1", HopLimit: 4}, "map .* s1\n")
	ctx := context.Background()
	for _, c := range []struct {
		req  Request
		want error
		text string
	}{
		{Request{URL: "ftp://a.org/"}, ErrInvalidURL, "only http and https"},
		{Request{URL: "/relative"}, ErrInvalidURL, "not absolute"},
		{Request{URL: "https://a.org/\x01"}, ErrInvalidURL, "control character 0x01"},
		{Request{URL: "https://a.org/" + strings.Repeat("x", MaxURLBytes)}, ErrInvalidURL, "limit is 8192"},
		{Request{URL: "https://a.org/", Via: []string{"m0", "m1"}, Hops: 2}, ErrLoop, "already passed through m1"},
		{Request{URL: "https://a.org/", Hops: 4}, ErrHopLimit, "limit is 4"},
		{Request{URL: "https://a.org/", Hops: -1}, ErrBadRequest, "hops must be >= 0"},
		{Request{URL: "https://a.org/", Via: []string{"bad id"}}, ErrBadRequest, "letters, digits"},
	} {
		_, err := m.Resolve(ctx, c.req)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("Resolve(%+v) = %v; want %v mentioning %q", c.req, err, c.want, c.text)
		}
	}
	if st := m.Stats(); st.Loops != 2 || st.Invalid != 6 {
		t.Errorf("stats: %+v", st)
	}
}

func TestNewConfigErrors(t *testing.T) {
	if _, err := New(Config{ID: "has space"}); err == nil || !strings.Contains(err.Error(), "letters, digits") {
		t.Errorf("bad ID accepted: %v", err)
	}
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.ID(), "mapper-") {
		t.Errorf("generated ID %q", m.ID())
	}
	if a := lookup(t, m, "https://a.org/"); a.Label != label.Default || a.Source != SourceDefault {
		t.Errorf("a mapper without a policy answered %+v", a)
	}
}

func TestContextTargetAnswer(t *testing.T) {
	m := newTestMapper(t, Config{ID: "m"}, "map http://ws-vml\\.cse\\.psu\\.edu/public\\.html root:sysadm_r:analyst_t:s4 i2\ndefault s1/i1\n")
	a := lookup(t, m, "http://ws-vml.cse.psu.edu/public.html")
	if a.Context == nil || a.Context.String() != "root:sysadm_r:analyst_t:s4" || a.Label != mustLabel(t, "s4/i2") {
		t.Errorf("answer: %+v", a)
	}
	if a := lookup(t, m, "http://ws-vml.cse.psu.edu/other.html"); a.Label != mustLabel(t, "s1/i1") || a.Rule != "test.policy:2" {
		t.Errorf("default answer: %+v", a)
	}
}

func TestConcurrentLookupsAndReloads(t *testing.T) {
	m := newTestMapper(t, Config{ID: "m", CacheSize: 64}, "map https://a\\.org/.* s1\n")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				if g == 0 && i%100 == 0 {
					lvl := []string{"s1", "s2"}[i/100%2]
					if err := m.LoadBytes("p", []byte("map https://a\\.org/.* "+lvl+"\n")); err != nil {
						errs <- err
						return
					}
				}
				a, err := m.Lookup(context.Background(), "https://a.org/"+string(rune('a'+i%26)))
				if err != nil {
					errs <- err
					return
				}
				if s := a.Label.Secrecy.Sens; s != 1 && s != 2 {
					errs <- errors.New("impossible label " + a.Label.String())
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
