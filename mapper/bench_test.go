package mapper

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"
)

const benchRules = 10_000

// latencies records per-lookup times (the last 1<<20 of them) and reports
// lookups/s and p99 the way the bench harness reads them.
type latencies struct {
	d     []time.Duration
	n     int
	start time.Time
}

func newLatencies() *latencies {
	return &latencies{d: make([]time.Duration, 0, 1<<20), start: time.Now()}
}

func (l *latencies) add(d time.Duration) {
	if len(l.d) < cap(l.d) {
		l.d = append(l.d, d)
	} else {
		l.d[l.n%len(l.d)] = d
	}
	l.n++
}

func (l *latencies) report(b *testing.B) {
	elapsed := time.Since(l.start)
	slices.Sort(l.d)
	b.ReportMetric(float64(l.n)/elapsed.Seconds(), "lookups/s")
	b.ReportMetric(float64(percentile(l.d, 99)), "p99-ns")
}

func benchMapper(b *testing.B, cfg Config) (*Mapper, []string) {
	b.Helper()
	text, urls := SyntheticPolicy(benchRules, 1)
	m, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.LoadBytes("synthetic.policy", text); err != nil {
		b.Fatal(err)
	}
	return m, urls
}

// BenchmarkLookupUncached: policy lookups through the index at 10,000 rules,
// with the cache off. It also reports the speed-up over a linear scan of
// every rule, measured on a sample in the same run.
func BenchmarkLookupUncached(b *testing.B) {
	m, urls := benchMapper(b, Config{ID: "bench", CacheSize: -1})
	ctx := context.Background()
	lat := newLatencies()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if _, err := m.Lookup(ctx, urls[i%len(urls)]); err != nil {
			b.Fatal(err)
		}
		lat.add(time.Since(t0))
	}
	b.StopTimer()
	lat.report(b)

	p := m.Policy()
	ms := p.mapIdx.rules
	const sample = 20
	var indexed, linear time.Duration
	for i := 0; i < sample; i++ {
		u := urls[(i*7919)%len(urls)]
		t0 := time.Now()
		p.mapIdx.match(u, 1, nil)
		indexed += time.Since(t0)
		t0 = time.Now()
		linearMatch(ms, u, 1)
		linear += time.Since(t0)
	}
	b.ReportMetric(float64(linear)/float64(max(indexed, 1)), "x-faster-than-linear")
}

// BenchmarkLookupCached: the same URLs, every one in the cache.
func BenchmarkLookupCached(b *testing.B) {
	m, urls := benchMapper(b, Config{ID: "bench", CacheSize: 2 * benchRules, CacheTTL: time.Hour, DefaultTTL: time.Hour})
	ctx := context.Background()
	for _, u := range urls {
		if _, err := m.Lookup(ctx, u); err != nil {
			b.Fatal(err)
		}
	}
	lat := newLatencies()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		a, err := m.Lookup(ctx, urls[i%len(urls)])
		if err != nil {
			b.Fatal(err)
		}
		if a.Source != SourceCache {
			b.Fatalf("%s: not cached (%s)", a.URL, a.Source)
		}
		lat.add(time.Since(t0))
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkLookupHTTP: lookups from another mapper's Client over loopback
// TCP (POST /v1/lookup), one at a time, with and without the server's cache.
func BenchmarkLookupHTTP(b *testing.B) {
	for _, c := range []struct {
		name string
		size int
	}{{"uncached", -1}, {"cached", 2 * benchRules}} {
		b.Run(c.name, func(b *testing.B) {
			m, urls := benchMapper(b, Config{ID: "bench", CacheSize: c.size, CacheTTL: time.Hour, DefaultTTL: time.Hour})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go m.Serve(ln)
			defer m.Shutdown(context.Background())
			base := "http://" + ln.Addr().String()
			client := NewClient()
			defer client.CloseIdleConnections()
			ctx := context.Background()
			for _, u := range urls { // warm the cache and the connection
				if _, err := client.Lookup(ctx, base, u); err != nil {
					b.Fatal(err)
				}
			}
			lat := newLatencies()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				t0 := time.Now()
				if _, err := client.Lookup(ctx, base, urls[i%len(urls)]); err != nil {
					b.Fatal(err)
				}
				lat.add(time.Since(t0))
			}
			b.StopTimer()
			lat.report(b)
		})
	}
}

func TestMeasureLookups(t *testing.T) {
	r, err := MeasureLookups(500, 2000)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []LookupStats{r.Uncached, r.Cached} {
		if s.PerSecond <= 0 || s.P50 <= 0 || s.P99 < s.P50 {
			t.Errorf("implausible measurement: %+v", r)
		}
	}
	if r.Rules != 500 || r.Lookups != 2000 {
		t.Errorf("result: %+v", r)
	}
	if _, err := MeasureLookups(0, 10); err == nil {
		t.Error("MeasureLookups(0, 10) did not fail")
	}
}
