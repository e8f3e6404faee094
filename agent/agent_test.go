package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"
)

// fakeKernel records what the agent does to maps and links, in order.
type fakeKernel struct {
	mu      sync.Mutex
	state   *bpf.State
	log     []string
	pinned  []int
	failAtt bool
}

func (k *fakeKernel) ReadState() (*bpf.State, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state == nil {
		return &bpf.State{}, nil
	}
	return k.state, nil
}

// Apply does what bpf.Maps.Apply does: it writes the entries of next that
// differ from prev and clears those of prev that next lacks (labels stay),
// so the agent may hand it the whole state or only a difference. The fake
// keeps its own copy.
func (k *fakeKernel) Apply(prev, next *bpf.State) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if prev == nil {
		prev = &bpf.State{}
	}
	s := k.state.Clone()
	mergeInto(s.Vifs, prev.Vifs, next.Vifs)
	mergeInto(s.Slots, prev.Slots, next.Slots)
	mergeInto(s.SAs, prev.SAs, next.SAs)
	mergeInto(s.Peers, prev.Peers, next.Peers)
	for id, l := range next.Labels {
		s.Labels[id] = l
	}
	for id, acc := range next.Accepts { // an array, like labels
		s.Accepts[id] = acc
	}
	s.RangeIDs = map[label.Bounds]uint32{}
	for b, id := range next.RangeIDs {
		s.RangeIDs[b] = id
	}
	s.LabelIDs, s.Unplanned = map[label.Label]uint32{}, map[uint32]error{}
	for l, id := range next.LabelIDs {
		s.LabelIDs[l] = id
	}
	for i, err := range next.Unplanned {
		s.Unplanned[i] = err
	}
	k.state = s
	k.log = append(k.log, fmt.Sprintf("apply vifs=%d sas=%d slots=%d", len(s.Vifs), len(s.SAs), len(s.Slots)))
	return nil
}

func mergeInto[K comparable, V any](dst, prev, next map[K]V) {
	for key := range prev {
		if _, ok := next[key]; !ok {
			delete(dst, key)
		}
	}
	for key, v := range next {
		dst[key] = v
	}
}

func (k *fakeKernel) Attach(i int) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failAtt {
		return "", fmt.Errorf("refused")
	}
	mode := "attached"
	for _, p := range k.pinned {
		if p == i {
			mode = "updated"
		}
	}
	k.log = append(k.log, fmt.Sprintf("attach %d %s", i, mode))
	return mode, nil
}

func (k *fakeKernel) Detach(i int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.log = append(k.log, fmt.Sprintf("detach %d", i))
	return nil
}

func (k *fakeKernel) Pinned() ([]int, error) { return k.pinned, nil }

func (k *fakeKernel) events() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.log...)
}

// fakeLinks lets a test add and remove interfaces.
type fakeLinks struct {
	initial []LinkEvent
	ch      chan LinkEvent
}

func (f *fakeLinks) Watch(ctx context.Context, event func(LinkEvent), synced func()) error {
	for _, e := range f.initial {
		event(e)
	}
	synced()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-f.ch:
			event(e)
		}
	}
}

// fakeSAs lets a test replace the kernel's SA set.
type fakeSAs struct {
	initial []KernelSA
	ch      chan []KernelSA
	hold    chan struct{} // when set, the initial dump waits for it
}

func (f *fakeSAs) Watch(ctx context.Context, update func([]KernelSA)) error {
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return nil
		}
	}
	update(f.initial)
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-f.ch:
			update(s)
		}
	}
}

type harness struct {
	a      *Agent
	k      *fakeKernel
	links  *fakeLinks
	sas    *fakeSAs
	cancel func()
	done   chan error
}

func start(t *testing.T, cfg Config, k *fakeKernel, links *fakeLinks, sas *fakeSAs) *harness {
	t.Helper()
	if links.ch == nil {
		links.ch = make(chan LinkEvent)
	}
	if sas.ch == nil {
		sas.ch = make(chan []KernelSA)
	}
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: links, SAs: sas})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{a: a, k: k, links: links, sas: sas, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// eventually polls cond for up to 5 s (bounded), failing with msg.
func eventually(t *testing.T, cond func() bool, msg string, args ...any) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf(msg, args...)
}

func testConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.StateDir = t.TempDir()
	c.PinDir = "/sys/fs/bpf/unused-by-fakes"
	c.SPISlots = 1024
	c.Integrity = map[string]label.Integrity{"analyst_t": 7}
	c.DefaultIntegrity = 1
	return c
}

func guest7(t *testing.T) GuestSpec {
	r, err := label.ParseBounds("s0-s15/i5-i10")
	if err != nil {
		t.Fatal(err)
	}
	return GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r, Addr4: netip.MustParseAddr("10.70.0.7")}
}

// By default an interface of the patterns without a declared guest gets
// the programs and a deny-all entry; a guest the planner refuses is denied
// on its own, and the others (one on ifindex 70,000) are planned and can
// still be declared.
func TestAgentDeniesUndeclaredAndUnplanned(t *testing.T) {
	k := &fakeKernel{}
	h := start(t, testConfig(t), k, &fakeLinks{initial: []LinkEvent{{Name: "eth0", Index: 2}, {Name: "vif8.0", Index: 10}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	entry := func(i uint32) (bpf.FastpathVif, bool) {
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.state == nil {
			return bpf.FastpathVif{}, false
		}
		v, ok := k.state.Vifs[i]
		return v, ok
	}
	eventually(t, func() bool { v, ok := entry(10); return ok && v.Deny == uint8(verdict.DenyUndeclared) }, "undeclared vif8.0 has no deny-all entry: %v", k.events())
	eventually(t, func() bool { return strings.Contains(strings.Join(k.events(), ","), "attach 10") }, "programs never attached to the undeclared vif8.0: %v", k.events())
	if _, ok := entry(2); ok {
		t.Errorf("eth0 (not of the patterns) got an entry")
	}
	st := h.a.Status()
	if st.Undeclared != "deny" || len(st.UndeclaredInterfaces) != 1 || st.UndeclaredInterfaces[0] != "vif8.0" {
		t.Errorf("status: undeclared %q %v, want deny [vif8.0]", st.Undeclared, st.UndeclaredInterfaces)
	}

	g7 := guest7(t)
	g7.MAC, g7.HostAddr4, g7.HostAddr6 = "02:6d:6c:00:00:07", netip.MustParseAddr("10.70.0.1"), netip.MustParseAddr("fe80::1")
	h.links.ch <- LinkEvent{Name: "vif7.0", Index: 70_000}
	if err := h.a.SetGuest(g7); err != nil {
		t.Fatal(err)
	}
	// One VM on two vifs with two ranges: the planner refuses both.
	bad := guest7(t)
	bad.Interface, bad.VM, bad.Addr4 = "vif9.0", 9, netip.MustParseAddr("10.70.0.9")
	bad2 := bad
	bad2.Interface, bad2.Addr4 = "vif9.1", netip.MustParseAddr("10.70.0.10")
	bad2.Range.High.Secrecy.Sens = 3
	h.links.ch <- LinkEvent{Name: "vif9.0", Index: 11}
	h.links.ch <- LinkEvent{Name: "vif9.1", Index: 12}
	if err := h.a.SetGuest(bad); err != nil {
		t.Fatal(err)
	}
	if err := h.a.SetGuest(bad2); err != nil {
		t.Fatalf("a guest the planner refuses failed the declaration: %v", err)
	}
	eventually(t, func() bool { v, ok := entry(12); return ok && v.Deny == uint8(verdict.DenyUnplanned) }, "vif9.1 not denied as unplanned: %v", k.events())
	if v, _ := entry(11); v.Deny != uint8(verdict.DenyUnplanned) {
		t.Errorf("vif9.0 entry %+v, want deny_unplanned", v)
	}
	// The others keep being planned and declared.
	g10 := guest7(t)
	g10.Interface, g10.VM, g10.Addr4 = "vif10.0", 10, netip.MustParseAddr("10.70.0.20")
	h.links.ch <- LinkEvent{Name: "vif10.0", Index: 13}
	if err := h.a.SetGuest(g10); err != nil {
		t.Fatalf("declaring a good guest after a bad one: %v", err)
	}
	eventually(t, func() bool { v, ok := entry(13); return ok && v.Deny == 0 && v.VmId == 10 }, "vif10.0 never planned: %v", k.events())
	v, ok := entry(70_000)
	if !ok || v.Deny != 0 || v.VmId != 7 || v.Mac != [6]byte{2, 0x6d, 0x6c, 0, 0, 7} || v.Host4 != [4]byte{10, 70, 0, 1} {
		t.Errorf("vif7.0 on ifindex 70000: %+v present %v; want planned with its MAC and host address", v, ok)
	}
	eventually(t, func() bool { return strings.Contains(strings.Join(k.events(), ","), "attach 70000") }, "vif7.0 never attached: %v", k.events())
	st = h.a.Status()
	if st.Error != "" {
		t.Errorf("status error %q: an unplanned guest is not an agent error", st.Error)
	}
	for _, g := range st.Guests {
		want := g.Interface == "vif9.0" || g.Interface == "vif9.1"
		if (g.Unplanned != "") != want {
			t.Errorf("status of %s: unplanned %q", g.Interface, g.Unplanned)
		}
		if want && !strings.Contains(g.Unplanned, "different ranges") {
			t.Errorf("status of %s: unplanned %q does not say why", g.Interface, g.Unplanned)
		}
	}
}

// A guest declaration with a bad MAC or host address is refused with an
// error naming the field.
func TestAgentRefusesBadLinkModel(t *testing.T) {
	for _, c := range []struct {
		name, want string
		tweak      func(*GuestSpec)
	}{
		{"short mac", "mac", func(g *GuestSpec) { g.MAC = "02:00:00:00:07" }},
		{"multicast mac", "multicast", func(g *GuestSpec) { g.MAC = "03:00:00:00:00:07" }},
		{"ipv4 host_addr6", "host_addr6", func(g *GuestSpec) { g.HostAddr6 = netip.MustParseAddr("10.0.0.1") }},
		{"global host_addr6", "link-local", func(g *GuestSpec) { g.HostAddr6 = netip.MustParseAddr("fd00::1") }},
		{"ipv6 host_addr4", "host_addr4", func(g *GuestSpec) { g.HostAddr4 = netip.MustParseAddr("fe80::1") }},
	} {
		g := guest7(t)
		c.tweak(&g)
		d := Desired{Guests: []GuestSpec{g}}
		if err := d.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
}

func TestAgentAttachesAfterEntryAndDetachesBeforeClearing(t *testing.T) {
	k := &fakeKernel{}
	cfg := testConfig(t)
	cfg.Undeclared = UndeclaredPass // undeclared interfaces left alone (TestAgentDeniesUndeclared: the default)
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "eth0", Index: 2}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	if err := h.a.SetGuest(guest7(t)); err != nil {
		t.Fatal(err)
	}
	// Declared but absent: nothing attached, no vif entry.
	eventually(t, func() bool { ev := k.events(); return len(ev) >= 2 && ev[len(ev)-1] == "apply vifs=0 sas=0 slots=0" }, "no apply after declaring: %v", k.events())
	h.links.ch <- LinkEvent{Name: "vif7.0", Index: 9}
	eventually(t, func() bool { return strings.Contains(strings.Join(k.events(), ","), "attach 9") }, "never attached: %v", k.events())
	ev := strings.Join(k.events(), ",")
	if i, j := strings.Index(ev, "apply vifs=1"), strings.Index(ev, "attach 9"); i < 0 || i > j {
		t.Fatalf("programs attached before the vif entry was written: %s", ev)
	}
	// An undeclared interface that matches the pattern is left alone.
	h.links.ch <- LinkEvent{Name: "vif8.0", Index: 10}
	h.links.ch <- LinkEvent{Name: "vif7.0", Index: 9, Deleted: true}
	// The entry is cleared by an apply after the detach; the test waits for
	// that apply (it may land after the detach is logged) and then checks
	// no apply between the attach and the detach had cleared it already.
	eventually(t, func() bool {
		ev := strings.Join(k.events(), ",")
		i := strings.Index(ev, "detach 9")
		return i >= 0 && strings.Contains(ev[i:], "apply vifs=0")
	}, "never detached, or the entry never cleared after: %v", k.events())
	ev = strings.Join(k.events(), ",")
	if strings.Contains(ev, "attach 10") {
		t.Fatalf("attached to an undeclared interface: %s", ev)
	}
	if i, j := strings.Index(ev, "attach 9"), strings.Index(ev, "detach 9"); strings.Contains(ev[i:j], "apply vifs=0") {
		t.Fatalf("vif entry cleared before the programs were detached: %s", ev)
	}
	st := h.a.Status()
	if len(st.Guests) != 1 || st.Guests[0].Present || st.Guests[0].Attached {
		t.Fatalf("status after delete: %+v", st.Guests)
	}
}

func TestAgentWaitsForFullView(t *testing.T) {
	k := &fakeKernel{}
	sas := &fakeSAs{hold: make(chan struct{})}
	h := start(t, testConfig(t), k, &fakeLinks{}, sas)
	time.Sleep(50 * time.Millisecond)
	if ev := k.events(); len(ev) != 0 || h.a.Ready() {
		t.Fatalf("applied before the initial SA dump: %v", ev)
	}
	close(sas.hold)
	eventually(t, h.a.Ready, "never ready after the SA dump")
}

func TestAgentSyncsSAsWithContexts(t *testing.T) {
	cfg := testConfig(t)
	g := guest7(t)
	// The desired state survives a restart: write it through one agent.
	k := &fakeKernel{}
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return h.a.Status().Guests[0].Attached }, "not attached")
	host := netip.MustParseAddr("10.70.0.1")
	sas := []KernelSA{
		{Src: g.Addr4, Dst: host, SPI: cfg.SPIBase + 5, Proto: 50, Context: "system_u:system_r:analyst_t:s6"}, // in the slot array
		{Src: host, Dst: g.Addr4, SPI: 0x1234, Proto: 50, Context: "system_u:system_r:analyst_t:s6:c1"},       // hash
		{Src: g.Addr4, Dst: host, SPI: 0x2000, Proto: 50, Context: "not a context"},                           // never an allow
		{Src: g.Addr4, Dst: host, SPI: 0x2001, Proto: 50},                                                     // unlabeled
		{Src: netip.MustParseAddr("10.9.9.9"), Dst: host, SPI: 0x2002, Proto: 50, Context: "u:r:x_t:s1"},      // no guest
		{Src: g.Addr4, Dst: host, SPI: 0x2003, Proto: 51, Context: "system_u:system_r:analyst_t:s6"},          // AH: not ours
	}
	h.sas.ch <- sas
	eventually(t, func() bool { return h.a.Status().SAs.Synced == 2 }, "SAs not synced: %+v", h.a.Status().SAs)
	st := h.a.Status()
	if st.SAs.BadContext != 1 || st.SAs.Unlabeled != 1 || st.SAs.NoGuest != 1 {
		t.Fatalf("SA accounting %+v", st.SAs)
	}
	k.mu.Lock()
	state := k.state
	k.mu.Unlock()
	slot, ok := state.Slots[5]
	if !ok || slot.OwnerVm != 7 || slot.AppId != 1 {
		t.Fatalf("slot 5: %+v %v", slot, ok)
	}
	want, _ := label.ParseLabel("s6/i7") // analyst_t has integrity 7 in the config
	if id := state.LabelIDs[want]; id != slot.LabelId || id == 0 {
		t.Fatalf("slot label id %d, want the id of %v (%d)", slot.LabelId, want, id)
	}
	if len(state.SAs) != 1 {
		t.Fatalf("hash SAs: %d", len(state.SAs))
	}
	// Deleting an SA in the kernel removes its entry.
	h.sas.ch <- sas[1:]
	eventually(t, func() bool { k.mu.Lock(); defer k.mu.Unlock(); _, ok := k.state.Slots[5]; return !ok }, "slot 5 not cleared after the SA went")

	// Metrics lint clean and carry the SA states.
	if probs, err := testutil.CollectAndLint(h.a.metrics.reg); err != nil || len(probs) > 0 {
		t.Fatalf("metrics lint: %v %v", probs, err)
	}
	srv := httptest.NewServer(h.a.AdminHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, w := range []string{`mlsgate_sas{state="bad_context"} 1`, `mlsgate_guests{state="attached"} 1`, "mlsgate_sync_lag_seconds_bucket", `mlsgate_denial_events_total{reason="deny_unknown_sa"} 0`} {
		if !strings.Contains(string(body), w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}
}

func TestAgentAdoptsPinsOnRestart(t *testing.T) {
	cfg := testConfig(t)
	k := &fakeKernel{}
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	if err := h.a.SetGuest(guest7(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return h.a.Status().Guests[0].Attached }, "not attached")
	h.cancel()
	<-h.done
	h.done <- nil // for the cleanup

	// The new agent finds the maps and links the old one pinned.
	k2 := &fakeKernel{state: k.state, pinned: []int{9, 44}}
	h2 := start(t, cfg, k2, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	eventually(t, h2.a.Ready, "restarted agent not ready")
	eventually(t, func() bool { return strings.Contains(strings.Join(k2.events(), ","), "attach 9 updated") }, "programs not swapped into the pinned links: %v", k2.events())
	ev := strings.Join(k2.events(), ",")
	if !strings.Contains(ev, "detach 44") {
		t.Fatalf("a pinned link of a vanished interface was kept: %s", ev)
	}
	if strings.Contains(ev, "detach 9") {
		t.Fatalf("the live vif lost its programs during the restart: %s", ev)
	}
	if got := h2.a.Status().Guests; len(got) != 1 || got[0].Interface != "vif7.0" {
		t.Fatalf("desired state not restored: %+v", got)
	}
}

func TestAgentRefusesBadDesiredState(t *testing.T) {
	h := start(t, testConfig(t), &fakeKernel{}, &fakeLinks{}, &fakeSAs{})
	g := guest7(t)
	g.VM = 0
	if err := h.a.SetGuest(g); err == nil || !strings.Contains(err.Error(), "vm 0") {
		t.Fatalf("vm 0: %v", err)
	}
	srv := httptest.NewServer(h.a.AdminHandler())
	defer srv.Close()
	for _, c := range []struct {
		method, path, body string
		code               int
	}{
		{"PUT", "/v1/guests/vif7.0", `{"interface":"vif7.0","vm":7,"range":"s9-s1"}`, 400},
		{"PUT", "/v1/guests/vif7.0", `{"interface":"vif8.0","vm":7,"range":"s1-s9"}`, 400},
		{"PUT", "/v1/guests/vif7.0", `{"vm":7,"range":"s1-s9","colour":"red"}`, 400},
		{"PUT", "/v1/guests/vif7.0", `{"vm":7,"range":"s1-s9"}`, 200},
		{"DELETE", "/v1/guests/vif9.0", ``, 404},
		{"PUT", "/v1/sas", `[{"spi":7,"daddr":"10.0.0.1","label":"s1"}]`, 422},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s %s: %d %s, want %d", c.method, c.path, c.body, resp.StatusCode, b, c.code)
		}
	}
}

// TestAgentAuditVisible: a guest switched to audit mode shows on the
// gauges an alert watches (mlsgate_guest_audit, mlsgate_enforce), and the
// gauge moves back when the guest enforces again.
func TestAgentAuditVisible(t *testing.T) {
	h := start(t, testConfig(t), &fakeKernel{}, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	g := guest7(t)
	g.Audit = true
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	want := func(audit int) string {
		return fmt.Sprintf(`# HELP mlsgate_enforce 1 when the agent drops denied packets; 0 when it only counts them (every guest is then in audit mode).
# TYPE mlsgate_enforce gauge
mlsgate_enforce 1
# HELP mlsgate_guest_audit 1 when a declared guest's denials are only counted, not dropped (its audit flag, or enforce off).
# TYPE mlsgate_guest_audit gauge
mlsgate_guest_audit{interface="vif7.0"} %d
`, audit)
	}
	if err := testutil.GatherAndCompare(h.a.metrics.reg, strings.NewReader(want(1)), "mlsgate_enforce", "mlsgate_guest_audit"); err != nil {
		t.Errorf("guest in audit mode: %v", err)
	}
	g.Audit = false
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(h.a.metrics.reg, strings.NewReader(want(0)), "mlsgate_enforce", "mlsgate_guest_audit"); err != nil {
		t.Errorf("guest enforcing again: %v", err)
	}
	if probs, err := testutil.GatherAndLint(h.a.metrics.reg); err != nil || len(probs) > 0 {
		t.Errorf("metrics lint: %v %v", probs, err)
	}
}

// TestAlertRulesNameAgentMetrics: every metric deploy/alerts.yaml watches
// is one the agent exports, so a renamed gauge cannot silence the alert.
func TestAlertRulesNameAgentMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("deploy/alerts.yaml: %v", err)
	}
	h := start(t, testConfig(t), &fakeKernel{}, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	g := guest7(t)
	g.Audit = true
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	// The kernel's counters, as the real agent reads them at scrape time.
	h.a.metrics.counters = zeroCounters{}
	mfs, err := h.a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				have[mf.GetName()+s] = true
			}
		}
	}
	name := regexp.MustCompile(`mlsgate_[a-z_]+`)
	alerts := 0
	for _, gr := range rules.Groups {
		for _, r := range gr.Rules {
			alerts++
			for _, m := range name.FindAllString(r.Expr, -1) {
				if !have[m] {
					t.Errorf("alert %s watches %s, which the agent does not export", r.Alert, m)
				}
			}
		}
	}
	if alerts == 0 {
		t.Fatal("deploy/alerts.yaml has no rules")
	}
	// The same for every query of the Grafana dashboard.
	db, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Definition string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(db, &dash); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			queries++
			for _, m := range name.FindAllString(q.Expr, -1) {
				if !have[m] {
					t.Errorf("dashboard panel %q shows %s, which the agent does not export", p.Title, m)
				}
			}
		}
	}
	for _, v := range dash.Templating.List {
		for _, m := range name.FindAllString(v.Definition, -1) {
			if !have[m] {
				t.Errorf("dashboard variable query %q names %s, which the agent does not export", v.Definition, m)
			}
		}
	}
	if queries == 0 {
		t.Fatal("deploy/grafana-dashboard.json has no queries")
	}
}

