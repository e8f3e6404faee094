package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/mlsgate/mlsgate/label"
)

// TestAgentListenerFailureExits: the agent binds its listeners before it
// touches the pins, and a bind failure ends the command at once with an
// error naming the address and the configuration key. (It once ran
// "ready" with no API and no metrics, and said so only at exit.)
func TestAgentListenerFailureExits(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, listen, socket string
		want                 []string
	}{
		{"port taken", taken.Addr().String(), "", []string{taken.Addr().String(), "listen"}},
		{"garbage", "garbage", "", []string{"garbage", "listen"}},
		{"socket dir unwritable", "", filepath.Join(file, "agent.sock"), []string{filepath.Join(file, "agent.sock"), "socket"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pins := filepath.Join(dir, c.name, "pins")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := runContext(ctx, []string{"agent", "--config", "", "--state-dir", filepath.Join(dir, c.name, "state"), "--pin-dir", pins,
				"--listen", c.listen, "--socket", c.socket}, &strings.Builder{}, &strings.Builder{})
			if ctx.Err() != nil {
				t.Fatalf("the agent kept running with a listener that failed")
			}
			if err == nil {
				t.Fatal("the agent exited without an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if _, serr := os.Stat(pins); !os.IsNotExist(serr) {
				t.Errorf("the pin dir %s was touched before the listeners were bound (%v)", pins, serr)
			}
		})
	}
}

// fakeAgentSocket serves a canned /v1/status on a Unix socket, with the
// agent's enforce setting.
func fakeAgentSocket(t *testing.T, st agent.Status, enforce bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	var m map[string]any
	b, _ := json.Marshal(st)
	json.Unmarshal(b, &m)
	m["enforce"] = enforce
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { json.NewEncoder(w).Encode(m) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestStatusShowsMode: 'mlsgate status' shows for every guest whether its
// denials are dropped (enforce) or only counted (audit), and whether plain
// traffic is let through, so a guest switched to audit cannot hide.
func TestStatusShowsMode(t *testing.T) {
	r, _ := label.ParseBounds("s0-s15/i0-i10")
	st := agent.Status{Ready: true, Guests: []agent.GuestStatus{
		{GuestSpec: agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r}, Present: true, Attached: true, Mode: "attached"},
		{GuestSpec: agent.GuestSpec{Interface: "vif2.0", VM: 2, App: 1, Range: r, Audit: true, AllowUnlabeled: true}, Present: true, Attached: true, Mode: "attached"},
	}}
	sock := fakeAgentSocket(t, st, true)
	var out strings.Builder
	if err := run([]string{"status", "--agent", "unix:" + sock}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	var header, vif7, vif2 string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "INTERFACE"):
			header = l
		case strings.HasPrefix(l, "vif7.0"):
			vif7 = l
		case strings.HasPrefix(l, "vif2.0"):
			vif2 = l
		}
	}
	if !strings.Contains(header, "MODE") || !strings.Contains(header, "UNLABELED") {
		t.Errorf("header %q lacks MODE and UNLABELED:\n%s", header, out.String())
	}
	if !strings.Contains(vif7, "enforce") || strings.Contains(vif7, "audit") {
		t.Errorf("vif7.0 line %q: want mode enforce", vif7)
	}
	if !strings.Contains(vif2, "audit") || !strings.Contains(vif2, "allowed") {
		t.Errorf("vif2.0 line %q: want mode audit and unlabeled allowed", vif2)
	}
	if !strings.Contains(out.String(), "enforce: on") {
		t.Errorf("status does not say whether the agent enforces:\n%s", out.String())
	}
	// Off: every guest is in audit mode, whatever its flag.
	sock = fakeAgentSocket(t, st, false)
	out.Reset()
	if err := run([]string{"status", "--agent", "unix:" + sock}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "enforce: off") || strings.Count(out.String(), "audit") < 2 {
		t.Errorf("enforce off: want every guest in audit mode:\n%s", out.String())
	}
}

// TestAdminCommandsRefuseTCP: the agent has no admin API on TCP any more;
// pointing an admin command there is an error that says so, not a
// connection attempt.
func TestAdminCommandsRefuseTCP(t *testing.T) {
	for _, args := range [][]string{
		{"status", "--agent", "127.0.0.1:9471"},
		{"guest", "rm", "vif7.0", "--agent", "127.0.0.1:9471"},
		{"events", "--agent", "127.0.0.1:9471"},
	} {
		err := run(args, &strings.Builder{})
		if err == nil || !strings.Contains(err.Error(), "unix:") || !strings.Contains(err.Error(), "TCP") {
			t.Errorf("%v: %v; want an error saying the admin API is on the Unix socket only", args, err)
		}
	}
}

