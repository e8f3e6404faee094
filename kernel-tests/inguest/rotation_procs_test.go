package inguest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/selinux"
)

// The rotation test's loader and update daemon as processes of their own,
// so that kill -9 kills them as it would in production: this test binary
// started again (TestMain) in the host's or the guest's namespace.
//
//	updated: the real daemon (updatedaemon.Daemon behind its TLS listener on the
//	         guest's address), restoring its recorded state at start.
//	loader:  a loader.Rotator over the real pieces: the agent's socket, the
//	         host namespace's XFRM, pushes over TLS to the daemon through
//	         vif7.0 (the fast path's API-port control rule). It first
//	         finishes or rolls back a journalled rotation (Recover), then
//	         rotates LOADER_ROTATIONS times. With LOADER_PAUSE=1 it stops
//	         after each step, says "step NAME" and waits for a line on
//	         stdin: the test kills it, or another process, right there.
//
// The bundle in force lives in LOADER_DIR/inforce.json (written before the
// journal of a finished rotation is removed, as the loader's own record
// is), bundle versions in LOADER_DIR/version.

const (
	rtUpdatedPort = updatedaemon.DefaultPort
	envUpdated    = "MLSGATE_INGUEST_UPDATED"
	envLoader     = "MLSGATE_INGUEST_LOADER"
)

// rtPKI is where the test writes the CA and the daemon's and the loader's
// certificates for the processes.
type rtPKI struct{ dir string }

func writePKI(t *testing.T) rtPKI {
	t.Helper()
	c, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g, err := c.Issue(ca.Request{Kind: ca.Guest, CommonName: "vm7", IPs: []net.IP{net.ParseIP(rtGuest)}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Issue(ca.Request{Kind: ca.Client, CommonName: updatedaemon.DefaultLoaderName, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := rtPKI{dir: t.TempDir()}
	for name, b := range map[string][]byte{"ca.pem": c.CertPEM(), "guest.pem": g.CertPEM, "guest.key": g.KeyPEM, "loader.pem": l.CertPEM, "loader.key": l.KeyPEM} {
		if err := os.WriteFile(filepath.Join(p.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// proc is a helper process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    *syncBuf
	lines  chan string // stdout, line by line (loader)
	stdin  io.WriteCloser
	exited chan struct{}
}

func startProc(t *testing.T, name, ns string, env []string, withIO bool) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, log: &syncBuf{}, exited: make(chan struct{}), lines: make(chan string, 1024)}
	p.cmd = exec.Command(ipPath, "netns", "exec", ns, exe) // ip execs it: the pid is the process's
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.log
	var out io.ReadCloser
	if withIO {
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if out, err = p.cmd.StdoutPipe(); err != nil {
			t.Fatal(err)
		}
	} else {
		p.cmd.Stdout = p.log
		close(p.lines)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outDone := make(chan struct{})
	if out != nil {
		go func() {
			defer close(outDone)
			defer close(p.lines)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<16), 1<<20)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
		}()
	} else {
		close(outDone)
	}
	go func() {
		<-outDone // Wait closes stdout: read it to the end first
		p.cmd.Wait()
		close(p.exited)
	}()
	return p
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// startDaemonProc starts the update daemon in the guest's namespace and
// waits until it answers TCP on its port.
func startDaemonProc(t *testing.T, pki rtPKI, stateDir string) *proc {
	t.Helper()
	p := startProc(t, "updated", "rg", []string{envUpdated + "=1", "UPD_PKI=" + pki.dir, "UPD_STATE=" + stateDir}, false)
	t.Cleanup(func() {
		p.kill9()
		if t.Failed() {
			t.Logf("update daemon log:\n%s", p.log)
		}
	})
	for range 600 {
		select {
		case <-p.exited:
			t.Fatalf("update daemon exited:\n%s", p.log)
		default:
		}
		if strings.Contains(p.log.String(), "serving") {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("update daemon not serving after 12 s:\n%s", p.log)
	return nil
}

// runUpdatedProc is the update daemon process.
func runUpdatedProc() int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "updated: %s: %v\n", what, err)
		return 1
	}
	dir := os.Getenv("UPD_PKI")
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return fail("CA", err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "guest.pem"), filepath.Join(dir, "guest.key"))
	if err != nil {
		return fail("certificate", err)
	}
	v, err := updatedaemon.NewVerifier(updatedaemon.VerifierConfig{CAPEM: caPEM})
	if err != nil {
		return fail("verifier", err)
	}
	tc, err := updatedaemon.ServerTLS(cert, v)
	if err != nil {
		return fail("TLS", err)
	}
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		return fail("mapper", err)
	}
	h, err := xfrm.NewHandle()
	if err != nil {
		return fail("XFRM", err)
	}
	work, err := os.MkdirTemp("", "updated-work")
	if err != nil {
		return fail("work directory", err)
	}
	d, err := updatedaemon.New(updatedaemon.Config{TLS: tc, Identity: updatedaemon.Identity{Name: "vm7", Addrs: []netip.Addr{addr(rtGuest)}}, StateDir: os.Getenv("UPD_STATE"),
		Applier: &updatedaemon.SystemApplier{Mapper: m, XFRM: h, SELinux: selinux.SELinux{}, WorkDir: work}})
	if err != nil {
		return fail("start", err)
	}
	if _, err := d.Restore(context.Background()); err != nil {
		return fail("restore", err)
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort(rtGuest, strconv.Itoa(rtUpdatedPort)))
	if err != nil {
		return fail("listen", err)
	}
	fmt.Fprintln(os.Stderr, "updated: serving")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); d.Shutdown(context.Background()) }()
	if err := d.Serve(ln); err != nil {
		return fail("serve", err)
	}
	return 0
}

