package selinux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Module is one SELinux policy module: its type enforcement, interface and
// file-context texts. The policy store writes them into bundles; this
// package compiles and installs them.
type Module struct {
	Name string `json:"name"`
	// Target is where it is loaded: "guest" or "host".
	Target string `json:"target"`
	TE     string `json:"te"`
	IF     string `json:"if,omitempty"`
	FC     string `json:"fc,omitempty"`
}

// Module targets.
const (
	TargetGuest = "guest"
	TargetHost  = "host"
)

// ErrNoToolchain is returned when checkmodule or semodule_package is not
// installed.
var ErrNoToolchain = errors.New("SELinux module toolchain not installed: apt-get install -y checkpolicy semodule-utils")

// moduleNameRE is what a module name may be: it names files in the work
// directory (the policy store's own name rule, with '_' allowed).
var moduleNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,39}$`)

// Package compiles the module with the real SELinux toolchain into dir:
// checkmodule -M -m (an MLS policy module) and semodule_package with the
// file contexts. It returns the path of the policy package (.pp) that
// semodule -i loads. Files are named after the module, as checkmodule
// requires. A refusal quotes the tool's own message, which names the line
// of the .te file.
func (m Module) Package(ctx context.Context, dir string) (string, error) {
	checkmodule, err1 := exec.LookPath("checkmodule")
	semodulePackage, err2 := exec.LookPath("semodule_package")
	if err1 != nil || err2 != nil {
		return "", ErrNoToolchain
	}
	if !moduleNameRE.MatchString(m.Name) {
		return "", fmt.Errorf("module name %q is not a safe file name", m.Name)
	}
	base := filepath.Join(dir, m.Name)
	if err := os.WriteFile(base+".te", []byte(m.TE), 0o600); err != nil {
		return "", err
	}
	run := func(tool string, args ...string) error {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, tool, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s refuses module %s: %v: %s", filepath.Base(tool), m.Name, err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	if err := run(checkmodule, "-M", "-m", "-o", base+".mod", base+".te"); err != nil {
		return "", err
	}
	args := []string{"-o", base + ".pp", "-m", base + ".mod"}
	if m.FC != "" {
		if err := os.WriteFile(base+".fc", []byte(m.FC), 0o600); err != nil {
			return "", err
		}
		args = append(args, "-f", base+".fc")
	}
	if err := run(semodulePackage, args...); err != nil {
		return "", err
	}
	if fi, err := os.Stat(base + ".pp"); err != nil || fi.Size() == 0 {
		return "", fmt.Errorf("semodule_package wrote no package for %s: %v", m.Name, err)
	}
	return base + ".pp", nil
}
