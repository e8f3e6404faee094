package main

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/verdict"
)

func loadPlan(t *testing.T, dir string) *demoPlan {
	t.Helper()
	apps, err := policystore.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := planDemo(apps)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func leakOf(p *demoPlan, via, to string) (leak, bool) {
	for _, lk := range p.Leaks {
		if lk.Via.Name == via && lk.To.Name == to {
			return lk, true
		}
	}
	return leak{}, false
}

func TestPlanDemoAnalyst(t *testing.T) {
	p := loadPlan(t, "../../examples/analyst")
	if p.Home.Name != "analyst" || p.Other == nil || p.Other.Name != "osint" {
		t.Fatalf("home %v other %v, want analyst and osint", p.Home.Name, p.Other)
	}
	if p.Pages[0].URL != "http://ws1.analyst.example/profile" || p.Pages[0].Label != mustParse(t, "s10/i8") {
		t.Errorf("first page %+v, want ws1's profile at s10/i8", p.Pages[0])
	}
	lk, ok := leakOf(p, "ws1", "ws3")
	if !ok || lk.Label != mustParse(t, "s10/i8") {
		t.Errorf("leak ws1→ws3 %+v (%v), want s10/i8", lk, ok)
	}
	if _, ok := leakOf(p, "ws1", "ws2"); ok {
		t.Errorf("leak ws1→ws2 planned, but ws2 accepts every label of ws1")
	}
	if p.Foreign.Name != "ws1" {
		t.Errorf("the osint guest's foreign server is %q, want ws1", p.Foreign.Name)
	}
	if p.OtherPage.URL != "http://feed.osint.example/" || p.Home.Guest.Contains(p.OtherPage.Label) {
		t.Errorf("other page %+v must be outside the analyst guest's range", p.OtherPage)
	}
}

// With compartments, the leak between ws1 and ws2 differs from an allowed
// flow in its categories alone, and it travels on a label the guest holds
// an SA for toward ws1 (else the guest's XFRM, not the fast path, would
// stop the reroute).
func TestPlanDemoCategories(t *testing.T) {
	p := loadPlan(t, "../../examples/analyst-cats")
	lk, ok := leakOf(p, "ws1", "ws2")
	if !ok || lk.Label != mustParse(t, "s10:c1.c5/i8") {
		t.Fatalf("leak ws1→ws2 %+v (%v), want s10:c1.c5/i8", lk, ok)
	}
	for _, lk := range p.Leaks {
		if !containsLabel(serverLabels(p.Home, lk.Via), lk.Label) {
			t.Errorf("leak %s→%s at %s: the guest has no SA toward %s at that label", lk.Via.Name, lk.To.Name, lk.Label, lk.Via.Name)
		}
		if lk.To.Range.Contains(lk.Label) {
			t.Errorf("leak %s→%s at %s: %s accepts it", lk.Via.Name, lk.To.Name, lk.Label, lk.To.Name)
		}
		if containsLabel(serverLabels(p.Home, lk.To), lk.Label) {
			t.Errorf("leak %s→%s at %s: the guest holds an SA toward %s at it, so the direct send is not the guest XFRM's to stop", lk.Via.Name, lk.To.Name, lk.Label, lk.To.Name)
		}
	}
	want := map[string]string{"ws1": "s6/i5 s10:c1.c5/i8", "ws2": "s8:c6/i6", "ws3": "s0/i5 s4:c2/i5"}
	for _, s := range p.Home.Servers {
		var got []string
		for _, l := range serverLabels(p.Home, s) {
			got = append(got, l.String())
		}
		if strings.Join(got, " ") != want[s.Name] {
			t.Errorf("labels of %s: %v, want %s", s.Name, got, want[s.Name])
		}
	}
}

func containsLabel(ls []label.Label, l label.Label) bool {
	for _, x := range ls {
		if x == l {
			return true
		}
	}
	return false
}

func mustParse(t *testing.T, s string) label.Label {
	t.Helper()
	l, err := label.ParseLabel(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPlanDemoRefusesAppsWithoutLeaks(t *testing.T) {
	app := &policystore.Application{Name: "flat", Type: "flat_t", Guest: mustBounds(t, "s0-s5/i0-i5"), LoadableFrom: []string{"host"},
		Servers: []policystore.Server{
			{Name: "a", Hosts: []string{"a.example"}, Range: mustBounds(t, "s0-s5/i0-i5")},
			{Name: "b", Hosts: []string{"b.example"}, Range: mustBounds(t, "s0-s5/i0-i5")},
		}}
	if _, err := planDemo([]*policystore.Application{app}); err == nil || !strings.Contains(err.Error(), "no leak") {
		t.Errorf("plan of servers that accept each other's labels: %v, want an error naming the missing leak", err)
	}
	app.LoadableFrom = []string{"any"}
	if _, err := planDemo([]*policystore.Application{app}); err == nil || !strings.Contains(err.Error(), "loadable from the host") {
		t.Errorf("plan without a host-loadable application: %v", err)
	}
}

func mustBounds(t *testing.T, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExampleURL(t *testing.T) {
	for _, c := range []struct{ expr, want string }{
		{`https?://ws1\.analyst\.example/profile(/.*)?`, "http://ws1.analyst.example/profile"},
		{`https?://ws3\.analyst\.example/public\.html`, "http://ws3.analyst.example/public.html"},
		{`http://(a|b)\.example/x[0-9]+`, "http://a.example/x0"},
		{`http://c\.example/p{2}`, "http://c.example/pp"},
	} {
		got, err := exampleURL(c.expr)
		if err != nil || got != c.want {
			t.Errorf("exampleURL(%q) = %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
	if _, err := exampleURL(`http://x\.example/\bword`); err == nil {
		t.Errorf("an expression with a word boundary made an example URL")
	}
}

func TestCheckNamesTheWrongEnforcer(t *testing.T) {
	peer := expect{"refused", enforcer{Kind: byFastPath, Reason: verdict.DenyPeerRange}}
	xf := expect{"refused", enforcer{Kind: byGuestXFRM}}
	read := expect{"delivered", enforcer{Kind: byFastPath, Reason: verdict.AllowLabeled}}
	fp := func(from map[verdict.Reason]uint64, to map[verdict.Reason]uint64) (c [2][verdict.NumReasons]uint64) {
		for r, n := range from {
			c[0][r] = n
		}
		for r, n := range to {
			c[1][r] = n
		}
		return c
	}
	cases := []struct {
		name   string
		want   expect
		result string
		o      observed
		ok     bool
	}{
		{"reroute stopped by the fast path", peer, "refused",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.AllowLabeled: 2, verdict.DenyPeerRange: 2}, nil), Sent: 2}, true},
		{"reroute stopped by the guest's XFRM", peer, "refused",
			observed{GuestX: map[string]uint64{"XfrmOutNoStates": 6}, Sent: 6}, false},
		{"reroute: fewer verdicts than packets", peer, "refused",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.DenyPeerRange: 1}, nil), Sent: 2}, false},
		{"reroute: another deny reason", peer, "refused",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.DenyPeerRange: 2, verdict.DenyLabelRange: 1}, nil), Sent: 2}, false},
		{"reroute: nothing sent", peer, "refused", observed{Sent: 0}, false},
		{"reroute delivered", peer, "delivered",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.AllowLabeled: 4}, map[verdict.Reason]uint64{verdict.AllowLabeled: 2}), Sent: 2}, false},
		{"direct send stopped by the guest's XFRM", xf, "refused",
			observed{GuestX: map[string]uint64{"XfrmOutNoStates": 6}}, true},
		{"direct send stopped by the fast path", xf, "refused",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.DenyPeerRange: 2}, nil), GuestX: map[string]uint64{"XfrmOutNoStates": 1}}, false},
		{"direct send: no XFRM drop", xf, "refused", observed{}, false},
		{"read", read, "delivered",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.AllowLabeled: 10}, map[verdict.Reason]uint64{verdict.AllowLabeled: 5})}, true},
		{"read: nothing to the guest", read, "delivered",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.AllowLabeled: 10}, nil)}, false},
		{"read: a denial on the way back", read, "delivered",
			observed{FastPath: fp(map[verdict.Reason]uint64{verdict.AllowLabeled: 10}, map[verdict.Reason]uint64{verdict.AllowLabeled: 5, verdict.DenyPeerRange: 1})}, false},
	}
	for _, c := range cases {
		err := check(c.want, c.result, "", c.o)
		if (err == nil) != c.ok {
			t.Errorf("%s: check = %v, want ok=%v", c.name, err, c.ok)
		}
	}
	if err := check(expect{"refused", enforcer{Kind: byLoader}}, "refused", byGuestPolicy, observed{}); err == nil {
		t.Errorf("a loader refusal decided by the guest policy passed")
	}
}
