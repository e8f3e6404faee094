package updatedaemon

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestUnchangedPartsAreNotAppliedAgain: a push that changes only the SAs
// (as a rotation's do) installs no modules and loads no mapper policy
// again; a push that changes them does.
func TestUnchangedPartsAreNotAppliedAgain(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	v1 := analystBundle(t, p, 1, 0x4000)
	if _, err := h.client.Push(ctxT(t), h.addr, v1); err != nil {
		t.Fatal(err)
	}
	// A rotation's push: v1 with new SPIs and keys (the generator would
	// also stamp its modules with the version).
	v2 := analystBundle(t, p, 2, 0x5000)
	v2.Modules, v2.MapperPolicy = v1.Modules, v1.MapperPolicy
	rep, err := h.client.Push(ctxT(t), h.addr, v2)
	if err != nil {
		t.Fatal(err)
	}
	calls := h.fake.Calls()
	want := []string{"modules mlsgate_analyst", "mapper analyst-v1.policy",
		fmt.Sprintf("xfrm %d SAs %d policies", len(v1.States), len(v1.Policies)),
		fmt.Sprintf("xfrm %d SAs %d policies", len(v2.States), len(v2.Policies))}
	if !reflect.DeepEqual(calls, want) {
		t.Fatalf("calls %q, want %q (v2 changes only its SAs)", calls, want)
	}
	if !strings.Contains(rep.Modules.Note, "unchanged since v1") || rep.Modules.Loaded || rep.Mapper.Name != "analyst-v1.policy" {
		t.Errorf("v2 report: modules %+v, mapper %+v", rep.Modules, rep.Mapper)
	}
	if _, pol := h.fake.MapperPolicy(); pol != v1.MapperPolicy {
		t.Error("the mapper policy in force changed")
	}
	// A changed mapper policy is loaded.
	v3 := analystBundle(t, p, 3, 0x6000)
	v3.Modules, v3.MapperPolicy = v1.Modules, v1.MapperPolicy+"\n# changed\n"
	if _, err := h.client.Push(ctxT(t), h.addr, v3); err != nil {
		t.Fatal(err)
	}
	if got := h.fake.Calls(); got[len(got)-2] != "mapper analyst-v3.policy" {
		t.Errorf("calls after a changed mapper policy: %q", got)
	}
}
