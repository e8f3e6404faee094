package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsgate/mlsgate/mapper"
)

// MapperAPIConfig says how to measure label-mapper lookups over its HTTP API.
type MapperAPIConfig struct {
	Rules      int   // rules in the synthetic policy (mapper.SyntheticPolicy)
	Lookups    int   // timed lookups per case
	Goroutines []int // concurrent clients per case, e.g. 1 and 4
	Progress   func(format string, args ...any)
}

// MapperAPICase is one cache setting at one client concurrency.
type MapperAPICase struct {
	Cache      string        `json:"cache"` // "off": every lookup runs the policy; "warm": every URL already cached
	Goroutines int           `json:"goroutines"`
	PerSecond  float64       `json:"per_second"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	// Connections is how many TCP connections the server accepted for the
	// case (warm-up and timed lookups): Goroutines when keep-alive works.
	Connections int64 `json:"connections"`
}

// MapperAPIResult is lookups through mapper.Client against the mapper's
// Handler served on a loopback TCP port of this host.
type MapperAPIResult struct {
	Rules   int             `json:"rules"`
	Lookups int             `json:"lookups"`
	Cases   []MapperAPICase `json:"cases"`
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// MeasureMapperAPI serves a mapper with a synthetic policy of cfg.Rules
// rules on 127.0.0.1 and times cfg.Lookups POST /v1/lookup calls through
// mapper.Client (keep-alive connections) for each concurrency, first with
// the cache off and then with every URL cached. Before timing, every URL's
// answer over the API is checked against the same mapper's in-process
// answer. The client and the server share this machine's cores.
func MeasureMapperAPI(ctx context.Context, cfg MapperAPIConfig) (*MapperAPIResult, error) {
	if cfg.Rules < 1 || cfg.Rules > mapper.MaxRules || cfg.Lookups < 1 || len(cfg.Goroutines) == 0 {
		return nil, fmt.Errorf("mapper API bench: rules %d, lookups %d, goroutines %v: want 1 to %d rules, at least one lookup and one concurrency",
			cfg.Rules, cfg.Lookups, cfg.Goroutines, mapper.MaxRules)
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	text, urls := mapper.SyntheticPolicy(cfg.Rules, 1)
	pol, err := mapper.ParsePolicy("synthetic.policy", text)
	if err != nil {
		return nil, fmt.Errorf("mapper API bench: synthetic policy: %w", err)
	}
	rng := rand.New(rand.NewPCG(2, 3))
	seq := make([]string, cfg.Lookups)
	for i := range seq {
		seq[i] = urls[rng.IntN(len(urls))]
	}
	res := &MapperAPIResult{Rules: cfg.Rules, Lookups: cfg.Lookups}
	for _, cache := range []string{"off", "warm"} {
		mc := mapper.Config{ID: "bench-api-uncached", CacheSize: -1}
		if cache == "warm" {
			mc = mapper.Config{ID: "bench-api-cached", CacheSize: len(urls) + 1, CacheTTL: time.Hour, DefaultTTL: time.Hour}
		}
		m, err := mapper.New(mc)
		if err != nil {
			return nil, err
		}
		m.SetPolicy(pol)
		cases, err := measureMapperServer(ctx, m, cache, urls, seq, cfg.Goroutines, progress)
		if err != nil {
			return nil, err
		}
		res.Cases = append(res.Cases, cases...)
	}
	return res, nil
}

// measureMapperServer serves m on a fresh loopback port and runs the timed
// lookups for each concurrency.
func measureMapperServer(ctx context.Context, m *mapper.Mapper, cache string, urls, seq []string, goroutines []int, progress func(string, ...any)) ([]MapperAPICase, error) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mapper API bench: listen on 127.0.0.1: %w", err)
	}
	ln := &countingListener{Listener: tcp}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
	}()
	upstream := "http://" + tcp.Addr().String()

	// Every URL once over the API, compared with the in-process answer; in
	// the warm setting this also fills the cache.
	check := mapper.NewClient()
	defer check.CloseIdleConnections()
	for _, u := range urls {
		want, err := m.Lookup(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("mapper API bench: in-process lookup of %s: %w", u, err)
		}
		got, err := check.Lookup(ctx, upstream, u)
		if err != nil {
			return nil, fmt.Errorf("mapper API bench: lookup of %s over %s: %w", u, upstream, err)
		}
		if got.Label != want.Label || got.Rule != want.Rule {
			return nil, fmt.Errorf("mapper API bench: %s over the API is %s (rule %s), in process %s (rule %s)", u, got.Label, got.Rule, want.Label, want.Rule)
		}
		if cache == "warm" && got.Source != mapper.SourceCache {
			return nil, fmt.Errorf("mapper API bench: %s answered from %s with the cache warm, want %s", u, got.Source, mapper.SourceCache)
		}
	}

	var cases []MapperAPICase
	for _, g := range goroutines {
		if g < 1 {
			return nil, fmt.Errorf("mapper API bench: %d goroutines: want at least 1", g)
		}
		c, err := timeLookups(ctx, upstream, ln, seq, g)
		if err != nil {
			return nil, err
		}
		c.Cache = cache
		progress("mapper API: cache %s, %d goroutines: %.0f lookups/s, p50 %v, p99 %v over %d connections", cache, g, c.PerSecond, c.P50, c.P99, c.Connections)
		cases = append(cases, c)
	}
	return cases, nil
}

// timeLookups runs seq through g goroutines sharing one mapper.Client,
// after one warm-up lookup per goroutine opens its connection.
func timeLookups(ctx context.Context, upstream string, ln *countingListener, seq []string, g int) (MapperAPICase, error) {
	client := mapper.NewClient()
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make([]error, g)
	warm := func() {
		var ready sync.WaitGroup
		for i := range g {
			ready.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ready.Done()
				ready.Wait() // all at once, so that each opens a connection
				_, errs[i] = client.Lookup(ctx, upstream, seq[i%len(seq)])
			}()
		}
		wg.Wait()
	}
	before := ln.n.Load()
	warm()
	if err := errors.Join(errs...); err != nil {
		return MapperAPICase{}, fmt.Errorf("mapper API bench: warm-up: %w", err)
	}
	lat := make([]time.Duration, len(seq))
	var next atomic.Int64
	start := time.Now()
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(seq) {
					return
				}
				t0 := time.Now()
				if _, err := client.Lookup(ctx, upstream, seq[k]); err != nil {
					errs[i] = fmt.Errorf("lookup of %s: %w", seq[k], err)
					return
				}
				lat[k] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	total := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return MapperAPICase{}, fmt.Errorf("mapper API bench: %w", err)
	}
	slices.Sort(lat)
	return MapperAPICase{
		Goroutines:  g,
		PerSecond:   float64(len(seq)) / total.Seconds(),
		P50:         lat[len(lat)/2],
		P99:         lat[min(len(lat)-1, len(lat)*99/100)],
		Connections: ln.n.Load() - before,
	}, nil
}
