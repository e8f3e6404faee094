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

// Defaults of the QEMU backend.
const (
	DefaultQEMUBinary   = "qemu-system-x86_64"
	DefaultQEMUStateDir = "/run/mlsgate/qemu"
	DefaultQEMUMemory   = 256 // MiB
	// tapTimeout bounds the wait for QEMU to create the tap; it does so
	// while it sets up the machine, long before the guest runs.
	tapTimeout = 15 * time.Second
)

// QEMU boots guests under QEMU, with KVM or TCG, as children of the calling
// process.
//
// Boot starts Binary with Kernel and an initramfs, a virtio NIC with the
// deterministic MAC on a tap QEMU creates as vif<VM>.0 (script=no), the
// guest's link on the kernel command line (Cmdline, after "console=ttyS0
// panic=-1" and ExtraAppend) and its update-daemon credentials in an
// overlay appended to Initrd (CredentialFiles, removed once the guest
// answers). QEMU writes its pid file and the serial console under
// StateDir/vm<VM>/ (qemu.pid, serial.log; its own messages to qemu.log).
// Once the tap exists, it gets HostAddr/PrefixLen and HostLinkLocal (in place
// of the kernel's own link-local address) and is set up; Guest.MAC is the
// NIC's MAC and Guest.HostLL HostLinkLocal. Boot then
// waits until the guest's update daemon answers. Initrd's init must keep the
// contract InitScript describes. Guest.Handle is the pid file.
//
// A QEMU must not be copied after first use; it is safe for concurrent use.
type QEMU struct {
	// Binary is the QEMU command; DefaultQEMUBinary when empty.
	Binary string
	// Kernel and Initrd are the guest's kernel (an uncompressed vmlinux
	// boots seconds faster under TCG) and initramfs.
	Kernel, Initrd string
	// Accel is "kvm", "tcg" or "" for kvm when /dev/kvm opens read-write,
	// tcg otherwise. A host whose /dev/kvm cannot run guests (some nested
	// setups) must say "tcg".
	Accel string
	// Memory is the guest's RAM in MiB; DefaultQEMUMemory when 0.
	Memory int
	// ExtraAppend goes on the kernel command line before the mlsgate.* keys.
	ExtraAppend string
	// StateDir holds a directory per guest; DefaultQEMUStateDir when empty.
	StateDir string
	// IP is the iproute2 command; "ip" when empty.
	IP string
	// Progress, when set, receives a line per step with its time.
	Progress func(string)

	mu    sync.Mutex
	procs map[uint32]*child
}

var _ loader.Backend = (*QEMU)(nil)

// Name is "qemu".
func (q *QEMU) Name() string { return "qemu" }

func (q *QEMU) stateDir() string {
	if q.StateDir != "" {
		return q.StateDir
	}
	return DefaultQEMUStateDir
}

func (q *QEMU) vmDir(vm uint32) string {
	return filepath.Join(q.stateDir(), "vm"+strconv.FormatUint(uint64(vm), 10))
}

func (q *QEMU) ip(ctx context.Context, args ...string) error {
	cmd := q.IP
	if cmd == "" {
		cmd = "ip"
	}
	_, err := runCmd(ctx, cmd, args...)
	return err
}

// accel resolves Accel.
func (q *QEMU) accel() (string, error) {
	switch q.Accel {
	case "kvm", "tcg":
		return q.Accel, nil
	case "":
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			return "kvm", nil
		}
		return "tcg", nil
	}
	return "", fmt.Errorf("qemu backend: QEMU.Accel %q: give \"kvm\", \"tcg\" or \"\" (auto)", q.Accel)
}

// Args is QEMU's command line for spec with the initramfs initrd, the
// accelerator accel and files under dir.
func (q *QEMU) Args(spec loader.BootSpec, accel, initrd, dir string) []string {
	mem := q.Memory
	if mem == 0 {
		mem = DefaultQEMUMemory
	}
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	appendLine := strings.Join(strings.Fields("console=ttyS0 panic=-1 "+q.ExtraAppend+" "+Cmdline(spec)), " ")
	return []string{
		"-name", guestName(spec),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", accel, "-cpu", cpu, "-smp", "1", "-m", strconv.Itoa(mem),
		"-kernel", q.Kernel, "-initrd", initrd, "-append", appendLine,
		"-netdev", "tap,id=n0,ifname=" + IfName(spec.VM) + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + MAC(spec.VM).String(),
		"-serial", "file:" + filepath.Join(dir, "serial.log"),
		"-pidfile", filepath.Join(dir, "qemu.pid"),
	}
}

