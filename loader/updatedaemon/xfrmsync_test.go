package updatedaemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// fakeKernel is an XFRM database with the kernel's identities: SAs by
// destination, SPI and protocol; policies by direction, selector and (where
// contexts are kept) context. Without contexts it drops them, as a kernel
// without SELinux does.
type fakeKernel struct {
	contexts bool
	states   map[saKey]xfrm.State
	policies map[polKey]xfrm.Policy
	ops      []string
	// fail fails the operation whose description starts with it, once
	// skip such operations have passed.
	fail string
	skip int
}

func newFakeKernel(contexts bool) *fakeKernel {
	return &fakeKernel{contexts: contexts, states: map[saKey]xfrm.State{}, policies: map[polKey]xfrm.Policy{}}
}

var errInjected = errors.New("injected kernel failure")

func (k *fakeKernel) op(desc string) error {
	if k.fail != "" && strings.HasPrefix(desc, k.fail) {
		if k.skip == 0 {
			return errInjected
		}
		k.skip--
	}
	k.ops = append(k.ops, desc)
	return nil
}

func (k *fakeKernel) States() ([]xfrm.State, error) {
	var out []xfrm.State
	for _, s := range k.states {
		out = append(out, s)
	}
	return out, nil
}

func (k *fakeKernel) Policies() ([]xfrm.Policy, error) {
	var out []xfrm.Policy
	i := uint32(1)
	for _, p := range k.policies {
		p.Index = i // the kernel numbers its policies
		i += 8
		out = append(out, p)
	}
	return out, nil
}

func (k *fakeKernel) AddState(s xfrm.State) error {
	if _, ok := k.states[stateKey(s)]; ok {
		return fmt.Errorf("add SA %#x: file exists", s.SPI)
	}
	if err := k.op(fmt.Sprintf("add SA %#x", s.SPI)); err != nil {
		return err
	}
	if !k.contexts {
		s.Context = ""
	}
	k.states[stateKey(s)] = s
	return nil
}

func (k *fakeKernel) DeleteState(dst netip.Addr, spi uint32, proto xfrm.Proto) error {
	key := saKey{dst, spi, proto}
	if _, ok := k.states[key]; !ok {
		return fmt.Errorf("delete SA %#x: no such process", spi)
	}
	if err := k.op(fmt.Sprintf("delete SA %#x", spi)); err != nil {
		return err
	}
	delete(k.states, key)
	return nil
}

func (k *fakeKernel) store(p xfrm.Policy) {
	if !k.contexts {
		p.Context = ""
	}
	p.Index = 0
	k.policies[policyKey(p, k.contexts)] = p
}

func (k *fakeKernel) AddPolicy(p xfrm.Policy) error {
	if _, ok := k.policies[policyKey(p, k.contexts)]; ok {
		return fmt.Errorf("add policy %s: file exists", p.Dst)
	}
	if err := k.op("add policy " + p.Dst.String() + " " + p.Dir.String()); err != nil {
		return err
	}
	k.store(p)
	return nil
}

func (k *fakeKernel) UpdatePolicy(p xfrm.Policy) error {
	if err := k.op("update policy " + p.Dst.String() + " " + p.Dir.String()); err != nil {
		return err
	}
	k.store(p)
	return nil
}

func (k *fakeKernel) DeletePolicy(p xfrm.Policy) error {
	key := policyKey(p, k.contexts)
	if _, ok := k.policies[key]; !ok {
		return fmt.Errorf("delete policy %s: no such file", p.Dst)
	}
	if err := k.op("delete policy " + p.Dst.String() + " " + p.Dir.String()); err != nil {
		return err
	}
	delete(k.policies, key)
	return nil
}

