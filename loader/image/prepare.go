package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// harnessVersion changes whenever the way an image is built changes in a way
// the hashed inputs below do not show (file layout, builder code). Bumping it
// makes every cached image stale.
const harnessVersion = "guestvm-4"

// metaPackage is the Debian package whose dependency names the kernel.
const metaPackage = "linux-image-amd64"

//go:embed init.sh
var initScript string

// Packages are the Debian 12 packages Prepare needs; `make deps-guest`
// installs the same list.
var Packages = []string{"qemu-system-x86", "busybox-static", "kmod", "iproute2", "checkpolicy", "xz-utils", "policycoreutils", "semodule-utils", "selinux-utils"}

// installHint is the fix ErrMissingTools errors name.
var installHint = "run 'mlsgate image build' as root (it installs them), or: apt-get install " + strings.Join(Packages, " ")

// ErrMissingTools is returned (wrapped) when a host command Prepare or Run
// needs is missing and cannot be installed here. Tests skip on it.
var ErrMissingTools = errors.New("guest VM tools missing")

// hostTool is a command the harness runs or copies, and its Debian package.
type hostTool struct {
	name string // looked up in PATH, /usr/sbin and /sbin
	pkg  string
}

var hostTools = []hostTool{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"busybox", "busybox-static"},
	{"depmod", "kmod"},
	{"modprobe", "kmod"},
	{"ip", "iproute2"},
	{"checkpolicy", "checkpolicy"},
	{"checkmodule", "checkpolicy"},
	{"semodule_package", "semodule-utils"},
	{"semodule", "policycoreutils"},
	{"load_policy", "policycoreutils"},
	{"setfiles", "policycoreutils"},
	{"/usr/libexec/selinux/hll/pp", "policycoreutils"},
	{"sefcontext_compile", "selinux-utils"},
	{"xz", "xz-utils"},
	{"dpkg-deb", "dpkg"},
	{"apt-get", "apt"},
	{"apt-cache", "apt"},
}

// Image is a bootable guest: a kernel, an initramfs with the modules and the
// init, and the compiled MLS policy the init loads. It is immutable once
// Prepare returns it and safe for concurrent Runs.
type Image struct {
	Dir            string   // the cache entry holding the files below
	Kernel         string   // uncompressed vmlinux (PVH entry), or the bzImage when none could be extracted
	Initrd         string   // newc initramfs
	Policy         string   // the binary policy (version 33) the init loads
	PolicyConf     string   // its source, as PolicySource wrote it
	KernelRelease  string   // uname -r in the guest, e.g. 6.1.0-56-amd64
	PackageVersion string   // the Debian version of the kernel package
	Modules        []string // modules the init loads, in order

	accelOnce sync.Once
	accel     string
	cacheDir  string
}

// manifest is the JSON written beside a cached image.
type manifest struct {
	Harness        string    `json:"harness"`
	KernelRelease  string    `json:"kernel_release"`
	PackageVersion string    `json:"package_version"`
	Kernel         string    `json:"kernel"`
	Modules        []string  `json:"modules"`
	Built          time.Time `json:"built"`
}

// DefaultCacheDir is $MLSGATE_GUEST_CACHE, or /var/cache/mlsgate/guest.
func DefaultCacheDir() string {
	if d := os.Getenv("MLSGATE_GUEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/mlsgate/guest"
}

// Prepare returns the guest image for the kernel linux-image-amd64 names
// today, building it under cacheDir (DefaultCacheDir when empty) unless an
// image with the same kernel and inputs is already there. Progress lines go
// to log (nil discards them). As root it installs missing Packages with
// apt-get; otherwise a missing tool is an error wrapping ErrMissingTools.
// Concurrent calls, in one process or several, are safe: one builds, the
// others wait for it, and a build becomes visible only when complete.
func Prepare(ctx context.Context, cacheDir string, log io.Writer) (*Image, error) {
	if log == nil {
		log = io.Discard
	}
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	if err := ensureTools(ctx, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cacheDir, "images"), 0o755); err != nil {
		return nil, fmt.Errorf("guest cache %s: %w (set MLSGATE_GUEST_CACHE to a writable directory)", cacheDir, err)
	}
	pkg, release, version, err := resolveKernel(ctx, cacheDir, log)
	if err != nil {
		return nil, err
	}
	key, err := inputKey()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cacheDir, "images", imageName(release, version, key))
	if img, err := loadImage(dir, cacheDir); err == nil {
		markUsed(dir)
		return img, nil
	}

	unlock, err := lockDir(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if img, err := loadImage(dir, cacheDir); err == nil { // built while we waited
		markUsed(dir)
		return img, nil
	}
	// Builds happen only under the lock, so any build directory left now
	// belongs to a process that was killed (an unpacked kernel: 400 MB).
	for _, glob := range []string{"images/.build-*", "debs/.download-*"} {
		left, _ := filepath.Glob(filepath.Join(cacheDir, glob))
		for _, d := range left {
			os.RemoveAll(d)
		}
	}
	start := time.Now()
	fmt.Fprintf(log, "image: building %s (no cached image has these inputs; a few minutes)\n", filepath.Base(dir))
	deb, err := fetchKernel(ctx, cacheDir, pkg, version, log)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Join(cacheDir, "images"), ".build-")
	if err != nil {
		return nil, fmt.Errorf("guest cache %s: %w", cacheDir, err)
	}
	defer os.RemoveAll(tmp)
	if err := build(ctx, tmp, deb, release, version, log); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process that did not honour the lock may have won; its
		// image is as good as ours.
		if img, lerr := loadImage(dir, cacheDir); lerr == nil {
			return img, nil
		}
		return nil, fmt.Errorf("publish guest image %s: %w", dir, err)
	}
	fmt.Fprintf(log, "image: image %s ready in %.1fs\n", filepath.Base(dir), time.Since(start).Seconds())
	markUsed(dir)
	// The cache grows by an image per kernel and builder change: drop
	// what nobody used for PruneAge.
	removed, err := prune(cacheDir, PruneAge, time.Now())
	logPruned(log, "the cache", removed, err)
	return loadImage(dir, cacheDir)
}

