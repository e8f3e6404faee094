package updatedaemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

func TestPushAppliesAndIsIdempotent(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	b := analystBundle(t, p, 1, 0x4000)
	if len(b.ServerKeys) == 0 {
		t.Fatal("the test bundle should carry server keys, for Push to strip")
	}

	rep, err := h.client.Push(ctxT(t), h.addr, b)
	if err != nil {
		t.Fatal(err)
	}
	if rep.AlreadyApplied || rep.Version != 1 || rep.Application != "analyst" || rep.Guest != testGuestName {
		t.Errorf("report %+v", rep)
	}
	if len(rep.XFRM.StatesAdded) != len(b.States) || len(rep.XFRM.PoliciesAdded) != len(b.Policies) {
		t.Errorf("report adds %d SAs and %d policies, the bundle has %d and %d", len(rep.XFRM.StatesAdded), len(rep.XFRM.PoliciesAdded), len(b.States), len(b.Policies))
	}
	if rep.Mapper.Rules == 0 || rep.Mapper.Name != "analyst-v1.policy" {
		t.Errorf("mapper report %+v", rep.Mapper)
	}
	if !reflect.DeepEqual(rep.Modules.Modules, []string{"mlsgate_analyst"}) || rep.Modules.Loaded || rep.Modules.Note == "" {
		t.Errorf("modules report %+v: want the guest module only, validated only, with the reason", rep.Modules)
	}
	guest := b.GuestPart()
	wantCalls := []string{"modules mlsgate_analyst", "mapper analyst-v1.policy", fmt.Sprintf("xfrm %d SAs %d policies", len(b.States), len(b.Policies))}
	if got := h.fake.Calls(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("calls %q, want %q", got, wantCalls)
	}
	if _, pol := h.fake.MapperPolicy(); pol != b.MapperPolicy {
		t.Error("the mapper policy in force is not the bundle's")
	}
	if got := h.fake.XFRM(); !sameJSON(got, setOf(b)) {
		t.Error("the XFRM set in force is not the bundle's")
	}
	digest, err := Digest(guest)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Digest != digest {
		t.Errorf("digest %s, want that of the guest part %s", rep.Digest, digest)
	}

	st, err := h.client.Status(ctxT(t), h.addr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Guest != testGuestName || st.Applied == nil || st.Applied.Version != 1 || st.Applied.Digest != digest || st.Applied.Report == nil {
		t.Errorf("status %+v", st)
	}

	// The state file is private and holds no private key of a certificate
	// (the guest's own came with the bundle; the servers' never left).
	fi, err := os.Stat(filepath.Join(h.stateDir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(filepath.Join(h.stateDir, StateFile))
	if strings.Contains(string(data), "PRIVATE KEY") || strings.Contains(string(data), "server_keys") {
		t.Error("the state file keeps a private key")
	}

	again, err := h.client.Push(ctxT(t), h.addr, b)
	if err != nil {
		t.Fatalf("the same bundle again: %v", err)
	}
	if !again.AlreadyApplied || again.Version != 1 || again.Digest != digest {
		t.Errorf("second push: %+v, want already applied", again)
	}
	if got := h.fake.Calls(); len(got) != len(wantCalls) {
		t.Errorf("the second push changed something: %q", got)
	}

	// The next version replaces the XFRM set: new SPIs, the old ones go.
	b2 := analystBundle(t, p, 2, 0x5000)
	rep2, err := h.client.Push(ctxT(t), h.addr, b2)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep2.XFRM.StatesAdded) != len(b2.States) || len(rep2.XFRM.StatesRemoved) != len(b.States) || rep2.XFRM.PoliciesUnchanged != len(b.Policies) {
		t.Errorf("v2 XFRM report %+v", rep2.XFRM)
	}
}

func TestStaleAndConflictingVersionsRefused(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	v2 := analystBundle(t, p, 2, 0x4000)
	if _, err := h.client.Push(ctxT(t), h.addr, v2); err != nil {
		t.Fatal(err)
	}
	calls := len(h.fake.Calls())

	_, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000))
	e := wantCode(t, err, ErrStale)
	if e.Status != http.StatusConflict || !strings.Contains(err.Error(), "stale bundle v1 < applied v2") || !strings.Contains(err.Error(), h.addr) {
		t.Errorf("stale: %v (status %d)", err, e.Status)
	}

	// v2 generated again: same version, new keys, another digest.
	_, err = h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 2, 0x4000))
	e = wantCode(t, err, ErrConflict)
	if e.Status != http.StatusConflict {
		t.Errorf("conflict status %d", e.Status)
	}

	other := analystBundle(t, p, 3, 0x4000)
	other.Application = "osint"
	_, err = h.client.Push(ctxT(t), h.addr, other)
	wantCode(t, err, ErrOtherApplication)

	if got := h.fake.Calls(); len(got) != calls {
		t.Errorf("refused bundles reached the applier: %q", got[calls:])
	}
	if st := h.d.Status(); st.Applied.Version != 2 {
		t.Errorf("applied version %d after refusals, want 2", st.Applied.Version)
	}
}

