package updatedaemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
)

// The steps of FakeApplier, as Fail receives them.
const (
	StepModules = "modules"
	StepMapper  = "mapper"
	StepXFRM    = "xfrm"
)

// FakeApplier is an Applier that changes nothing outside itself, for tests
// of this package and of the loader: it keeps the mapper policy and the
// XFRM set it was last given, records every call, and fails a step when
// Fail says so. Its mapper policies are parsed as the real mapper would, so
// a bad policy fails here too. Set Fail before first use; the other methods
// are safe for concurrent use.
type FakeApplier struct {
	// Fail, if set, is asked before each step ("modules", "mapper",
	// "xfrm"); a non-nil answer fails that call without changing anything.
	Fail func(step string) error

	mu           sync.Mutex
	calls        []string
	mapperName   string
	mapperPolicy string
	xfrm         XFRMSet
}

// Calls lists the calls so far, oldest first: "modules NAME,...",
// "mapper NAME", "xfrm N SAs M policies".
func (f *FakeApplier) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// MapperPolicy returns the name and text of the mapper policy in force.
func (f *FakeApplier) MapperPolicy() (name, policy string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mapperName, f.mapperPolicy
}

// XFRM returns the XFRM set in force.
func (f *FakeApplier) XFRM() XFRMSet {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.xfrm
}

func (f *FakeApplier) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *FakeApplier) failed(step string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(step)
}

// InstallModules records the module names; the modules are reported as
// validated only.
func (f *FakeApplier) InstallModules(_ context.Context, mods []selinux.Module, _ []string) (ModulesReport, error) {
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.Name
	}
	f.record("modules " + strings.Join(names, ","))
	if err := f.failed(StepModules); err != nil {
		return ModulesReport{}, err
	}
	return ModulesReport{Modules: names, Note: "fake applier: nothing compiled or loaded"}, nil
}

// RestoreModules records the call; the fake loaded nothing.
func (f *FakeApplier) RestoreModules(_ context.Context, installed ModulesReport, prev []selinux.Module) error {
	names := make([]string, len(prev))
	for i, m := range prev {
		names[i] = m.Name
	}
	f.record("restore modules " + strings.Join(installed.Modules, ",") + " to " + strings.Join(names, ","))
	return nil
}

// LoadMapperPolicy parses the policy and keeps it.
func (f *FakeApplier) LoadMapperPolicy(name string, policy []byte) (MapperReport, error) {
	f.record("mapper " + name)
	if err := f.failed(StepMapper); err != nil {
		return MapperReport{}, err
	}
	p, err := mapper.ParsePolicy(name, policy)
	if err != nil {
		return MapperReport{}, err
	}
	f.mu.Lock()
	f.mapperName, f.mapperPolicy = name, string(policy)
	f.mu.Unlock()
	return mapperReport(name, p), nil
}

// SyncXFRM replaces the kept set with to and reports the difference to the
// set it held (not to from: like the kernel, the fake may have lost it).
func (f *FakeApplier) SyncXFRM(_ context.Context, _, to XFRMSet) (XFRMReport, error) {
	f.record(fmt.Sprintf("xfrm %d SAs %d policies", len(to.States), len(to.Policies)))
	if err := f.failed(StepXFRM); err != nil {
		return XFRMReport{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var rep XFRMReport
	rep.StatesAdded, rep.StatesUpdated, rep.StatesRemoved, rep.StatesUnchanged = diffEntries(f.xfrm.States, to.States,
		func(s xfrm.State) string { x := s; return fmt.Sprint(stateKey(x)) },
		func(s xfrm.State) string { return s.String() })
	rep.PoliciesAdded, rep.PoliciesUpdated, rep.PoliciesRemoved, rep.PoliciesUnchanged = diffEntries(f.xfrm.Policies, to.Policies,
		func(p xfrm.Policy) string { return fmt.Sprint(policyKey(p, true)) },
		func(p xfrm.Policy) string { return p.String() })
	f.xfrm = XFRMSet{States: append([]xfrm.State(nil), to.States...), Policies: append([]xfrm.Policy(nil), to.Policies...)}
	return rep, nil
}

// diffEntries compares two lists by key and content.
func diffEntries[T any](cur, to []T, key func(T) string, desc func(T) string) (added, updated, removed []string, unchanged int) {
	old := map[string]T{}
	for _, e := range cur {
		old[key(e)] = e
	}
	want := map[string]bool{}
	for _, e := range to {
		k := key(e)
		want[k] = true
		o, ok := old[k]
		switch {
		case !ok:
			added = append(added, desc(e))
		case sameJSON(o, e):
			unchanged++
		default:
			updated = append(updated, desc(e))
		}
	}
	for _, e := range cur {
		if !want[key(e)] {
			removed = append(removed, desc(e))
		}
	}
	return added, updated, removed, unchanged
}

func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