// holds reports whether the kernel holds exactly set plus extra.
func (k *fakeKernel) holds(t *testing.T, set XFRMSet, extraStates int) {
	t.Helper()
	if len(k.states) != len(set.States)+extraStates || len(k.policies) != len(set.Policies) {
		t.Errorf("kernel holds %d SAs and %d policies, want %d and %d", len(k.states), len(k.policies), len(set.States)+extraStates, len(set.Policies))
	}
	for _, ps := range set.States {
		want := ps
		got, ok := k.states[stateKey(want)]
		if !ok || !sameState(got, want, k.contexts) {
			t.Errorf("kernel lacks SA %s", want)
		}
	}
	for _, pp := range set.Policies {
		want := pp
		got, ok := k.policies[policyKey(want, k.contexts)]
		if !ok || !samePolicy(got, want) {
			t.Errorf("kernel lacks policy %s", want)
		}
	}
}

// twoSets returns a set of the analyst bundle's first SAs and policies, and
// its successor: one SA kept, one rekeyed under the same SPI, one dropped,
// one new; one policy kept, one with a new priority, one dropped, one new.
func twoSets(t *testing.T) (v1, v2 XFRMSet) {
	t.Helper()
	b := analystBundle(t, nil, 1, 0x4000)
	v1 = XFRMSet{States: slices.Clone(b.States[:3]), Policies: slices.Clone(b.Policies[:3])}
	v2 = XFRMSet{States: slices.Clone(b.States[:2]), Policies: slices.Clone(b.Policies[:2])}
	aead := *v2.States[1].AEAD // v1 keeps its own key
	aead.Key = slices.Clone(aead.Key)
	aead.Key[0] ^= 0xff
	v2.States[1].AEAD = &aead
	v2.States = append(v2.States, b.States[4])
	v2.Policies[1].Priority += 5
	v2.Policies = append(v2.Policies, b.Policies[4])
	return v1, v2
}

func TestSyncXFRMDiffsAgainstTheKernel(t *testing.T) {
	for _, contexts := range []bool{true, false} {
		t.Run(fmt.Sprintf("contexts=%v", contexts), func(t *testing.T) {
			ctx := context.Background()
			k := newFakeKernel(contexts)
			foreign := analystBundle(t, nil, 1, 0x9000).States[0]
			if err := k.AddState(foreign); err != nil {
				t.Fatal(err)
			}
			v1, v2 := twoSets(t)

			rep, err := syncXFRM(ctx, k, contexts, XFRMSet{}, v1)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.StatesAdded) != 3 || len(rep.PoliciesAdded) != 3 || rep.Changes() != 6 {
				t.Errorf("first sync: %+v", rep)
			}
			k.holds(t, v1, 1)

			k.ops = nil
			rep, err = syncXFRM(ctx, k, contexts, v1, v2)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%d/%d/%d/%d %d/%d/%d/%d", len(rep.StatesAdded), len(rep.StatesUpdated), len(rep.StatesRemoved), rep.StatesUnchanged,
				len(rep.PoliciesAdded), len(rep.PoliciesUpdated), len(rep.PoliciesRemoved), rep.PoliciesUnchanged)
			if got != "1/1/1/1 1/1/1/1" {
				t.Errorf("v1→v2 added/updated/removed/unchanged: %s", got)
			}
			k.holds(t, v2, 1)
			// The rekeyed SA is replaced, not updated (XFRM_MSG_UPDSA would
			// keep the old key), and SAs go after the policies that use them.
			want := []string{
				fmt.Sprintf("delete SA %#x", v1.States[1].SPI), fmt.Sprintf("add SA %#x", v2.States[1].SPI), fmt.Sprintf("add SA %#x", v2.States[2].SPI),
				"update policy " + v2.Policies[1].Dst.String() + " " + v2.Policies[1].Dir.String(),
				"add policy " + v2.Policies[2].Dst.String() + " " + v2.Policies[2].Dir.String(),
				"delete policy " + v1.Policies[2].Dst.String() + " " + v1.Policies[2].Dir.String(),
				fmt.Sprintf("delete SA %#x", v1.States[2].SPI),
			}
			if !reflect.DeepEqual(k.ops, want) {
				t.Errorf("kernel operations\n%q\nwant\n%q", k.ops, want)
			}

			k.ops = nil
			rep, err = syncXFRM(ctx, k, contexts, v2, v2)
			if err != nil || rep.Changes() != 0 || len(k.ops) != 0 {
				t.Errorf("the same set again: %+v, %v, operations %q", rep, err, k.ops)
			}

			// After a reboot the kernel is empty: the set comes back whole.
			k = newFakeKernel(contexts)
			rep, err = syncXFRM(ctx, k, contexts, v2, v2)
			if err != nil || len(rep.StatesAdded) != 3 || len(rep.PoliciesAdded) != 3 {
				t.Errorf("restore into an empty kernel: %+v, %v", rep, err)
			}
			k.holds(t, v2, 0)
		})
	}
}

