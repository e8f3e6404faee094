package xendom0

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/loader/image"
)

// harnessVersion changes whenever the way an image is built changes in a
// way the hashed inputs do not show. Bumping it makes cached images stale.
const harnessVersion = "xendom0-2"

//go:embed dom0-init.sh
var dom0Init string

//go:embed guest-init.sh
var guestInit string

// vifScriptSource is the project's vif hotplug script, shipped in deploy/
// and packed into dom0 as it is.
func vifScriptSource() (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("xendom0: cannot locate its own source to find deploy/xen/vif-mlsgate")
	}
	p := filepath.Join(filepath.Dir(self), "..", "..", "deploy", "xen", VifScript)
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("xendom0: the vif hotplug script: %w (run the tests from a source tree)", err)
	}
	return string(b), nil
}

// Paths and addresses inside dom0, for the tests that run there.
const (
	// GuestKernel is the guests' raw vmlinux: libxenguest loads an ELF
	// directly, while a bzImage costs seconds of xz in dom0 under TCG.
	GuestKernel = "/guest/vmlinux"
	// GuestRamdisk is the tiny guest initramfs (see the package doc).
	GuestRamdisk = "/guest/initrd"
	// VifScript is mlsgate's hotplug script (deploy/xen/vif-mlsgate) in
	// /etc/xen/scripts, for the xl config's vif script=
	// (loader/backend.Xen.Script). It reads its settings from VifDefaults.
	VifScript   = "vif-mlsgate"
	VifDefaults = "/etc/default/mlsgate-vif"
	// XenBin holds xl's helpers and the Xen daemons.
	XenBin = "/usr/lib/xen-4.17/bin"
)

// XenPackages are the Debian 12 packages the dom0 is built from; Prepare
// downloads them into its cache and unpacks them, without installing.
var XenPackages = []string{
	"xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xen-utils-common", "xenstore-utils",
	"libxenmisc4.17", "libxenstore4", "libxencall1", "libxenevtchn1", "libxenforeignmemory1",
	"libxengnttab1", "libxentoollog1", "libxenhypfs1", "libxendevicemodel1", "libxentoolcore1",
	"libyajl2",
}

// Dom0Modules are loaded by dom0's init, in order: Xen's back ends and
// devices (no bridge: guests get routed vifs), what the fast path and the
// agent need on a kernel without tcx (clsact, cls_bpf, xfrm_user), the ESP
// transform the host's labeled IPsec needs (the demo's web servers; the
// random-number generators first, as in loader/image.Modules), and the 9p
// share.
var Dom0Modules = []string{
	"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-netback",
	"veth", "sch_ingress", "cls_bpf", "xfrm_user",
	"sha3_generic", "jitterentropy_rng", "drbg", "xfrm_algo", "authenc", "authencesn", "gcm", "ghash_generic",
	"ghash_clmulni_intel", "ctr", "seqiv", "echainiv", "aesni_intel", "esp4",
	"virtio_pci", "9pnet_virtio", "9p",
}

// GuestModules are packed into the guest initramfs.
var GuestModules = []string{"xen-netfront"}

// xenBinaries are copied from the Xen userspace, with their libraries.
var xenBinaries = []string{
	XenBin + "/xl", XenBin + "/xenstored", XenBin + "/xenconsoled", XenBin + "/xen-init-dom0",
	XenBin + "/libxl-save-helper", XenBin + "/xenstore-control",
	"/usr/bin/xenstore-read", "/usr/bin/xenstore-write", "/usr/bin/xenstore-ls", "/usr/bin/xenstore-rm",
	"/usr/bin/xenstore-exists", "/usr/bin/xenstore-list",
}

// libDirs are searched, under the Xen userspace and then the host's root,
// for the shared libraries of xenBinaries.
var libDirs = []string{
	"/usr/lib/xen-4.17/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
}

// Image is a bootable Xen host: the hypervisor, the dom0 kernel and its
// initramfs. It is immutable once Prepare returns it.
type Image struct {
	Dir           string // the cache entry
	Xen           string // the hypervisor ELF (multiboot)
	Kernel        string // dom0's kernel (raw vmlinux)
	Initrd        string // dom0's newc initramfs, guest payload included
	KernelRelease string
	XenVersion    string // the Debian version of xen-hypervisor-4.17-amd64
}

