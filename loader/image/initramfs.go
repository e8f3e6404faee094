package image

import (
	"bufio"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mlsgate/mlsgate/internal/cpio"
)

// Modules are the kernel modules the init loads, in this order (their
// dependencies come along through modules.dep). The random-number generators
// go first: without them the ESP transform cannot seed its IVs and adding an
// ESP state fails with ENOENT.
var Modules = []string{
	"sha3_generic", "jitterentropy_rng", "drbg",
	"xfrm_algo", "xfrm_user", "authenc", "authencesn", "gcm", "ghash_generic",
	"ghash_clmulni_intel", "ctr", "seqiv", "echainiv", "aesni_intel",
	"sha256_ssse3", "sha512_ssse3", "esp4", "esp6", "ah4", "ah6",
	"veth", "dummy", "sch_ingress", "cls_bpf",
	"virtio_pci", "9pnet_virtio", "9p",
}

// The directories every initramfs has.
var initramfsDirs = []string{
	"bin", "sbin", "usr/bin", "usr/sbin", "etc/guestvm", "proc", "sys", "dev",
	"tmp", "run", "mnt", "root", "var",
}

// libDirs are searched, in order, for the shared libraries of the binaries
// copied into the initramfs.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// buildInitramfs writes the newc archive out (uncompressed: under TCG the
// kernel's gunzip costs more than QEMU's copy of the larger file): busybox and its applet
// links, iproute2's ip at /usr/sbin/ip with its libraries, Modules and their
// dependencies from the unpacked kernel at kroot, the policy at
// /etc/guestvm/policy.33, the SELinuxUserland with its libraries, the module
// store BuildStore made at store (its etc/selinux and var/lib/selinux,
// writable: semodule edits them) and the init. It returns how many module
// files it packed.
func buildInitramfs(ctx context.Context, kroot, release, policy, store, out string) (int, error) {
	stage, err := os.MkdirTemp(filepath.Dir(out), "stage-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(stage)
	for _, d := range append(initramfsDirs, "lib/modules/"+release) {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return 0, err
		}
	}
	if err := addBusybox(ctx, stage); err != nil {
		return 0, err
	}
	if err := addDynamic(stage, "ip", "/usr/sbin/ip"); err != nil {
		return 0, err
	}
	if err := copyTree("/etc/iproute2", filepath.Join(stage, "etc/iproute2")); err != nil && !os.IsNotExist(err) {
		return 0, err
	}
	if err := addSELinux(stage, store); err != nil {
		return 0, err
	}
	n, err := addModules(ctx, kroot, release, stage, Modules)
	if err != nil {
		return 0, err
	}
	if err := copyFile(policy, filepath.Join(stage, "etc/guestvm/policy.33"), 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(stage, "etc/guestvm/modules"), []byte(strings.Join(Modules, "\n")+"\n"), 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(stage, "etc/guestvm/runner-context"), []byte(RunnerContext+"\n"), 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(initScript), 0o755); err != nil {
		return 0, err
	}
	return n, writeArchive(stage, out)
}

// addSELinux copies SELinuxUserland with its libraries into stage, and the
// module store BuildStore made at store (its etc/selinux and
// var/lib/selinux).
func addSELinux(stage, store string) error {
	for _, u := range SELinuxUserland {
		if err := addDynamic(stage, u.Name, u.Path); err != nil {
			return err
		}
	}
	for _, d := range []string{"etc/selinux", "var/lib/selinux"} {
		if err := copyStore(filepath.Join(store, d), filepath.Join(stage, d)); err != nil {
			return fmt.Errorf("the SELinux module store: %w", err)
		}
	}
	return nil
}

