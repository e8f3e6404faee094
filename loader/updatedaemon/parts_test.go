package updatedaemon

import (
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

func partNames(ps []Part) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

// TestPushReportsItsParts: a push says where its time went on both ends,
// and a push on a kept-alive connection pays no connect or handshake.
func TestPushReportsItsParts(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	rep, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000))
	if err != nil {
		t.Fatal(err)
	}
	wantDaemon := []string{"receive", "decode", "validation", "SELinux modules", "mapper policy", "XFRM apply", "state write"}
	if got := partNames(rep.Parts); !slices.Equal(got, wantDaemon) {
		t.Errorf("daemon parts %v, want %v", got, wantDaemon)
	}
	wantWire := []string{"connect", "TLS handshake", "send", "daemon", "answer"}
	if got := partNames(rep.Wire); !slices.Equal(got, wantWire) {
		t.Fatalf("client parts %v, want %v", got, wantWire)
	}
	if rep.Wire[1].Duration <= 0 {
		t.Errorf("the first push on a new connection shows no TLS handshake: %+v", rep.Wire)
	}
	// No comparison of the daemon's clock with the client's: the two
	// measure overlapping spans, and tests assert on no wall-clock time.
	for _, d := range rep.Parts {
		if d.Duration < 0 {
			t.Errorf("part %s took %v", d.Name, d.Duration)
		}
	}

	rep2, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 2, 0x4000))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep2.Wire) != 5 || rep2.Wire[1].Duration != 0 {
		t.Errorf("a push on the kept-alive connection: %+v, want no handshake", rep2.Wire)
	}
}

// TestConnectKeepsTheHandshakeOffThePush: a connection opened ahead (as
// the loader does at a guest's boot) carries the first push, which then
// pays no handshake; and when the daemon has closed it, the push goes out
// on a new one.
func TestConnectKeepsTheHandshakeOffThePush(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	if err := h.client.Connect(ctxT(t), h.addr); err != nil {
		t.Fatal(err)
	}
	rep, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Wire) != 5 || rep.Wire[1].Duration != 0 {
		t.Errorf("the first push after Connect: %+v, want no TLS handshake", rep.Wire)
	}
	// The daemon closes its idle connections (as at its idle timeout).
	h.d.server().SetKeepAlivesEnabled(false)
	rep, err = h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 2, 0x4000))
	if err != nil {
		t.Fatalf("push after the daemon closed the kept connection: %v", err)
	}
	if rep.Version != 2 || rep.AlreadyApplied {
		t.Errorf("report %+v, want v2 applied", rep)
	}
}

// TestPushWaitsForTheConnectInProgress: a push that starts while Connect
// is opening the connection uses that connection, not a second handshake.
// A proxy holds Connect's connection until the push is waiting for it, so
// the two overlap on every run.
func TestPushWaitsForTheConnectInProgress(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	if err := h.client.init(); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	proxy := holdingProxy(t, h.addr, gate)
	waiting := make(chan struct{})
	var once sync.Once
	h.client.onAwait = func(string) { once.Do(func() { close(waiting) }) }
	connected := make(chan error, 1)
	go func() { connected <- h.client.Connect(ctxT(t), proxy) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.client.warmMu.Lock()
		_, warming := h.client.warming[proxy]
		h.client.warmMu.Unlock()
		if warming {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Connect never started (10 s)")
		}
		runtime.Gosched()
	}
	type pushed struct {
		rep *Report
		err error
	}
	push := make(chan pushed, 1)
	go func() {
		rep, err := h.client.Push(ctxT(t), proxy, analystBundle(t, p, 1, 0x4000))
		push <- pushed{rep, err}
	}()
	select {
	case <-waiting:
	case r := <-push:
		t.Fatalf("the push went ahead while Connect was held: %+v %v", r.rep, r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("the push never waited for the Connect in progress (10 s)")
	}
	close(gate)
	if err := <-connected; err != nil {
		t.Fatal(err)
	}
	r := <-push
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.rep.Wire) != 5 || r.rep.Wire[1].Duration != 0 {
		t.Errorf("a push during Connect: %+v, want it on Connect's connection (no handshake of its own)", r.rep.Wire)
	}
	if n := h.client.dials.Load(); n != 1 {
		t.Errorf("%d connections opened for a Connect and a push at the same time, want 1", n)
	}
}

// holdingProxy forwards connections on a loopback port to addr, each only
// once gate is closed, and returns its address.
func holdingProxy(t *testing.T, addr string, gate <-chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				<-gate
				d, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer d.Close()
				go io.Copy(d, c)
				io.Copy(c, d)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestAnswerBeforeOnPush: the loader has the push's report before OnPush
// (the daemon's log line) runs, so a slow log is not on the push's path.
func TestAnswerBeforeOnPush(t *testing.T) {
	p := newPKI(t)
	answered := make(chan struct{})
	done := make(chan bool, 1)
	h := startDaemon(t, p, daemonOpts{onPush: func(string, *Report, error) {
		select {
		case <-answered:
			done <- true
		case <-time.After(5 * time.Second): // bounds the old order's wait
			done <- false
		}
	}})
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000)); err != nil {
		t.Fatal(err)
	}
	close(answered)
	if !<-done {
		t.Error("OnPush ran before the loader had the answer (the push waited for it)")
	}
}
