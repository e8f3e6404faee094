package loader

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/mlsgate/mlsgate/policystore"
)

// moduleChecks compiles bundles' guest SELinux modules on the host
// (checkmodule, semodule_package), once per module text: a guest whose
// SELinux is not active loads nothing and no longer compiles them (package
// updated), so the loader is where a module that does not compile is
// caught. Every guest of an application gets the same module text, so the
// compile is paid by the application's first configuration only.
type moduleChecks struct {
	mu   sync.Mutex
	done map[[32]byte]error // by module digest: nil compiled, else why not
}

func moduleDigest(m policystore.Module) [32]byte {
	h := sha256.New()
	for _, s := range []string{m.Name, m.Target, m.TE, m.IF, m.FC} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// check compiles b's guest modules not compiled before. Without the
// toolchain on the host nothing is compiled and nothing is refused (the
// host's own modules are handled as Host.SELinux handles them).
func (c *moduleChecks) check(ctx context.Context, b *policystore.Bundle) error {
	var todo []policystore.Module
	c.mu.Lock()
	if c.done == nil {
		c.done = map[[32]byte]error{}
	}
	for _, m := range b.Modules {
		if m.Target != policystore.TargetGuest {
			continue
		}
		if err, ok := c.done[moduleDigest(m)]; ok {
			if err != nil {
				c.mu.Unlock()
				return err
			}
			continue
		}
		todo = append(todo, m)
	}
	c.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	dir, err := os.MkdirTemp("", "mlsgate-guest-modules-")
	if err != nil {
		return fmt.Errorf("guest modules: %w", err)
	}
	defer os.RemoveAll(dir)
	for _, m := range todo {
		_, err := m.Package(ctx, dir)
		if errors.Is(err, policystore.ErrNoToolchain) {
			return nil
		}
		if err != nil && ctx.Err() != nil {
			return err // cut short, not refused: try again next time
		}
		if err != nil {
			err = fmt.Errorf("guest module %s does not compile: %w", m.Name, err)
		}
		c.mu.Lock()
		c.done[moduleDigest(m)] = err
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}
