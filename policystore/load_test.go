package policystore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func analystApps(t testing.TB) []*Application {
	t.Helper()
	apps, err := LoadDir(filepath.Join("..", "examples", "analyst"))
	if err != nil {
		t.Fatal(err)
	}
	return apps
}

func TestAnalystExampleResolves(t *testing.T) {
	ix, err := NewIndex(analystApps(t))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		url, app, server, rng string
	}{
		{"http://ws1.analyst.example/profile", "analyst", "ws1", "s6-s15/i5-i10"},
		{"https://WS2.analyst.example:8443/x?q=1", "analyst", "ws2", "s6-s15/i5-i10"},
		{"http://ws3.analyst.example/public.html", "analyst", "ws3", "s0-s5/i5-i10"},
		{"http://open.analyst.example", "analyst", "ws3", "s0-s5/i5-i10"},
		{"http://feed.osint.example/today", "osint", "feed", "s0/i0"},
	}
	for _, c := range cases {
		r, err := ix.Resolve(c.url)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if r.App.Name != c.app || r.Server == nil || r.Server.Name != c.server || r.Range.String() != c.rng {
			t.Errorf("%s: got app %s server %v range %v; want %s %s %s", c.url, r.App.Name, r.Server, r.Range, c.app, c.server, c.rng)
		}
	}
	for _, bad := range []string{"http://ws9.analyst.example/", "ftp://ws1.analyst.example/", "ws1.analyst.example/profile", "http://ws1.analyst.example\x00/", "http://:80/"} {
		if r, err := ix.Resolve(bad); err == nil {
			t.Errorf("%q resolved to %s; want an error", bad, r.App.Name)
		}
	}
}

func TestIndexLongestPathAndWildcard(t *testing.T) {
	base := func(name, host string) *Application {
		a := mustApp(t, name)
		a.Servers[0].Hosts = []string{host}
		return a
	}
	a := base("alpha", "www.example.org")
	a.URLs = []URLPattern{{Host: "*.example.org"}}
	b := base("beta", "api.example.org")
	b.URLs = []URLPattern{{Host: "www.example.org", PathPrefix: "/beta/"}, {Host: "*.deep.example.org"}}
	ix, err := NewIndex([]*Application{a, b})
	if err != nil {
		t.Fatal(err)
	}
	for url, want := range map[string]string{
		"http://www.example.org/":           "alpha",
		"http://www.example.org/beta/x":     "beta",
		"http://www.example.org/betamax":    "alpha",
		"http://x.example.org/":             "alpha",
		"http://a.b.deep.example.org/":      "beta",
		"http://deep.example.org/":          "alpha",
		"http://api.example.org/anything":   "beta",
		"http://www.example.org./beta/page": "beta",
	} {
		r, err := ix.Resolve(url)
		if err != nil || r.App.Name != want {
			t.Errorf("%s: got %v, %v; want %s", url, r.App, err, want)
		}
	}
	if _, err := ix.Resolve("http://example.org/"); !errors.Is(err, ErrNoApplication) {
		t.Errorf("bare suffix: %v, want ErrNoApplication (a wildcard matches names strictly under it)", err)
	}
	c := base("gamma", "www.example.org")
	if _, err := NewIndex([]*Application{a, c}); err == nil || !strings.Contains(err.Error(), `"alpha" and "gamma"`) {
		t.Errorf("conflict: %v", err)
	}
}

func mustApp(t testing.TB, name string) *Application {
	t.Helper()
	src := `name: ` + name + `
type: ` + name + `_t
guest: s0-s3/i1-i4
servers:
  - name: srv
    hosts: [` + name + `.example]
    addresses: [10.0.0.1]
    range: s0-s3/i1-i4
loadable_from: [host]
`
	a, err := ParseApplication(name+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestParseApplicationErrors(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("..", "examples", "analyst", "analyst.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, from, to string
		want           []string // substrings of the error
	}{
		{"inverted range", "range: s6-s15/i5-i10", "range: s15-s6/i5-i10", []string{"analyst.yaml:26", "servers[0].range", "s6-s15"}},
		{"unknown field", "loadable_from:", "loadable_form:", []string{"analyst.yaml:", "loadable_form", "not found"}},
		{"bad address", "10.70.2.1", "10.70.2", []string{"analyst.yaml:29", "servers[1].addresses[0]", "10.70.2"}},
		{"bad host", "ws3.analyst.example,", "WS3_analyst,", []string{"analyst.yaml:32", "servers[2].hosts[0]", "DNS name"}},
		{"label outside guest", "label: s10/i8", "label: s10/i12", []string{"analyst.yaml:40", "labels[0].label", "outside the guest range"}},
		{"bad regex", `profile(/.*)?'`, `profile(/.*'`, []string{"analyst.yaml:39", "labels[0].url", "regular expression"}},
		{"bad type", "type: analyst_t", "type: Analyst", []string{"analyst.yaml:8", "type", "_t"}},
		{"yaml syntax", "servers:", "servers: [", []string{"analyst.yaml:"}},
		{"dup server", "name: ws2", "name: ws1", []string{"analyst.yaml:27", "servers[1].name", "listed twice"}},
		{"negative ready pool", "loadable_from:", "pool: {ready: -1}\nloadable_from:", []string{"analyst.yaml:46", "pool.ready", "want 0"}},
		{"huge ready pool", "loadable_from:", "pool:\n  ready: 1000\nloadable_from:", []string{"analyst.yaml:47", "pool.ready", "1000"}},
		{"unknown pool key", "loadable_from:", "pool: {redy: 2}\nloadable_from:", []string{"analyst.yaml:", "redy", "not found"}},
		{"server out of guest", "range: s0-s5/i5-i10", "range: s0-s5/i0-i2", []string{"servers[2].range", "nothing in common"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(string(good), c.from, c.to, 1)
			if src == string(good) {
				t.Fatalf("test case does not change the file: %q not found", c.from)
			}
			_, err := ParseApplication("analyst.yaml", []byte(src))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrApplication) {
				t.Errorf("%v is not ErrApplication", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestParseApplicationReadyPool(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("..", "examples", "analyst", "analyst.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseApplication("analyst.yaml", good)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pool.Ready != 0 {
		t.Errorf("no pool key: ready %d, want the default 0", a.Pool.Ready)
	}
	src := strings.Replace(string(good), "loadable_from:", "pool: {ready: 3}\nloadable_from:", 1)
	if a, err = ParseApplication("analyst.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	if a.Pool.Ready != 3 {
		t.Errorf("pool: {ready: 3} read as %d", a.Pool.Ready)
	}
}

func TestLoadDirAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"analyst.yaml", "osint.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", "analyst", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if apps, err := LoadDir(dir); err != nil || len(apps) != 2 {
		t.Fatalf("good dir: %d apps, %v", len(apps), err)
	}
	// The same host in a second file: the directory is refused whole.
	clash := "name: clash\ntype: clash_t\nguest: s0-s3\nservers:\n  - name: x\n    hosts: [ws1.analyst.example]\n    addresses: [10.9.9.9]\n    range: s0-s3\nloadable_from: [any]\n"
	if err := os.WriteFile(filepath.Join(dir, "zz.yaml"), []byte(clash), 0o644); err != nil {
		t.Fatal(err)
	}
	apps, err := LoadDir(dir)
	if err == nil || apps != nil || !strings.Contains(err.Error(), "ws1.analyst.example") {
		t.Fatalf("clash: %d apps, %v", len(apps), err)
	}
}