// loaderOut is one line a loader process reports.
type loaderOut struct {
	Kind    string                  `json:"kind"` // recover, rotate
	Results []loader.RotationResult `json:"results,omitempty"`
	Error   string                  `json:"error,omitempty"`
}

// loaderRun is what a loader process is asked to do.
type loaderRun struct {
	rotations int
	pause     bool
	spiBase   uint32
	grace     time.Duration
	// softPackets is the soft packet limit of the host's successors.
	softPackets uint64
}

func (w *rtWorld) loaderEnv(r loaderRun) []string {
	return []string{envLoader + "=1", "LOADER_DIR=" + w.loaderDir, "LOADER_PKI=" + w.pki.dir, "LOADER_AGENT=" + w.agentSock,
		"LOADER_ROTATIONS=" + strconv.Itoa(r.rotations), "LOADER_PAUSE=" + map[bool]string{true: "1"}[r.pause],
		"LOADER_SPI_BASE=" + strconv.FormatUint(uint64(r.spiBase), 10), "LOADER_GRACE=" + r.grace.String(),
		"LOADER_SOFT_PACKETS=" + strconv.FormatUint(r.softPackets, 10)}
}

// startLoaderProc starts a loader process in the host's namespace.
func (w *rtWorld) startLoaderProc(t *testing.T, r loaderRun) *proc {
	t.Helper()
	p := startProc(t, "loader", "rh", w.loaderEnv(r), true)
	t.Cleanup(func() {
		p.kill9()
		if t.Failed() {
			t.Logf("loader log:\n%s", p.log)
		}
	})
	return p
}

// next is the loader's next line, or "" when it exited.
func (p *proc) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			return ""
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("%s: nothing said in %v:\n%s", p.name, timeout, p.log)
		return ""
	}
}

func (w *rtWorld) readInForce(t *testing.T) *policystore.Bundle {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.loaderDir, "inforce.json"))
	if err != nil {
		t.Fatal(err)
	}
	var nb policystore.Bundle
	if err := json.Unmarshal(b, &nb); err != nil {
		t.Fatal(err)
	}
	return &nb
}

func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		f.Sync()
		f.Close()
	}
	return os.Rename(tmp, path)
}

// rotationGuest is the guest the loader rotates.
func rotationGuest() *loader.Guest {
	return &loader.Guest{Name: "vm7", VM: 7, Interface: "vif7.0", Addr: addr(rtGuest), HostAddr: addr(rtHost)}
}

