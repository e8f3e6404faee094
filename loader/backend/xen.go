package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// Defaults of the Xen backend.
const (
	DefaultXenConfigDir = "/var/lib/mlsgate/xen"
	// DefaultXenScript is mlsgate's vif hotplug script (deploy/xen), in
	// xl's script directory (/etc/xen/scripts).
	DefaultXenScript = "vif-mlsgate"
	DefaultXenMemory = 128 // MiB
	// maxDomid is the last domid Xen gives a guest (DOMID_FIRST_RESERVED-1).
	maxDomid = 0x7fef
)

// Xen boots paravirtualized Xen guests with the xl toolstack on a dom0.
//
// Each guest gets a point-to-point routed vif, never a bridge shared with
// other guests: the vif hotplug script (Script, deploy/xen/vif-mlsgate) puts
// the host's end of the link (BootSpec.HostAddr, the first address of the
// guest's prefix) on vif<domid>.0 and a host route to the guest's address
// through it, so every packet between two guests crosses dom0 and its
// labeled IPsec. The guest's MAC (loader.GuestMAC of BootSpec.VM) and
// address are fixed in the vif config, where the script reads them from
// xenstore.
//
// Boot writes the domain's xl config (Config) to ConfigDir/<name>.cfg and
// creates the domain paused (`xl create -p`); it learns the domid the
// toolstack chose from `xl domid <name>`, so the backend vif is
// vif<domid>.0 and Guest.VM is the domid. It then declares the vif to the
// host agent (Created), waits until the agent reports the fast path attached
// to it (Attached), and only then runs the guest (`xl unpause`): not one of
// the guest's frames crosses an unfiltered vif. The guest learns its link
// from the mlsgate.* keys on its command line (extra=) and finds its
// update-daemon credentials under GuestCredDir in a per-guest ramdisk:
// Ramdisk with CredentialFiles appended, written 0600 to
// ConfigDir/<name>.initrd and removed as soon as `xl create` has loaded it
// into the domain. Boot finally waits until the daemon answers (Ready).
// Guest.Handle is the domain name. Any failure after `xl create` destroys
// the domain.
type Xen struct {
	// XL is the path of xl; "xl" when empty.
	XL string
	// Run runs a host command and returns its combined output; nil runs it.
	// Tests replace it.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
	// ConfigDir holds the domain configs; DefaultXenConfigDir when empty.
	ConfigDir string
	// Kernel and Ramdisk are dom0 paths of the guest's kernel (an
	// uncompressed vmlinux boots fastest) and initramfs, whose init reads
	// the mlsgate.* keys (InitScript). ExtraCmdline goes before those keys,
	// e.g. "console=hvc0 quiet".
	Kernel, Ramdisk, ExtraCmdline string
	// Memory (MiB, default DefaultXenMemory) and VCPUs (default 1).
	Memory, VCPUs int
	// Script is the vif hotplug script; DefaultXenScript when empty. It
	// must make the routed link deploy/xen/vif-mlsgate makes.
	Script string
	// Created is called as soon as the new, still paused domain's id is
	// known: the loader declares vif<domid>.0 (g.Interface) to the host
	// agent there, with g's addresses and MAC. Attached then waits, bounded
	// by ctx, until the agent reports its programs attached to that vif.
	// Both are required; an error from either destroys the domain.
	Created  func(ctx context.Context, g *loader.Guest) error
	Attached func(ctx context.Context, g *loader.Guest) error
	// Ready waits until the running guest's host interface exists and its
	// update daemon answers, bounded by ctx. nil checks for g.Interface in
	// the caller's namespace, then dials g.UpdatedAddr.
	Ready func(ctx context.Context, g *loader.Guest) error
	// Progress, when set, receives a line per step with its time.
	Progress func(string)
}

var _ loader.Backend = (*Xen)(nil)

// Name is "xen".
func (x *Xen) Name() string { return "xen" }

func (x *Xen) configDir() string {
	if x.ConfigDir != "" {
		return x.ConfigDir
	}
	return DefaultXenConfigDir
}

// ConfigPath is where Boot writes the config of the domain name.
func (x *Xen) ConfigPath(name string) string {
	return filepath.Join(x.configDir(), name+".cfg")
}

