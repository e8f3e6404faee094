package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func (k *fakeKernel) slots() map[uint32]bpf.FastpathSa {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state == nil {
		return nil
	}
	return k.state.Slots
}

func call(t *testing.T, srv *httptest.Server, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func rotationBody(old, new uint32, daddr netip.Addr) string {
	return fmt.Sprintf(`{"old":{"spi":%d,"daddr":%q},"new":{"spi":%d,"daddr":%q}}`, old, daddr, new, daddr)
}

// TestAgentRefusesRelabelingRotation: a rotation whose new SA carries
// another context than its predecessor is an attempt to relabel the
// guest's traffic under cover of a rekey. The agent keeps it out of the
// maps (the fast path meets an unknown SA and denies), counts it, and
// leaves the old SA working; a rotation that keeps the context puts the
// old and the new SA in the maps at once with the same label and owner.
func TestAgentRefusesRelabelingRotation(t *testing.T) {
	cfg := testConfig(t)
	g := guest7(t)
	k := &fakeKernel{}
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return h.a.Status().Guests[0].Attached }, "not attached")
	host := netip.MustParseAddr("10.70.0.1")
	const ctx6 = "system_u:system_r:analyst_t:s6"
	old := KernelSA{Src: g.Addr4, Dst: host, SPI: cfg.SPIBase + 5, Proto: 50, Reqid: 1, Context: ctx6}
	h.sas.ch <- []KernelSA{old}
	eventually(t, func() bool { _, ok := k.slots()[5]; return ok }, "old SA never in the maps")

	srv := httptest.NewServer(h.a.AdminHandler())
	defer srv.Close()

	// The relabeling rotation: declared as the successor of slot 5, but
	// installed at s9.
	if code, b := call(t, srv, "POST", "/v1/rotations", rotationBody(old.SPI, cfg.SPIBase+6, host)); code != http.StatusOK {
		t.Errorf("declare rotation 5→6: %d %s", code, b)
	}
	// Declared, not installed yet: the successor is enforced with its
	// predecessor's binding, so neither end's switch meets an unknown SA.
	if s := k.slots(); s[6] != s[5] {
		t.Errorf("declared successor not premapped with the predecessor's binding: %+v vs %+v", s[6], s[5])
	}
	bad := old
	bad.SPI, bad.Context = cfg.SPIBase+6, "system_u:system_r:analyst_t:s9"
	h.sas.ch <- []KernelSA{old, bad}
	eventually(t, func() bool { return refusedRelabel(h) == 1 }, "relabeling successor not refused: %+v", h.a.Status().SAs)
	if _, ok := k.slots()[6]; ok {
		t.Fatalf("the relabeled successor is in the maps: the fast path would accept its packets at s9")
	}
	if _, ok := k.slots()[5]; !ok {
		t.Fatalf("the old SA left the maps: the refused rotation broke the flow")
	}
	want := `# HELP mlsgate_sa_rotations_total SA rotations the agent checked, by result: accepted (the successor carries its predecessor's context, application and owner, and is enforced beside it), refused_relabel (it does not, and is kept out of the maps).
# TYPE mlsgate_sa_rotations_total counter
mlsgate_sa_rotations_total{result="accepted"} 0
mlsgate_sa_rotations_total{result="refused_relabel"} 1
`
	if err := testutil.GatherAndCompare(h.a.metrics.reg, strings.NewReader(want), "mlsgate_sa_rotations_total"); err != nil {
		t.Error(err)
	}
	// The record cannot be dropped while the refused SA is installed: it
	// would then pass for a fresh SA.
	if code, b := call(t, srv, "DELETE", fmt.Sprintf("/v1/rotations/%s/%d", host, cfg.SPIBase+6), ""); code != http.StatusConflict {
		t.Fatalf("dropping the record of a refused, installed successor: %d %s, want 409", code, b)
	}

	// A label-preserving rotation: old and new in the maps at once, same
	// label, same owner, same application.
	if code, b := call(t, srv, "POST", "/v1/rotations", rotationBody(old.SPI, cfg.SPIBase+7, host)); code != http.StatusOK {
		t.Fatalf("declare rotation 5→7: %d %s", code, b)
	}
	good := old
	good.SPI = cfg.SPIBase + 7
	h.sas.ch <- []KernelSA{old, bad, good}
	eventually(t, func() bool {
		for _, r := range h.a.Status().Rotations {
			if r.New.SPI == good.SPI && r.State == "active" {
				return true
			}
		}
		return false
	}, "label-preserving successor never active: %+v", h.a.Status().Rotations)
	s := k.slots()
	if s[5] != s[7] {
		t.Fatalf("old %+v and new %+v differ", s[5], s[7])
	}
	if s[7].OwnerVm != 7 || s[7].AppId != 1 {
		t.Fatalf("successor %+v", s[7])
	}
	want = strings.Replace(want, `{result="accepted"} 0`, `{result="accepted"} 1`, 1)
	if err := testutil.GatherAndCompare(h.a.metrics.reg, strings.NewReader(want), "mlsgate_sa_rotations_total"); err != nil {
		t.Error(err)
	}

	// The state survives a restart: a new agent still refuses the
	// relabeled SA.
	h.cancel()
	<-h.done
	h.done <- nil
	k2 := &fakeKernel{state: k.state, pinned: []int{9}}
	h2 := start(t, cfg, k2, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{initial: []KernelSA{old, bad, good}})
	eventually(t, h2.a.Ready, "restarted agent not ready")
	eventually(t, func() bool { _, ok := k2.slots()[7]; return ok }, "successor lost across the restart")
	if _, ok := k2.slots()[6]; ok {
		t.Fatal("a restarted agent allowed the relabeled successor")
	}
}

