package localapi

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, l *Listener) {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := PeerFrom(r.Context())
		if !ok || p.PID != int32(os.Getpid()) {
			t.Errorf("peer %+v %v, want this process", p, ok)
		}
		io.WriteString(w, "ok")
	})}
	l.Protect(srv)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func TestListenServesOwnUserAndSetsModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "x.sock")
	l, err := Listen(path, "")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l)
	for p, want := range map[string]os.FileMode{dir: 0o750, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	resp, err := Client(path, 5*time.Second).Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("own user: %d %s", resp.StatusCode, b)
	}
	// A second server on the same live path is refused; after the first
	// closes, the path is free again.
	if _, err := Listen(path, ""); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	l.Close()
}

func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody answers
	l, err := Listen(path, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file at the socket path: %v", err)
	}
}

func TestGroupSocketMode(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Skip(err)
	}
	path := filepath.Join(t.TempDir(), "x.sock")
	l, err := Listen(path, g.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v, want 0660", fi.Mode().Perm())
	}
	if l.Group() != g.Name {
		t.Errorf("group %q, want %q", l.Group(), g.Name)
	}
	if _, err := Listen(filepath.Join(t.TempDir(), "y.sock"), "no-such-group-mlsgate-test"); err != nil {
		t.Errorf("a missing group must leave the socket to root, not fail: %v", err)
	}
}

// TestAuthorizeRule: anyone but root, the server's user and the group's
// members is refused, with the rule in the message.
func TestAuthorizeRule(t *testing.T) {
	l := &Listener{path: "/run/mlsgate/agent.sock", group: "mlsgate", gid: 4242, self: 1000}
	for _, c := range []struct {
		p  Peer
		ok bool
	}{
		{Peer{UID: 0, GID: 0}, true},
		{Peer{UID: 1000, GID: 1000}, true},
		{Peer{UID: 2000, GID: 4242}, true},
		{Peer{UID: 65534, GID: 65534, PID: 7}, false},
	} {
		err := l.authorize(c.p)
		if (err == nil) != c.ok {
			t.Errorf("%+v: %v, want allowed %v", c.p, err, c.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "root") || !strings.Contains(err.Error(), "group mlsgate") || !strings.Contains(err.Error(), "uid 65534")) {
			t.Errorf("refusal %q does not name the caller and the rule", err)
		}
	}
	l.gid, l.groupNote = -1, "group mlsgate does not exist; create it to let its members in"
	if err := l.authorize(Peer{UID: 2000, GID: 4242}); err == nil || !strings.Contains(err.Error(), "only root") || !strings.Contains(err.Error(), "group mlsgate does not exist") {
		t.Errorf("without the group: %v", err)
	}
}

// TestProtectRefusesOtherListeners: a protected server handed a TCP
// listener by mistake serves nothing.
func TestProtectRefusesOtherListeners(t *testing.T) {
	l := &Listener{path: "/nonexistent", gid: -1}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "policy") })}
	l.Protect(srv)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tl)
	defer srv.Close()
	resp, err := http.Get("http://" + tl.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || strings.Contains(string(b), "policy") {
		t.Errorf("TCP through a protected server: %d %s", resp.StatusCode, b)
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{"unix:/run/x.sock": "/run/x.sock", "/run/x.sock": "/run/x.sock"} {
		if got, err := SocketPath(in, "--agent", "/run/mlsgate/agent.sock"); err != nil || got != want {
			t.Errorf("%s: %q %v", in, got, err)
		}
	}
	for _, in := range []string{"127.0.0.1:9471", "http://127.0.0.1:9471", "unix:rel.sock", ""} {
		if _, err := SocketPath(in, "--agent", "/run/mlsgate/agent.sock"); err == nil || !strings.Contains(err.Error(), "not on TCP") {
			t.Errorf("%q: %v, want a refusal", in, err)
		}
	}
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := Notify("READY=1"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("got %q %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
}