// ramdiskPath is the per-guest ramdisk carrying the credentials of name.
func (x *Xen) ramdiskPath(name string) string {
	return filepath.Join(x.configDir(), name+".initrd")
}

func (x *Xen) xl(ctx context.Context, args ...string) ([]byte, error) {
	name := x.XL
	if name == "" {
		name = "xl"
	}
	if x.Run != nil {
		return x.Run(ctx, name, args...)
	}
	return runCmd(ctx, name, args...)
}

// Config is the xl domain config of spec: deterministic text, the same for
// the same spec and settings.
func (x *Xen) Config(spec loader.BootSpec) (string, error) {
	if err := Validate(spec, false); err != nil {
		return "", err
	}
	if x.Kernel == "" {
		return "", errors.New("xen backend: Xen.Kernel is empty; give the dom0 path of the guest kernel (a raw vmlinux boots fastest)")
	}
	ramdisk := x.Ramdisk
	if hasCreds(spec) {
		if x.Ramdisk == "" {
			return "", fmt.Errorf("xen backend: vm%d carries update-daemon credentials but Xen.Ramdisk is empty; they travel in the guest's initramfs, so give one (see InitScript)", spec.VM)
		}
		ramdisk = x.ramdiskPath(guestName(spec))
	}
	mem, vcpus := x.Memory, x.VCPUs
	if mem == 0 {
		mem = DefaultXenMemory
	}
	if vcpus == 0 {
		vcpus = 1
	}
	if mem < 32 || vcpus < 1 || vcpus > 128 {
		return "", fmt.Errorf("xen backend: memory %d MiB and %d vCPUs: give at least 32 MiB and 1-128 vCPUs", mem, vcpus)
	}
	if spec.VM >= 1<<24 {
		return "", fmt.Errorf("xen backend: vm%d: the guest's MAC (loader.GuestMAC) carries the low 24 bits of the VM id, so ids from %d up would share MACs with lower ones; number guests below %d", spec.VM, 1<<24, 1<<24)
	}
	script := x.Script
	if script == "" {
		script = DefaultXenScript
	}
	// The hotplug script finds the host's end of the link as the first
	// address of the guest's prefix (a gateway's usual place).
	pfx := netip.PrefixFrom(spec.Addr, spec.PrefixLen).Masked()
	if want := pfx.Addr().Next(); spec.HostAddr != want {
		return "", fmt.Errorf("xen backend: vm%d: host address %s is not the first address of the guest's prefix %s; the vif hotplug script puts %s on the guest's vif, so give HostAddr %s (or another guest prefix)",
			spec.VM, spec.HostAddr, pfx, want, want)
	}
	extra := strings.TrimSpace(x.ExtraCmdline + " " + Cmdline(spec))
	for _, v := range []struct{ field, val, forbid string }{
		{"Kernel", x.Kernel, "\"\n\\"},
		{"Ramdisk", ramdisk, "\"\n\\"},
		{"ExtraCmdline", extra, "\"\n\\"},
		{"Script", script, "\"'\n\\,= "},
	} {
		if strings.ContainsAny(v.val, v.forbid) || strings.ContainsFunc(v.val, func(r rune) bool { return r < ' ' || r > '~' }) {
			return "", fmt.Errorf("xen backend: Xen.%s %q holds one of %q, or a non-printable or non-ASCII character, which xl's config syntax cannot carry here; rename it", v.field, v.val, v.forbid)
		}
	}
	// No bridge=: the script routes the vif. ip= carries the guest's
	// address with its prefix, from which the script takes the host's.
	vif := "mac=" + loader.GuestMAC(spec.VM) + ",ip=" + netip.PrefixFrom(spec.Addr, spec.PrefixLen).String() + ",script=" + script
	name := guestName(spec)
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: written by mlsgate's loader (loader/backend.Xen) for `xl create`.\n", name)
	fmt.Fprintf(&b, "# The toolstack names the backend interface vif<domid>.0, routed by the hotplug\n")
	fmt.Fprintf(&b, "# script (no bridge); the guest's init reads its link from the mlsgate.* keys.\n")
	fmt.Fprintf(&b, "name = \"%s\"\n", name)
	fmt.Fprintf(&b, "type = \"pv\"\n")
	fmt.Fprintf(&b, "kernel = \"%s\"\n", x.Kernel)
	if ramdisk != "" {
		fmt.Fprintf(&b, "ramdisk = \"%s\"\n", ramdisk)
	}
	fmt.Fprintf(&b, "extra = \"%s\"\n", extra)
	fmt.Fprintf(&b, "memory = %d\n", mem)
	fmt.Fprintf(&b, "vcpus = %d\n", vcpus)
	fmt.Fprintf(&b, "vif = [ '%s' ]\n", vif)
	fmt.Fprintf(&b, "on_poweroff = \"destroy\"\n")
	fmt.Fprintf(&b, "on_reboot = \"destroy\"\n")
	fmt.Fprintf(&b, "on_crash = \"destroy\"\n")
	return b.String(), nil
}