// loadImage opens a complete cache entry.
func loadImage(dir, cacheDir string) (*Image, error) {
	var m manifest
	if err := readManifest(dir, &m); err != nil {
		return nil, err
	}
	img := &Image{
		Dir:            dir,
		Kernel:         filepath.Join(dir, m.Kernel),
		Initrd:         filepath.Join(dir, "initrd.cpio"),
		Policy:         filepath.Join(dir, "policy.33"),
		PolicyConf:     filepath.Join(dir, "policy.conf"),
		KernelRelease:  m.KernelRelease,
		PackageVersion: m.PackageVersion,
		Modules:        m.Modules,
		cacheDir:       cacheDir,
	}
	for _, f := range []string{img.Kernel, img.Initrd, img.Policy} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("guest image %s is incomplete: %w (remove the directory)", dir, err)
		}
	}
	return img, nil
}

// build makes a complete image in dir from the kernel package deb.
func build(ctx context.Context, dir, deb, release, version string, log io.Writer) error {
	t := time.Now()
	kroot := filepath.Join(dir, "kroot")
	if err := run(ctx, "", nil, "dpkg-deb", "-x", deb, kroot); err != nil {
		return fmt.Errorf("unpack %s: %w", deb, err)
	}
	if err := run(ctx, "", nil, "depmod", "-b", kroot, release); err != nil {
		return fmt.Errorf("depmod the unpacked kernel %s: %w", release, err)
	}
	kernel, err := extractVmlinux(ctx, filepath.Join(kroot, "boot", "vmlinuz-"+release), dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "image: kernel %s unpacked, boots from %s (%.1fs)\n", release, kernel, time.Since(t).Seconds())

	t = time.Now()
	conf := PolicySource()
	if err := os.WriteFile(filepath.Join(dir, "policy.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if err := CompilePolicy(ctx, filepath.Join(dir, "policy.conf"), filepath.Join(dir, "policy.33")); err != nil {
		return err
	}
	fmt.Fprintf(log, "image: MLS policy compiled (%.1fs)\n", time.Since(t).Seconds())

	t = time.Now()
	store := filepath.Join(dir, "selinux-root")
	if err := BuildStore(ctx, store); err != nil {
		return err
	}
	fmt.Fprintf(log, "image: SELinux module store built from the base policy (%.1fs)\n", time.Since(t).Seconds())

	t = time.Now()
	mods, err := buildInitramfs(ctx, kroot, release, filepath.Join(dir, "policy.33"), store, filepath.Join(dir, "initrd.cpio"))
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "image: initramfs with %d module files built (%.1fs)\n", mods, time.Since(t).Seconds())
	if err := os.RemoveAll(kroot); err != nil {
		return err
	}
	m, err := json.MarshalIndent(manifest{
		Harness: harnessVersion, KernelRelease: release, PackageVersion: version,
		Kernel: kernel, Modules: Modules, Built: time.Now().UTC(),
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "manifest.json"), append(m, '\n'), 0o644)
}

