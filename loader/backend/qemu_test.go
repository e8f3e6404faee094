package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/image"
	"github.com/vishvananda/netns"
)

func TestQEMUArgs(t *testing.T) {
	sp := analystSpec(t)
	q := &QEMU{Kernel: "/img/vmlinux", ExtraAppend: " quiet  rdinit=/init ", Memory: 384}
	got := q.Args(sp, "tcg", "/run/q/vm7/initrd", "/run/q/vm7")
	want := []string{
		"-name", "mlsg-vm7", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "384",
		"-kernel", "/img/vmlinux", "-initrd", "/run/q/vm7/initrd",
		"-append", "console=ttyS0 panic=-1 quiet rdinit=/init mlsgate.addr=10.70.0.7/24 mlsgate.gw=10.70.0.1 mlsgate.port=7444",
		"-netdev", "tap,id=n0,ifname=vif7.0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=00:16:3e:00:00:07",
		"-serial", "file:/run/q/vm7/serial.log", "-pidfile", "/run/q/vm7/qemu.pid",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Args =\n%q\nwant\n%q", got, want)
	}
	if got := (&QEMU{}).Args(sp, "kvm", "i", "d"); !slices.Contains(got, "host") || !slices.Contains(got, strconv.Itoa(DefaultQEMUMemory)) {
		t.Errorf("KVM defaults: %q, want -cpu host and -m %d", got, DefaultQEMUMemory)
	}
}

