package mapper

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"
)

// cache is a bounded LRU of answers with a time to live per entry, split
// into shards so concurrent lookups rarely wait on each other. Entries carry
// the generation of the policy that produced them: after a policy change
// they are never returned, even if a lookup that started under the old
// policy stores its answer after the flush.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard
	now    func() time.Time
}

type cacheShard struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front is most recently used
	items map[string]*list.Element
	_     [40]byte // keep shards' locks on separate cache lines
}

type cacheEntry struct {
	key     string
	gen     uint64
	expires time.Time
	ans     Answer
}

const cacheShards = 16

// newCache returns a cache holding at most size entries (0 disables it).
func newCache(size int, now func() time.Time) *cache {
	if size <= 0 {
		return nil
	}
	n := cacheShards
	if size < n {
		n = 1
	}
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, n), now: now}
	per := (size + n - 1) / n
	for i := range c.shards {
		c.shards[i] = cacheShard{max: per, ll: list.New(), items: map[string]*list.Element{}}
	}
	return c
}

func (c *cache) shard(key string) *cacheShard {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

// get returns the live entry for key made under policy generation gen.
func (c *cache) get(key string, gen uint64) (Answer, bool) {
	if c == nil {
		return Answer{}, false
	}
	s := c.shard(key)
	now := c.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return Answer{}, false
	}
	e := el.Value.(*cacheEntry)
	if e.gen != gen || !now.Before(e.expires) {
		s.ll.Remove(el)
		delete(s.items, key)
		return Answer{}, false
	}
	s.ll.MoveToFront(el)
	return e.ans, true
}

// put stores ans for ttl, evicting the least recently used entry when full.
func (c *cache) put(key string, gen uint64, ans Answer, ttl time.Duration) {
	if c == nil || ttl <= 0 {
		return
	}
	s := c.shard(key)
	exp := c.now().Add(ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[key]; ok {
		e := el.Value.(*cacheEntry)
		e.gen, e.expires, e.ans = gen, exp, ans
		s.ll.MoveToFront(el)
		return
	}
	for s.ll.Len() >= s.max {
		old := s.ll.Back()
		s.ll.Remove(old)
		delete(s.items, old.Value.(*cacheEntry).key)
	}
	s.items[key] = s.ll.PushFront(&cacheEntry{key: key, gen: gen, expires: exp, ans: ans})
}

// flush drops every entry.
func (c *cache) flush() {
	if c == nil {
		return
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.ll.Init()
		clear(s.items)
		s.mu.Unlock()
	}
}

// len returns the number of entries, live or expired.
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.ll.Len()
		s.mu.Unlock()
	}
	return n
}
