package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a Unix connection, as the kernel
// saw it when it connected (SO_PEERCRED).
type Peer struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	PID int32  `json:"pid"`
}

// Listener is a Unix socket whose connections carry their peer.
type Listener struct {
	*net.UnixListener
	path      string
	group     string // configured group name; "" none
	gid       int    // -1: no usable group (root only)
	groupNote string // why the group is not used, for refusals
	self      uint32
	// OnRefuse, when set, is told about every refused request (log it,
	// count it). It must not write to w.
	OnRefuse func(p Peer, r *http.Request, err error)
}

// Path is the socket's file name.
func (l *Listener) Path() string { return l.path }

// Group is the group whose members are allowed, or "" when only root is.
func (l *Listener) Group() string {
	if l.gid < 0 {
		return ""
	}
	return l.group
}

// RuntimeDir is the daemons' directory for their sockets.
const RuntimeDir = "/run/mlsgate"

// Listen creates the socket at path: a missing parent directory is made
// 0750 root:group (and so is RuntimeDir when it exists, as systemd's
// RuntimeDirectory= makes it 0755; other existing directories are left
// alone), a socket file nobody answers on is replaced (a live one is an
// error), and the new socket is 0660 root:group, or 0600 when group is ""
// or does not exist (then only root may use it).
func Listen(path, group string) (*Listener, error) {
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("socket %q: want an absolute path, e.g. /run/mlsgate/agent.sock", path)
	}
	l := &Listener{path: path, group: group, gid: -1, self: uint32(os.Geteuid())}
	if group != "" {
		g, err := user.LookupGroup(group)
		var unknown user.UnknownGroupError
		switch {
		case errors.As(err, &unknown):
			l.groupNote = fmt.Sprintf("group %s does not exist; create it to let its members in", group)
		case err != nil:
			// Fail closed: a group we cannot look up lets nobody in.
			l.groupNote = fmt.Sprintf("group %s cannot be looked up: %v", group, err)
		default:
			gid, err := strconv.Atoi(g.Gid)
			if err != nil {
				return nil, fmt.Errorf("socket %s: group %s has gid %q", path, group, g.Gid)
			}
			l.gid = gid
		}
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("socket %s: %s is not a directory", path, dir)
	} else if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("socket %s: create its directory: %w", path, err)
		}
		if err := l.own(dir, 0o750); err != nil {
			return nil, fmt.Errorf("socket %s: directory %s: %w", path, dir, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("socket %s: directory %s: %w", path, dir, err)
	} else if dir == RuntimeDir && l.self == 0 {
		if err := l.own(dir, 0o750); err != nil {
			return nil, fmt.Errorf("socket %s: directory %s: %w", path, dir, err)
		}
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if l.gid >= 0 {
		mode = 0o660
	}
	if err := l.own(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	l.UnixListener = ln
	return l, nil
}

// own gives path the group (when there is one) and mode: root:group as
// root; as another user, the group when that user is in it (otherwise the
// file keeps the user's group, and the peer check still decides).
func (l *Listener) own(path string, mode os.FileMode) error {
	if l.gid >= 0 {
		uid := 0
		if l.self != 0 {
			uid = -1
		}
		if err := os.Lchown(path, uid, l.gid); err != nil && (l.self == 0 || !errors.Is(err, os.ErrPermission)) {
			return err
		}
	}
	return os.Chmod(path, mode)
}

// removeStale removes a socket file nobody answers on; a live one is an
// error, so that two servers never fight over a path.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("socket %s: the file exists and is not a socket; remove it or choose another path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s is served by another process; stop it or choose another path", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("socket %s: remove the stale socket: %w", path, err)
	}
	return nil
}

// Conn is an accepted connection with its peer.
type Conn struct {
	net.Conn
	peer    Peer
	peerErr error
	ln      *Listener
}

// Accept returns a *Conn carrying the peer's credentials.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.UnixListener.AcceptUnix()
	if err != nil {
		return nil, err
	}
	pc := &Conn{Conn: c, ln: l}
	raw, err := c.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			var u *unix.Ucred
			u, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			if err == nil {
				pc.peer = Peer{UID: u.Uid, GID: u.Gid, PID: u.Pid}
			}
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		pc.peerErr = fmt.Errorf("read the peer's credentials: %w", err)
	}
	return pc, nil
}

// authorize applies the rule: root, the server's own user, or the group.
func (l *Listener) authorize(p Peer) error {
	if p.UID == 0 || p.UID == l.self {
		return nil
	}
	if l.gid >= 0 {
		if int(p.GID) == l.gid {
			return nil
		}
		if u, err := user.LookupId(strconv.FormatUint(uint64(p.UID), 10)); err == nil {
			if ids, err := u.GroupIds(); err == nil && slices.Contains(ids, strconv.Itoa(l.gid)) {
				return nil
			}
		}
		return fmt.Errorf("uid %d (pid %d) may not use %s: only root or members of group %s may change or read policy here (add the user with 'usermod -aG %s USER')",
			p.UID, p.PID, l.path, l.group, l.group)
	}
	note := "no group is configured"
	if l.groupNote != "" {
		note = l.groupNote
	}
	return fmt.Errorf("uid %d (pid %d) may not use %s: only root may change or read policy here (%s)", p.UID, p.PID, l.path, note)
}

type peerKey struct{}

type connState struct {
	ln   *Listener
	peer Peer
	err  error
}

// PeerFrom returns the peer of a request served through Protect.
func PeerFrom(ctx context.Context) (Peer, bool) {
	cs, ok := ctx.Value(peerKey{}).(connState)
	if !ok || cs.err != nil {
		return Peer{}, false
	}
	return cs.peer, true
}

// Protect makes srv serve only authorized peers of l: it records each
// connection's peer (after srv's own ConnContext, if any) and answers 403
// to everyone else, and to any request that did not come through l (a
// server handed another listener by mistake fails closed).
func (l *Listener) Protect(srv *http.Server) {
	prev := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prev != nil {
			ctx = prev(ctx, c)
		}
		pc, ok := c.(*Conn)
		if !ok || pc.ln != l {
			return ctx
		}
		cs := connState{ln: l, peer: pc.peer, err: pc.peerErr}
		if cs.err == nil {
			cs.err = l.authorize(pc.peer)
		}
		return context.WithValue(ctx, peerKey{}, cs)
	}
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs, ok := r.Context().Value(peerKey{}).(connState)
		if !ok || cs.ln != l {
			refuse(w, errors.New("this API is served only on its Unix socket"))
			return
		}
		if cs.err != nil {
			if l.OnRefuse != nil {
				l.OnRefuse(cs.peer, r, cs.err)
			}
			refuse(w, cs.err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func refuse(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error(), "reason": "unauthorized"})
}
