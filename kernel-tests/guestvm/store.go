package guestvm

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// StoreName is the SELinux policy store of the guest (SELINUXTYPE): the
// store lives in /var/lib/selinux/mls, the policy it builds in
// /etc/selinux/mls/policy.
const StoreName = "mls"

// semanageConf configures libsemanage in the guest: the store is edited in
// place (no policy server), the expanded policy is not re-checked, and no
// home directory contexts are generated (the guest has no passwd entries
// that need them).
const semanageConf = `module-store = direct
expand-check = 0
disable-genhomedircon = true
usepasswd = false
`

// selinuxConfig names the store for semodule and load_policy. The mode is
// what the init sets, not this file: the init loads the policy itself.
const selinuxConfig = "SELINUX=permissive\nSELINUXTYPE=" + StoreName + "\n"

// SELinuxUserland are the programs the guest needs to install a bundle's
// modules at run time, as the update daemon does: checkmodule and
// semodule_package compile the bundle's .te text, semodule installs them
// in one transaction and loads the result, hll/pp converts a .pp to CIL for
// it, setfiles and sefcontext_compile run on every commit (semodule fails
// without them, even with no file contexts), load_policy loads the store's
// policy. Each is copied with its shared libraries from the host, where the
// Debian packages in Packages installed them.
var SELinuxUserland = []struct{ Name, Path string }{
	{"semodule", "/usr/sbin/semodule"},
	{"load_policy", "/usr/sbin/load_policy"},
	{"setfiles", "/usr/sbin/setfiles"},
	{"sefcontext_compile", "/usr/sbin/sefcontext_compile"},
	{"/usr/libexec/selinux/hll/pp", "/usr/libexec/selinux/hll/pp"},
	{"checkmodule", "/usr/bin/checkmodule"},
	{"semodule_package", "/usr/bin/semodule_package"},
}

// BuildStore makes, under root, the SELinux module store of the guest:
// root/etc/selinux (config, semanage.conf, the built policy) and
// root/var/lib/selinux/<StoreName> (the store) with BasePolicySource as its
// only module, the base. It runs checkmodule, semodule_package and
// semodule -p on the host, which loads nothing into the host's kernel.
func BuildStore(ctx context.Context, root string) error {
	work := filepath.Join(root, ".base")
	for _, d := range []string{work, filepath.Join(root, "etc/selinux"), filepath.Join(root, "var/lib/selinux")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	defer os.RemoveAll(work)
	conf := filepath.Join(work, "base.conf")
	if err := os.WriteFile(conf, []byte(BasePolicySource()), 0o644); err != nil {
		return err
	}
	// No module line in the source: checkmodule makes a base module.
	if err := run(ctx, "", nil, "checkmodule", "-M", "-U", "allow", "-o", filepath.Join(work, "base.mod"), conf); err != nil {
		return fmt.Errorf("compile the guest base policy: %w", err)
	}
	if err := run(ctx, "", nil, "semodule_package", "-o", filepath.Join(work, "base.pp"), "-m", filepath.Join(work, "base.mod")); err != nil {
		return fmt.Errorf("package the guest base policy: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/selinux/semanage.conf"), []byte(semanageConf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/selinux/config"), []byte(selinuxConfig), 0o644); err != nil {
		return err
	}
	if err := run(ctx, "", nil, "semodule", "-p", root, "-s", StoreName, "-n", "-i", filepath.Join(work, "base.pp")); err != nil {
		return fmt.Errorf("build the guest's module store in %s: %w", root, err)
	}
	pol := filepath.Join(root, "etc/selinux", StoreName, "policy/policy.33")
	if _, err := os.Stat(pol); err != nil {
		return fmt.Errorf("semodule built no %s: %w", pol, err)
	}
	return nil
}

// copyStore copies the tree at src to dst: directories (empty ones too:
// libsemanage expects its layout), regular files with their modes, and
// symbolic links.
func copyStore(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(out, fi.Mode().Perm()|0o700)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, out)
		case d.Type().IsRegular():
			return copyFile(p, out, fi.Mode().Perm()|0o600)
		}
		return fmt.Errorf("module store: %s is neither file, directory nor link", p)
	})
}
