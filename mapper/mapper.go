package mapper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsgate/mlsgate/label"
)

// Source says where an answer came from.
type Source string

// The sources of an answer.
const (
	SourceRule     Source = "rule"     // a map rule of this mapper's policy
	SourceUpstream Source = "upstream" // another mapper, via a forward rule
	SourceDefault  Source = "default"  // nobody knew: the policy's default
	SourceCache    Source = "cache"    // this mapper's cache; Origin says how it got there
)

// Answer is a URL's label and how the mapper found it. It is also the JSON
// body of the server's replies.
type Answer struct {
	URL     string         `json:"url"`               // normalized
	Label   label.Label    `json:"label"`             // e.g. "s4/i0"
	Context *label.Context `json:"context,omitempty"` // when the policy gave one
	Source  Source         `json:"source"`
	// Origin is the source that first produced the answer: equal to Source,
	// except that an answer served from the cache has Source "cache" and the
	// Origin it was cached with. A forwarding mapper treats an upstream answer
	// whose Origin is "default" as a miss.
	Origin   Source `json:"origin"`
	Rule     string `json:"rule,omitempty"`     // "file:line" of the deciding rule, here or upstream
	Upstream string `json:"upstream,omitempty"` // the upstream that answered
}

// Request is a lookup as mappers pass it to each other.
type Request struct {
	URL string `json:"url"`
	// Hops counts the mappers the request has already passed through.
	Hops int `json:"hops"`
	// Via lists their IDs, oldest first. A mapper that finds its own ID here
	// refuses the request with ErrLoop.
	Via []string `json:"via,omitempty"`
}

// Errors a lookup can return besides *URLError (ErrInvalidURL).
var (
	// ErrLoop: the request already passed through this mapper.
	ErrLoop = errors.New("mapper loop")
	// ErrHopLimit: the request passed through too many mappers.
	ErrHopLimit = errors.New("mapper hop limit reached")
	// ErrBadRequest: hops or via are malformed.
	ErrBadRequest = errors.New("bad lookup request")
)

// Defaults for Config's zero fields.
const (
	DefaultCacheSize      = 100_000
	DefaultCacheTTL       = 5 * time.Minute
	DefaultDefaultTTL     = 10 * time.Second
	DefaultForwardTimeout = 2 * time.Second
	DefaultHopLimit       = 8
	DefaultMaxForwards    = 3
)

// Config tunes a Mapper. The zero value is usable.
type Config struct {
	// ID names this mapper in Via lists; it must be unique among the
	// mappers that forward to each other. Empty: a random ID.
	ID string
	// CacheSize bounds the cache in entries; 0 means DefaultCacheSize,
	// negative disables the cache.
	CacheSize int
	// CacheTTL is how long rule and upstream answers are cached.
	CacheTTL time.Duration
	// DefaultTTL is how long default answers are cached: shorter, so that
	// a URL nobody knew is asked again soon, and a dead upstream that came
	// back is used again.
	DefaultTTL time.Duration
	// ForwardTimeout bounds each request to an upstream.
	ForwardTimeout time.Duration
	// HopLimit refuses requests that have passed through this many mappers.
	HopLimit int
	// MaxForwards is how many matching forward rules are tried, in file
	// order, before the default applies.
	MaxForwards int
	// Client sends forwarded requests; nil means NewClient().
	Client *Client
	// Now is the clock for cache expiry; nil means time.Now.
	Now func() time.Time
	// ErrorLog receives the HTTP server's own errors (bad TLS, accept
	// failures); nil discards them. Lookups are never logged.
	ErrorLog *log.Logger
}

// Mapper answers "what is the label of this URL?" from its policy, its
// cache, upstream mappers, or the default, in that order (the cache first).
// It is safe for concurrent use; the policy can be replaced at any time.
type Mapper struct {
	cfg    Config
	policy atomic.Pointer[loaded]
	cache  *cache
	client *Client
	stats  counters

	srvOnce sync.Once
	srv     *http.Server
}

type loaded struct {
	p   *Policy
	gen uint64
}

var emptyPolicy = func() *Policy {
	p, err := ParsePolicy("(no policy)", nil)
	if err != nil {
		panic(err)
	}
	return p
}()