func TestSyncXFRMUndoesOnFailure(t *testing.T) {
	ctx := context.Background()
	v1, v2 := twoSets(t)
	k := newFakeKernel(true)
	if _, err := syncXFRM(ctx, k, true, XFRMSet{}, v1); err != nil {
		t.Fatal(err)
	}

	// The last step fails: everything before it is taken back.
	k.fail, k.skip = "delete SA", 0
	rep, err := syncXFRM(ctx, k, true, v1, v2)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "delete SA") {
		t.Fatalf("error %v", err)
	}
	if len(rep.NotUndone) != 0 {
		t.Errorf("not undone: %q", rep.NotUndone)
	}
	k.holds(t, v1, 0)

	// The failure is in the middle and one undo fails too: the report
	// names it.
	k.fail, k.skip = "add policy", 0
	k2 := &undoFailer{fakeKernel: k}
	rep, err = syncXFRM(ctx, k2, true, v1, v2)
	if !errors.Is(err, errInjected) {
		t.Fatalf("error %v", err)
	}
	if len(rep.NotUndone) != 1 || !strings.Contains(rep.NotUndone[0], "restore policy") {
		t.Errorf("not undone: %q", rep.NotUndone)
	}

	// Kernel errors get their fix.
	for _, e := range []error{xfrm.ErrNoESP, xfrm.ErrNoAlgorithm, xfrm.ErrInvalidContext} {
		if xfrmHint(e) == "" {
			t.Errorf("no hint for %v", e)
		}
	}
}

// undoFailer fails every policy update that restores a priority, so the
// undo of an update fails.
type undoFailer struct {
	*fakeKernel
	updates int
}

func (u *undoFailer) UpdatePolicy(p xfrm.Policy) error {
	u.updates++
	if u.updates > 1 {
		return errors.New("injected undo failure")
	}
	return u.fakeKernel.UpdatePolicy(p)
}

// TestSystemApplierWithoutXFRM: a daemon that could not open XFRM says so
// for bundles that need it, and is fine for those that do not.
func TestSystemApplierWithoutXFRM(t *testing.T) {
	a := &SystemApplier{ContextsKept: func() bool { return false }}
	if rep, err := a.SyncXFRM(context.Background(), XFRMSet{}, XFRMSet{}); err != nil || rep.Changes() != 0 {
		t.Errorf("empty sets: %+v, %v", rep, err)
	}
	set := XFRMSet{Policies: []xfrm.Policy{analystBundle(t, nil, 1, 0x4000).Policies[0]}}
	if _, err := a.SyncXFRM(context.Background(), XFRMSet{}, set); err == nil || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("no handle: %v", err)
	}
	if _, err := a.LoadMapperPolicy("p", nil); err == nil {
		t.Error("no mapper: no error")
	}
	rep, err := a.InstallModules(context.Background(), nil, nil)
	if err != nil || rep.Note == "" {
		t.Errorf("no modules: %+v, %v", rep, err)
	}
}