// zeroCounters stands in for the kernel's per-CPU verdict counters.
type zeroCounters struct{}

func (zeroCounters) Counters() ([2][verdict.NumReasons]bpf.Counter, error) {
	return [2][verdict.NumReasons]bpf.Counter{}, nil
}

// TestAgentLogsAndCountsChanges: a change through the API is logged with
// the spec it replaced and the new one, and counted; an invalid one too.
func TestAgentLogsAndCountsChanges(t *testing.T) {
	var logBuf strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logBuf.Write(p) }), nil))
	links, sas := &fakeLinks{ch: make(chan LinkEvent)}, &fakeSAs{ch: make(chan []KernelSA)}
	k := &fakeKernel{}
	a, err := New(testConfig(t), log, Options{Maps: k, Attacher: k, Links: links, SAs: sas})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv := httptest.NewServer(a.AdminHandler())
	defer srv.Close()
	put := func(body string) int {
		req, _ := http.NewRequest("PUT", srv.URL+"/v1/guests/vif7.0", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := put(`{"vm":7,"range":"s1-s9"}`); c != 200 {
		t.Fatalf("first PUT: %d", c)
	}
	if c := put(`{"vm":7,"range":"s1-s9","audit":true}`); c != 200 {
		t.Fatalf("second PUT: %d", c)
	}
	if c := put(`{"vm":0,"range":"s1-s9"}`); c != 422 {
		t.Fatalf("invalid PUT: %d", c)
	}
	if got := testutil.ToFloat64(a.metrics.apiChanges.WithLabelValues("guest_set", "applied")); got != 2 {
		t.Errorf("applied guest_set changes: %v, want 2", got)
	}
	if got := testutil.ToFloat64(a.metrics.apiChanges.WithLabelValues("guest_set", "refused")); got != 1 {
		t.Errorf("refused guest_set changes: %v, want 1", got)
	}
	mu.Lock()
	lines := logBuf.String()
	mu.Unlock()
	var second map[string]any
	for _, l := range strings.Split(lines, "\n") {
		if strings.Contains(l, `"msg":"policy change"`) && strings.Contains(l, `"audit":true`) && strings.Contains(l, `"result":"applied"`) {
			json.Unmarshal([]byte(l), &second)
		}
	}
	if second == nil {
		t.Fatalf("no log line for the change to audit mode:\n%s", lines)
	}
	old, _ := second["old"].(map[string]any)
	nw, _ := second["new"].(map[string]any)
	if old == nil || old["audit"] != nil || nw == nil || nw["audit"] != true || second["peer"] != "unknown" {
		t.Errorf("change log %v: want the old spec (no audit), the new one (audit) and the peer", second)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// sortSAs orders by SPI, then destination, whatever the input order.
func TestSortSAs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := range 200 {
		sas := make([]verdict.SA, n)
		for i := range sas {
			sas[i] = verdict.SA{SPI: uint32(rng.IntN(50)), Daddr: netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(4))}), Owner: uint32(i)}
		}
		want := slices.Clone(sas)
		slices.SortStableFunc(want, func(x, y verdict.SA) int {
			return cmp.Or(cmp.Compare(x.SPI, y.SPI), x.Daddr.Compare(y.Daddr))
		})
		sortSAs(sas)
		owners := map[uint32]bool{}
		for i := range sas {
			if sas[i].SPI != want[i].SPI || sas[i].Daddr != want[i].Daddr {
				t.Fatalf("n=%d: at %d spi %d %s, want %d %s", n, i, sas[i].SPI, sas[i].Daddr, want[i].SPI, want[i].Daddr)
			}
			owners[sas[i].Owner] = true
		}
		if len(owners) != n {
			t.Fatalf("n=%d: %d distinct SAs after the sort: some were lost or doubled", n, len(owners))
		}
	}
}