// New returns a mapper with an empty policy: until Load succeeds every URL
// gets label.Default, unless an upstream knows it.
func New(cfg Config) (*Mapper, error) {
	if cfg.ID == "" {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("mapper: random id: %w", err)
		}
		cfg.ID = "mapper-" + hex.EncodeToString(b[:])
	}
	if err := checkID(cfg.ID); err != nil {
		return nil, fmt.Errorf("mapper: config ID: %w", err)
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = DefaultDefaultTTL
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.HopLimit <= 0 {
		cfg.HopLimit = DefaultHopLimit
	}
	if cfg.MaxForwards <= 0 {
		cfg.MaxForwards = DefaultMaxForwards
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Mapper{cfg: cfg, client: cfg.Client}
	if m.client == nil {
		m.client = NewClient()
	}
	m.cache = newCache(cfg.CacheSize, cfg.Now)
	m.policy.Store(&loaded{p: emptyPolicy})
	return m, nil
}

// checkID accepts 1..128 bytes of letters, digits and "._:-".
func checkID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("mapper id %q must be 1 to 128 bytes", cut(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return fmt.Errorf("mapper id %q has byte %q; use letters, digits and . _ : -", cut(id), c)
		}
	}
	return nil
}

// ID returns the mapper's ID as it appears in Via lists.
func (m *Mapper) ID() string { return m.cfg.ID }

// Policy returns the policy in force.
func (m *Mapper) Policy() *Policy { return m.policy.Load().p }

// Load reads and installs the policy file at path. On any error the mapper
// keeps serving the policy it had.
func (m *Mapper) Load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		m.stats.policyErrors.Add(1)
		return fmt.Errorf("mapper: load policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxPolicyBytes+1))
	if err != nil {
		m.stats.policyErrors.Add(1)
		return fmt.Errorf("mapper: read policy %s: %w", path, err)
	}
	return m.LoadBytes(path, data)
}

// LoadBytes parses data as a policy named name and installs it atomically,
// flushing the cache. On error it returns a *ParseError and keeps serving
// the policy it had.
func (m *Mapper) LoadBytes(name string, data []byte) error {
	p, err := ParsePolicy(name, data)
	if err != nil {
		m.stats.policyErrors.Add(1)
		return err
	}
	m.SetPolicy(p)
	return nil
}

// SetPolicy installs a parsed policy atomically and flushes the cache.
func (m *Mapper) SetPolicy(p *Policy) {
	for {
		old := m.policy.Load()
		if m.policy.CompareAndSwap(old, &loaded{p: p, gen: old.gen + 1}) {
			break
		}
	}
	m.cache.flush()
	m.stats.policyLoads.Add(1)
}

// Lookup labels rawURL as asked by a local client (no hops yet).
func (m *Mapper) Lookup(ctx context.Context, rawURL string) (Answer, error) {
	return m.Resolve(ctx, Request{URL: rawURL})
}

// Resolve answers a lookup request, from a local client or another mapper.
// Errors: *URLError for a URL it refuses, ErrLoop, ErrHopLimit and
// ErrBadRequest. Upstream failures are not errors: they lead to the next
// forward rule and finally to the default.
func (m *Mapper) Resolve(ctx context.Context, req Request) (Answer, error) {
	m.stats.lookups.Add(1)
	if err := m.checkRequest(req); err != nil {
		return Answer{}, err
	}
	u, err := NormalizeURL(req.URL)
	if err != nil {
		m.stats.invalid.Add(1)
		return Answer{}, err
	}
	cur := m.policy.Load()
	if a, ok := m.cache.get(u, cur.gen); ok {
		m.stats.cacheHits.Add(1)
		a.Source = SourceCache
		return a, nil
	}
	p := cur.p
	if r, ok := p.Match(u); ok {
		m.stats.ruleHits.Add(1)
		a := Answer{URL: u, Label: r.Target.Label, Context: r.Target.Context,
			Source: SourceRule, Origin: SourceRule, Rule: p.RuleRef(r.Line)}
		m.cache.put(u, cur.gen, a, m.cfg.CacheTTL)
		return a, nil
	}
	if req.Hops+1 < m.cfg.HopLimit {
		for _, fr := range p.MatchForwards(u, m.cfg.MaxForwards) {
			if a, ok := m.forward(ctx, fr, u, req); ok {
				m.cache.put(u, cur.gen, a, m.cfg.CacheTTL)
				return a, nil
			}
		}
	}
	m.stats.defaults.Add(1)
	a := Answer{URL: u, Label: p.Default.Label, Context: p.Default.Context,
		Source: SourceDefault, Origin: SourceDefault}
	if p.DefaultSet {
		a.Rule = p.RuleRef(p.DefaultAt)
	}
	if ctx.Err() == nil { // a caller that gave up must not pin a default
		m.cache.put(u, cur.gen, a, m.cfg.DefaultTTL)
	}
	return a, nil
}

// maxVia bounds the Via list a request may carry.
const maxVia = 64

