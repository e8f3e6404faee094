package loader

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"time"
)

// Limits bound what one guest can make the host do through VMLoad. The
// host's own requests (the Unix socket) are not limited.
type Limits struct {
	// Rate and Burst are each guest's token bucket on POST /v1/load:
	// Burst requests at once, then Rate per second. A request beyond it is
	// refused with 429 (reason rate_limited).
	Rate  float64
	Burst int
	// ActivePerGuest is the number of loads one guest may have in
	// progress at once; ActivePerApp the number of guest-requested loads
	// of one application in progress at once.
	ActivePerGuest int
	ActivePerApp   int
	// FreshPerGuest caps the guests one guest may have taken fresh (booted
	// or an idle pre-loaded one) for its loads that still run; beyond it,
	// its loads may only reuse a guest already serving the application.
	FreshPerGuest int
	// IDMaxLen bounds the request id guests must send.
	IDMaxLen int
	// ReplayPerCaller and ReplayTotal bound the replay cache (request ids
	// remembered for ReplayWindow): a caller whose share is full is
	// refused (reason replay_cache_full) rather than an id forgotten early.
	ReplayPerCaller int
	ReplayTotal     int
}

// DefaultLimits are the limits when Config.Limits leaves a field zero.
func DefaultLimits() Limits {
	return Limits{Rate: 1, Burst: 10, ActivePerGuest: 2, ActivePerApp: 4, FreshPerGuest: 2,
		IDMaxLen: 64, ReplayPerCaller: 1024, ReplayTotal: 65536}
}

// withDefaults fills zero fields and refuses negative ones.
func (l Limits) withDefaults() (Limits, error) {
	d := DefaultLimits()
	if l.Rate < 0 || l.Burst < 0 || l.ActivePerGuest < 0 || l.ActivePerApp < 0 || l.FreshPerGuest < 0 ||
		l.IDMaxLen < 0 || l.ReplayPerCaller < 0 || l.ReplayTotal < 0 {
		return l, fmt.Errorf("loader: limits %+v: a limit is negative; use 0 for the default", l)
	}
	if l.Rate == 0 {
		l.Rate = d.Rate
	}
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&l.Burst, d.Burst)
	fill(&l.ActivePerGuest, d.ActivePerGuest)
	fill(&l.ActivePerApp, d.ActivePerApp)
	fill(&l.FreshPerGuest, d.FreshPerGuest)
	fill(&l.IDMaxLen, d.IDMaxLen)
	fill(&l.ReplayPerCaller, d.ReplayPerCaller)
	fill(&l.ReplayTotal, d.ReplayTotal)
	if l.ReplayTotal < l.ReplayPerCaller {
		return l, fmt.Errorf("loader: replay cache total %d is below its per-caller share %d; raise the total", l.ReplayTotal, l.ReplayPerCaller)
	}
	return l, nil
}

// ErrLimited: a guest's request was refused by a limit; the error says
// which.
var ErrLimited = errors.New("refused by a limit")

// ErrReuseOnly is what a Pool returns from Acquire, for a context marked
// WithReuseOnly, when no guest already serves the application.
var ErrReuseOnly = errors.New("no guest already serves the application and this load may not take a fresh one")

type reuseOnlyKey struct{}

// WithReuseOnly marks ctx: Acquire may only hand out a guest already
// serving the application, never boot or take an idle one.
func WithReuseOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, reuseOnlyKey{}, true)
}

// ReuseOnly reports whether ctx was marked WithReuseOnly.
func ReuseOnly(ctx context.Context) bool {
	v, _ := ctx.Value(reuseOnlyKey{}).(bool)
	return v
}

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the token-bucket table; beyond it, full buckets (of
// callers idle long enough to have refilled) are dropped.
const maxBuckets = 4096

// allow takes a token from caller's bucket. The caller holds a.mu.
func (a *API) allow(caller string, now time.Time, lim Limits) bool {
	if a.buckets == nil {
		a.buckets = map[string]*bucket{}
	}
	b, ok := a.buckets[caller]
	if !ok {
		if len(a.buckets) >= maxBuckets {
			for k, o := range a.buckets {
				if o.tokens+now.Sub(o.last).Seconds()*lim.Rate >= float64(lim.Burst) {
					delete(a.buckets, k)
				}
			}
			if len(a.buckets) >= maxBuckets {
				return false
			}
		}
		b = &bucket{tokens: float64(lim.Burst), last: now}
		a.buckets[caller] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(float64(lim.Burst), b.tokens+d.Seconds()*lim.Rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// replayCache remembers request ids for ReplayWindow, bounded per caller
// and in total. Entries expire in insertion order, so each request costs
// O(1) amortized: no scan of the table.
type replayCache struct {
	order    *list.List // of replayEntry, oldest first
	byKey    map[string]*list.Element
	byCaller map[string]int
}

type replayEntry struct {
	key, caller string
	at          time.Time
}

var (
	errReplayed  = errors.New("request id already used")
	errCacheFull = errors.New("too many request ids remembered for this caller")
)

// add records caller's id at now, or says why it cannot.
func (c *replayCache) add(caller, id string, now time.Time, lim Limits) error {
	if c.order == nil {
		c.order, c.byKey, c.byCaller = list.New(), map[string]*list.Element{}, map[string]int{}
	}
	for e := c.order.Front(); e != nil; e = c.order.Front() {
		re := e.Value.(replayEntry)
		if now.Sub(re.at) <= ReplayWindow {
			break
		}
		c.remove(e)
	}
	key := caller + "\x00" + id
	if _, dup := c.byKey[key]; dup {
		return errReplayed
	}
	if c.byCaller[caller] >= lim.ReplayPerCaller || c.order.Len() >= lim.ReplayTotal {
		return errCacheFull
	}
	c.byKey[key] = c.order.PushBack(replayEntry{key: key, caller: caller, at: now})
	c.byCaller[caller]++
	return nil
}

func (c *replayCache) remove(e *list.Element) {
	re := c.order.Remove(e).(replayEntry)
	delete(c.byKey, re.key)
	if c.byCaller[re.caller]--; c.byCaller[re.caller] <= 0 {
		delete(c.byCaller, re.caller)
	}
}

// len is the number of ids remembered.
func (c *replayCache) len() int {
	if c.order == nil {
		return 0
	}
	return c.order.Len()
}
