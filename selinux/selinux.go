package selinux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	goselinux "github.com/opencontainers/selinux/go-selinux"
)

// SELinux loads a bundle's modules into the running kernel's policy with
// Debian's semodule: all of a bundle's modules in one semodule call, which
// libsemanage commits as one transaction (all or none), and semodule loads
// the rebuilt policy. Where SELinux is not active it still compiles them
// with checkmodule and semodule_package, so a broken module is found on
// every host, and says plainly that nothing was loaded.
type SELinux struct {
	// FS, when set, is a selinuxfs mount whose enforce file decides whether
	// SELinux is active, in place of the running kernel's state as
	// github.com/opencontainers/selinux reports it (tests use a directory).
	FS string
	// Run runs a command and returns its combined output; nil means exec.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
	// Semodule says that the running policy was loaded from this host's
	// semodule store, so modules are installed with semodule. semodule
	// loads the store's policy whole: on a kernel that runs a policy the
	// store did not make (a test policy loaded at boot), installing one
	// module would replace everything else the kernel knew. Without it,
	// modules are compiled and the report says why they were not loaded.
	Semodule bool
}

// ModuleReport says what happened to a bundle's modules.
type ModuleReport struct {
	Modules []string `json:"modules"`
	// Removed are the modules the same transaction removed.
	Removed []string `json:"removed,omitempty"`
	Loaded  bool     `json:"loaded"`
	Note    string   `json:"note"`
}

// NoteInstalled is the report's note when semodule installed the modules.
const NoteInstalled = "modules installed with semodule (one transaction)"

func (s SELinux) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if s.Run != nil {
		return s.Run(ctx, name, args...)
	}
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// Active reports whether SELinux is enabled in the running kernel with a
// policy loaded.
func (s SELinux) Active() bool {
	if s.FS != "" {
		_, err := os.Stat(filepath.Join(s.FS, "enforce"))
		return err == nil
	}
	return goselinux.GetEnabled()
}

// where names what Active looked at, for notes.
func (s SELinux) where() string {
	if s.FS != "" {
		return "no " + s.FS + "/enforce"
	}
	return "the kernel has no SELinux policy loaded"
}

// packageAll compiles mods into work and returns their names and the
// semodule arguments that install them (-i <pp> each).
func packageAll(ctx context.Context, mods []Module, work string) (names, args []string, err error) {
	for _, m := range mods {
		pp, err := m.Package(ctx, work)
		if err != nil {
			return nil, nil, err
		}
		names = append(names, m.Name)
		args = append(args, "-i", pp)
	}
	return names, args, nil
}

// semodule runs semodule with args, where SELinux is active.
func (s SELinux) semodule(ctx context.Context, args []string) error {
	if s.Run == nil {
		if _, err := exec.LookPath("semodule"); err != nil {
			return errors.New("SELinux is active but semodule is missing: apt-get install -y policycoreutils (and a module store under /var/lib/selinux, see /etc/selinux/config)")
		}
	}
	if out, err := s.run(ctx, "semodule", args...); err != nil {
		return fmt.Errorf("semodule %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Install compiles every module into work and, where SELinux is active,
// installs them all with one semodule call.
func (s SELinux) Install(ctx context.Context, mods []Module, work string) (*ModuleReport, error) {
	return s.Update(ctx, mods, nil, work)
}

// Update is Install that also removes, in the same semodule transaction,
// the modules named in remove that mods does not carry (those of an
// earlier bundle that this one drops).
func (s SELinux) Update(ctx context.Context, mods []Module, remove []string, work string) (*ModuleReport, error) {
	rep := &ModuleReport{}
	carried := map[string]bool{}
	for _, m := range mods {
		carried[m.Name] = true
	}
	var removeArgs []string
	for _, n := range remove {
		if !carried[n] && !slices.Contains(rep.Removed, n) {
			rep.Removed = append(rep.Removed, n)
			removeArgs = append(removeArgs, "-r", n)
		}
	}
	if len(mods) == 0 && len(removeArgs) == 0 {
		rep.Note = "no modules"
		return rep, nil
	}
	names, args, err := packageAll(ctx, mods, work)
	if errors.Is(err, ErrNoToolchain) {
		// A minimal image may have no toolchain. The policy store compiled
		// these modules when it made the bundle; say plainly that nothing
		// was compiled or loaded here.
		for _, m := range mods {
			rep.Modules = append(rep.Modules, m.Name)
		}
		rep.Removed = nil
		rep.Note = "no SELinux toolchain on this host (" + err.Error() + "): the modules were neither compiled nor loaded here; the loaded policy must already define their types"
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	rep.Modules = names
	if !s.Active() {
		rep.Removed = nil
		rep.Note = fmt.Sprintf("SELinux is not active on this host (%s): the modules compile with checkmodule but were not loaded", s.where())
		return rep, nil
	}
	if !s.Semodule {
		rep.Removed = nil
		rep.Note = "SELinux is active, but the running policy is not declared to come from this host's semodule store (--semodule): the modules compile with checkmodule but were not installed, since semodule would replace the running policy with the store's"
		return rep, nil
	}
	if err := s.semodule(ctx, append(removeArgs, args...)); err != nil {
		return nil, err
	}
	rep.Loaded = true
	rep.Note = NoteInstalled
	return rep, nil
}

// Replace undoes an Install after a later step failed: in one semodule
// transaction it removes the modules named in installed that prev does not
// have and installs prev (the modules in force before, compiled into
// work), which puts back their earlier versions and those an Update
// removed. Where SELinux is not active it does nothing.
func (s SELinux) Replace(ctx context.Context, installed []string, prev []Module, work string) error {
	if !s.Active() {
		return nil
	}
	keep := map[string]bool{}
	for _, m := range prev {
		keep[m.Name] = true
	}
	var args []string
	for _, n := range installed {
		if !keep[n] {
			args = append(args, "-r", n)
		}
	}
	_, inst, err := packageAll(ctx, prev, work)
	if err != nil {
		return fmt.Errorf("recompile the previous modules: %w", err)
	}
	args = append(args, inst...)
	if len(args) == 0 {
		return nil
	}
	return s.semodule(ctx, args)
}

// Remove removes modules by name where SELinux is active, in one
// transaction.
func (s SELinux) Remove(ctx context.Context, names ...string) error {
	if !s.Active() || len(names) == 0 {
		return nil
	}
	args := []string{}
	for _, n := range slices.Compact(slices.Sorted(slices.Values(names))) {
		args = append(args, "-r", n)
	}
	return s.semodule(ctx, args)
}