// heldState is a fakeKernel whose ReadState waits for release: the link
// watcher (started before it) delivers its interfaces first.
type heldState struct {
	*fakeKernel
	release chan struct{}
}

func (h heldState) ReadState() (*bpf.State, error) {
	<-h.release
	return h.fakeKernel.ReadState()
}

// The pinned maps are read while the watchers start: a pinned link whose
// interface event came before the pinned links were listed keeps its
// name, so the restart swaps its programs without detaching them.
func TestAgentAdoptsPinsNamedBeforeListing(t *testing.T) {
	cfg := testConfig(t)
	if err := saveDesired(cfg.StateDir, Desired{Guests: []GuestSpec{guest7(t)}}); err != nil {
		t.Fatal(err)
	}
	k := &fakeKernel{pinned: []int{9}}
	held := heldState{k, make(chan struct{})}
	links := &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}, ch: make(chan LinkEvent)}
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: held, Attacher: k, Links: links, SAs: &fakeSAs{ch: make(chan []KernelSA)}})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.linksSync
	}, "links not synced")
	close(held.release)
	eventually(t, a.Ready, "not ready")
	eventually(t, func() bool { return strings.Contains(strings.Join(k.events(), ","), "attach 9 updated") }, "programs not swapped into the pinned link: %v", k.events())
	if ev := strings.Join(k.events(), ","); strings.Contains(ev, "detach 9") {
		t.Fatalf("the pinned link of a live guest was detached on restart: %s", ev)
	}
}

// runAgent runs a until the test ends.
func runAgent(t *testing.T, a *Agent) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
