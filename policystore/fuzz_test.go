package policystore

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParseApplication(f *testing.F) {
	for _, name := range []string{"analyst.yaml", "osint.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", "analyst", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("name: x\ntype: x_t\nguest: s0\nservers: [{name: a, hosts: [a.b], addresses: [::1], range: s0}]\nloadable_from: [any]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("name: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		app, err := ParseApplication("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := app.Validate(); err != nil {
			t.Fatalf("accepted but invalid: %v", err)
		}
		// The wire form (JSON, as the authority sends it) round-trips.
		b, err := json.Marshal(app)
		if err != nil {
			t.Fatal(err)
		}
		var back Application
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("JSON round trip: %v\n%s", err, b)
		}
		b2, _ := json.Marshal(&back)
		if string(b) != string(b2) {
			t.Fatalf("JSON not stable:\n%s\n%s", b, b2)
		}
		ix, err := NewIndex([]*Application{app})
		if err != nil {
			t.Fatalf("a valid application does not index: %v", err)
		}
		for _, s := range app.Servers {
			for _, h := range s.Hosts {
				r, err := ix.Resolve("http://" + h + "/")
				if err != nil || r.App != app || r.Server == nil || r.Server.Name != s.Name {
					t.Fatalf("host %s of server %s: %+v %v", h, s.Name, r, err)
				}
			}
		}
	})
}

// linearResolve is the obvious reference for Index.Resolve: try every
// pattern of every application, prefer an exact host, then the longest
// wildcard suffix, then the longest path.
func linearResolve(apps []*Application, rawURL string) (string, bool) {
	host, path, err := SplitURL(rawURL)
	if err != nil {
		return "", false
	}
	best, bestHost, bestPath := "", -1, -1
	consider := func(a *Application, pat, prefix string) {
		hostScore := -1
		switch {
		case pat == host:
			hostScore = 1 << 20
		case strings.HasPrefix(pat, "*.") && strings.HasSuffix(host, pat[1:]):
			hostScore = len(pat)
		}
		if hostScore < 0 || !strings.HasPrefix(path, prefix) {
			return
		}
		if hostScore > bestHost || hostScore == bestHost && len(prefix) > bestPath {
			best, bestHost, bestPath = a.Name, hostScore, len(prefix)
		}
	}
	for _, a := range apps {
		for _, s := range a.Servers {
			for _, h := range s.Hosts {
				consider(a, h, "/")
			}
		}
		for _, p := range a.URLs {
			prefix := p.PathPrefix
			if prefix == "" {
				prefix = "/"
			}
			consider(a, p.Host, prefix)
		}
	}
	return best, best != ""
}

func FuzzResolve(f *testing.F) {
	apps := analystApps(f)
	extra := mustApp(f, "wild")
	extra.URLs = []URLPattern{{Host: "*.example"}, {Host: "*.analyst.example", PathPrefix: "/wild/"}, {Host: "ws1.analyst.example", PathPrefix: "/wild/deeper"}}
	apps = append(apps, extra)
	ix, err := NewIndex(apps)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"http://ws1.analyst.example/profile", "https://a.b.analyst.example/wild/x", "http://ws1.analyst.example/wild/deeper/x", "http://x.example:80/", "http://EXAMPLE/", "http://feed.osint.example./"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		r, err := ix.Resolve(u)
		want, ok := linearResolve(apps, u)
		if (err == nil) != ok {
			t.Fatalf("%q: index %v, reference found=%v (%s)", u, err, ok, want)
		}
		if ok && r.App.Name != want {
			t.Fatalf("%q: index says %s, reference %s", u, r.App.Name, want)
		}
	})
}
