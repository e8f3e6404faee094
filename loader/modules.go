package loader

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// moduleChecks compiles bundles' guest SELinux modules on the host
// (checkmodule, semodule_package), once per module text: a guest whose
// SELinux is not active loads nothing and no longer compiles them (package
// updated), so the loader is where a module that does not compile is
// caught. Every guest of an application gets the same module text but for
// the version stamp (see moduleDigest), so the compile is paid by the
// application's first configuration only.
type moduleChecks struct {
	// done: by module digest, nil compiled, else why not.
	done Memo[[32]byte, error]
}

// ModuleDigest names what a module's compile depends on (moduleDigest), for
// callers that remember compiles (the wiring's host modules).
func ModuleDigest(m selinux.Module) [32]byte { return moduleDigest(m) }

// moduleDigest names what a module's compile depends on. The policy store
// stamps each bundle's modules with its version (in the module statement
// and a comment), so two bundles of an application differ only there: a
// numeric module version and full-line comments do not change whether a
// module compiles, and are left out.
func moduleDigest(m selinux.Module) [32]byte {
	h := sha256.New()
	for _, s := range []string{m.Name, m.Target, compileText(m.TE), compileText(m.IF), compileText(m.FC)} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

var moduleStmt = regexp.MustCompile(`^(\s*module\s+\S+\s+)[0-9]+(\.[0-9]+)*(\s*;\s*)$`)

// compileText is text without its full-line comments, and with a numeric
// module version replaced by 0.
func compileText(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		b.WriteString(moduleStmt.ReplaceAllString(line, "${1}0${3}"))
		b.WriteByte('\n')
	}
	return b.String()
}

// check compiles b's guest modules not compiled before. Without the
// toolchain on the host nothing is compiled and nothing is refused (the
// host's own modules are handled as Host.SELinux handles them).
func (c *moduleChecks) check(ctx context.Context, b *policystore.Bundle) error {
	for _, m := range b.Modules {
		if m.Target != selinux.TargetGuest {
			continue
		}
		if err := c.compile(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// compile compiles m unless a module of its digest was compiled before.
// A compile of the same digest in progress (the precompile at the
// loader's start, or another load) is waited for rather than run twice
// at once; if it ends without a verdict (cut short), this one compiles.
func (c *moduleChecks) compile(ctx context.Context, m selinux.Module) error {
	verdict, err := c.done.Do(ctx, moduleDigest(m), func() (error, bool) {
		dir, err := os.MkdirTemp("", "mlsgate-guest-modules-")
		if err != nil {
			return fmt.Errorf("guest modules: %w", err), false
		}
		defer os.RemoveAll(dir)
		_, err = m.Package(ctx, dir)
		switch {
		case errors.Is(err, selinux.ErrNoToolchain):
			return nil, false
		case err != nil && ctx.Err() != nil:
			return err, false // cut short, not refused: try again next time
		case err != nil:
			return fmt.Errorf("guest module %s does not compile: %w", m.Name, err), true
		}
		return nil, true
	})
	if err != nil {
		return err
	}
	return verdict
}