// TestEventsFilterAndCompact: 'mlsgate events' passes its filters to the
// agent, keeps only matching events (even from an agent that ignores the
// query) and prints protocol, ports and label in one line.
func TestEventsFilterAndCompact(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	queries := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.RawQuery
		enc := json.NewEncoder(w)
		for _, e := range []agent.Event{
			{Interface: "vif2.0", VM: 2, Reason: "deny_spoofed", Protocol: "udp"},
			{Interface: "vif7.0", VM: 7, Reason: "deny_label_range", Protocol: "tcp", Label: "s10/i8", SPI: 0xc0000001,
				Src: netip.MustParseAddr("10.70.0.7"), Sport: 40000, Dst: netip.MustParseAddr("10.80.0.3"), Dport: 443},
		} {
			enc.Encode(e)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	var out strings.Builder
	err = run([]string{"events", "--agent", "unix:" + sock, "--interface", "vif7.0", "--vm", "7"}, &out)
	if err == nil || !strings.Contains(err.Error(), "ended the event stream") {
		t.Errorf("end of stream: %v", err)
	}
	if q := <-queries; q != "interface=vif7.0&vm=7" {
		t.Errorf("query %q", q)
	}
	got := out.String()
	if strings.Contains(got, "vif2.0") || strings.Count(got, "\n") != 1 {
		t.Errorf("filter let through %q", got)
	}
	for _, w := range []string{"vif7.0", "vm7", "deny_label_range", "tcp", "10.70.0.7:40000 -> 10.80.0.3:443", "spi 0xc0000001", "label s10/i8"} {
		if !strings.Contains(got, w) {
			t.Errorf("compact line %q lacks %q", got, w)
		}
	}
}

// startDaemon runs a server subcommand in process until the test ends and
// waits (bounded) for its socket.
func startDaemon(t *testing.T, sock string, args ...string) *strings.Builder {
	t.Helper()
	args = append(args, "--config", "") // not the host's /etc/mlsgate
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var log syncBuilder
	go func() { done <- runContext(ctx, args, &strings.Builder{}, &log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%v: %v", args, err)
		}
	})
	for range 400 {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return &log.b
		}
		select {
		case err := <-done:
			t.Fatalf("%v exited: %v\n%s", args, err, log.String())
		case <-time.After(25 * time.Millisecond):
		}
	}
	t.Fatalf("%v: %s does not answer", args, sock)
	return nil
}

type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStoreAndMapperAdminOnSocket: the store's and the mapper's admin
// commands reach their sockets, and each change is logged and counted.
func TestStoreAndMapperAdminOnSocket(t *testing.T) {
	dir := t.TempDir()
	ssock, msock := filepath.Join(dir, "store.sock"), filepath.Join(dir, "mapper.sock")
	slog := startDaemon(t, ssock, "store", "serve", "--apps", "../../examples/analyst", "--db", filepath.Join(dir, "ps.db"), "--listen", "", "--socket", ssock)
	policy := filepath.Join(dir, "mapper.policy")
	if err := os.WriteFile(policy, []byte("map ^https?://ws1\\.example/ s3/i1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, msock, "mapper", "serve", "--policy", policy, "--listen", "", "--socket", msock)
	for _, args := range [][]string{
		{"store", "reload", "--socket", ssock},
		{"store", "uncache", "--all", "--socket", "unix:" + ssock},
		{"store", "uncache", "analyst", "--socket", ssock},
		{"mapper", "reload", "--socket", msock},
		{"mapper", "flush", "--socket", msock},
		{"mapper", "stats", "--socket", msock},
		{"mapper", "lookup", "--server", "unix:" + msock, "http://ws1.example/x"},
	} {
		var out strings.Builder
		if err := run(args, &out); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	if err := run([]string{"store", "reload", "--socket", "127.0.0.1:7441"}, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "not on TCP") {
		t.Errorf("store reload on TCP: %v", err)
	}
	var metrics string
	if err := adminCallRaw(ssock, "/metrics", &metrics); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`mlsgate_api_changes_total{change="reload",result="applied"} 1`, `mlsgate_api_changes_total{change="cache_drop_all",result="applied"} 1`,
		`mlsgate_api_changes_total{change="cache_drop",result="applied"} 1`} {
		if !strings.Contains(metrics, w) {
			t.Errorf("store /metrics lacks %s:\n%s", w, metrics)
		}
	}
	if err := adminCallRaw(msock, "/metrics", &metrics); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`mlsgate_api_changes_total{change="reload",result="applied"} 1`, `mlsgate_api_changes_total{change="cache_flush",result="applied"} 1`} {
		if !strings.Contains(metrics, w) {
			t.Errorf("mapper /metrics lacks %s:\n%s", w, metrics)
		}
	}
	if l := slog.String(); !strings.Contains(l, "policy change") || !strings.Contains(l, "uid=") || !strings.Contains(l, "change=cache_drop_all") {
		t.Errorf("store log lacks the changes with the caller:\n%s", l)
	}
}

func adminCallRaw(sock, path string, out *string) error {
	resp, err := localapi.Client(sock, 5*time.Second).Get("http://local" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	*out = string(b)
	return err
}

// TestDaemonsNotifyReady: the store and the mapper tell systemd READY=1
// once they serve (Type=notify orders what starts after them).
func TestDaemonsNotifyReady(t *testing.T) {
	dir := t.TempDir()
	notify := filepath.Join(dir, "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	t.Setenv("NOTIFY_SOCKET", notify)
	for _, args := range [][]string{
		{"store", "serve", "--apps", "../../examples/analyst", "--db", filepath.Join(dir, "ps.db"), "--listen", "", "--socket", filepath.Join(dir, "store.sock")},
		{"mapper", "serve", "--listen", "", "--socket", filepath.Join(dir, "mapper.sock")},
	} {
		startDaemon(t, args[len(args)-1], args...)
		nl.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 256)
		n, err := nl.Read(buf)
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Errorf("%s %s: %q %v, want READY=1", args[0], args[1], buf[:n], err)
		}
	}
}