// TestAgentRotationRefusesOtherOwner: a successor between other
// addresses belongs to another guest; it is refused too.
func TestAgentRotationRefusesOtherOwner(t *testing.T) {
	cfg := testConfig(t)
	g7 := guest7(t)
	g8 := g7
	g8.Interface, g8.VM, g8.App, g8.Addr4 = "vif8.0", 8, 2, netip.MustParseAddr("10.80.0.8")
	k := &fakeKernel{}
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}, {Name: "vif8.0", Index: 10}}}, &fakeSAs{})
	for _, g := range []GuestSpec{g7, g8} {
		if err := h.a.SetGuest(g); err != nil {
			t.Fatal(err)
		}
	}
	host := netip.MustParseAddr("10.70.0.1")
	old := KernelSA{Src: g7.Addr4, Dst: host, SPI: cfg.SPIBase + 5, Proto: 50, Reqid: 1, Context: "system_u:system_r:analyst_t:s6"}
	h.sas.ch <- []KernelSA{old}
	eventually(t, func() bool { _, ok := k.slots()[5]; return ok }, "old SA never in the maps")
	srv := httptest.NewServer(h.a.AdminHandler())
	defer srv.Close()
	if code, b := call(t, srv, "POST", "/v1/rotations", rotationBody(old.SPI, cfg.SPIBase+6, host)); code != http.StatusOK {
		t.Fatalf("declare: %d %s", code, b)
	}
	other := old
	other.SPI, other.Src = cfg.SPIBase+6, g8.Addr4
	h.sas.ch <- []KernelSA{old, other}
	eventually(t, func() bool { return refusedRelabel(h) == 1 }, "successor of another owner not refused: %+v", h.a.Status().SAs)
	if _, ok := k.slots()[6]; ok {
		t.Fatal("a successor owned by guest 8 is in the maps as guest 7's rotation")
	}
}

