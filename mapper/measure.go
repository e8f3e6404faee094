package mapper

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Result is what MeasureLookups measured.
type Result struct {
	Rules    int         // rules in the synthetic policy
	Lookups  int         // lookups per measurement
	Uncached LookupStats // policy lookups with the cache disabled
	Cached   LookupStats // the same URLs, every one already cached
}

// LookupStats is throughput and latency of one kind of lookup.
type LookupStats struct {
	PerSecond float64       // lookups per second, one goroutine
	P50, P99  time.Duration // per lookup, including about 20-50 ns of clock reads
}

// String prints one line per kind, for logs and the bench harness.
func (r Result) String() string {
	return fmt.Sprintf("%d rules, %d lookups: uncached %.0f lookups/s p50 %v p99 %v; cached %.0f lookups/s p50 %v p99 %v",
		r.Rules, r.Lookups, r.Uncached.PerSecond, r.Uncached.P50, r.Uncached.P99,
		r.Cached.PerSecond, r.Cached.P50, r.Cached.P99)
}

// MeasureLookups builds a synthetic policy of the given number of rules
// (exact hosts with path prefixes, host suffixes, alternations, SELinux
// contexts and a few unindexable rules, shaped like what the policy store
// generates) and measures n in-process lookups, on one goroutine, of URLs
// that hit rules (80%) and miss them (20%): first with the cache disabled,
// then with every URL cached. The bench harness reports these numbers.
func MeasureLookups(rules, n int) (Result, error) {
	if rules < 1 || rules > MaxRules {
		return Result{}, fmt.Errorf("mapper: measure: rules = %d; want 1 to %d", rules, MaxRules)
	}
	if n < 1 {
		return Result{}, fmt.Errorf("mapper: measure: n = %d; want at least 1 lookup", n)
	}
	text, urls := SyntheticPolicy(rules, 1)
	p, err := ParsePolicy("synthetic.policy", text)
	if err != nil {
		return Result{}, fmt.Errorf("mapper: measure: synthetic policy: %w", err)
	}
	res := Result{Rules: rules, Lookups: n}
	rng := rand.New(rand.NewPCG(2, 3))
	seq := make([]string, n)
	for i := range seq {
		seq[i] = urls[rng.IntN(len(urls))]
	}
	uncached, err := New(Config{ID: "measure-uncached", CacheSize: -1})
	if err != nil {
		return Result{}, err
	}
	uncached.SetPolicy(p)
	if res.Uncached, err = measure(uncached, seq); err != nil {
		return Result{}, err
	}
	cached, err := New(Config{ID: "measure-cached", CacheSize: len(urls) + 1, CacheTTL: time.Hour, DefaultTTL: time.Hour})
	if err != nil {
		return Result{}, err
	}
	cached.SetPolicy(p)
	for _, u := range urls {
		if _, err := cached.Lookup(context.Background(), u); err != nil {
			return Result{}, err
		}
	}
	if res.Cached, err = measure(cached, seq); err != nil {
		return Result{}, err
	}
	return res, nil
}

// measure runs seq twice: once timed as a whole for throughput, once timed
// lookup by lookup for the percentiles.
func measure(m *Mapper, seq []string) (LookupStats, error) {
	ctx := context.Background()
	start := time.Now()
	for _, u := range seq {
		if _, err := m.Lookup(ctx, u); err != nil {
			return LookupStats{}, err
		}
	}
	total := time.Since(start)
	lat := make([]time.Duration, len(seq))
	for i, u := range seq {
		t0 := time.Now()
		if _, err := m.Lookup(ctx, u); err != nil {
			return LookupStats{}, err
		}
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	return LookupStats{
		PerSecond: float64(len(seq)) / total.Seconds(),
		P50:       percentile(lat, 50),
		P99:       percentile(lat, 99),
	}, nil
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return sorted[i-1]
}

// SyntheticPolicy returns a policy of n rules shaped like generated ones,
// and URLs to look up: one hitting each rule and a quarter as many that hit
// none. The same n and seed give the same policy.
//
// Seven rules in ten name an exact host and a path prefix, one a host
// suffix, one alternations, one an SELinux context with a character-class
// path; one rule in a thousand (at least one) has no literal prefix and
// lands in the index's fallback list.
func SyntheticPolicy(n int, seed uint64) ([]byte, []string) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var b strings.Builder
	b.WriteString("# synthetic label mapper policy\n")
	urls := make([]string, 0, n+n/4+1)
	fallback := max(1, n/1000)
	for i := 0; i < n; i++ {
		lbl := fmt.Sprintf("s%d:c%d/i%d", rng.IntN(16), rng.IntN(1024), rng.IntN(16))
		if i < fallback {
			fmt.Fprintf(&b, "map .*\\.secret%d\\.pdf %s\n", i, lbl)
			urls = append(urls, fmt.Sprintf("https://files%d.example.org/x/report.secret%d.pdf", rng.IntN(100), i))
			continue
		}
		switch i % 10 {
		case 7:
			fmt.Fprintf(&b, "map https?://([a-z0-9-]+\\.)*zone%d\\.example\\.net/.* %s\n", i, lbl)
			urls = append(urls, fmt.Sprintf("https://a%d.b.zone%d.example.net/p/%d", rng.IntN(50), i, rng.IntN(1000)))
		case 8:
			fmt.Fprintf(&b, "map https?://(www\\.)?site%d\\.example\\.(org|com)/(docs|api)/.* %s\n", i, lbl)
			urls = append(urls, fmt.Sprintf("http://www.site%d.example.com/api/v%d/items", i, rng.IntN(3)))
		case 9:
			fmt.Fprintf(&b, "map http://h%d\\.intra\\.example/[a-z]+/page[0-9]+\\.html system_u:object_r:app%d_t:s%d i%d\n", i, i%97, rng.IntN(16), rng.IntN(16))
			urls = append(urls, fmt.Sprintf("http://h%d.intra.example/docs/page%d.html", i, rng.IntN(500)))
		default:
			host := fmt.Sprintf("h%d.dept%d.example.com", i%2000, i%50)
			fmt.Fprintf(&b, "map https://%s/app%d/.* %s\n", strings.ReplaceAll(host, ".", `\.`), i, lbl)
			urls = append(urls, fmt.Sprintf("https://%s/app%d/index.html?q=%d", host, i, rng.IntN(100)))
		}
	}
	for i := 0; i < n/4+1; i++ {
		urls = append(urls, fmt.Sprintf("https://unknown%d.example.org/page/%d", rng.IntN(1<<20), i))
	}
	return []byte(b.String()), urls
}
