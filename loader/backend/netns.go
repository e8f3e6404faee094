package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// DefaultNetnsStateDir is where Netns keeps per-guest files when
// Netns.StateDir is empty.
const DefaultNetnsStateDir = "/run/mlsgate/netns"

// Netns boots "guests" that are network namespaces: for development and
// tests, with the same host-side interface names, addresses and update
// daemon as a real guest, and no kernel of their own.
//
// Boot creates the namespace mlsg-vm<VM> and a veth pair whose host end is
// vif<VM>.0 (in HostNS) with HostAddr/PrefixLen and HostLinkLocal and whose
// guest end is eth0 with loader.GuestMAC(VM), Addr/PrefixLen and a default
// route via HostAddr (Guest.MAC and Guest.HostLL say so); it writes the update
// daemon's credentials under StateDir/vm<VM>/creds (0700, key 0600) and
// starts `ip netns exec mlsg-vm<VM> <Binary> updated ...` as a child process
// logging to StateDir/vm<VM>/updated.log, then waits until the daemon
// accepts TCP connections from the host side. Guest.Handle is the namespace.
//
// It drives iproute2's ip rather than netlink: the daemon has to be started
// with `ip netns exec` anyway (which also gives it a matching /sys), `ip
// netns add` is the one accepted way to make a named namespace others can
// find under /run/netns, and every step failure quotes a command an operator
// can run by hand. The cost is a handful of short process starts per boot.
//
// A Netns must not be copied after first use; it is safe for concurrent use.
type Netns struct {
	// HostNS is the named network namespace the host ends (vif<VM>.0) live
	// in; "" is the caller's.
	HostNS string
	// Binary is the mlsgate binary started inside the guest namespace as
	// `mlsgate updated`; "" starts no daemon and Boot does not wait for one.
	Binary string
	// UpdatedArgs, when set, gives the daemon's arguments for spec, whose
	// credentials are in certDir (CertFile, KeyFile, CAFile). nil means
	// DaemonArgs(Addr:UpdatedPort, certDir, StateDir/vm<VM>/state).
	UpdatedArgs func(spec loader.BootSpec, certDir string) []string
	// StateDir holds a directory per guest (credentials, daemon state and
	// log); DefaultNetnsStateDir when empty.
	StateDir string
	// IP is the iproute2 command; "ip" when empty.
	IP string
	// Progress, when set, receives a line per step with its time.
	Progress func(string)

	mu      sync.Mutex
	daemons map[string]*child // by namespace
}

var _ loader.Backend = (*Netns)(nil)

// DaemonArgs is the argument list of `mlsgate updated` listening on listen
// (host:port) with its credentials in credDir and its state in stateDir.
// The daemon always checks the loader's certificate against the CA's CRL
// (credDir/CRLFile).
// Netns uses it by default; InitScript starts the in-guest daemon with the
// same flags.
//
// Every setting is a flag and --config is "": a daemon of the netns backend
// runs on the host's filesystem, and must not pick up the host's own
// /etc/mlsgate/updated.yaml (nor a guest's daemon a file in its image).
func DaemonArgs(listen, credDir, stateDir string) []string {
	return []string{"updated",
		"--config", "",
		"--listen", listen,
		"--cert", filepath.Join(credDir, CertFile),
		"--key", filepath.Join(credDir, KeyFile),
		"--ca", filepath.Join(credDir, CAFile),
		"--crl", filepath.Join(credDir, CRLFile),
		"--state-dir", stateDir,
	}
}

// daemonEnv is the environment of a guest's update daemon: the loader's,
// without any MLSGATE_ variable, so that none of the host's daemon
// settings (MLSGATE_UPDATED_LISTEN, say) reaches a guest's daemon.
func daemonEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, e := range environ {
		if !strings.HasPrefix(e, "MLSGATE_") {
			out = append(out, e)
		}
	}
	return out
}

// Name is "netns".
func (n *Netns) Name() string { return "netns" }

func (n *Netns) ipCmd() string {
	if n.IP != "" {
		return n.IP
	}
	return "ip"
}

func (n *Netns) stateDir() string {
	if n.StateDir != "" {
		return n.StateDir
	}
	return DefaultNetnsStateDir
}

// ip runs `ip [-n ns] args...`.
func (n *Netns) ip(ctx context.Context, ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	_, err := runCmd(ctx, n.ipCmd(), args...)
	return err
}