// TestAgentRotationDeclarationChecks: a declaration names an SA the
// agent enforces now, and a successor that is not already someone else's.
func TestAgentRotationDeclarationChecks(t *testing.T) {
	r := newRotRig(t, "system_u:system_r:analyst_t:s6")
	cfg, host, srv, old := r.cfg, r.host, r.srv, r.sas[0]
	for _, c := range []struct {
		body string
		code int
	}{
		{rotationBody(cfg.SPIBase+99, cfg.SPIBase+6, host), http.StatusUnprocessableEntity}, // unknown predecessor
		{rotationBody(old.SPI, old.SPI, host), http.StatusUnprocessableEntity},              // its own successor
		{rotationBody(old.SPI, 7, host), http.StatusUnprocessableEntity},                    // reserved SPI
		{`{"old":{"spi":1},"new":{"spi":2},"x":1}`, http.StatusBadRequest},
		{rotationBody(old.SPI, cfg.SPIBase+6, host), http.StatusOK},
		{rotationBody(old.SPI, cfg.SPIBase+6, host), http.StatusOK},                         // idempotent
		{rotationBody(cfg.SPIBase+6, cfg.SPIBase+6, host), http.StatusUnprocessableEntity},  // self
		{rotationBody(cfg.SPIBase+99, cfg.SPIBase+6, host), http.StatusUnprocessableEntity}, // other predecessor
	} {
		if code, b := call(t, srv, "POST", "/v1/rotations", c.body); code != c.code {
			t.Errorf("POST %s: %d %s, want %d", c.body, code, b, c.code)
		}
	}
	// The successor never appeared: the record can be dropped (rollback).
	if code, b := call(t, srv, "DELETE", fmt.Sprintf("/v1/rotations/%s/%d", host, cfg.SPIBase+6), ""); code != http.StatusOK {
		t.Fatalf("drop a pending record: %d %s", code, b)
	}
	var st struct {
		Rotations []json.RawMessage `json:"rotations"`
	}
	code, b := call(t, srv, "GET", "/v1/status", "")
	if err := json.Unmarshal([]byte(b), &st); code != 200 || err != nil || len(st.Rotations) != 0 {
		t.Fatalf("status after the drop: %d %v %s", code, err, b)
	}
}