// runLoaderProc is the loader process.
func runLoaderProc() int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "loader: %s: %v\n", what, err)
		return 1
	}
	dir, pki := os.Getenv("LOADER_DIR"), os.Getenv("LOADER_PKI")
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.pem"))
	if err != nil {
		return fail("CA", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "loader.pem"), filepath.Join(pki, "loader.key"))
	if err != nil {
		return fail("certificate", err)
	}
	client := &updatedaemon.Client{TLS: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, Timeout: 30 * time.Second}
	daemonAddr := net.JoinHostPort(rtGuest, strconv.Itoa(rtUpdatedPort))
	hh, err := xfrm.NewHandle()
	if err != nil {
		return fail("host XFRM", err)
	}
	gns, err := netns.GetFromName("rg")
	if err != nil {
		return fail("guest namespace", err)
	}
	gh, err := xfrm.NewHandleAt(gns)
	if err != nil {
		return fail("guest XFRM (for the checks)", err)
	}
	spi64, _ := strconv.ParseUint(os.Getenv("LOADER_SPI_BASE"), 10, 32)
	nextSPI := uint32(spi64)
	grace, _ := time.ParseDuration(os.Getenv("LOADER_GRACE"))
	n, _ := strconv.Atoi(os.Getenv("LOADER_ROTATIONS"))
	soft, _ := strconv.ParseUint(os.Getenv("LOADER_SOFT_PACKETS"), 10, 64)
	in := bufio.NewReader(os.Stdin)
	say := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintln(os.Stdout, string(b))
	}
	g := rotationGuest()
	r := &loader.Rotator{
		Agent: loader.NewAgentClient("unix:" + os.Getenv("LOADER_AGENT")), XFRM: hh, StateDir: filepath.Join(dir, "rotation"), Grace: grace,
		Push: func(ctx context.Context, _ *loader.Guest, b *policystore.Bundle) error {
			_, err := client.Push(ctx, daemonAddr, b)
			return err
		},
		SPI: func() (uint32, error) { nextSPI++; return nextSPI, nil },
		NextVersion: func(string) (uint64, error) {
			var v uint64
			if b, err := os.ReadFile(filepath.Join(dir, "version")); err == nil {
				v, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			}
			v++
			return v, writeJSONFile(filepath.Join(dir, "version"), v)
		},
		// The bundle in force is recorded before a finished rotation's
		// journal goes: a loader killed in between still knows it.
		Commit: func(_ *loader.Guest, b *policystore.Bundle) error {
			return writeJSONFile(filepath.Join(dir, "inforce.json"), b)
		},
		Lifetime: xfrm.Lifetime{SoftPackets: soft},
	}
	if os.Getenv("LOADER_PAUSE") == "1" {
		r.Inject = func(step string) error {
			fmt.Fprintln(os.Stdout, "step "+step)
			if _, err := in.ReadString('\n'); err != nil {
				return fmt.Errorf("paused after %s: %w", step, err)
			}
			return nil
		}
	}
	ctx := context.Background()
	got, res, err := r.Recover(ctx)
	out := loaderOut{Kind: "recover", Results: res}
	if err != nil {
		out.Error = err.Error()
	}
	say(out)
	if err != nil {
		return 2
	}
	_ = got // Commit recorded the outcome
	for range n {
		b, err := os.ReadFile(filepath.Join(dir, "inforce.json"))
		if err != nil {
			return fail("read the bundle in force", err)
		}
		var cur policystore.Bundle
		if err := json.Unmarshal(b, &cur); err != nil {
			return fail("read the bundle in force", err)
		}
		nb, res, err := r.Rotate(ctx, g, &cur, "test")
		out := loaderOut{Kind: "rotate", Results: []loader.RotationResult{res}}
		if err != nil {
			out.Error = err.Error()
			say(out)
			return 2
		}
		// Both ends hold exactly the new set.
		want := bundleSPIs(nb)
		for _, h := range []*xfrm.Handle{hh, gh} {
			got, err := tunnelSPIs(h)
			if err != nil {
				return fail("dump", err)
			}
			if !slices.Equal(got, want) {
				out.Error = fmt.Sprintf("after the rotation an end holds SPIs %x, want %x", got, want)
				say(out)
				return 3
			}
		}
		say(out)
	}
	return 0
}

// tunnelSPIs lists the SPIs of the ESP states between the guest and the
// host (not those toward the server).
func tunnelSPIs(h *xfrm.Handle) ([]uint32, error) {
	st, err := h.States()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, s := range st {
		if s.Proto == xfrm.ProtoESP && ((s.Src == addr(rtHost) && s.Dst == addr(rtGuest)) || (s.Src == addr(rtGuest) && s.Dst == addr(rtHost))) {
			out = append(out, s.SPI)
		}
	}
	slices.Sort(out)
	return out, nil
}