// addBusybox copies the static busybox to /bin/busybox and links every
// applet it lists, except those a real binary replaces.
func addBusybox(ctx context.Context, stage string) error {
	bb, err := findTool("busybox")
	if err != nil {
		return err
	}
	if err := checkStatic(bb); err != nil {
		return err
	}
	if err := copyFile(bb, filepath.Join(stage, "bin/busybox"), 0o755); err != nil {
		return err
	}
	list, err := output(ctx, bb, "--list-full")
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, rel := range strings.Fields(list) {
		rel = strings.TrimPrefix(rel, "/")
		if filepath.Base(rel) == "ip" || rel == "bin/busybox" {
			continue // iproute2's ip replaces the applet
		}
		dst := filepath.Join(stage, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// addDynamic copies the host command name to dst in the initramfs, with its
// ELF interpreter and every shared library it needs, found in libDirs.
func addDynamic(stage, name, dst string) error {
	src, libs, err := elfClosure(name)
	if err != nil {
		return err
	}
	if err := copyFile(src, filepath.Join(stage, dst), 0o755); err != nil {
		return err
	}
	for _, p := range libs {
		if err := copyFile(p, filepath.Join(stage, p), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// elfClosure finds the host command name and returns its real path and
// the paths of its ELF interpreter and of every shared library it needs,
// directly or through another, found in libDirs.
func elfClosure(name string) (string, []string, error) {
	src, err := findTool(name)
	if err != nil {
		return "", nil, err
	}
	if src, err = filepath.EvalSymlinks(src); err != nil {
		return "", nil, err
	}
	var libs []string
	done := map[string]bool{}
	queue := []string{src}
	for len(queue) > 0 {
		f, err := elf.Open(queue[0])
		if err != nil {
			return "", nil, fmt.Errorf("read %s for its libraries: %w", queue[0], err)
		}
		queue = queue[1:]
		interp, needed, err := elfNeeds(f)
		if err != nil {
			return "", nil, fmt.Errorf("libraries of %s: %w", src, err)
		}
		paths := []string{}
		if interp != "" {
			paths = append(paths, interp)
		}
		for _, lib := range needed {
			p, err := findLib(lib)
			if err != nil {
				return "", nil, fmt.Errorf("%s needs %s: %w", src, lib, err)
			}
			paths = append(paths, p)
		}
		for _, p := range paths {
			if done[p] {
				continue
			}
			done[p] = true
			libs = append(libs, p)
			queue = append(queue, p)
		}
	}
	return src, libs, nil
}

func findLib(name string) (string, error) {
	for _, d := range libDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(libDirs, ", "))
}

// addModules copies modules and their dependencies, as modprobe resolves
// them in the unpacked kernel, and runs depmod on the result. A module the
// kernel builds in needs no file.
func addModules(ctx context.Context, kroot, release, stage string, modules []string) (int, error) {
	modDir := filepath.Join(kroot, "lib/modules", release)
	files := map[string]bool{}
	for _, m := range modules {
		out, err := output(ctx, "modprobe", "-d", kroot, "-S", release, "--show-depends", m)
		if err != nil {
			return 0, fmt.Errorf("module %s of kernel %s: %w", m, release, err)
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "insmod" {
				files[f[1]] = true
			}
		}
	}
	for f := range files {
		rel, err := filepath.Rel(kroot, f)
		if err != nil || strings.HasPrefix(rel, "..") {
			return 0, fmt.Errorf("modprobe named %s outside %s", f, kroot)
		}
		if err := copyFile(f, filepath.Join(stage, rel), 0o644); err != nil {
			return 0, err
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if err := copyFile(filepath.Join(modDir, f), filepath.Join(stage, "lib/modules", release, f), 0o644); err != nil {
			return 0, err
		}
	}
	if err := run(ctx, "", nil, "depmod", "-b", stage, release); err != nil {
		return 0, fmt.Errorf("depmod the initramfs modules: %w", err)
	}
	return len(files), nil
}

// copyFile copies src (following links) to dst with mode, creating dst's
// directory.
func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// copyTree copies the regular files under src to dst.
func copyTree(src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return copyFile(p, filepath.Join(dst, rel), 0o644)
	})
}

// writeArchive packs the tree at stage into a newc archive at out,
// owned by root, with zero times and the paths in lexical order, so equal
// trees give equal archives. It adds /dev/console, which the kernel opens
// for the init's standard streams.
func writeArchive(stage, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := cpio.NewWriter(bw)
	w.Add("dev", cpio.ModeDir|0o755, nil, 0, 0)
	w.Add("dev/console", cpio.ModeChar|0o600, nil, 5, 1)
	err = filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		if rel == "." || rel == "dev" {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(fi.Mode().Perm())
		switch {
		case fi.IsDir():
			w.Add(rel, cpio.ModeDir|perm, nil, 0, 0)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			w.Add(rel, cpio.ModeLink|0o777, []byte(target), 0, 0)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			w.Add(rel, cpio.ModeFile|perm, data, 0, 0)
		default:
			return fmt.Errorf("initramfs: %s is neither file, directory nor link", p)
		}
		return w.Err()
	})
	if err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// elfNeeds reads the program interpreter (empty for none) and the
// DT_NEEDED libraries of f, and closes f.
func elfNeeds(f *elf.File) (interp string, needed []string, err error) {
	needed, err = f.ImportedLibraries()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(p.Open())
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	f.Close()
	return interp, needed, err
}
