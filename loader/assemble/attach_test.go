package assemble

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
)

// attachingAgent reports vif12.0 attached from its third status on.
type attachingAgent struct {
	nullAgent
	asked int
	err   error
}

func (a *attachingAgent) GuestAttached(iface string) (bool, error) {
	a.asked++
	return iface == "vif12.0" && a.asked >= 3, a.err
}

func TestWaitAttached(t *testing.T) {
	g := &loader.Guest{Interface: "vif12.0"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := &attachingAgent{}
	if err := waitAttached(a)(ctx, g); err != nil || a.asked != 3 {
		t.Fatalf("waitAttached: %v after %d questions, want nil after 3", err, a.asked)
	}
	// Never attached: ctx bounds the wait.
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := waitAttached(&attachingAgent{})(short, &loader.Guest{Interface: "vif13.0"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waitAttached on a vif never attached: %v, want the deadline", err)
	}
	// The agent fails, or cannot say: the boot fails.
	if err := waitAttached(&attachingAgent{err: errors.New("agent: connection refused")})(ctx, g); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("waitAttached with a failing agent: %v", err)
	}
	if err := waitAttached(nullAgent{})(ctx, g); err == nil || !strings.Contains(err.Error(), "cannot report") {
		t.Errorf("waitAttached with an agent that cannot report: %v", err)
	}
}

// TestAgentClientGuestAttached: the loader's client reads the agent's status.
func TestAgentClientGuestAttached(t *testing.T) {
	body := `{"ready":true,"guests":[{"interface":"vif3.0","vm":3,"range":"s0/i0","present":true,"attached":true},` +
		`{"interface":"vif4.0","vm":4,"range":"s0/i0","present":true,"attached":false}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(body))
	}))
	defer srv.Close()
	c := loader.NewAgentClient(strings.TrimPrefix(srv.URL, "http://"))
	for iface, want := range map[string]bool{"vif3.0": true, "vif4.0": false, "vif5.0": false} {
		if got, err := c.GuestAttached(iface); err != nil || got != want {
			t.Errorf("GuestAttached(%s) = %v, %v; want %v", iface, got, err, want)
		}
	}
	dead := loader.NewAgentClient("unix:" + filepath.Join(t.TempDir(), "none.sock"))
	if _, err := dead.GuestAttached("vif3.0"); err == nil {
		t.Error("GuestAttached with no agent succeeded")
	}
}

// TestStartSetsXenHooks: the loader gives a Xen backend both hooks.
func TestStartSetsXenHooks(t *testing.T) {
	// No pool: nothing boots (xl would run on this host).
	x := &backend.Xen{Kernel: "/k", Run: func(context.Context, string, ...string) ([]byte, error) {
		return nil, errors.New("no xl in this test")
	}}
	s := setup(t, x, false)
	s.PoolSize = 0
	r, err := Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if x.Created == nil || x.Attached == nil {
		t.Fatalf("Start left Created %v, Attached %v", x.Created != nil, x.Attached != nil)
	}
}