// Boot starts the guest as the type's documentation says. On any failure,
// including ctx ending (DefaultBootTimeout when it has no deadline), it stops
// QEMU (which removes the tap) and removes the guest's directory; the error
// quotes the end of the serial console.
func (q *QEMU) Boot(ctx context.Context, spec loader.BootSpec) (_ *loader.Guest, err error) {
	if err := Validate(spec, false); err != nil {
		return nil, err
	}
	accel, err := q.accel()
	if err != nil {
		return nil, err
	}
	for _, f := range []struct{ field, path string }{{"Kernel", q.Kernel}, {"Initrd", q.Initrd}} {
		if f.path == "" {
			return nil, fmt.Errorf("qemu backend: QEMU.%s is empty; give the guest's %s", f.field, strings.ToLower(f.field))
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("qemu backend: QEMU.%s: %w", f.field, err)
		}
	}
	bin := q.Binary
	if bin == "" {
		bin = DefaultQEMUBinary
	}
	if bin, err = exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("qemu backend: %w (apt-get install qemu-system-x86, or 'make deps-guest')", err)
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	start := time.Now()
	vif, dir := IfName(spec.VM), q.vmDir(spec.VM)
	if linkExists(vif) {
		return nil, fmt.Errorf("qemu backend: interface %s exists: VM %d is running or was left behind; Destroy it first", vif, spec.VM)
	}
	q.mu.Lock()
	running := q.procs[spec.VM] != nil
	q.mu.Unlock()
	if running {
		return nil, fmt.Errorf("qemu backend: VM %d is running; Destroy it first", spec.VM)
	}
	if err := privateDir(dir); err != nil {
		return nil, fmt.Errorf("qemu backend: %w (set QEMU.StateDir to a writable directory)", err)
	}
	var ch *child
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		if ch != nil {
			errs = append(errs, q.stop(spec.VM, ch.cmd.Process.Pid))
		}
		errs = append(errs, os.RemoveAll(dir))
		if cerr := errors.Join(errs...); cerr != nil {
			err = fmt.Errorf("%w (cleanup also failed: %v)", err, cerr)
		}
	}()
	initrd := q.Initrd
	if hasCreds(spec) {
		initrd = filepath.Join(dir, "initrd")
		if err := AppendInitramfs(initrd, q.Initrd, CredentialFiles(spec)); err != nil {
			return nil, fmt.Errorf("qemu backend: vm%d's initramfs: %w", spec.VM, err)
		}
		// QEMU has copied it into guest memory once the guest runs.
		defer os.Remove(initrd)
	}
	logPath, serial := filepath.Join(dir, "qemu.log"), filepath.Join(dir, "serial.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu backend: %w", err)
	}
	cmd := exec.Command(bin, q.Args(spec, accel, initrd, dir)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	ch, err = startChild(cmd)
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("qemu backend: start %s: %w", bin, err)
	}
	q.mu.Lock()
	if q.procs == nil {
		q.procs = map[uint32]*child{}
	}
	q.procs[spec.VM] = ch
	q.mu.Unlock()
	progress(q.Progress, "vm%d: qemu pid %d started (%s)", spec.VM, cmd.Process.Pid, accel)
	gone := func() error {
		if e := ch.exited(); e != nil {
			return fmt.Errorf("qemu %v; its messages: %s", e, tailFile(logPath, 1000))
		}
		return nil
	}
	fail := func(err error) error {
		return fmt.Errorf("qemu backend: vm%d: %w; serial console ends:\n%s", spec.VM, err, tailFile(serial, 2000))
	}

	tctx, tcancel := context.WithTimeout(ctx, tapTimeout)
	err = waitLink(tctx, vif, gone)
	tcancel()
	if err != nil {
		return nil, fail(err)
	}
	hostPfx := prefixArg(spec.HostAddr, spec.PrefixLen)
	if err := q.ip(ctx, append([]string{"addr", "add", hostPfx, "dev", vif}, nodad(spec)...)...); err != nil {
		return nil, fail(err)
	}
	if err := q.ip(ctx, "link", "set", vif, "addrgenmode", "none"); err != nil {
		return nil, fail(err)
	}
	if err := q.ip(ctx, "addr", "add", prefixArg(HostLinkLocal, 64), "dev", vif, "nodad"); err != nil {
		return nil, fail(err)
	}
	if err := q.ip(ctx, "link", "set", vif, "up"); err != nil {
		return nil, fail(err)
	}
	progress(q.Progress, "vm%d: tap %s up with %s at %v", spec.VM, vif, hostPfx, time.Since(start))

	mac, hostLL := q.Link(spec.VM)
	g := &loader.Guest{
		VM: spec.VM, Name: guestName(spec), Backend: q.Name(), Interface: vif,
		Addr: spec.Addr, HostAddr: spec.HostAddr, HostLL: hostLL, MAC: mac, UpdatedAddr: UpdatedAddr(spec),
		Handle: filepath.Join(dir, "qemu.pid"), Template: spec.Template,
	}
	if err := waitTCP(ctx, g.UpdatedAddr, gone); err != nil {
		return nil, fail(err)
	}
	progress(q.Progress, "vm%d: daemon answers on %s at %v", spec.VM, g.UpdatedAddr, time.Since(start))
	return g, nil
}

