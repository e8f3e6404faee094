package assemble

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mlsgate/mlsgate/selinux"
)

// TestCompiledHostModulesIgnoreTheVersionStamp: the host modules of an
// application's next bundle differ only in their version stamp and are
// found compiled; other modules are not.
func TestCompiledHostModulesIgnoreTheVersionStamp(t *testing.T) {
	c := &compiledModules{}
	v1 := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "# bundle version 1\nmodule mlsgate_host_analyst 1.1;\ntype a_t;\n"}}
	v2 := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "# bundle version 2\nmodule mlsgate_host_analyst 1.2;\ntype a_t;\n"}}
	other := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "module mlsgate_host_analyst 1.3;\ntype b_t;\n"}}
	var runs atomic.Int32
	run := func(_ context.Context, mods []selinux.Module) (*selinux.ModuleReport, error) {
		runs.Add(1)
		return &selinux.ModuleReport{Modules: []string{mods[0].Name}, Note: "compiled"}, nil
	}
	for _, mods := range [][]selinux.Module{v1, v2} {
		if rep, err := c.compile(t.Context(), mods, run); err != nil || rep.Note != "compiled" || len(rep.Modules) != 1 {
			t.Fatalf("compile: %+v, %v", rep, err)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("the next bundle's modules were compiled again (%d compiles, want 1)", n)
	}
	if _, err := c.compile(t.Context(), other, run); err != nil || runs.Load() != 2 {
		t.Fatalf("other modules: %v, %d compiles, want 2", err, runs.Load())
	}
}

// TestCompiledHostModulesWaitForTheCompileInProgress: a load that needs
// modules the precompile is compiling waits for it and uses its result
// (one compile, not two at once); if that compile fails, the load
// compiles them itself.
func TestCompiledHostModulesWaitForTheCompileInProgress(t *testing.T) {
	c := &compiledModules{}
	mods := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "module mlsgate_host_analyst 1.1;\ntype a_t;\n"}}
	for _, precompileFails := range []bool{false, true} {
		*c = compiledModules{}
		started, release := make(chan struct{}), make(chan struct{})
		var runs atomic.Int32
		precompile := func(context.Context, []selinux.Module) (*selinux.ModuleReport, error) {
			runs.Add(1)
			close(started)
			<-release
			if precompileFails {
				return nil, errors.New("cut short")
			}
			return &selinux.ModuleReport{Note: "by the precompile"}, nil
		}
		load := func(context.Context, []selinux.Module) (*selinux.ModuleReport, error) {
			runs.Add(1)
			return &selinux.ModuleReport{Note: "by the load"}, nil
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); c.compile(t.Context(), mods, precompile) }() //nolint:errcheck // the load's result is checked
		<-started
		got := make(chan *selinux.ModuleReport, 1)
		go func() {
			rep, err := c.compile(t.Context(), mods, load)
			if err != nil {
				t.Error(err)
			}
			got <- rep
		}()
		close(release)
		rep := <-got
		wg.Wait()
		want, wantRuns := "by the precompile", int32(1)
		if precompileFails {
			want, wantRuns = "by the load", 2
		}
		if rep == nil || rep.Note != want || runs.Load() != wantRuns {
			t.Errorf("precompile fails %v: the load got %+v after %d compiles, want %q after %d", precompileFails, rep, runs.Load(), want, wantRuns)
		}
	}
}

// TestStartPrecompilesModules: Start compiles every application's modules
// in the background and says when it is done; a load right after Start
// (before the precompile ends) still configures its guest.
func TestStartPrecompilesModules(t *testing.T) {
	rig := newSPIRig(t, 1024)
	res := rig.load("http://ws1.analyst.example/profile") // perhaps before the precompile ends
	if res.How != "boot" || res.Version == 0 {
		t.Fatalf("load during the precompile: %+v", res)
	}
	select {
	case <-rig.r.Precompiled:
	case <-t.Context().Done():
		t.Fatal("the precompile never ended")
	}
	if rig.r.PrecompileErr != nil {
		t.Errorf("precompile: %v", rig.r.PrecompileErr)
	}
}
