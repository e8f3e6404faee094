package assemble

import (
	"testing"

	"github.com/mlsgate/mlsgate/selinux"
)

// TestCompiledHostModulesIgnoreTheVersionStamp: the host modules of an
// application's next bundle differ only in their version stamp and are
// found compiled; other modules are not.
func TestCompiledHostModulesIgnoreTheVersionStamp(t *testing.T) {
	c := &compiledModules{seen: map[[32]byte]selinux.ModuleReport{}}
	v1 := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "# bundle version 1\nmodule mlsgate_host_analyst 1.1;\ntype a_t;\n"}}
	v2 := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "# bundle version 2\nmodule mlsgate_host_analyst 1.2;\ntype a_t;\n"}}
	other := []selinux.Module{{Name: "mlsgate_host_analyst", Target: selinux.TargetHost, TE: "module mlsgate_host_analyst 1.3;\ntype b_t;\n"}}
	if _, ok := c.get(v1); ok {
		t.Fatal("found before any compile")
	}
	c.put(v1, selinux.ModuleReport{Modules: []string{"mlsgate_host_analyst"}, Note: "compiled"})
	if rep, ok := c.get(v2); !ok || rep.Note != "compiled" || len(rep.Modules) != 1 {
		t.Fatalf("the next bundle's modules: %+v, %v", rep, ok)
	}
	if _, ok := c.get(other); ok {
		t.Fatal("other modules were found compiled")
	}
}
