package mapper

import (
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	genSchemes = []string{`https://`, `http://`, `https?://`, `(http|https)://`, `[a-z]+://`, `(?i)https://`, `.*`, `^https://`, `http[s]?://`, `(https://|http://)`}
	genHosts   = []string{`a\.org`, `b\.a\.org`, `x\.com`, `a\.org:8080`, `ab\.org`, `([^/]*\.)?a\.org`, `[a-z]+\.a\.org`,
		`[^/]*`, `.*`, `(a|b)\.org`, `(www\.)?a\.org`, `[a-z.]*a\.org(:[0-9]+)?`, `(?i:A\.ORG)`, `a\.org\b`, `([a-z]+\.)*b\.org`, `x[^/]*`, `.*\.a\.org`, `.*a\.org`, `[^.]*\.org`}
	genPaths = []string{`/`, `/.*`, `/p/.*`, `/p`, `/p[0-9]+`, `(/.*)?`, `/(x|y)/.*`, `.*`, `/p/.*\.pdf`, `/p/.*$`, `/(?s:.*)`,
		`/[pq]/.*`, `/p/?`, `(/p|/q)(/.*)?`, `/p.+`, `/(p|q/.*)`, ``}
	genURLHosts = []string{"a.org", "b.a.org", "x.b.a.org", "wwwa.org", "www.a.org", "x.com", "a.org:8080", "ab.org", "b.org", "xb.org", "q.b.org", "A.ORG"}
	genURLPaths = []string{"/", "/p", "/p/", "/p/q", "/p12", "/x/y", "/p/file.pdf", "/q", "/q/z", "/pp", "/p/a\nb", "", "/x/b.a.org/p/", "/b.a.org/"}
)

func genRegex(rng *rand.Rand) string {
	one := func() string {
		return genSchemes[rng.IntN(len(genSchemes))] + genHosts[rng.IntN(len(genHosts))] + genPaths[rng.IntN(len(genPaths))]
	}
	switch rng.IntN(10) {
	case 0:
		return one() + "|" + one()
	case 1:
		return "(" + one() + ")"
	}
	return one()
}

func genURL(rng *rand.Rand) string {
	if rng.IntN(20) == 0 {
		junk := []string{"", "https://", "http://a.org", "ftp://a.org/", "a.org/p", "https://a.org?x", "https://a.org#/p/"}
		return junk[rng.IntN(len(junk))]
	}
	scheme := []string{"http://", "https://"}[rng.IntN(2)]
	return scheme + genURLHosts[rng.IntN(len(genURLHosts))] + genURLPaths[rng.IntN(len(genURLPaths))]
}

func compileMatchers(t testing.TB, srcs []string) []matcher {
	t.Helper()
	ms := make([]matcher, 0, len(srcs))
	for _, s := range srcs {
		re, err := regexp.Compile(`^(?:` + s + `)$`)
		if err != nil {
			t.Fatalf("generated regex %q: %v", s, err)
		}
		ms = append(ms, matcher{re: re, src: s})
	}
	return ms
}

// checkSame compares the index against the linear scan for u.
func checkSame(t testing.TB, ix *index, ms []matcher, u string) {
	t.Helper()
	for _, k := range []int{1, 3} {
		got := ix.match(u, k, nil)
		want := linearMatch(ms, u, k)
		if !slices.Equal(got, want) {
			var rules []string
			for _, id := range append(slices.Clone(got), want...) {
				rules = append(rules, fmt.Sprintf("%d:%s", id, ms[id].src))
			}
			t.Fatalf("url %q k=%d: index %v, linear %v\nrules involved: %s", u, k, got, want, strings.Join(rules, "  "))
		}
	}
}

func TestIndexMatchesLinear(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MAPPER_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("MAPPER_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with MAPPER_SEED=%d to reproduce)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	rounds := 300
	if testing.Short() {
		rounds = 50
	}
	for round := 0; round < rounds; round++ {
		n := 1 + rng.IntN(60)
		srcs := make([]string, n)
		for i := range srcs {
			srcs[i] = genRegex(rng)
		}
		ms := compileMatchers(t, srcs)
		ix := buildIndex(ms)
		for j := 0; j < 200; j++ {
			u := genURL(rng)
			checkSame(t, ix, ms, u)
			if nu, err := NormalizeURL(u); err == nil {
				checkSame(t, ix, ms, nu)
			}
		}
	}
}

// TestIndexPlacements checks that the shapes the policy store writes are
// indexed (not left to the fallback list) and filed where expected.
func TestIndexPlacements(t *testing.T) {
	cases := []struct {
		re   string
		want []placement // nil: fallback
	}{
		{`https://example\.org/app/.*`, []placement{{prefix: "https://example.org/app/", sure: true}}},
		{`https?://example\.org/x`, []placement{{prefix: "http://example.org/x"}, {prefix: "https://example.org/x"}}},
		{`https?://([^/]*\.)?example\.org/.*`, []placement{{prefix: "http://", suffix: ".example.org"}, {prefix: "http://example.org/", sure: true},
			{prefix: "https://", suffix: ".example.org"}, {prefix: "https://example.org/", sure: true}}},
		{`https://[a-z]+\.example\.org:8443/p.*`, []placement{{prefix: "https://", suffix: ".example.org:8443"}}},
		{`https://a\.org/.*|https://b\.org/q`, []placement{{prefix: "https://a.org/", sure: true}, {prefix: "https://b.org/q"}}},
		{`^https://a\.org/(x|y)/.*$`, []placement{{prefix: "https://a.org/x/", sure: true}, {prefix: "https://a.org/y/", sure: true}}},
		{`.*\.pdf`, nil},
		{`(?i)https://a\.org/.*`, nil},
		{`https://.*\.a\.org/.*`, []placement{{prefix: "https://"}}},
	}
	for _, c := range cases {
		got, ok := analyzeRegex(c.re)
		if c.want == nil {
			if ok {
				t.Errorf("%s: filed under %+v, want the fallback list", c.re, got)
			}
			continue
		}
		if !ok || !slices.Equal(got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.re, got, c.want)
		}
	}
}

func TestIndexSyntheticRunsFewRegexes(t *testing.T) {
	text, urls := SyntheticPolicy(10_000, 5)
	p, err := ParsePolicy("synthetic", text)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.mapIdx.fallback); n > 10 {
		t.Errorf("%d of 10,000 synthetic rules in the fallback list, want 10", n)
	}
	for i, u := range urls {
		if i%5 != 0 {
			continue
		}
		c := p.mapIdx.candidates(u, nil)
		if len(c) > 20 {
			t.Fatalf("%s: %d candidates", u, len(c))
		}
		got := p.mapIdx.match(u, 1, nil)
		if i < len(urls)*4/5 && len(got) == 0 {
			t.Errorf("%s: generated to hit a rule, matched none", u)
		}
		if i%100 == 0 { // the linear scan costs 10,000 regexes
			if want := linearMatch(p.mapIdx.rules, u, 1); !slices.Equal(got, want) {
				t.Fatalf("%s: index %v, linear scan %v", u, got, want)
			}
		}
	}
}