// refusedRelabel reads mlsgate_sa_rotations_total{result="refused_relabel"}
// (-1 when absent).
func refusedRelabel(h *harness) float64 {
	mfs, err := h.a.metrics.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "mlsgate_sa_rotations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "refused_relabel" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// TestAgentRotationSurvivesAgentKill: the agent dies between the
// declaration and the successor's install (kill -9: nothing but the
// persisted desired state survives). The restarted agent enforces the
// declared successor with its predecessor's binding from its first
// reconcile, then checks the kernel's SA when it appears.
func TestAgentRotationSurvivesAgentKill(t *testing.T) {
	cfg := testConfig(t)
	g := guest7(t)
	k := &fakeKernel{}
	h := start(t, cfg, k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	if err := h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	host := netip.MustParseAddr("10.70.0.1")
	old := KernelSA{Src: g.Addr4, Dst: host, SPI: cfg.SPIBase + 5, Proto: 50, Reqid: 1, Context: "system_u:system_r:analyst_t:s6"}
	h.sas.ch <- []KernelSA{old}
	eventually(t, func() bool { _, ok := k.slots()[5]; return ok }, "old SA never in the maps")
	if _, err := h.a.DeclareRotation(SARef{old.SPI, host}, SARef{cfg.SPIBase + 6, host}); err != nil {
		t.Fatal(err)
	}
	h.cancel()
	<-h.done
	h.done <- nil

	k2 := &fakeKernel{state: k.state, pinned: []int{9}}
	h2 := start(t, cfg, k2, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{initial: []KernelSA{old}})
	eventually(t, h2.a.Ready, "restarted agent not ready")
	if s := k2.slots(); s[6] != s[5] || s[6].OwnerVm != 7 {
		t.Fatalf("after the restart the declared successor is not enforced with its predecessor's binding: %+v vs %+v", s[6], s[5])
	}
	bad := old
	bad.SPI, bad.Context = cfg.SPIBase+6, "system_u:system_r:analyst_t:s2"
	h2.sas.ch <- []KernelSA{old, bad}
	eventually(t, func() bool { return refusedRelabel(h2) == 1 }, "relabeled successor not refused after the restart")
	if _, ok := k2.slots()[6]; ok {
		t.Fatal("the relabeled successor stayed in the maps")
	}
}

// TestAgentRotationBatch: a rotation's successors are declared and dropped
// in one request each, all or none.
func TestAgentRotationBatch(t *testing.T) {
	r := newRotRig(t, "system_u:system_r:analyst_t:s6", "system_u:system_r:analyst_t:s4")
	h, cfg, host, srv, a, b := r.h, r.cfg, r.host, r.srv, r.sas[0], r.sas[1]
	pair := func(old, new uint32) string {
		return fmt.Sprintf(`{"old":{"spi":%d,"daddr":%q},"new":{"spi":%d,"daddr":%q}}`, old, host, new, host)
	}
	records := func() []RotationStatus {
		h.a.mu.Lock()
		defer h.a.mu.Unlock()
		return h.a.rotationStatus()
	}
	for _, c := range []struct {
		what, body string
		code       int
	}{
		{"one unknown predecessor", `{"pairs":[` + pair(a.SPI, cfg.SPIBase+6) + `,` + pair(cfg.SPIBase+99, cfg.SPIBase+9) + `]}`, http.StatusUnprocessableEntity},
		{"one successor for two predecessors", `{"pairs":[` + pair(a.SPI, cfg.SPIBase+6) + `,` + pair(b.SPI, cfg.SPIBase+6) + `]}`, http.StatusUnprocessableEntity},
		{"both forms", `{"old":{"spi":1},"new":{"spi":2},"pairs":[` + pair(a.SPI, cfg.SPIBase+6) + `]}`, http.StatusBadRequest},
		{"old without new", `{"old":{"spi":1}}`, http.StatusBadRequest},
		{"no pairs", `{"pairs":[]}`, http.StatusBadRequest},
	} {
		if code, body := call(t, srv, "POST", "/v1/rotations", c.body); code != c.code {
			t.Errorf("%s: %d %s, want %d", c.what, code, body, c.code)
		}
		if r := records(); len(r) != 0 {
			t.Fatalf("%s: refused, yet records were kept: %+v", c.what, r)
		}
	}
	code, body := call(t, srv, "POST", "/v1/rotations", `{"pairs":[`+pair(a.SPI, cfg.SPIBase+6)+`,`+pair(b.SPI, cfg.SPIBase+9)+`]}`)
	var got struct {
		Rotations []RotationSpec `json:"rotations"`
	}
	if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil || len(got.Rotations) != 2 {
		t.Fatalf("declare two: %d %v %s", code, err, body)
	}
	if got.Rotations[0].Context != a.Context || got.Rotations[1].Context != b.Context || got.Rotations[1].Old.SPI != b.SPI {
		t.Errorf("records %+v: each must carry its own predecessor's context", got.Rotations)
	}
	if r := records(); len(r) != 2 {
		t.Fatalf("%d records after the batch, want 2: %+v", len(r), r)
	}
	code, body = call(t, srv, "POST", "/v1/rotations/drop", fmt.Sprintf(`{"successors":[{"spi":%d,"daddr":%q},{"spi":%d,"daddr":%q},{"spi":%d,"daddr":%q}]}`,
		cfg.SPIBase+6, host, cfg.SPIBase+9, host, cfg.SPIBase+77, host))
	var dropped struct {
		Removed int `json:"removed"`
	}
	if err := json.Unmarshal([]byte(body), &dropped); code != http.StatusOK || err != nil || dropped.Removed != 2 {
		t.Fatalf("drop two of three: %d %s, want 200 removed 2", code, body)
	}
	if r := records(); len(r) != 0 {
		t.Fatalf("records left after the drop: %+v", r)
	}
}

// rotRig is an agent with guest 7 declared on vif7.0, kernel SAs from
// guest 7 to host in its maps, and its admin API served.
type rotRig struct {
	h    *harness
	k    *fakeKernel
	cfg  Config
	host netip.Addr
	srv  *httptest.Server
	sas  []KernelSA
}

// newRotRig installs one SA per context, at SPIBase+5, +8, +11, ...
func newRotRig(t *testing.T, contexts ...string) *rotRig {
	t.Helper()
	r := &rotRig{cfg: testConfig(t), k: &fakeKernel{}, host: netip.MustParseAddr("10.70.0.1")}
	g := guest7(t)
	r.h = start(t, r.cfg, r.k, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	if err := r.h.a.SetGuest(g); err != nil {
		t.Fatal(err)
	}
	for i, c := range contexts {
		r.sas = append(r.sas, KernelSA{Src: g.Addr4, Dst: r.host, SPI: r.cfg.SPIBase + 5 + 3*uint32(i), Proto: 50, Reqid: 1, Context: c})
	}
	r.h.sas.ch <- r.sas
	eventually(t, func() bool {
		slots := r.k.slots()
		for i := range r.sas {
			if _, ok := slots[5+3*uint32(i)]; !ok {
				return false
			}
		}
		return true
	}, "old SAs never in the maps")
	r.srv = httptest.NewServer(r.h.a.AdminHandler())
	t.Cleanup(r.srv.Close)
	return r
}