func TestBundleForAnotherGuestRefused(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	for name, edit := range map[string]func(*policystore.Bundle){
		"name":    func(b *policystore.Bundle) { b.Guest = "vm8" },
		"address": func(b *policystore.Bundle) { b.GuestAddr = testHostAddr },
	} {
		b := analystBundle(t, nil, 1, 0x4000)
		edit(b)
		_, err := h.client.Push(ctxT(t), h.addr, b)
		e := wantCode(t, err, ErrWrongGuest)
		if e.Status != http.StatusMisdirectedRequest || !strings.Contains(err.Error(), "this daemon is vm7 at 10.70.0.7") {
			t.Errorf("%s: %v (status %d)", name, err, e.Status)
		}
	}
	if got := h.fake.Calls(); len(got) != 0 {
		t.Errorf("applier called: %q", got)
	}
}

func TestRestartKeepsVersion(t *testing.T) {
	p := newPKI(t)
	dir := filepath.Join(t.TempDir(), "state")
	h := startDaemon(t, p, daemonOpts{stateDir: dir})
	v2 := analystBundle(t, p, 2, 0x4000)
	if _, err := h.client.Push(ctxT(t), h.addr, v2); err != nil {
		t.Fatal(err)
	}

	// A new process: a fresh mapper and, as after a reboot, an empty kernel.
	fresh := &FakeApplier{}
	h2 := startDaemon(t, p, daemonOpts{stateDir: dir, fake: fresh})
	rep, err := h2.d.Restore(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if rep == nil || rep.Version != 2 || len(rep.XFRM.StatesAdded) != len(v2.States) {
		t.Errorf("restore report %+v", rep)
	}
	if name, pol := fresh.MapperPolicy(); pol != v2.MapperPolicy || name != "analyst-v2.policy" {
		t.Errorf("restored mapper policy %s", name)
	}
	if !sameJSON(fresh.XFRM(), setOf(v2)) {
		t.Error("restored XFRM set is not v2's")
	}

	_, err = h2.client.Push(ctxT(t), h2.addr, analystBundle(t, p, 1, 0x4000))
	wantCode(t, err, ErrStale)
	again, err := h2.client.Push(ctxT(t), h2.addr, v2)
	if err != nil || !again.AlreadyApplied {
		t.Errorf("v2 after the restart: %+v, %v; want already applied", again, err)
	}
}

func TestNewRefusesAnotherGuestsState(t *testing.T) {
	p := newPKI(t)
	dir := filepath.Join(t.TempDir(), "state")
	h := startDaemon(t, p, daemonOpts{stateDir: dir})
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000)); err != nil {
		t.Fatal(err)
	}
	cfg := h.d.cfg
	cfg.Identity.Name = "vm9"
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), `records guest "vm7"`) {
		t.Errorf("New with another guest's state: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(h.d.cfg); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("New with a damaged state file: %v", err)
	}
}

func TestApplyFailureRollsBack(t *testing.T) {
	p := newPKI(t)
	fake := &FakeApplier{}
	// The server's goroutines read these while the test sets them.
	var failXFRM atomic.Bool
	var failMapperAt, mapperCalls atomic.Int32
	fake.Fail = func(step string) error {
		switch step {
		case StepXFRM:
			if failXFRM.Load() {
				return errors.New("injected XFRM failure")
			}
		case StepMapper:
			if mapperCalls.Add(1) == failMapperAt.Load() {
				return errors.New("injected mapper failure")
			}
		}
		return nil
	}
	h := startDaemon(t, p, daemonOpts{fake: fake})
	v1 := analystBundle(t, p, 1, 0x4000)
	if _, err := h.client.Push(ctxT(t), h.addr, v1); err != nil {
		t.Fatal(err)
	}

	failXFRM.Store(true)
	v2 := analystBundle(t, p, 2, 0x5000)
	v2.MapperPolicy += "map https://extra\\.example/.* s1/i0\n"
	_, err := h.client.Push(ctxT(t), h.addr, v2)
	e := wantCode(t, err, ErrApplyFailed)
	if e.Status != http.StatusInternalServerError || e.Report == nil {
		t.Fatalf("apply failure: %v, status %d, report %v", err, e.Status, e.Report)
	}
	if !strings.Contains(e.Report.Failed, "XFRM: injected XFRM failure") {
		t.Errorf("report says failed %q", e.Report.Failed)
	}
	if !slices.Contains(e.Report.RolledBack, "label-mapper policy: analyst-v1.policy restored") || len(e.Report.NotRolledBack) != 0 {
		t.Errorf("rolled back %q, not rolled back %q", e.Report.RolledBack, e.Report.NotRolledBack)
	}
	if name, pol := fake.MapperPolicy(); name != "analyst-v1.policy" || pol != v1.MapperPolicy {
		t.Errorf("mapper policy after the failure is %s, want v1's", name)
	}
	if st := h.d.Status(); st.Applied.Version != 1 {
		t.Errorf("applied version %d after a failed push, want 1", st.Applied.Version)
	}

	// The rollback itself fails: the report says what stayed.
	failMapperAt.Store(mapperCalls.Load() + 2) // the v2 load passes, its rollback fails
	_, err = h.client.Push(ctxT(t), h.addr, v2)
	e = wantCode(t, err, ErrApplyFailed)
	if len(e.Report.NotRolledBack) != 1 || !strings.Contains(e.Report.NotRolledBack[0], "analyst-v2.policy stays loaded") {
		t.Errorf("not rolled back %q", e.Report.NotRolledBack)
	}

	// Fixed: the same v2 applies, it was never recorded.
	failXFRM.Store(false)
	rep, err := h.client.Push(ctxT(t), h.addr, v2)
	if err != nil || rep.AlreadyApplied || rep.Version != 2 {
		t.Fatalf("v2 after the fix: %+v, %v", rep, err)
	}
}

