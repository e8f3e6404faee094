package loader

import (
	"context"
	"os/exec"
	"slices"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// digests are the ModuleDigests of mods.
func digests(mods []selinux.Module) [][32]byte {
	var out [][32]byte
	for _, m := range mods {
		out = append(out, ModuleDigest(m))
	}
	return out
}

// TestPrecompileCoversTheFirstLoad: Precompile compiles, before any load,
// the guest modules the application's first load checks (its compile is
// then remembered) and hands the host side the host modules that load
// installs, text for text but the version stamp.
func TestPrecompileCoversTheFirstLoad(t *testing.T) {
	if _, err := exec.LookPath("checkmodule"); err != nil {
		t.Skip("needs checkmodule to compile the guest modules: apt-get install checkpolicy semodule-utils")
	}
	r := newRig(t, policystore.SystemPolicy{})
	var mu sync.Mutex
	var precompiled, installed [][32]byte
	r.host.Precompile = func(_ context.Context, mods []selinux.Module) error {
		mu.Lock()
		defer mu.Unlock()
		precompiled = append(precompiled, digests(mods)...)
		return nil
	}
	r.host.SELinux = func(_ context.Context, mods []selinux.Module) (*selinux.ModuleReport, error) {
		mu.Lock()
		defer mu.Unlock()
		installed = append(installed, digests(mods)...)
		return &selinux.ModuleReport{}, nil
	}
	if err := r.l.Precompile(t.Context()); err != nil {
		t.Fatal(err)
	}
	compiled := r.l.modules.done.Kept()
	pushed := &keepingPusher{}
	r.l.push = pushed
	if _, err := r.l.Load(t.Context(), Caller{Host: true}, "http://ws1.analyst.example/profile"); err != nil {
		t.Fatal(err)
	}
	if pushed.b == nil || len(pushed.b.Modules) == 0 {
		t.Fatal("the load pushed no guest module to compare")
	}
	for _, m := range pushed.b.Modules {
		if _, ok := compiled[ModuleDigest(m)]; !ok {
			t.Errorf("guest module %s was not compiled before the load", m.Name)
		}
	}
	if len(installed) == 0 {
		t.Fatal("the load installed no host modules")
	}
	for _, d := range installed {
		if !slices.Contains(precompiled, d) {
			t.Errorf("host module %x installed by the load was not precompiled (precompiled %x)", d[:6], precompiled)
		}
	}
}

// keepingPusher keeps the bundle pushed last.
type keepingPusher struct {
	mu sync.Mutex
	b  *policystore.Bundle
}

func (p *keepingPusher) Push(_ context.Context, _ *Guest, b *policystore.Bundle) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.b = b
	return nil
}