type manifest struct {
	Harness       string    `json:"harness"`
	KernelRelease string    `json:"kernel_release"`
	Kernel        string    `json:"kernel"`
	XenVersion    string    `json:"xen_version"`
	Built         time.Time `json:"built"`
}

// CacheDir is where Prepare keeps its downloads and images when given no
// directory: a xen folder in guestvm's cache.
func CacheDir() string { return filepath.Join(image.DefaultCacheDir(), "xen") }

// Prepare returns the Xen image for the kernel linux-image-amd64 names
// today and the Xen packages apt offers, building it under cacheDir
// (CacheDir when empty) unless one with the same inputs is there. Progress
// lines go to log (nil discards them). A missing host tool is an error
// wrapping image.ErrMissingTools (as root, guestvm installs them).
// Concurrent calls are safe: one builds, the others wait.
func Prepare(ctx context.Context, cacheDir string, log io.Writer) (*Image, error) {
	if log == nil {
		log = io.Discard
	}
	if cacheDir == "" {
		cacheDir = CacheDir()
	}
	deb, release, _, err := image.KernelPackage(ctx, filepath.Dir(cacheDir), log)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cacheDir, "images"), 0o755); err != nil {
		return nil, fmt.Errorf("xen cache %s: %w (set MLSGATE_GUEST_CACHE to a writable directory)", cacheDir, err)
	}
	unlock, err := image.LockDir(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	debs, err := fetchXen(ctx, filepath.Join(cacheDir, "debs"), log)
	if err != nil {
		return nil, err
	}
	vifScript, err := vifScriptSource()
	if err != nil {
		return nil, err
	}
	key, xenVersion, err := inputKey(deb, debs, vifScript)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cacheDir, "images", release+"_"+key)
	if img, err := loadImage(dir); err == nil {
		return img, nil
	}
	left, _ := filepath.Glob(filepath.Join(cacheDir, "images", ".build-*"))
	for _, d := range left { // a killed build's (only builds hold the lock)
		os.RemoveAll(d)
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(filepath.Join(cacheDir, "images"), ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := build(ctx, tmp, deb, release, xenVersion, debs, vifScript, log); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("publish xen image %s: %w", dir, err)
	}
	fmt.Fprintf(log, "xendom0: image %s ready in %.1fs\n", filepath.Base(dir), time.Since(start).Seconds())
	return loadImage(dir)
}

func loadImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s/manifest.json: %w (remove the directory)", dir, err)
	}
	img := &Image{
		Dir: dir, Xen: filepath.Join(dir, "xen"), Kernel: filepath.Join(dir, m.Kernel),
		Initrd: filepath.Join(dir, "dom0.cpio"), KernelRelease: m.KernelRelease, XenVersion: m.XenVersion,
	}
	for _, f := range []string{img.Xen, img.Kernel, img.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("xen image %s is incomplete: %w (remove the directory)", dir, err)
		}
	}
	return img, nil
}