func TestInvalidBundleAppliesNothing(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	cases := map[string]struct {
		edit func(*policystore.Bundle)
		want string
	}{
		"mapper policy": {func(b *policystore.Bundle) { b.MapperPolicy += "map ( s1\n" }, "label-mapper policy"},
		"SA":            {func(b *policystore.Bundle) { b.States[0].Context = "not a context" }, "states[0]"},
		"duplicate SA":  {func(b *policystore.Bundle) { b.States[1] = b.States[0] }, "share destination"},
		"policy":        {func(b *policystore.Bundle) { b.Policies[0].Action = 7 }, "policies[0]"},
		"version 0":     {func(b *policystore.Bundle) { b.Version = 0 }, "version 0"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			b := analystBundle(t, nil, 1, 0x4000)
			c.edit(b)
			_, err := h.client.Push(ctxT(t), h.addr, b)
			e := wantCode(t, err, ErrBadBundle)
			if e.Status != http.StatusBadRequest || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v (status %d), want 400 naming %q", err, e.Status, c.want)
			}
		})
	}
	// Push sends the guest part only; the daemon refuses what is not.
	for name, c := range map[string]struct {
		edit func(*policystore.Bundle)
		want string
	}{
		"server keys": {func(*policystore.Bundle) {}, "servers' private keys"},
		"host module": {func(b *policystore.Bundle) { b.ServerKeys = nil }, `targets "host"`},
		"server certificate key": {func(b *policystore.Bundle) {
			g := b.GuestPart()
			g.Certificates[0].KeyPEM = b.ServerKeys[0].KeyPEM
			*b = *g
		}, "server private key"},
	} {
		b := analystBundle(t, p, 1, 0x4000)
		c.edit(b)
		if _, err := h.d.Apply(ctxT(t), b); !errors.Is(err, ErrBadBundle) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a bad bundle naming %q", name, err, c.want)
		}
	}
	if got := h.fake.Calls(); len(got) != 0 {
		t.Errorf("invalid bundles reached the applier: %q", got)
	}
}

// TestStatusAnswersDuringApply: a slow apply does not hold up the status,
// which shows the version in force until the new one is recorded.
func TestStatusAnswersDuringApply(t *testing.T) {
	p := newPKI(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var block atomic.Bool
	fake := &FakeApplier{Fail: func(step string) error {
		if step == StepXFRM && block.Load() {
			close(entered)
			<-release
		}
		return nil
	}}
	h := startDaemon(t, p, daemonOpts{fake: fake})
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0x4000)); err != nil {
		t.Fatal(err)
	}
	block.Store(true)
	pushed := make(chan error, 1)
	go func() {
		_, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 2, 0x5000))
		pushed <- err
	}()
	<-entered
	st, err := (&Client{TLS: p.ca.ClientTLS(p.loader, ""), Timeout: 2 * time.Second}).Status(ctxT(t), h.addr)
	close(release)
	if err != nil || st.Applied.Version != 1 {
		t.Errorf("status during the v2 apply: %+v, %v; want v1 at once", st, err)
	}
	if err := <-pushed; err != nil {
		t.Fatal(err)
	}
	if st := h.d.Status(); st.Applied.Version != 2 {
		t.Errorf("after the apply: v%d", st.Applied.Version)
	}
}
