package mapper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve starts m on a loopback TCP listener and returns its base URL.
func serve(t *testing.T, m *Mapper) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + serveOn(t, m, ln).String()
}

func serveOn(t *testing.T, m *Mapper, ln net.Listener) net.Addr {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- m.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr()
}

// blackhole accepts connections and never answers.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "http://" + ln.Addr().String()
}

// deadAddr returns a loopback address nobody listens on any more.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestIntegrationGuestHostAuthority(t *testing.T) {
	authority := newTestMapper(t, Config{ID: "authority"}, "")
	if err := authority.LoadBytes("authority.policy", []byte(`
map https://([^/]*\.)?secret\.example/.* system_u:object_r:secret_t:s9:c1 i7
map https://low\.example/.* s2/i2
map https://rogue\.example/.* s15/i15
`)); err != nil {
		t.Fatal(err)
	}
	authURL := serve(t, authority)

	host := newTestMapper(t, Config{ID: "host", ForwardTimeout: 5 * time.Second}, "")
	if err := host.LoadBytes("host.policy", []byte(fmt.Sprintf(`
forward https://.* %s s0-s12:c0.c10/i0-i9
`, authURL))); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "host.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, host, uln)

	guest := newTestMapper(t, Config{ID: "guest", ForwardTimeout: 5 * time.Second}, "")
	if err := guest.LoadBytes("guest.policy", []byte(fmt.Sprintf(`
map https://guest\.local/.* s1
forward .* unix:%s s0-s15:c0.c1023/i0-i15
default s0/i0
`, sock))); err != nil {
		t.Fatal(err)
	}

	t.Run("miss is forwarded and answered", func(t *testing.T) {
		a := lookup(t, guest, "https://www.secret.example/doc")
		if a.Source != SourceUpstream || a.Label != mustLabel(t, "s9:c1/i7") || a.Upstream != "unix:"+sock ||
			a.Rule != "authority.policy:2" || a.Context == nil || a.Context.Type != "secret_t" {
			t.Fatalf("answer: %+v", a)
		}
		if a := lookup(t, guest, "https://www.secret.example/doc"); a.Source != SourceCache || a.Origin != SourceUpstream {
			t.Fatalf("second answer: %+v", a)
		}
		if a := lookup(t, guest, "https://guest.local/x"); a.Source != SourceRule {
			t.Fatalf("local rule: %+v", a)
		}
	})

	t.Run("out-of-range answer is rejected", func(t *testing.T) {
		before := host.Stats().OutOfRange
		a := lookup(t, guest, "https://rogue.example/")
		if a.Source != SourceDefault || a.Label != mustLabel(t, "s0/i0") || a.Rule != "guest.policy:4" {
			t.Fatalf("answer: %+v", a)
		}
		if got := host.Stats().OutOfRange - before; got != 1 {
			t.Errorf("host rejected %d answers out of range, want 1", got)
		}
		if guest.Stats().UpstreamMisses == 0 {
			t.Error("guest did not count the host's default answer as a miss")
		}
	})

	t.Run("nobody knows", func(t *testing.T) {
		before := authority.Stats().Defaults
		a := lookup(t, guest, "https://nowhere.example/x")
		if a.Source != SourceDefault || a.Label != mustLabel(t, "s0/i0") {
			t.Fatalf("answer: %+v", a)
		}
		if authority.Stats().Defaults != before+1 {
			t.Error("the authority was not asked")
		}
	})

	t.Run("range check happens at every hop", func(t *testing.T) {
		// The guest accepts anything, the host only up to s12: a direct
		// answer from the authority within the host's range passes.
		a := lookup(t, guest, "https://low.example/p")
		if a.Source != SourceUpstream || a.Label != mustLabel(t, "s2/i2") {
			t.Fatalf("answer: %+v", a)
		}
	})
}

