package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAgentRefusesGuestOnUnmanagedInterface: a guest declared on an
// interface none of the agent's patterns matches would never be attached
// (its link events are ignored), so it would run unenforced while status
// and the caller believe it is declared. The agent refuses it, naming the
// patterns, through SetGuest and through the API (422).
func TestAgentRefusesGuestOnUnmanagedInterface(t *testing.T) {
	h := start(t, testConfig(t), &fakeKernel{}, &fakeLinks{initial: []LinkEvent{{Name: "eth0", Index: 2}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	g := guest7(t)
	g.Interface = "eth0"
	if err := h.a.SetGuest(g); err == nil || !strings.Contains(err.Error(), `"vif*"`) || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("SetGuest on eth0 (patterns vif*): %v, want a refusal naming eth0 and the patterns", err)
	}
	srv := httptest.NewServer(h.a.AdminHandler())
	defer srv.Close()
	req, _ := http.NewRequest("PUT", srv.URL+"/v1/guests/eth0", strings.NewReader(`{"vm":7,"app":1,"range":"s0-s15/i5-i10"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(b), `vif*`) {
		t.Errorf("PUT /v1/guests/eth0: %d %s, want 422 naming the patterns", resp.StatusCode, b)
	}
	if st := h.a.Status(); len(st.Guests) != 0 {
		t.Errorf("refused guest is declared: %+v", st.Guests)
	}
	// A managed name is still accepted.
	if err := h.a.SetGuest(guest7(t)); err != nil {
		t.Errorf("SetGuest vif7.0: %v", err)
	}
}

// TestAgentStatusSaysWhyNotAttached: status carries the patterns and, for
// every guest whose programs are not attached, the reason.
func TestAgentStatusSaysWhyNotAttached(t *testing.T) {
	h := start(t, testConfig(t), &fakeKernel{}, &fakeLinks{initial: []LinkEvent{{Name: "vif7.0", Index: 9}}}, &fakeSAs{})
	eventually(t, h.a.Ready, "agent never became ready")
	g8 := guest7(t)
	g8.Interface, g8.VM, g8.Addr4 = "vif8.0", 8, g8.Addr4.Next()
	for _, g := range []GuestSpec{guest7(t), g8} {
		if err := h.a.SetGuest(g); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() bool {
		st := h.a.Status()
		return len(st.Guests) == 2 && (st.Guests[0].Attached || st.Guests[1].Attached)
	}, "vif7.0 never attached")
	st := h.a.Status()
	if len(st.Patterns) != 1 || st.Patterns[0] != "vif*" {
		t.Errorf("status patterns %q, want [vif*]", st.Patterns)
	}
	for _, g := range st.Guests {
		switch g.Interface {
		case "vif7.0":
			if g.NotAttached != "" || g.Mode == "" {
				t.Errorf("attached guest: not_attached %q, hook %q", g.NotAttached, g.Mode)
			}
		case "vif8.0":
			if g.Attached || !strings.Contains(g.NotAttached, "not present") {
				t.Errorf("absent guest: attached %v, not_attached %q", g.Attached, g.NotAttached)
			}
		}
	}
}