func TestQEMUBootRefusesBadSettings(t *testing.T) {
	sp := analystSpec(t)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	cases := map[string]struct {
		q    *QEMU
		want string
	}{
		"accel":      {&QEMU{Accel: "hvf", Kernel: kernel, Initrd: kernel}, `QEMU.Accel "hvf"`},
		"no kernel":  {&QEMU{Accel: "tcg", Initrd: kernel}, "QEMU.Kernel is empty"},
		"no initrd":  {&QEMU{Accel: "tcg", Kernel: kernel, Initrd: kernel + ".missing"}, "QEMU.Initrd"},
		"no binary":  {&QEMU{Accel: "tcg", Kernel: kernel, Initrd: kernel, Binary: "/nonexistent/qemu"}, "qemu-system-x86"},
		"bad spec":   {&QEMU{Accel: "tcg", Kernel: kernel, Initrd: kernel}, "UpdatedPort is 0"},
		"no statdir": {&QEMU{Accel: "tcg", Kernel: kernel, Initrd: kernel, Binary: "/bin/true", StateDir: "/proc/no/such"}, "QEMU.StateDir"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := sp
			if name == "bad spec" {
				s.UpdatedPort = 0
			}
			s.VM = 60099 // no vif of this name exists
			_, err := c.q.Boot(context.Background(), s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Boot: %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// qemuVM is the guest id of the privileged QEMU test.
const qemuVM = 60020

// TestPrivilegedQEMUBoot boots Debian's kernel (the guestvm image) with an
// init from InitScript and the stand-in daemon, in a network namespace of
// its own: the tap, its address and all traffic stay there.
func TestPrivilegedQEMUBoot(t *testing.T) {
	requirePrivileged(t)
	if _, err := exec.LookPath(DefaultQEMUBinary); err != nil {
		t.Skip("needs qemu-system-x86_64: run 'make deps-guest'")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := image.Prepare(ctx, "", nil)
	if errors.Is(err, image.ErrMissingTools) {
		t.Skipf("guest image: %v (run 'make deps-guest')", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	initrd, modules := guestInitrd(t, img)

	sp, pool := testSpec(t, qemuVM, "10.70.0.7", "10.70.0.1", 24)
	state := t.TempDir()
	q := &QEMU{Kernel: img.Kernel, Initrd: initrd, Accel: testAccel(), StateDir: state, Progress: func(s string) { t.Log(s) }}
	t.Logf("guest: kernel %s, %d extra modules, accel %s", img.KernelRelease, len(modules), q.Accel)

	err = inFreshNetns(func() error {
		start := time.Now()
		g, err := q.Boot(ctx, sp)
		if err != nil {
			return fmt.Errorf("Boot: %w", err)
		}
		t.Logf("qemu boot (%s): %v from QEMU start to the daemon answering", q.Accel, time.Since(start))
		defer q.Destroy(context.Background(), g)
		want := loader.Guest{VM: qemuVM, Name: sp.Name, Backend: "qemu", Interface: IfName(qemuVM), Addr: sp.Addr,
			HostAddr: sp.HostAddr, HostLL: HostLinkLocal, MAC: "00:16:3e:00:ea:74",
			UpdatedAddr: "10.70.0.7:7444", Handle: filepath.Join(state, "vm60020", "qemu.pid"), Template: "analyst"}
		if *g != want {
			t.Errorf("Boot = %+v, want %+v", *g, want)
		}
		flags, addrs, err := ipAddrs(t, "", g.Interface)
		if err != nil {
			return err
		}
		if !contains(addrs, "10.70.0.1/24") || !contains(flags, "UP") {
			t.Errorf("%s: flags %v addresses %v, want UP with 10.70.0.1/24", g.Interface, flags, addrs)
		}
		if lls := linkLocals(addrs); len(lls) != 1 || lls[0] != "fe80::1/64" {
			t.Errorf("%s: link-local addresses %v, want fe80::1/64 alone", g.Interface, lls)
		}
		serial, _ := os.ReadFile(filepath.Join(state, "vm60020", "serial.log"))
		if !strings.Contains(string(serial), "mlsgate-init: eth0 10.70.0.7/24 via 10.70.0.1") || strings.Contains(string(serial), "failed to load") {
			t.Errorf("the guest's init did not set up eth0 cleanly; console:\n%s", tailFile(filepath.Join(state, "vm60020", "serial.log"), 1500))
		}
		greeting, err := greet(ctx, g.UpdatedAddr, pool)
		if err != nil {
			return fmt.Errorf("TLS to the guest's daemon: %w", err)
		}
		if w := "standin 10.70.0.7:7444 key-mode=0600"; greeting != w {
			t.Errorf("guest daemon greets %q, want %q", greeting, w)
		}
		if _, err := os.Stat(filepath.Join(state, "vm60020", "initrd")); !os.IsNotExist(err) {
			t.Errorf("the initramfs holding the key outlived the boot: %v", err)
		}
		if _, err := q.Boot(ctx, sp); err == nil || !strings.Contains(err.Error(), "exists") {
			t.Errorf("second Boot of a running guest: %v, want an interface-exists error", err)
		}
		pid := qemuFromPidFile(g.Handle)
		if pid == 0 {
			t.Errorf("no running QEMU behind %s", g.Handle)
		}
		if err := q.Destroy(ctx, g); err != nil {
			return fmt.Errorf("Destroy: %w", err)
		}
		if linkExists(g.Interface) || (pid != 0 && alive(pid)) {
			t.Errorf("after Destroy: %s there %v, QEMU %d alive %v", g.Interface, linkExists(g.Interface), pid, alive(pid))
		}
		if _, err := os.Stat(filepath.Join(state, "vm60020")); !os.IsNotExist(err) {
			t.Errorf("Destroy left the guest's directory: %v", err)
		}
		if err := q.Destroy(ctx, g); err != nil {
			t.Errorf("second Destroy: %v", err)
		}

		// A guest whose daemon never answers (standin.mute on the kernel
		// command line: it never listens) fails within its context and
		// leaves nothing.
		mq := &QEMU{Kernel: q.Kernel, Initrd: q.Initrd, Accel: q.Accel, StateDir: q.StateDir, Progress: q.Progress,
			ExtraAppend: strings.TrimSpace(q.ExtraAppend + " standin.mute")}
		mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
		defer mcancel()
		_, err = mq.Boot(mctx, sp)
		if err == nil || !strings.Contains(err.Error(), "did not accept a connection") || !strings.Contains(err.Error(), "serial console ends") {
			return fmt.Errorf("Boot with no daemon on its port: %v, want a timeout quoting the console", err)
		}
		t.Logf("no daemon on the port: %v", err)
		if linkExists(IfName(qemuVM)) {
			t.Errorf("failed Boot left %s", IfName(qemuVM))
		}
		if left, _ := os.ReadDir(state); len(left) != 0 {
			t.Errorf("failed Boot left %v", left)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedQEMUBootSELinux boots the guestvm image as a product guest
// with SELinux asked for: the kernel with SELinux on its command line, the
// init loading the image's module store before it starts the daemon, which
// then answers. (Without SELinux on the command line the init powers off
// and Boot fails.)
func TestPrivilegedQEMUBootSELinux(t *testing.T) {
	requirePrivileged(t)
	if _, err := exec.LookPath(DefaultQEMUBinary); err != nil {
		t.Skip("needs qemu-system-x86_64: run 'make deps-guest'")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := image.Prepare(ctx, "", nil)
	if errors.Is(err, image.ErrMissingTools) {
		t.Skipf("guest image: %v (run 'make deps-guest')", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	initrd, _ := guestInitrdWith(t, img, InitOptions{SELinux: true})
	sp, pool := testSpec(t, qemuVM, "10.70.0.7", "10.70.0.1", 24)
	state := t.TempDir()
	q := &QEMU{Kernel: img.Kernel, Initrd: initrd, Accel: testAccel(), StateDir: state,
		ExtraAppend: "lsm=lockdown,yama,selinux,bpf", Progress: func(s string) { t.Log(s) }}
	err = inFreshNetns(func() error {
		g, err := q.Boot(ctx, sp)
		if err != nil {
			return fmt.Errorf("Boot: %w", err)
		}
		defer q.Destroy(context.Background(), g)
		log := filepath.Join(state, "vm60020", "serial.log")
		serial, _ := os.ReadFile(log)
		if !strings.Contains(string(serial), "mlsgate-init: SELinux policy loaded from the store, enforce=0") {
			t.Errorf("the init did not load the store's policy; console:\n%s", tailFile(log, 1500))
		}
		if _, err := greet(ctx, g.UpdatedAddr, pool); err != nil {
			return fmt.Errorf("TLS to the guest's daemon: %w", err)
		}
		return q.Destroy(ctx, g)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// inFreshNetns runs fn on a thread in a new, unnamed network namespace; the
// processes fn starts inherit it, and it disappears with them and the
// thread, which is never handed back to Go.
func inFreshNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		defer h.Close()
		errc <- fn()
	}()
	return <-errc
}

// testAccel is MLSGATE_GUEST_ACCEL, else what guestvm found /dev/kvm can do
// on this host boot, else tcg (which always works).
func testAccel() string {
	if v := os.Getenv("MLSGATE_GUEST_ACCEL"); v == "kvm" || v == "tcg" {
		return v
	}
	id, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if b, err := os.ReadFile(filepath.Join(image.DefaultCacheDir(), "accel-"+strings.TrimSpace(string(id)))); err == nil {
		if v := strings.TrimSpace(string(b)); v == "kvm" {
			return v
		}
	}
	return "tcg"
}

// guestInitrd writes the test guest's initramfs: the image's with the
// stand-in daemon as /sbin/mlsgate, virtio-net and an InitScript /init
// (QEMUInitrd, as `mlsgate image build --kind qemu` makes it).
func guestInitrd(t *testing.T, img *image.Image) (string, []string) {
	return guestInitrdWith(t, img, InitOptions{})
}

// guestInitrdWith is guestInitrd with the init's options (Modules are set
// by QEMUInitrd).
func guestInitrdWith(t *testing.T, img *image.Image, opts InitOptions) (string, []string) {
	t.Helper()
	bin, err := os.ReadFile(buildStandin(t))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd")
	modules, err := QEMUInitrd(context.Background(), img, "", bin, opts, out)
	if err != nil {
		t.Fatal(err)
	}
	return out, modules
}