func TestIntegrationDeadUpstreams(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, c := range []struct {
		name     string
		upstream string
	}{
		{"listener closed", deadAddr(t)},
		{"never answers", blackhole(t)},
		{"unix socket missing", "unix:" + filepath.Join(t.TempDir(), "none.sock")},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newTestMapper(t, Config{ID: "guest", ForwardTimeout: timeout},
				fmt.Sprintf("forward .* %s s0-s15/i0-i15\ndefault s1/i1\n", c.upstream))
			start := time.Now()
			a := lookup(t, m, "https://a.org/")
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("lookup took %v with a %v forward timeout", took, timeout)
			}
			if a.Source != SourceDefault || a.Label != mustLabel(t, "s1/i1") {
				t.Fatalf("answer: %+v", a)
			}
			if st := m.Stats(); st.UpstreamErrors != 1 || st.Forwards != 1 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

func TestIntegrationTriesNextForwardRule(t *testing.T) {
	good := newTestMapper(t, Config{ID: "good"}, "map .* s3/i3\n")
	goodURL := serve(t, good)
	m := newTestMapper(t, Config{ID: "guest", ForwardTimeout: 300 * time.Millisecond},
		fmt.Sprintf("forward https://a\\.org/.* %s s0-s15/i0-i15\nforward .* %s s0-s15/i0-i15\n", deadAddr(t), goodURL))
	a := lookup(t, m, "https://a.org/x")
	if a.Source != SourceUpstream || a.Upstream != goodURL || a.Label != mustLabel(t, "s3/i3") {
		t.Fatalf("answer: %+v", a)
	}
}

func TestIntegrationLoop(t *testing.T) {
	a := newTestMapper(t, Config{ID: "A", ForwardTimeout: 5 * time.Second}, "")
	b := newTestMapper(t, Config{ID: "B", ForwardTimeout: 5 * time.Second}, "")
	aURL, bURL := serve(t, a), serve(t, b)
	if err := a.LoadBytes("a.policy", []byte("forward .* "+bURL+" s0-s15/i0-i15\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadBytes("b.policy", []byte("forward .* "+aURL+" s0-s15/i0-i15\n")); err != nil {
		t.Fatal(err)
	}
	ans := lookup(t, a, "https://loop.example/")
	if ans.Source != SourceDefault {
		t.Fatalf("answer: %+v", ans)
	}
	if got := a.Stats().Loops; got != 1 {
		t.Errorf("A refused %d looping requests, want 1", got)
	}
	if got := b.Stats().UpstreamErrors; got != 1 {
		t.Errorf("B saw %d upstream errors, want 1 (A's loop refusal)", got)
	}

	// The refusal itself, as another mapper sees it.
	_, err := NewClient().Resolve(context.Background(), aURL, Request{URL: "https://x.example/", Hops: 2, Via: []string{"A", "B"}})
	var ue *UpstreamError
	if !errors.As(err, &ue) || ue.Status != 508 || !strings.Contains(ue.Message, "already passed through A") {
		t.Fatalf("loop refusal: %v", err)
	}
}

func TestIntegrationHopLimit(t *testing.T) {
	// A chain m0 → m1 → ... → m4 with a hop limit of 3: m3 may not forward
	// and m4, the only one that knows, is never asked.
	const n = 5
	ms := make([]*Mapper, n)
	urls := make([]string, n)
	for i := n - 1; i >= 0; i-- {
		ms[i] = newTestMapper(t, Config{ID: fmt.Sprintf("m%d", i), HopLimit: 3, ForwardTimeout: 5 * time.Second}, "")
		policy := "map .* s5\n"
		if i < n-1 {
			policy = "forward .* " + urls[i+1] + " s0-s15/i0-i15\n"
		}
		if err := ms[i].LoadBytes("p", []byte(policy)); err != nil {
			t.Fatal(err)
		}
		urls[i] = serve(t, ms[i])
	}
	if a := lookup(t, ms[0], "https://far.example/"); a.Source != SourceDefault {
		t.Fatalf("answer over 4 hops with a limit of 3: %+v", a)
	}
	if got := ms[4].Stats().Lookups; got != 0 {
		t.Errorf("the last mapper was asked %d times", got)
	}
	if a := lookup(t, ms[2], "https://far2.example/"); a.Source != SourceUpstream {
		t.Fatalf("answer over 2 hops: %+v", a)
	}
}
