package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"go.yaml.in/yaml/v3"
)

func statusFixture(t *testing.T) agent.Status {
	r, _ := label.ParseBounds("s0-s15/i0-i10")
	return agent.Status{Ready: true, Enforce: true, Undeclared: "deny", Patterns: []string{"vif*"}, Guests: []agent.GuestStatus{
		{GuestSpec: agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r}, Ifindex: 9, Present: true, Attached: true, Mode: "tcx", Enforcement: "enforce"},
		{GuestSpec: agent.GuestSpec{Interface: "vif8.0", VM: 8, App: 1, Range: r, Audit: true}, Enforcement: "audit",
			NotAttached: "interface not present: the guest's VM is not running, or its interface has another name"},
	}}
}

// TestStatusOutputs: -o json and -o yaml print the same snake_case fields,
// empty lists as [] (never null), the hook and the reason a guest is not
// attached; an unknown -o is refused with the accepted list.
func TestStatusOutputs(t *testing.T) {
	sock := fakeAgentSocket(t, statusFixture(t), true)
	var js strings.Builder
	if err := run([]string{"status", "--agent", "unix:" + sock, "-o", "json"}, &js); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(js.String(), "null") {
		t.Errorf("json status has a null:\n%s", js.String())
	}
	var fromJSON map[string]any
	if err := json.Unmarshal([]byte(js.String()), &fromJSON); err != nil {
		t.Fatal(err)
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				// Reason and direction names are data, not field names.
				if !snake.MatchString(k) {
					t.Errorf("field %s.%s is not snake_case", path, k)
				}
				walk(path+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(path+"[]", x)
			}
		}
	}
	walk("", fromJSON)
	if l, ok := fromJSON["undeclared_interfaces"].([]any); !ok || len(l) != 0 {
		t.Errorf("undeclared_interfaces %v, want []", fromJSON["undeclared_interfaces"])
	}
	guests := fromJSON["guests"].([]any)
	g7, g8 := guests[0].(map[string]any), guests[1].(map[string]any)
	if g7["hook"] != "tcx" || g7["mode"] != "enforce" || g7["not_attached"] != "" {
		t.Errorf("vif7.0: %v", g7)
	}
	if g8["mode"] != "audit" || g8["attached"] != false || !strings.Contains(g8["not_attached"].(string), "not present") {
		t.Errorf("vif8.0: %v", g8)
	}

	var ys strings.Builder
	if err := run([]string{"status", "--agent", "unix:" + sock, "-o", "yaml"}, &ys); err != nil {
		t.Fatal(err)
	}
	var fromYAML map[string]any
	if err := yaml.Unmarshal([]byte(ys.String()), &fromYAML); err != nil {
		t.Fatalf("%v\n%s", err, ys.String())
	}
	// The same document: keys and values agree once both are JSON.
	b, _ := json.Marshal(fromYAML)
	var roundTrip map[string]any
	json.Unmarshal(b, &roundTrip)
	a, _ := json.Marshal(fromJSON)
	c, _ := json.Marshal(roundTrip)
	if string(a) != string(c) {
		t.Errorf("yaml and json differ:\njson %s\nyaml %s", a, c)
	}

	var tab strings.Builder
	if err := run([]string{"status", "--agent", "unix:" + sock}, &tab); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HOOK", "NOT ATTACHED", "tcx", "not present", "interfaces: vif*"} {
		if !strings.Contains(tab.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tab.String())
		}
	}

	err := run([]string{"status", "--agent", "unix:" + sock, "-o", "wide"}, &tab)
	if err == nil || !strings.Contains(err.Error(), "table, json, yaml") {
		t.Errorf("-o wide: %v, want a refusal listing table, json, yaml", err)
	}
}

// TestStatusEmptyListsJSON: an agent with nothing declared prints [] for
// every list.
func TestStatusEmptyListsJSON(t *testing.T) {
	sock := fakeAgentSocket(t, agent.Status{}, true)
	var js strings.Builder
	if err := run([]string{"status", "--agent", "unix:" + sock, "-o", "json"}, &js); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(js.String(), "null") || !strings.Contains(js.String(), `"guests": []`) {
		t.Errorf("empty status:\n%s", js.String())
	}
}

// TestGuestSetShowsPatternRefusal: 'guest set' on an interface the
// agent's patterns do not match fails with the agent's 422 message, which
// names the patterns.
func TestGuestSetShowsPatternRefusal(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/guests/{iface}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnprocessableEntity)
		json.NewEncoder(w).Encode(map[string]string{"error": `interface "` + r.PathValue("iface") + `" matches none of the agent's patterns ["vif*"]`})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	err = run([]string{"guest", "set", "eth0", "--agent", "unix:" + sock, "--vm", "7", "--app", "1", "--range", "s0-s1/i0-i1"}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "422") || !strings.Contains(err.Error(), `vif*`) || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("guest set eth0: %v, want the agent's 422 naming eth0 and the patterns", err)
	}
}