// Boot creates the domain for spec as the type's documentation says. On any
// failure after `xl create`, including ctx ending (DefaultBootTimeout when
// it has no deadline), it destroys the domain; no config is left behind.
func (x *Xen) Boot(ctx context.Context, spec loader.BootSpec) (_ *loader.Guest, err error) {
	cfg, err := x.Config(spec)
	if err != nil {
		return nil, err
	}
	if x.Created == nil || x.Attached == nil {
		return nil, errors.New("xen backend: Xen.Created and Xen.Attached must both be set: a guest runs only once the agent filters its vif (loader/assemble sets them to declare the vif and wait for the agent)")
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	start := time.Now()
	name := guestName(spec)
	cfgPath := x.ConfigPath(name)
	if err := privateDir(x.configDir()); err != nil {
		return nil, fmt.Errorf("xen backend: config directory: %w (set Xen.ConfigDir to a writable directory)", err)
	}
	created := false
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		if created {
			errs = append(errs, x.destroy(name))
		}
		if rerr := os.Remove(cfgPath); rerr != nil && !os.IsNotExist(rerr) {
			errs = append(errs, rerr)
		}
		if cerr := errors.Join(errs...); cerr != nil {
			err = fmt.Errorf("%w (cleanup also failed: %v)", err, cerr)
		}
	}()
	if hasCreds(spec) {
		rd := x.ramdiskPath(name)
		if err := AppendInitramfs(rd, x.Ramdisk, CredentialFiles(spec)); err != nil {
			return nil, fmt.Errorf("xen backend: vm%d's ramdisk: %w", spec.VM, err)
		}
		// xl create copies the ramdisk into the domain; the key need not
		// stay on dom0's disk any longer.
		defer os.Remove(rd)
	}
	if err := writeFileAtomic(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("xen backend: %w", err)
	}
	// -p: the domain is built with its vif but its vCPUs do not run until
	// the agent filters that vif.
	if _, err := x.xl(ctx, "create", "-p", cfgPath); err != nil {
		// xl create tears down a domain it failed to build (a hotplug
		// script that exits non-zero included). Destroying by name here
		// could kill another guest: the usual failure is that the name is
		// taken.
		return nil, fmt.Errorf("xen backend: create %s: %w", name, err)
	}
	created = true
	progress(x.Progress, "%s: xl create -p returned at %v", name, time.Since(start))
	out, err := x.xl(ctx, "domid", name)
	if err != nil {
		return nil, fmt.Errorf("xen backend: domid of %s: %w", name, err)
	}
	domid, err := parseDomid(out)
	if err != nil {
		return nil, fmt.Errorf("xen backend: xl domid %s: %w", name, err)
	}
	g := &loader.Guest{
		VM: domid, Name: name, Backend: x.Name(), Interface: IfName(domid),
		Addr: spec.Addr, HostAddr: spec.HostAddr, MAC: loader.GuestMAC(spec.VM), UpdatedAddr: UpdatedAddr(spec),
		Handle: name, Template: spec.Template,
	}
	progress(x.Progress, "%s: domid %d, vif %s", name, domid, g.Interface)
	if err := x.Created(ctx, g); err != nil {
		return nil, fmt.Errorf("xen backend: declare %s (domid %d) to the agent: %w", g.Interface, domid, err)
	}
	if err := x.Attached(ctx, g); err != nil {
		return nil, fmt.Errorf("xen backend: %s (domid %d): the agent did not report the fast path attached to %s: %w", name, domid, g.Interface, err)
	}
	progress(x.Progress, "%s: %s attached at %v", name, g.Interface, time.Since(start))
	if _, err := x.xl(ctx, "unpause", name); err != nil {
		return nil, fmt.Errorf("xen backend: unpause %s: %w", name, err)
	}
	progress(x.Progress, "%s: unpaused at %v", name, time.Since(start))
	ready := x.Ready
	if ready == nil {
		ready = defaultReady
	}
	if err := ready(ctx, g); err != nil {
		return nil, fmt.Errorf("xen backend: %s (domid %d): %w (its console: xl console %s)", name, domid, err, name)
	}
	progress(x.Progress, "%s: daemon answers on %s at %v", name, g.UpdatedAddr, time.Since(start))
	return g, nil
}

