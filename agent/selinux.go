package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/mlsgate/mlsgate/policystore"
)

// SELinux loads a bundle's host modules. Where SELinux is active it installs
// them with semodule (one transaction for all of them); where it is not, it
// still compiles them with checkmodule and semodule_package, so a broken
// module is found on every host, and says plainly that nothing was loaded.
type SELinux struct {
	// FS is the selinuxfs mount; "" means /sys/fs/selinux.
	FS string
	// Run runs a command and returns its combined output; nil means exec.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ModuleReport says what happened to a bundle's modules.
type ModuleReport struct {
	Modules []string `json:"modules"`
	Loaded  bool     `json:"loaded"`
	Note    string   `json:"note"`
}

func (s SELinux) fs() string {
	if s.FS == "" {
		return "/sys/fs/selinux"
	}
	return s.FS
}

func (s SELinux) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if s.Run != nil {
		return s.Run(ctx, name, args...)
	}
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// Active reports whether SELinux is enabled in the running kernel.
func (s SELinux) Active() bool {
	_, err := os.Stat(filepath.Join(s.fs(), "enforce"))
	return err == nil
}

// Install compiles every module into work and, where SELinux is active,
// installs them all with one semodule call.
func (s SELinux) Install(ctx context.Context, mods []policystore.Module, work string) (*ModuleReport, error) {
	rep := &ModuleReport{}
	var args []string
	for _, m := range mods {
		pp, err := m.Package(ctx, work)
		if errors.Is(err, policystore.ErrNoToolchain) {
			// A minimal guest image may have no toolchain. The policy store
			// compiled these modules when it made the bundle; say plainly
			// that nothing was compiled or loaded here.
			rep.Modules = nil
			for _, m := range mods {
				rep.Modules = append(rep.Modules, m.Name)
			}
			rep.Note = "no SELinux toolchain on this host (" + err.Error() + "): the modules were neither compiled nor loaded here; the loaded policy must already define their types"
			return rep, nil
		}
		if err != nil {
			return nil, err
		}
		rep.Modules = append(rep.Modules, m.Name)
		args = append(args, "-i", pp)
	}
	if len(mods) == 0 {
		rep.Note = "no modules"
		return rep, nil
	}
	if !s.Active() {
		rep.Note = fmt.Sprintf("SELinux is not active on this host (no %s/enforce): the modules compile with checkmodule but were not loaded", s.fs())
		return rep, nil
	}
	if _, err := exec.LookPath("semodule"); err != nil && s.Run == nil {
		return nil, errors.New("SELinux is active but semodule is missing: apt-get install -y policycoreutils")
	}
	if out, err := s.run(ctx, "semodule", args...); err != nil {
		return nil, fmt.Errorf("semodule %v: %v: %s", args, err, out)
	}
	rep.Loaded = true
	rep.Note = "installed with semodule"
	return rep, nil
}

// Remove removes modules by name where SELinux is active.
func (s SELinux) Remove(ctx context.Context, names ...string) error {
	if !s.Active() || len(names) == 0 {
		return nil
	}
	args := []string{}
	for _, n := range names {
		args = append(args, "-r", n)
	}
	if out, err := s.run(ctx, "semodule", args...); err != nil {
		return fmt.Errorf("semodule %v: %v: %s", args, err, out)
	}
	return nil
}
