package loader

import (
	"context"
	"sync"
)

// Memo runs one computation per key at a time and remembers the results
// worth keeping. A caller that finds its key being computed waits for that
// run (or for its own ctx) and takes the result if it was kept; if it was
// not (failed, cut short), the caller runs its own. The zero Memo is ready.
type Memo[K comparable, V any] struct {
	mu   sync.Mutex
	done map[K]V
	busy map[K]chan struct{} // closed when the run ends
}

// Do returns the kept result of k, or runs run for it; run says whether
// its result is kept. The error is ctx's, when it ended the wait.
func (m *Memo[K, V]) Do(ctx context.Context, k K, run func() (V, bool)) (V, error) {
	m.mu.Lock()
	if m.done == nil {
		m.done, m.busy = map[K]V{}, map[K]chan struct{}{}
	}
	for {
		if v, ok := m.done[k]; ok {
			m.mu.Unlock()
			return v, nil
		}
		ch, ok := m.busy[k]
		if !ok {
			break
		}
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err()
		}
		m.mu.Lock()
	}
	ch := make(chan struct{})
	m.busy[k] = ch
	m.mu.Unlock()
	var v V
	keep := false
	defer func() {
		m.mu.Lock()
		if keep {
			m.done[k] = v
		}
		delete(m.busy, k)
		m.mu.Unlock()
		close(ch)
	}()
	v, keep = run()
	return v, nil
}

// Len is how many results are kept.
func (m *Memo[K, V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.done)
}

// Kept is a copy of the kept results.
func (m *Memo[K, V]) Kept() map[K]V {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[K]V, len(m.done))
	for k, v := range m.done {
		out[k] = v
	}
	return out
}
