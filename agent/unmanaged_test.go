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