func (m *Mapper) checkRequest(req Request) error {
	if req.Hops < 0 || len(req.Via) > maxVia || req.Hops > 1<<20 {
		m.stats.invalid.Add(1)
		return fmt.Errorf("%w: hops %d with %d via entries; hops must be >= 0 and via at most %d", ErrBadRequest, req.Hops, len(req.Via), maxVia)
	}
	for _, id := range req.Via {
		if err := checkID(id); err != nil {
			m.stats.invalid.Add(1)
			return fmt.Errorf("%w: via: %v", ErrBadRequest, err)
		}
		if id == m.cfg.ID {
			m.stats.loops.Add(1)
			return fmt.Errorf("%w: request for %q already passed through %s (via %v); fix the forward rules so mappers do not ask each other in a circle", ErrLoop, cut(req.URL), m.cfg.ID, req.Via)
		}
	}
	if req.Hops >= m.cfg.HopLimit {
		m.stats.loops.Add(1)
		return fmt.Errorf("%w: request for %q has made %d hops, the limit is %d (via %v); shorten the chain of forward rules", ErrHopLimit, cut(req.URL), req.Hops, m.cfg.HopLimit, req.Via)
	}
	return nil
}

// forward asks fr's upstream about u and checks the answer against its
// bounds. It reports false when the upstream failed, did not know (its
// answer was its own default), or answered out of bounds.
func (m *Mapper) forward(ctx context.Context, fr *ForwardRule, u string, req Request) (Answer, bool) {
	m.stats.forwards.Add(1)
	fctx, cancel := context.WithTimeout(ctx, m.cfg.ForwardTimeout)
	defer cancel()
	via := make([]string, 0, len(req.Via)+1)
	via = append(append(via, req.Via...), m.cfg.ID)
	a, err := m.client.Resolve(fctx, fr.Upstream, Request{URL: u, Hops: req.Hops + 1, Via: via})
	if err != nil {
		m.stats.upstreamErrors.Add(1)
		return Answer{}, false
	}
	if a.URL != u {
		m.stats.upstreamErrors.Add(1)
		return Answer{}, false
	}
	if a.Origin == SourceDefault || (a.Origin == "" && a.Source == SourceDefault) {
		m.stats.upstreamMisses.Add(1)
		return Answer{}, false
	}
	if a.Context != nil && a.Context.HasRange && a.Context.Range.Low != a.Label.Secrecy {
		// A context that disagrees with the label would let a consumer of
		// the context bypass the bounds check below.
		m.stats.upstreamErrors.Add(1)
		return Answer{}, false
	}
	if !fr.Bounds.Contains(a.Label) {
		m.stats.outOfRange.Add(1)
		return Answer{}, false
	}
	return Answer{URL: u, Label: a.Label, Context: a.Context, Source: SourceUpstream,
		Origin: SourceUpstream, Rule: a.Rule, Upstream: fr.Upstream}, true
}

// Flush empties the cache.
func (m *Mapper) Flush() { m.cache.flush() }

// Stats is a snapshot of a mapper's counters since it was made.
type Stats struct {
	Lookups        uint64 `json:"lookups"`         // requests received, valid or not
	CacheHits      uint64 `json:"cache_hits"`      // answered from the cache
	RuleHits       uint64 `json:"rule_hits"`       // answered by a map rule
	Forwards       uint64 `json:"forwards"`        // requests sent upstream
	UpstreamErrors uint64 `json:"upstream_errors"` // upstream failed, timed out or answered garbage
	UpstreamMisses uint64 `json:"upstream_misses"` // upstream answered with its default
	OutOfRange     uint64 `json:"out_of_range"`    // upstream answers rejected by the forward rule's bounds
	Loops          uint64 `json:"loop_rejections"` // requests refused for a loop or the hop limit
	Defaults       uint64 `json:"defaults"`        // answered with the default label
	Invalid        uint64 `json:"invalid"`         // refused URLs and malformed requests
	PolicyLoads    uint64 `json:"policy_loads"`
	PolicyErrors   uint64 `json:"policy_errors"` // Load calls that kept the old policy
	CacheEntries   int    `json:"cache_entries"`
}

type counters struct {
	lookups, cacheHits, ruleHits, forwards, upstreamErrors, upstreamMisses,
	outOfRange, loops, defaults, invalid, policyLoads, policyErrors atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (m *Mapper) Stats() Stats {
	c := &m.stats
	return Stats{
		Lookups: c.lookups.Load(), CacheHits: c.cacheHits.Load(), RuleHits: c.ruleHits.Load(),
		Forwards: c.forwards.Load(), UpstreamErrors: c.upstreamErrors.Load(),
		UpstreamMisses: c.upstreamMisses.Load(), OutOfRange: c.outOfRange.Load(),
		Loops: c.loops.Load(), Defaults: c.defaults.Load(), Invalid: c.invalid.Load(),
		PolicyLoads: c.policyLoads.Load(), PolicyErrors: c.policyErrors.Load(),
		CacheEntries: m.cache.len(),
	}
}