// Boot creates the guest namespace, its link and daemon, as the type's
// documentation says, and returns once the daemon answers. On any failure,
// including ctx ending (DefaultBootTimeout when ctx has no deadline), it
// removes what it made.
func (n *Netns) Boot(ctx context.Context, spec loader.BootSpec) (_ *loader.Guest, err error) {
	if err := Validate(spec, n.Binary != ""); err != nil {
		return nil, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	start := time.Now()
	ns, vif := NetnsName(spec.VM), IfName(spec.VM)
	vmDir := filepath.Join(n.stateDir(), "vm"+strconv.FormatUint(uint64(spec.VM), 10))
	if nsExists(ns) {
		return nil, fmt.Errorf("netns backend: namespace %s exists: VM %d is running or was left behind; Destroy it (or 'ip netns del %s') first", ns, spec.VM, ns)
	}

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		if cerr := errors.Join(errs...); cerr != nil {
			err = fmt.Errorf("%w (cleanup also failed: %v)", err, cerr)
		}
	}()
	if err := n.ip(ctx, "", "netns", "add", ns); err != nil {
		return nil, fmt.Errorf("netns backend: create namespace: %w", err)
	}
	undo = append(undo, func() error { return n.delNetns(ns) })
	progress(n.Progress, "vm%d: namespace %s at %v", spec.VM, ns, time.Since(start))

	mac, hostLL := n.Link(spec.VM)
	if err := n.ip(ctx, n.HostNS, "link", "add", vif, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", ns); err != nil {
		return nil, fmt.Errorf("netns backend: create veth %s: %w (an interface of that name may already exist%s)", vif, err, inNS(n.HostNS))
	}
	undo = append(undo, func() error { return n.delLink(vif) })
	hostPfx := prefixArg(spec.HostAddr, spec.PrefixLen)
	guestPfx := prefixArg(spec.Addr, spec.PrefixLen)
	steps := []struct {
		ns   string
		args []string
	}{
		{n.HostNS, append([]string{"addr", "add", hostPfx, "dev", vif}, nodad(spec)...)},
		// One IPv6 link-local address on the host's end, known in
		// advance: the fast path lets ND, MLD and DHCPv6 reach it alone.
		{n.HostNS, []string{"link", "set", vif, "addrgenmode", "none"}},
		{n.HostNS, []string{"addr", "add", prefixArg(hostLL, 64), "dev", vif, "nodad"}},
		{n.HostNS, []string{"link", "set", vif, "up"}},
		{ns, []string{"link", "set", "lo", "up"}},
		{ns, append([]string{"addr", "add", guestPfx, "dev", "eth0"}, nodad(spec)...)},
		{ns, []string{"link", "set", "eth0", "up"}},
		{ns, []string{"route", "add", "default", "via", spec.HostAddr.String(), "dev", "eth0"}},
	}
	for _, s := range steps {
		if err := n.ip(ctx, s.ns, s.args...); err != nil {
			return nil, fmt.Errorf("netns backend: configure vm%d's link: %w", spec.VM, err)
		}
	}
	progress(n.Progress, "vm%d: %s %s <-> eth0 %s at %v", spec.VM, vif, hostPfx, guestPfx, time.Since(start))

	g := &loader.Guest{
		VM: spec.VM, Name: guestName(spec), Backend: n.Name(), Interface: vif,
		Addr: spec.Addr, HostAddr: spec.HostAddr, HostLL: hostLL, MAC: mac, UpdatedAddr: UpdatedAddr(spec),
		Handle: ns, Template: spec.Template,
	}
	if n.Binary == "" {
		return g, nil
	}

	credDir, stDir := filepath.Join(vmDir, "creds"), filepath.Join(vmDir, "state")
	undo = append(undo, func() error { return os.RemoveAll(vmDir) })
	if err := writeCredDir(credDir, spec); err != nil {
		return nil, fmt.Errorf("netns backend: %w (set Netns.StateDir to a writable directory)", err)
	}
	if err := privateDir(stDir); err != nil {
		return nil, fmt.Errorf("netns backend: %w", err)
	}
	args := DaemonArgs(g.UpdatedAddr, credDir, stDir)
	if n.UpdatedArgs != nil {
		args = n.UpdatedArgs(spec, credDir)
	}
	logPath := filepath.Join(vmDir, "updated.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("netns backend: daemon log: %w", err)
	}
	cmd := exec.Command(n.ipCmd(), append([]string{"netns", "exec", ns, n.Binary}, args...)...)
	cmd.Env = daemonEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logf, logf
	ch, err := startChild(cmd)
	logf.Close() // the child has its own descriptor
	if err != nil {
		return nil, fmt.Errorf("netns backend: start %s in %s: %w", n.Binary, ns, err)
	}
	n.mu.Lock()
	if n.daemons == nil {
		n.daemons = map[string]*child{}
	}
	n.daemons[ns] = ch
	n.mu.Unlock()
	undo = append(undo, func() error { return n.stopDaemons(ns) })
	progress(n.Progress, "vm%d: daemon pid %d started at %v", spec.VM, cmd.Process.Pid, time.Since(start))

	err = inNetns(n.HostNS, func() error {
		return waitTCP(ctx, g.UpdatedAddr, func() error {
			if e := ch.exited(); e != nil {
				return fmt.Errorf("daemon %s %s: %v", n.Binary, strings.Join(args, " "), e)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("netns backend: vm%d: %w; daemon log ends:\n%s", spec.VM, err, tailFile(logPath, 2000))
	}
	progress(n.Progress, "vm%d: daemon answers on %s at %v", spec.VM, g.UpdatedAddr, time.Since(start))
	return g, nil
}

// Destroy stops every process in the guest's namespace (SIGTERM, SIGKILL
// after a bound), deletes its host-side interface and the namespace, and
// removes its files. A guest that is already gone is not an error.
func (n *Netns) Destroy(ctx context.Context, g *loader.Guest) error {
	if g == nil {
		return errors.New("netns backend: Destroy of a nil guest")
	}
	ns := g.Handle
	if ns == "" {
		ns = NetnsName(g.VM)
	}
	if ns != NetnsName(g.VM) {
		return fmt.Errorf("netns backend: guest vm%d has handle %q, not %s; it was not booted by this backend", g.VM, g.Handle, NetnsName(g.VM))
	}
	vif := IfName(g.VM)
	vmDir := filepath.Join(n.stateDir(), "vm"+strconv.FormatUint(uint64(g.VM), 10))
	return errors.Join(
		n.stopDaemons(ns),
		n.delLink(vif),
		n.delNetns(ns),
		os.RemoveAll(vmDir),
	)
}

// stopDaemons stops the daemon Boot started for ns and any other process
// living in ns.
func (n *Netns) stopDaemons(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pids []int
	n.mu.Lock()
	if ch := n.daemons[ns]; ch != nil {
		pids = append(pids, ch.cmd.Process.Pid)
		delete(n.daemons, ns)
	}
	n.mu.Unlock()
	if nsExists(ns) {
		out, err := runCmd(ctx, n.ipCmd(), "netns", "pids", ns)
		if err != nil {
			return fmt.Errorf("netns backend: list processes of %s: %w", ns, err)
		}
		for _, f := range strings.Fields(string(out)) {
			if p, err := strconv.Atoi(f); err == nil && (len(pids) == 0 || p != pids[0]) {
				pids = append(pids, p)
			}
		}
	}
	if err := stopPIDs(pids); err != nil {
		return fmt.Errorf("netns backend: stop the processes of %s: %w", ns, err)
	}
	return nil
}

// delLink deletes the host end vif; an absent one is fine. Deleting it
// explicitly (rather than letting the namespace's teardown take the veth)
// makes it disappear before Destroy returns.
func (n *Netns) delLink(vif string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.ip(ctx, n.HostNS, "link", "del", vif)
	var ce *CmdError
	if errors.As(err, &ce) && strings.Contains(ce.Output, "Cannot find device") {
		return nil
	}
	if err != nil && n.HostNS != "" && !nsExists(n.HostNS) {
		return nil // the host namespace is gone, and the link with it
	}
	return err
}

// delNetns deletes the namespace ns; an absent one is fine.
func (n *Netns) delNetns(ns string) error {
	if !nsExists(ns) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.ip(ctx, "", "netns", "del", ns)
}

// nsExists reports whether the named namespace exists under /run/netns.
func nsExists(ns string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", ns))
	return err == nil
}

// writeCredDir writes spec's credentials into dir (0700; the key 0600).
func writeCredDir(dir string, spec loader.BootSpec) error {
	if err := privateDir(dir); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{CertFile, spec.UpdatedCertPEM, 0o644},
		{KeyFile, spec.UpdatedKeyPEM, 0o600},
		{CAFile, spec.CAPEM, 0o644},
		{CRLFile, spec.CRLPEM, 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// prefixArg is addr/bits as ip writes it.
func prefixArg(a interface{ String() string }, bits int) string {
	return a.String() + "/" + strconv.Itoa(bits)
}

// Linker is a backend that knows, before it boots guest vm, the link it will
// give it: the guest's MAC and the host side's IPv6 link-local address. The
// loader declares a guest with them before its interface exists, so the fast
// path checks the source MAC of its very first frame.
type Linker interface {
	Link(vm uint32) (mac string, hostLL netip.Addr)
}

var (
	_ Linker = (*Netns)(nil)
	_ Linker = (*QEMU)(nil)
)

// Link is the link Boot gives guest vm: loader.GuestMAC(vm), HostLinkLocal.
func (n *Netns) Link(vm uint32) (string, netip.Addr) { return loader.GuestMAC(vm), HostLinkLocal }

// HostLinkLocal is the IPv6 link-local address the netns and QEMU backends
// give the host's end of every guest's link (each link is its own
// point-to-point segment, so one address serves them all, as routers'
// fe80::1 does); the kernel's own EUI-64 address is turned off there.
var HostLinkLocal = netip.MustParseAddr("fe80::1")

// nodad asks ip to skip IPv6 duplicate address detection, which would keep
// a fresh address unusable for a second or more; IPv4 needs nothing.
func nodad(spec loader.BootSpec) []string {
	if spec.Addr.Is6() {
		return []string{"nodad"}
	}
	return nil
}

// inNS is " in namespace X" for a named namespace.
func inNS(ns string) string {
	if ns == "" {
		return ""
	}
	return " in namespace " + ns
}