// Link is the link Boot gives guest vm: the virtio NIC's MAC(vm) and
// HostLinkLocal on the tap.
func (q *QEMU) Link(vm uint32) (string, netip.Addr) { return MAC(vm).String(), HostLinkLocal }

// Destroy stops the guest's QEMU (SIGTERM, SIGKILL after a bound), waits
// for its tap to go and removes its directory. A guest that is already gone
// is not an error; one this process did not start is found through its pid
// file, and only a QEMU whose command line names that file is signalled.
func (q *QEMU) Destroy(_ context.Context, g *loader.Guest) error {
	if g == nil {
		return errors.New("qemu backend: Destroy of a nil guest")
	}
	dir := q.vmDir(g.VM)
	pidFile := filepath.Join(dir, "qemu.pid")
	if g.Handle != "" && g.Handle != pidFile {
		return fmt.Errorf("qemu backend: guest vm%d has handle %q, not %s; it was not booted by this backend (or with another StateDir)", g.VM, g.Handle, pidFile)
	}
	pid := 0
	q.mu.Lock()
	if ch := q.procs[g.VM]; ch != nil {
		pid = ch.cmd.Process.Pid
	}
	q.mu.Unlock()
	if pid == 0 {
		pid = qemuFromPidFile(pidFile)
	}
	err := q.stop(g.VM, pid)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), killWait)
		for linkExists(IfName(g.VM)) && ctx.Err() == nil {
			time.Sleep(pollEvery)
		}
		cancel()
		if linkExists(IfName(g.VM)) {
			err = fmt.Errorf("qemu backend: %s is still there after QEMU exited; delete it with 'ip link del %s'", IfName(g.VM), IfName(g.VM))
		}
	}
	return errors.Join(err, os.RemoveAll(dir))
}

// stop stops QEMU pid (0: none) of guest vm and forgets it.
func (q *QEMU) stop(vm uint32, pid int) error {
	q.mu.Lock()
	delete(q.procs, vm)
	q.mu.Unlock()
	if pid == 0 {
		return nil
	}
	if err := stopPIDs([]int{pid}); err != nil {
		return fmt.Errorf("qemu backend: stop vm%d: %w", vm, err)
	}
	return nil
}

// qemuFromPidFile returns the pid in pidFile when that process is alive and
// its command line names pidFile (so a recycled pid is never signalled),
// else 0.
func qemuFromPidFile(pidFile string) int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !alive(pid) {
		return 0
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), "\x00"+pidFile) {
		return 0
	}
	return pid
}
