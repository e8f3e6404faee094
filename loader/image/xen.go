package image

import (
	"bytes"
	"context"
	"debug/elf"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// xenHarnessVersion changes whenever the way a dom0 image is built changes
// in a way the hashed inputs do not show. Bumping it makes cached dom0
// images stale.
const xenHarnessVersion = "xen-dom0-3"

//go:embed xen-dom0-init.sh
var xenDom0Init string

// Paths and names inside dom0.
const (
	// XenGuestKernel is the guests' raw vmlinux: libxenguest loads an ELF
	// directly, while a bzImage costs seconds of xz in dom0 under TCG.
	XenGuestKernel = "/guest/vmlinux"
	// XenTestGuestRamdisk is the tiny guest initramfs built from
	// XenOptions.TestGuestInit, when one was given.
	XenTestGuestRamdisk = "/guest/initrd"
	// XenGuestRamdisk is where an operator's dom0 image (`mlsgate image
	// build --kind xen --out`) carries the guest ramdisk whose init runs
	// the update daemon (loader/backend.XenInitrd).
	XenGuestRamdisk = "/guest/initrd-mlsgate"
	// XenMlsgate is where that image carries the static mlsgate binary.
	XenMlsgate = "/usr/sbin/mlsgate"
	// XenVifScriptDir is xl's hotplug script directory; the vif script
	// goes there under XenOptions.VifScriptName.
	XenVifScriptDir = "/etc/xen/scripts"
	// XenVifDefaults is where vif-mlsgate reads its settings.
	XenVifDefaults = "/etc/default/mlsgate-vif"
	// XenBin holds xl's helpers and the Xen daemons.
	XenBin = "/usr/lib/xen-4.17/bin"
)

// XenPackages are the Debian 12 packages the dom0 is built from;
// PrepareXen downloads them into its cache and unpacks them, without
// installing.
var XenPackages = []string{
	"xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xen-utils-common", "xenstore-utils",
	"libxenmisc4.17", "libxenstore4", "libxencall1", "libxenevtchn1", "libxenforeignmemory1",
	"libxengnttab1", "libxentoollog1", "libxenhypfs1", "libxendevicemodel1", "libxentoolcore1",
	"libyajl2",
}

// XenDom0Modules are loaded by dom0's init, in order: Xen's back ends and
// devices (no bridge: guests get routed vifs), what the fast path and the
// agent need on a kernel without tcx (clsact, cls_bpf, xfrm_user), the
// random-number generators and ESP transforms for SAs terminated in dom0
// (as in the guest image: without the generators adding an ESP state fails
// with ENOENT), and the 9p share.
var XenDom0Modules = []string{
	"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-netback",
	"veth", "sch_ingress", "cls_bpf", "xfrm_user",
	"sha3_generic", "jitterentropy_rng", "drbg", "xfrm_algo", "authenc", "authencesn", "gcm", "ghash_generic",
	"ghash_clmulni_intel", "ctr", "seqiv", "echainiv", "aesni_intel", "sha256_ssse3", "sha512_ssse3", "esp4", "esp6",
	"virtio_pci", "9pnet_virtio", "9p",
}

// XenTestGuestModules are packed into the tiny test guest's initramfs.
var XenTestGuestModules = []string{"xen-netfront"}

// xenBinaries are copied from the Xen userspace, with their libraries.
var xenBinaries = []string{
	XenBin + "/xl", XenBin + "/xenstored", XenBin + "/xenconsoled", XenBin + "/xen-init-dom0",
	XenBin + "/libxl-save-helper", XenBin + "/xenstore-control",
	"/usr/bin/xenstore-read", "/usr/bin/xenstore-write", "/usr/bin/xenstore-ls", "/usr/bin/xenstore-rm",
	"/usr/bin/xenstore-exists", "/usr/bin/xenstore-list",
}

// xenLibDirs are searched, under the Xen userspace and then the host's
// root, for the shared libraries of xenBinaries.
var xenLibDirs = []string{
	"/usr/lib/xen-4.17/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
}

// XenOptions say what goes into a dom0 image besides the fixed parts.
type XenOptions struct {
	// VifScript is the text of the vif hotplug script (deploy/xen's
	// VifScript, mlsgate's vif-mlsgate), packed executable as
	// XenVifScriptDir/VifScriptName. Required: the Xen backend's guests
	// get their routed links from it.
	VifScript     string
	VifScriptName string // default "vif-mlsgate"
	// TestGuestInit, when set, is the /init of a tiny guest initramfs
	// (busybox, xen-netfront) packed at XenTestGuestRamdisk, for tests that
	// need a guest without the update daemon.
	TestGuestInit string
}

// XenImage is a bootable Xen host: the hypervisor, the dom0 kernel and its
// initramfs. It is immutable once PrepareXen returns it.
type XenImage struct {
	Dir            string // the cache entry
	Xen            string // the hypervisor ELF (multiboot)
	Kernel         string // dom0's kernel (raw vmlinux), also the guests' (XenGuestKernel)
	Initrd         string // dom0's newc initramfs, guest kernel included
	KernelRelease  string
	PackageVersion string // the Debian version of the kernel package
	XenVersion     string // the Debian version of xen-hypervisor-4.17-amd64
	// TestGuest says whether the image carries XenTestGuestRamdisk.
	TestGuest bool
}

// Key is the image's input hash, the last part of its cache directory's
// name.
func (img *XenImage) Key() string {
	name := filepath.Base(img.Dir)
	return name[strings.LastIndexByte(name, '_')+1:]
}

type xenManifest struct {
	Harness        string    `json:"harness"`
	KernelRelease  string    `json:"kernel_release"`
	PackageVersion string    `json:"package_version"`
	Kernel         string    `json:"kernel"`
	XenVersion     string    `json:"xen_version"`
	XenDebs        []string  `json:"xen_debs"`
	TestGuest      bool      `json:"test_guest"`
	Built          time.Time `json:"built"`
}

// XenCacheDir is the folder of cacheDir (DefaultCacheDir when empty)
// that holds the Xen packages and dom0 images.
func XenCacheDir(cacheDir string) string {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	return filepath.Join(cacheDir, "xen")
}

// PrepareXen returns the dom0 image for the kernel linux-image-amd64 names
// today and the Xen packages apt offers, building it under
// XenCacheDir(cacheDir) unless one with the same inputs is there. The
// kernel package is the guest images' (same download cache). The image
// holds Xen 4.17's hypervisor, Debian's kernel as dom0 with the
// XenDom0Modules, busybox, iproute2's ip, the Xen daemons and xl with their
// libraries, the vif hotplug script, Debian's SELinux userland with a
// module store built from BasePolicySource (StageSELinux: in dom0,
// load_policy then semodule installs the host's modules), the guests'
// raw vmlinux and, with opts.TestGuestInit, a tiny test guest. Its init
// starts the Xen daemons and runs one static binary from a 9p share
// ((*XenImage).Run).
//
// As for Prepare, progress goes to log, concurrent calls are safe, the
// image returned is marked used and a build prunes what nobody used for
// PruneAge (guest and dom0 images alike). A missing host tool is an error
// wrapping ErrMissingTools (as root, the tools are installed).
func PrepareXen(ctx context.Context, cacheDir string, opts XenOptions, log io.Writer) (*XenImage, error) {
	if log == nil {
		log = io.Discard
	}
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	if opts.VifScript == "" {
		return nil, errors.New("xen image: XenOptions.VifScript is empty; give deploy/xen's VifScript (vif-mlsgate)")
	}
	if opts.VifScriptName == "" {
		opts.VifScriptName = "vif-mlsgate"
	}
	if strings.ContainsAny(opts.VifScriptName, "/ ") {
		return nil, fmt.Errorf("xen image: vif script name %q must be a plain file name", opts.VifScriptName)
	}
	deb, release, version, err := KernelPackage(ctx, cacheDir, log)
	if err != nil {
		return nil, err
	}
	xdir := XenCacheDir(cacheDir)
	if err := os.MkdirAll(filepath.Join(xdir, "images"), 0o755); err != nil {
		return nil, fmt.Errorf("xen cache %s: %w (set MLSGATE_GUEST_CACHE to a writable directory)", xdir, err)
	}
	unlock, err := lockDir(ctx, xdir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	debs, err := fetchXen(ctx, filepath.Join(xdir, "debs"), log)
	if err != nil {
		return nil, err
	}
	key, xenVersion, err := xenInputKey(deb, debs, opts)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(xdir, "images", imageName(release, version, key))
	if img, err := loadXenImage(dir); err == nil {
		markUsed(dir)
		return img, nil
	}
	left, _ := filepath.Glob(filepath.Join(xdir, "images", ".build-*"))
	for _, d := range left { // a killed build's (only builds hold the lock)
		os.RemoveAll(d)
	}
	start := time.Now()
	fmt.Fprintf(log, "image: building the Xen dom0 image %s (a few minutes)\n", filepath.Base(dir))
	tmp, err := os.MkdirTemp(filepath.Join(xdir, "images"), ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	m := xenManifest{Harness: xenHarnessVersion, KernelRelease: release, PackageVersion: version, Kernel: "vmlinux",
		XenVersion: xenVersion, TestGuest: opts.TestGuestInit != ""}
	for _, d := range debs {
		m.XenDebs = append(m.XenDebs, filepath.Base(d))
	}
	if err := buildXen(ctx, tmp, deb, release, debs, opts, m, log); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("publish xen image %s: %w", dir, err)
	}
	fmt.Fprintf(log, "image: Xen dom0 image %s ready in %.1fs\n", filepath.Base(dir), time.Since(start).Seconds())
	markUsed(dir)
	removed, err := pruneXen(xdir, PruneAge, time.Now())
	logPruned(log, "the Xen cache", removed, err)
	return loadXenImage(dir)
}

func loadXenImage(dir string) (*XenImage, error) {
	var m xenManifest
	if err := readManifest(dir, &m); err != nil {
		return nil, err
	}
	img := &XenImage{
		Dir: dir, Xen: filepath.Join(dir, "xen"), Kernel: filepath.Join(dir, m.Kernel),
		Initrd: filepath.Join(dir, "dom0.cpio"), KernelRelease: m.KernelRelease, PackageVersion: m.PackageVersion,
		XenVersion: m.XenVersion, TestGuest: m.TestGuest,
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
	if err := run(ctx, tmp, nil, "apt-get", append(args, missing...)...); err != nil {
		return nil, fmt.Errorf("download the Xen packages: %w (check the apt sources, or run apt-get update)", err)
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	for _, g := range got {
		if err := os.Rename(g, filepath.Join(dir, filepath.Base(g))); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(log, "image: downloaded %s (%.1fs)\n", strings.Join(missing, " "), time.Since(t).Seconds())
	if debs, missing = have(); len(missing) > 0 {
		return nil, fmt.Errorf("apt-get download left no .deb for %s in %s", strings.Join(missing, " "), dir)
	}
	return debs, nil
}

// xenInputKey hashes what a dom0 image is made from: the builder, the
// scripts, the module and binary lists, the SELinux store's sources, the
// kernel and Xen packages (by name: Debian never reuses a version) and the
// host binaries copied in (by size and time). It also returns the
// hypervisor's version.
func xenInputKey(kernelDeb string, debs []string, opts XenOptions) (key, xenVersion string, err error) {
	texts := []string{xenHarnessVersion, xenDom0Init, opts.TestGuestInit, opts.VifScript, opts.VifScriptName,
		strings.Join(XenDom0Modules, " "), strings.Join(XenTestGuestModules, " "), strings.Join(xenBinaries, " "),
		BasePolicySource(), semanageConf, selinuxConfig, filepath.Base(kernelDeb)}
	for _, d := range debs {
		texts = append(texts, filepath.Base(d))
		if strings.HasPrefix(filepath.Base(d), "xen-hypervisor-") {
			if f := strings.Split(filepath.Base(d), "_"); len(f) >= 2 {
				xenVersion = strings.ReplaceAll(f[1], "%3a", ":")
			}
		}
	}
	var files []string
	names := []string{"busybox", "ip"}
	for _, u := range SELinuxUserland {
		names = append(names, u.Name)
	}
	for _, name := range names {
		p, err := findTool(name)
		if err != nil {
			return "", "", fmt.Errorf("%w: %v", ErrMissingTools, err)
		}
		files = append(files, p)
		if name != "busybox" {
			_, libs, err := elfClosure(name)
			if err != nil {
				return "", "", err
			}
			files = append(files, libs...)
		}
	}
	key, err = hashInputs(texts, files)
	return key, xenVersion, err
}

// buildXen makes a complete dom0 image in dir.
func buildXen(ctx context.Context, dir, kernelDeb, release string, debs []string, opts XenOptions, m xenManifest, log io.Writer) error {
	t := time.Now()
	kroot, kernel, err := UnpackKernel(ctx, kernelDeb, release, dir)
	if err != nil {
		return err
	}
	if kernel != "vmlinux" {
		return fmt.Errorf("no raw vmlinux could be extracted from the kernel %s; Xen's dom0 and PV guests load the ELF", release)
	}
	xroot := filepath.Join(dir, "xroot")
	for _, d := range debs {
		if err := run(ctx, "", nil, "dpkg-deb", "-x", d, xroot); err != nil {
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
	fmt.Fprintf(log, "image: kernel %s and Xen %s unpacked (%.1fs)\n", release, m.XenVersion, time.Since(t).Seconds())

	t = time.Now()
	guest := ""
	if opts.TestGuestInit != "" {
		guest = filepath.Join(dir, "guest.cpio")
		if err := buildXenTestGuest(ctx, kroot, release, opts.TestGuestInit, guest); err != nil {
			return err
		}
	}
	if err := buildDom0(ctx, kroot, xroot, release, filepath.Join(dir, "vmlinux"), guest, opts, filepath.Join(dir, "dom0.cpio")); err != nil {
		return err
	}
	fmt.Fprintf(log, "image: dom0 initramfs built (%.1fs)\n", time.Since(t).Seconds())
	for _, d := range []string{kroot, xroot, guest} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	m.Built = time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "manifest.json"), append(b, '\n'), 0o644)
}

// buildXenTestGuest packs the tiny test guest's initramfs: busybox (its ip
// applet too: the guest needs nothing iproute2 adds), xen-netfront, the
// init.
func buildXenTestGuest(ctx context.Context, kroot, release, init, out string) error {
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
	if err := addBusybox(ctx, stage); err != nil {
		return err
	}
	for _, d := range []string{"bin/ip", "sbin/ip"} {
		os.Remove(filepath.Join(stage, d))
	}
	if err := os.Symlink("/bin/busybox", filepath.Join(stage, "sbin/ip")); err != nil {
		return err
	}
	if _, err := addModules(ctx, kroot, release, stage, XenTestGuestModules); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(init), 0o755); err != nil {
		return err
	}
	return writeArchive(stage, out)
}

// buildDom0 packs dom0's initramfs.
func buildDom0(ctx context.Context, kroot, xroot, release, vmlinux, guestInitrd string, opts XenOptions, out string) error {
	stage, err := os.MkdirTemp(filepath.Dir(out), "dom0-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc/xendom0", "guest",
		"var/lib/xen", "var/log/xen", "var/lib/xenstored", "usr/sbin", "etc/default"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"var/run", "../run"}, {"var/lock", "../run/lock"}} {
		if err := os.Symlink(l[1], filepath.Join(stage, l[0])); err != nil {
			return err
		}
	}
	if err := addBusybox(ctx, stage); err != nil {
		return err
	}
	if err := addDynamic(stage, "ip", "/usr/sbin/ip"); err != nil {
		return err
	}
	if err := os.Symlink("/usr/sbin/ip", filepath.Join(stage, "sbin/ip")); err != nil && !os.IsExist(err) {
		return err
	}
	for _, b := range xenBinaries {
		if err := copyXenELF(xroot, b, stage); err != nil {
			return err
		}
	}
	// glibc loads libgcc_s when a thread is cancelled; xl warns without it.
	if err := copyXenELF("/", "/lib/x86_64-linux-gnu/libgcc_s.so.1", stage); err != nil {
		return err
	}
	for _, s := range []string{"xl", "xenstored", "xenconsoled"} {
		if err := os.Symlink(XenBin+"/"+s, filepath.Join(stage, "usr/sbin", s)); err != nil {
			return err
		}
	}
	if err := copyTreeModes(filepath.Join(xroot, "etc/xen"), filepath.Join(stage, "etc/xen")); err != nil {
		return fmt.Errorf("xen-utils-common's /etc/xen: %w", err)
	}
	if err := writeXenFile(filepath.Join(stage, XenVifScriptDir, opts.VifScriptName), opts.VifScript, 0o755); err != nil {
		return err
	}
	// The host's SELinux modules are installed in dom0 as in a guest:
	// load_policy on the store, then semodule (agent.SELinux.Semodule).
	work, err := os.MkdirTemp(filepath.Dir(out), "selinux-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := StageSELinux(ctx, stage, work); err != nil {
		return err
	}
	if _, err := addModules(ctx, kroot, release, stage, XenDom0Modules); err != nil {
		return err
	}
	if err := writeXenFile(filepath.Join(stage, "etc/xendom0/modules"), strings.Join(XenDom0Modules, "\n")+"\n", 0o644); err != nil {
		return err
	}
	if err := writeXenFile(filepath.Join(stage, "init"), xenDom0Init, 0o755); err != nil {
		return err
	}
	if err := os.Link(vmlinux, filepath.Join(stage, XenGuestKernel)); err != nil {
		return err
	}
	if guestInitrd != "" {
		if err := os.Link(guestInitrd, filepath.Join(stage, XenTestGuestRamdisk)); err != nil {
			return err
		}
	}
	return writeArchive(stage, out)
}

// copyXenELF copies the executable or library at path (under root) to the
// same path in stage, with its ELF interpreter and every library it needs,
// found in xenLibDirs under root and then the host's /.
func copyXenELF(root, path, stage string) error {
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
		if err := copyFile(src, filepath.Join(stage, it.rel), 0o755); err != nil {
			return err
		}
		f, err := elf.Open(src)
		if err != nil {
			continue // a script
		}
		interp, needed, err := elfNeeds(f)
		if err != nil {
			return fmt.Errorf("libraries of %s: %w", it.rel, err)
		}
		if interp != "" {
			queue = append(queue, item{interp, interp})
		}
		for _, lib := range needed {
			found := false
			for _, r := range []string{root, "/"} {
				for _, d := range xenLibDirs {
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
					it.rel, lib, strings.Join(xenLibDirs, ", "))
			}
		}
	}
	return nil
}

// copyTreeModes copies the regular files (with their modes) and links
// under src to dst.
func copyTreeModes(src, dst string) error {
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
			return copyFile(p, target, fi.Mode().Perm())
		}
	})
}

func writeXenFile(path, data string, mode os.FileMode) error {
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