// inputKey hashes everything an image is made from besides the kernel
// package: the builder's version, the init, the policies, the module list and
// the host binaries copied into the initramfs with their shared libraries
// (by size and time).
func inputKey() (string, error) {
	texts := []string{harnessVersion, initScript, PolicySource(), strings.Join(Modules, " "), RunnerContext,
		BasePolicySource(), semanageConf, selinuxConfig}
	names := []string{"busybox", "ip", "checkpolicy"}
	for _, u := range SELinuxUserland {
		names = append(names, u.Name)
	}
	var files []string
	for _, name := range names {
		p, err := findTool(name)
		if err != nil {
			return "", err
		}
		files = append(files, p)
		if name != "busybox" && name != "checkpolicy" { // copied with their libraries
			_, libs, err := elfClosure(name)
			if err != nil {
				return "", err
			}
			files = append(files, libs...)
		}
	}
	return hashInputs(texts, files)
}

// lockDir takes an exclusive lock on dir/.lock, waiting until ctx ends.
func lockDir(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guest cache lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("guest cache lock %s/.lock: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another build in %s: %w", dir, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// findTool finds a host command in PATH or the sbin directories, which a
// normal user's PATH may lack.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// missingTools lists the host commands that are absent, or present in a form
// the guest cannot use (a dynamically linked busybox), by package.
func missingTools() (cmds, pkgs []string) {
	seen := map[string]bool{}
	for _, t := range hostTools {
		p, err := findTool(t.name)
		if err == nil && t.name == "busybox" {
			if err = checkStatic(p); err != nil {
				cmds = append(cmds, "static busybox")
			}
		} else if err != nil {
			cmds = append(cmds, t.name)
		}
		if err != nil && !seen[t.pkg] {
			seen[t.pkg] = true
			pkgs = append(pkgs, t.pkg)
		}
	}
	return cmds, pkgs
}

// ensureTools installs the missing packages as root, or says how to.
func ensureTools(ctx context.Context, log io.Writer) error {
	cmds, pkgs := missingTools()
	if len(cmds) == 0 {
		return nil
	}
	hint := installHint
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: %s not found (packages %s); %s", ErrMissingTools,
			strings.Join(cmds, ", "), strings.Join(pkgs, " "), hint)
	}
	if _, err := findTool("apt-get"); err != nil {
		return fmt.Errorf("%w: %s not found and no apt-get to install %s", ErrMissingTools,
			strings.Join(cmds, ", "), strings.Join(pkgs, " "))
	}
	t := time.Now()
	fmt.Fprintf(log, "image: installing %s (missing %s)\n", strings.Join(pkgs, " "), strings.Join(cmds, ", "))
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	if err := run(ctx, "", env, "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("%w: apt-get update: %v; %s", ErrMissingTools, err, hint)
	}
	args := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)
	if err := run(ctx, "", env, "apt-get", args...); err != nil {
		return fmt.Errorf("%w: apt-get install %s: %v; %s", ErrMissingTools, strings.Join(pkgs, " "), err, hint)
	}
	if cmds, _ := missingTools(); len(cmds) > 0 {
		return fmt.Errorf("%w: still missing %s after apt-get install; %s", ErrMissingTools, strings.Join(cmds, ", "), hint)
	}
	fmt.Fprintf(log, "image: packages installed (%.1fs)\n", time.Since(t).Seconds())
	return nil
}

// resolveKernel names the kernel package linux-image-amd64 depends on, its
// release (uname -r) and version. apt-cache takes a second where apt keeps
// no binary cache (Docker images), so the answer is kept in cacheDir while
// apt's lists and sources stay as they were. As root it refreshes apt's
// lists once when they do not know the meta-package.
func resolveKernel(ctx context.Context, cacheDir string, log io.Writer) (pkg, release, version string, err error) {
	memo := filepath.Join(cacheDir, "kernel-package.json")
	stamp := aptStamp()
	var k kernelPackage
	if b, err := os.ReadFile(memo); err == nil && json.Unmarshal(b, &k) == nil && k.Stamp == stamp && k.Package != "" {
		return k.Package, strings.TrimPrefix(k.Package, "linux-image-"), k.Version, nil
	}
	for attempt := 0; attempt < 2; attempt++ {
		pkg, version, err = aptKernel(ctx)
		if err == nil || os.Geteuid() != 0 || attempt == 1 {
			break
		}
		fmt.Fprintf(log, "image: %v; running apt-get update\n", err)
		if uerr := run(ctx, "", nil, "apt-get", "update", "-qq"); uerr != nil {
			return "", "", "", fmt.Errorf("apt-get update: %w", uerr)
		}
		stamp = aptStamp()
	}
	if err != nil {
		return "", "", "", err
	}
	if b, err := json.Marshal(kernelPackage{Stamp: stamp, Package: pkg, Version: version}); err == nil {
		writeAtomic(memo, b)
	}
	return pkg, strings.TrimPrefix(pkg, "linux-image-"), version, nil
}

