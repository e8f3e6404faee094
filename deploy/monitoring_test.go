package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The alerts the operator kit promises, and what the dashboard must show.
var (
	wantAlerts = []string{"MlsgateNotReady", "MlsgateAgentDown", "MlsgateReconcileErrors", "MlsgateDenialSpike",
		"MlsgateMapNearlyFull", "MlsgateEventsLost", "MlsgateGuestInAuditMode", "MlsgateNotEnforcing", "MlsgateAPIRefused"}
	wantDashboardMetrics = []string{"mlsgate_packets_total", "mlsgate_guests", "mlsgate_map_entries", "mlsgate_map_capacity",
		"mlsgate_reconcile_errors_total", "mlsgate_events_lost_total", "mlsgate_guest_audit", "mlsgate_enforce", "mlsgate_ready"}
)

type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Alert string `yaml:"alert"`
			Expr  string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestAlertRulesCovered: every promised alert exists, and the promtool unit
// tests make each alert fire at least once and check at least one quiet
// evaluation of it.
func TestAlertRulesCovered(t *testing.T) {
	var rf ruleFile
	readYAML(t, "alerts.yaml", &rf)
	var rt ruleTests
	readYAML(t, "alerts_test.yaml", &rt)
	have := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			have[r.Alert] = true
		}
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, a := range wantAlerts {
		if !have[a] {
			t.Errorf("alerts.yaml lacks %s", a)
		}
	}
	for a := range have {
		if !fires[a] {
			t.Errorf("alerts_test.yaml never expects %s to fire", a)
		}
	}
	if len(rt.RuleFiles) != 1 || rt.RuleFiles[0] != "alerts.yaml" {
		t.Errorf("alerts_test.yaml tests %v, want [alerts.yaml]", rt.RuleFiles)
	}
	for _, a := range []string{"MlsgateNotReady", "MlsgateDenialSpike", "MlsgateMapNearlyFull", "MlsgateGuestInAuditMode", "MlsgateAgentDown"} {
		if !quiet[a] {
			t.Errorf("alerts_test.yaml has no case where %s stays quiet", a)
		}
	}
}

// TestAlertRulesPromtool: promtool accepts the rules and their unit tests
// pass (Debian's prometheus package provides promtool; make deps installs
// it).
func TestAlertRulesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; 'make deps-monitoring' installs it)")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Dashboard is the part of Grafana's dashboard model the test reads.
type Dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int            `json:"id"`
		Title      string         `json:"title"`
		Type       string         `json:"type"`
		Datasource map[string]any `json:"datasource"`
		GridPos    struct{ X, Y, W, H int }
		Targets    []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// TestDashboard: the dashboard parses, each panel has a unique id, the
// templated data source and a query, and the panels cover verdicts, guests,
// map fill, reconcile errors, lost events and audit mode.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d Dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: want both", d.UID, d.Title)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] || !vars["instance"] {
		t.Errorf("templating %v: want datasource and instance variables", vars)
	}
	ids := map[int]bool{}
	var exprs strings.Builder
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: no query or no size", p.Title)
		}
		for _, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" {
				t.Errorf("panel %q: empty query", p.Title)
			}
			if strings.Count(q.Expr, "(") != strings.Count(q.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, q.Expr)
			}
			exprs.WriteString(q.Expr + "\n")
		}
	}
	for _, m := range wantDashboardMetrics {
		if !strings.Contains(exprs.String(), m) {
			t.Errorf("no panel shows %s", m)
		}
	}
}

func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}