// WaitReady is what Boot waits for when Xen.Ready is nil: g's interface
// in the caller's namespace, then its update daemon. A Ready that adds a
// step of its own calls it first.
func WaitReady(ctx context.Context, g *loader.Guest) error { return defaultReady(ctx, g) }

// defaultReady waits for g's interface in the caller's namespace, then for
// its update daemon.
func defaultReady(ctx context.Context, g *loader.Guest) error {
	never := func() error { return nil }
	if err := waitLink(ctx, g.Interface, never); err != nil {
		return err
	}
	return waitTCP(ctx, g.UpdatedAddr, never)
}

// parseDomid reads xl domid's answer: a guest's domid, 1-0x7fef.
func parseDomid(out []byte) (uint32, error) {
	s := strings.TrimSpace(string(out))
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("answer %q is not a domain id", s)
	}
	if v == 0 || v > maxDomid {
		return 0, fmt.Errorf("answer %d is not a guest's domain id (1-%d)", v, maxDomid)
	}
	return uint32(v), nil
}

// Destroy runs `xl destroy <name>` and removes the guest's config. A domain
// that no longer exists is not an error. Its command has its own bound, so a
// Destroy runs to its end even when ctx has ended.
func (x *Xen) Destroy(_ context.Context, g *loader.Guest) error {
	if g == nil || g.Handle == "" {
		return errors.New("xen backend: Destroy needs the guest Boot returned (its Handle is the domain name)")
	}
	err := x.destroy(g.Handle)
	if rerr := os.Remove(x.ConfigPath(g.Handle)); rerr != nil && !os.IsNotExist(rerr) {
		err = errors.Join(err, rerr)
	}
	return err
}

// destroy destroys the domain name, tolerating its absence.
func (x *Xen) destroy(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := x.xl(ctx, "destroy", name)
	if err != nil && !noSuchDomain(out, err) {
		return fmt.Errorf("xen backend: destroy %s: %w", name, err)
	}
	return nil
}

// noSuchDomain reports whether xl's output says the domain does not exist.
func noSuchDomain(out []byte, err error) bool {
	s := string(out)
	var ce *CmdError
	if errors.As(err, &ce) {
		s += ce.Output
	}
	return strings.Contains(s, "invalid domain identifier") || strings.Contains(s, "does not exist")
}

// Pause stops g's vCPUs (`xl pause`), for guests kept idle in the pool.
func (x *Xen) Pause(ctx context.Context, g *loader.Guest) error {
	return x.simple(ctx, "pause", g)
}

// Unpause resumes a paused guest (`xl unpause`).
func (x *Xen) Unpause(ctx context.Context, g *loader.Guest) error {
	return x.simple(ctx, "unpause", g)
}

func (x *Xen) simple(ctx context.Context, verb string, g *loader.Guest) error {
	if g == nil || g.Handle == "" {
		return fmt.Errorf("xen backend: %s needs the guest Boot returned (its Handle is the domain name)", verb)
	}
	if _, err := x.xl(ctx, verb, g.Handle); err != nil {
		return fmt.Errorf("xen backend: %s %s: %w", verb, g.Handle, err)
	}
	return nil
}