// kernelPackage is resolveKernel's memo.
type kernelPackage struct {
	Stamp   string `json:"apt_stamp"`
	Package string `json:"package"`
	Version string `json:"version"`
}

// aptStamp hashes the names, sizes and times of apt's package lists and
// sources: what apt-cache's answer depends on.
func aptStamp() string {
	h := sha256.New()
	for _, glob := range []string{"/var/lib/apt/lists/*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*", "/etc/apt/preferences", "/etc/apt/preferences.d/*"} {
		names, _ := filepath.Glob(glob)
		for _, n := range names {
			if fi, err := os.Stat(n); err == nil {
				fmt.Fprintf(h, "%s %d %d\n", n, fi.Size(), fi.ModTime().UnixNano())
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// aptKernel asks apt which kernel package the meta-package depends on. Its
// Depends names it with an exact version: "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
func aptKernel(ctx context.Context) (pkg, version string, err error) {
	out, err := output(ctx, "apt-cache", "show", "--no-all-versions", metaPackage)
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %w (run apt-get update)", metaPackage, err)
	}
	if pkg, version, ok := kernelDependency(out); ok {
		return pkg, version, nil
	}
	return "", "", fmt.Errorf("apt-cache show %s names no linux-image-<release> (= <version>) dependency:\n%s", metaPackage, out)
}

// kernelDependency finds "linux-image-<release> (= <version>)" in the
// Depends field of apt-cache show's output.
func kernelDependency(show string) (pkg, version string, ok bool) {
	for _, line := range strings.Split(show, "\n") {
		deps, found := strings.CutPrefix(line, "Depends: ")
		if !found {
			continue
		}
		for _, d := range strings.FieldsFunc(deps, func(r rune) bool { return r == ',' || r == '|' }) {
			f := strings.Fields(d)
			if len(f) == 3 && f[1] == "(=" && isKernelPackage(f[0]) && strings.HasSuffix(f[2], ")") {
				return f[0], strings.TrimSuffix(f[2], ")"), true
			}
		}
	}
	return "", "", false
}

// isKernelPackage accepts linux-image-<digit>…, not other meta-packages.
func isKernelPackage(name string) bool {
	r, ok := strings.CutPrefix(name, "linux-image-")
	return ok && r != "" && r[0] >= '0' && r[0] <= '9'
}

// writeAtomic replaces path with data through a temporary file and rename.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), path)
}

// fetchKernel returns the cached .deb of pkg at version, downloading it with
// apt-get download first if needed.
func fetchKernel(ctx context.Context, cacheDir, pkg, version string, log io.Writer) (string, error) {
	debs := filepath.Join(cacheDir, "debs")
	final := filepath.Join(debs, debName(pkg, version))
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	t := time.Now()
	fmt.Fprintf(log, "image: downloading %s %s (about 70 MB)\n", pkg, version)
	args := []string{"download", "-qq"}
	if os.Geteuid() == 0 {
		// apt's _apt user cannot write into a root-owned temp directory.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, pkg+"="+version)
	if err := run(ctx, tmp, nil, "apt-get", args...); err != nil {
		return "", fmt.Errorf("download the guest kernel %s=%s: %w (check the apt sources, or run apt-get update)", pkg, version, err)
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(got) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files in %s", pkg, len(got), tmp)
	}
	if err := os.Rename(got[0], final); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "image: downloaded %s %s (%.1fs)\n", pkg, version, time.Since(t).Seconds())
	return final, nil
}

// run runs a host command in dir (the current directory when empty) and
// returns an error quoting the end of its output when it fails.
func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	p, err := findTool(name)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}

// output runs a host command and returns its standard output.
func output(ctx context.Context, name string, args ...string) (string, error) {
	p, err := findTool(name)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, tail(stderr.String(), 1000))
	}
	return stdout.String(), nil
}

// tail is the last n bytes of s, from a line start when there is one.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		s = s[i+1:]
	}
	return "…" + s
}

// readManifest decodes dir's manifest.json into m.
func readManifest(dir string, m any) error {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, m); err != nil {
		return fmt.Errorf("%s/manifest.json: %w (remove the directory)", dir, err)
	}
	return nil
}

// logPruned tells log what pruning cache (for the message) removed, or
// why it failed.
func logPruned(log io.Writer, cache string, removed []string, err error) {
	if err != nil {
		fmt.Fprintf(log, "image: pruning %s: %v\n", cache, err)
	} else if len(removed) > 0 {
		fmt.Fprintf(log, "image: pruned %s (unused for %v)\n", strings.Join(removed, ", "), PruneAge)
	}
}