// fetchXen returns the cached .deb of every XenPackages entry, downloading
// the missing ones with apt-get download.
func fetchXen(ctx context.Context, dir string, log io.Writer) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	have := func() (debs, missing []string) {
		for _, p := range XenPackages {
			got, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
			if len(got) == 0 {
				missing = append(missing, p)
			} else {
				debs = append(debs, got[len(got)-1])
			}
		}
		return debs, missing
	}
	debs, missing := have()
	if len(missing) == 0 {
		return debs, nil
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	t := time.Now()
	args := []string{"download", "-qq"}
	if os.Geteuid() == 0 {
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	if err := run(ctx, tmp, "apt-get", append(args, missing...)...); err != nil {
		return nil, fmt.Errorf("download the Xen packages: %w (check the apt sources, or run apt-get update)", err)
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	for _, g := range got {
		if err := os.Rename(g, filepath.Join(dir, filepath.Base(g))); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(log, "xendom0: downloaded %s (%.1fs)\n", strings.Join(missing, " "), time.Since(t).Seconds())
	if debs, missing = have(); len(missing) > 0 {
		return nil, fmt.Errorf("apt-get download left no .deb for %s in %s", strings.Join(missing, " "), dir)
	}
	return debs, nil
}

// inputKey hashes what an image is made from: the builder, the scripts, the
// module lists, the kernel and Xen packages (by name) and the host binaries
// copied in (by size and time). It also returns the hypervisor's version.
func inputKey(kernelDeb string, debs []string, vifScript string) (key, xenVersion string, err error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n%s\n%s\n", harnessVersion, dom0Init, guestInit, vifScript,
		strings.Join(Dom0Modules, " "), strings.Join(GuestModules, " "), strings.Join(xenBinaries, " "))
	fmt.Fprintln(h, filepath.Base(kernelDeb))
	for _, d := range debs {
		fmt.Fprintln(h, filepath.Base(d))
		if strings.HasPrefix(filepath.Base(d), "xen-hypervisor-") {
			if f := strings.Split(filepath.Base(d), "_"); len(f) >= 2 {
				xenVersion = strings.ReplaceAll(f[1], "%3a", ":")
			}
		}
	}
	for _, name := range []string{"busybox", "ip"} {
		p, err := image.FindTool(name)
		if err != nil {
			return "", "", fmt.Errorf("%w: %v", image.ErrMissingTools, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return "", "", err
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:12], xenVersion, nil
}

// build makes a complete image in dir.
func build(ctx context.Context, dir, kernelDeb, release, xenVersion string, debs []string, vifScript string, log io.Writer) error {
	t := time.Now()
	kroot, kernel, err := image.UnpackKernel(ctx, kernelDeb, release, dir)
	if err != nil {
		return err
	}
	if kernel != "vmlinux" {
		return fmt.Errorf("no raw vmlinux could be extracted from the kernel %s; Xen's dom0 and PV guests load the ELF", release)
	}
	xroot := filepath.Join(dir, "xroot")
	for _, d := range debs {
		if err := run(ctx, "", "dpkg-deb", "-x", d, xroot); err != nil {
			return fmt.Errorf("unpack %s: %w", d, err)
		}
	}
	hv, _ := filepath.Glob(filepath.Join(xroot, "boot", "xen-4.17*-amd64.gz"))
	if len(hv) == 0 {
		return fmt.Errorf("no boot/xen-4.17*-amd64.gz in the unpacked xen-hypervisor-4.17-amd64")
	}
	if err := gunzip(ctx, hv[0], filepath.Join(dir, "xen")); err != nil {
		return err
	}
	fmt.Fprintf(log, "xendom0: kernel %s and Xen %s unpacked (%.1fs)\n", release, xenVersion, time.Since(t).Seconds())

	t = time.Now()
	guest := filepath.Join(dir, "guest.cpio")
	if err := buildGuest(ctx, kroot, release, guest); err != nil {
		return err
	}
	if err := buildDom0(ctx, kroot, xroot, release, filepath.Join(dir, "vmlinux"), guest, vifScript, filepath.Join(dir, "dom0.cpio")); err != nil {
		return err
	}
	fmt.Fprintf(log, "xendom0: dom0 and guest initramfs built (%.1fs)\n", time.Since(t).Seconds())
	for _, d := range []string{kroot, xroot, guest} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	m, err := json.MarshalIndent(manifest{
		Harness: harnessVersion, KernelRelease: release, Kernel: "vmlinux", XenVersion: xenVersion, Built: time.Now().UTC(),
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "manifest.json"), append(m, '\n'), 0o644)
}

// buildGuest packs the guest initramfs: busybox (its ip applet too: the
// guest needs nothing iproute2 adds), xen-netfront, the init.
func buildGuest(ctx context.Context, kroot, release, out string) error {
	stage, err := os.MkdirTemp(filepath.Dir(out), "guest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := image.StageBusybox(ctx, stage); err != nil {
		return err
	}
	for _, d := range []string{"bin/ip", "sbin/ip"} {
		os.Remove(filepath.Join(stage, d))
	}
	if err := os.Symlink("/bin/busybox", filepath.Join(stage, "sbin/ip")); err != nil {
		return err
	}
	if _, err := image.StageModules(ctx, kroot, release, stage, GuestModules); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(guestInit), 0o755); err != nil {
		return err
	}
	return image.WriteInitramfs(stage, out)
}

// buildDom0 packs dom0's initramfs.
func buildDom0(ctx context.Context, kroot, xroot, release, vmlinux, guestInitrd, vifScript, out string) error {
	stage, err := os.MkdirTemp(filepath.Dir(out), "dom0-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc/xendom0", "guest",
		"var/lib/xen", "var/log/xen", "var/lib/xenstored", "usr/sbin"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"var/run", "../run"}, {"var/lock", "../run/lock"}} {
		if err := os.Symlink(l[1], filepath.Join(stage, l[0])); err != nil {
			return err
		}
	}
	if err := image.StageBusybox(ctx, stage); err != nil {
		return err
	}
	if err := image.StageDynamic(stage, "ip", "/usr/sbin/ip"); err != nil {
		return err
	}
	if err := os.Symlink("/usr/sbin/ip", filepath.Join(stage, "sbin/ip")); err != nil && !os.IsExist(err) {
		return err
	}
	for _, b := range xenBinaries {
		if err := copyELF(xroot, b, stage); err != nil {
			return err
		}
	}
	// glibc loads libgcc_s when a thread is cancelled; xl warns without it.
	if err := copyELF("/", "/lib/x86_64-linux-gnu/libgcc_s.so.1", stage); err != nil {
		return err
	}
	for _, s := range []string{"xl", "xenstored", "xenconsoled"} {
		if err := os.Symlink(XenBin+"/"+s, filepath.Join(stage, "usr/sbin", s)); err != nil {
			return err
		}
	}
	if err := copyTree(filepath.Join(xroot, "etc/xen"), filepath.Join(stage, "etc/xen")); err != nil {
		return fmt.Errorf("xen-utils-common's /etc/xen: %w", err)
	}
	if err := writeFile(filepath.Join(stage, "etc/xen/scripts", VifScript), vifScript, 0o755); err != nil {
		return err
	}
	if _, err := image.StageModules(ctx, kroot, release, stage, Dom0Modules); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(stage, "etc/xendom0/modules"), strings.Join(Dom0Modules, "\n")+"\n", 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(stage, "init"), dom0Init, 0o755); err != nil {
		return err
	}
	if err := os.Link(vmlinux, filepath.Join(stage, GuestKernel)); err != nil {
		return err
	}
	if err := os.Link(guestInitrd, filepath.Join(stage, GuestRamdisk)); err != nil {
		return err
	}
	return image.WriteInitramfs(stage, out)
}

// copyELF copies the executable or library at path (under root) to the
// same path in stage, with its ELF interpreter and every library it needs,
// found in libDirs under root and then the host's /.
func copyELF(root, path, stage string) error {
	done := map[string]bool{}
	type item struct{ src, rel string }
	queue := []item{{filepath.Join(root, path), path}}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		if done[it.rel] {
			continue
		}
		done[it.rel] = true
		src, err := filepath.EvalSymlinks(it.src)
		if err != nil {
			return fmt.Errorf("dom0 file %s: %w", it.rel, err)
		}
		if err := image.CopyFile(src, filepath.Join(stage, it.rel), 0o755); err != nil {
			return err
		}
		f, err := elf.Open(src)
		if err != nil {
			continue // a script
		}
		needed, err := f.ImportedLibraries()
		var interp string
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b, _ := io.ReadAll(p.Open())
				interp = strings.TrimRight(string(b), "\x00")
			}
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("libraries of %s: %w", it.rel, err)
		}
		if interp != "" {
			queue = append(queue, item{interp, interp})
		}
		for _, lib := range needed {
			found := false
			for _, r := range []string{root, "/"} {
				for _, d := range libDirs {
					if _, err := os.Stat(filepath.Join(r, d, lib)); err == nil {
						queue = append(queue, item{filepath.Join(r, d, lib), filepath.Join(d, lib)})
						found = true
						break
					}
				}
				if found {
					break
				}
			}
			if !found {
				return fmt.Errorf("%s needs %s, found neither in the Xen packages nor on the host (%s); install the Debian package that has it",
					it.rel, lib, strings.Join(libDirs, ", "))
			}
		}
	}
	return nil
}

// copyTree copies the regular files and links under src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		default:
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return image.CopyFile(p, target, fi.Mode().Perm())
		}
	})
}

func writeFile(path, data string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(data), mode)
}

// gunzip writes the gzip file src uncompressed to dst.
func gunzip(ctx context.Context, src, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, "gzip", "-dc", src)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("gzip -dc %s: %w: %s", src, err, stderr.String())
	}
	return out.Close()
}

// run runs a host command in dir and quotes the end of its output when it
// fails.
func run(ctx context.Context, dir, name string, args ...string) error {
	p, err := image.FindTool(name)
	if err != nil {
		return fmt.Errorf("%w: %v", image.ErrMissingTools, err)
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
