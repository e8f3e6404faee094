package api

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/internal/httpjson"
)

// TestClient: one client reaches the agent on a Unix socket, decodes
// answers, names the request in an error answer, and says what to check
// when nothing listens.
func TestClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, 200, agent.Status{Guests: []agent.GuestStatus{{GuestSpec: agent.GuestSpec{Interface: "vif3.0"}, Attached: true}}})
	})
	mux.HandleFunc("PUT /v1/guests/{iface}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("PUT without a JSON content type")
		}
		httpjson.Write(w, http.StatusUnprocessableEntity, map[string]string{"error": "vm 0 is reserved"})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	c := New("unix:"+sock, 5*time.Second)
	st, err := c.Status(context.Background())
	if err != nil || len(st.Guests) != 1 || !st.Guests[0].Attached {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	code, err := c.Do(context.Background(), "PUT", "/v1/guests/vif3.0", agent.GuestSpec{Interface: "vif3.0"}, nil)
	if code != http.StatusUnprocessableEntity || err == nil || !strings.Contains(err.Error(), "PUT /v1/guests/vif3.0") || !strings.Contains(err.Error(), "vm 0 is reserved") {
		t.Errorf("error answer: %d %v", code, err)
	}
	gone := New(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	gone.Hint = "is it running?"
	if _, err := gone.Status(context.Background()); err == nil || !strings.Contains(err.Error(), "is it running?") {
		t.Errorf("no agent: %v", err)
	}
}
