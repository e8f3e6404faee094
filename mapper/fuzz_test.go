package mapper

import (
	"regexp"
	"strings"
	"testing"
)

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("map https://a\\.org/.* s3:c1/i2\nforward .* http://127.0.0.1:7070 s0-s9/i0-i5\ndefault s0\n"))
	f.Add([]byte("map https?://([^/]*\\.)?a\\.org/.* u:r:t_t:s4 i3 # c\n\n# x\n"))
	f.Add([]byte("forward a unix:/x.sock s0-s15:c0.c1023/i0-i15\r\ndefault u:r:t:s1-s2 i1\n"))
	f.Add([]byte("map (a|b)) s1\nmap \xff s2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy("fuzz", data)
		if err != nil {
			if _, ok := err.(*ParseError); !ok {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			return
		}
		for _, r := range p.Maps {
			if err := r.Target.Label.Validate(); err != nil {
				t.Fatalf("rule %d: invalid label %v: %v", r.Line, r.Target.Label, err)
			}
		}
		for _, fr := range p.Forwards {
			if err := fr.Bounds.Validate(); err != nil {
				t.Fatalf("rule %d: invalid bounds: %v", fr.Line, err)
			}
		}
		// The index must agree with the linear scan on URLs made from the
		// policy's own text.
		maps := make([]matcher, len(p.Maps))
		for i, r := range p.Maps {
			maps[i] = matcher{re: r.re, src: r.Regex}
		}
		for _, u := range []string{"https://a.org/", "http://a.org/x", string(data)} {
			checkSame(t, p.mapIdx, maps, u)
		}
	})
}

func FuzzLookup(f *testing.F) {
	f.Add("https://a\\.org/.*\nhttps?://([^/]*\\.)?a\\.org/p.*\n.*\\.pdf", "https://www.a.org/p/x.pdf")
	f.Add("https://[a-z]+\\.b\\.org:8080/.*|http://c/.*\n(?i)HTTPS://A\\.ORG/.*", "https://x.b.org:8080/")
	f.Add("^https://a\\.org/(x|y)/.*$\nhttps://a\\.org/(?s:.*)", "https://a.org/x/\n")
	f.Add("http[s]?://(a|b)\\.org(/.*)?", "HTTP://B.org")
	f.Fuzz(func(t *testing.T, rules, u string) {
		var ms []matcher
		for _, src := range strings.Split(rules, "\n") {
			if len(ms) == 32 || len(src) > 256 {
				break
			}
			re, err := regexp.Compile(`^(?:` + src + `)$`)
			if err != nil {
				continue
			}
			if _, perr := compileRule(src, func(string, string, ...any) error { return ErrPolicy }); perr != nil {
				continue // e.g. "a)|(b", which only compiles inside our anchors
			}
			ms = append(ms, matcher{re: re, src: src})
		}
		ix := buildIndex(ms)
		checkSame(t, ix, ms, u)
		if nu, err := NormalizeURL(u); err == nil {
			checkSame(t, ix, ms, nu)
		}
	})
}

func FuzzNormalizeURL(f *testing.F) {
	for _, s := range []string{"https://a.org/p?q", "HTTP://A.ORG:80", "https://a.org./x/../y", "http://[::1]:8080/%2e%2E/x",
		"https://a.org/%zz", "https://u@a.org/", "https://a.org/p#f", "http://a_b.org:0/!$&'()*+,;=:@~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		n, err := NormalizeURL(raw)
		if isNormal(raw) {
			slow, serr := normalizeSlow(raw)
			if serr != nil || slow != raw {
				t.Fatalf("fast path accepted %q as normal; slow path gives %q, %v", raw, slow, serr)
			}
		}
		if err != nil {
			return
		}
		if !strings.HasPrefix(n, "http://") && !strings.HasPrefix(n, "https://") {
			t.Fatalf("%q normalized to %q", raw, n)
		}
		n2, err := NormalizeURL(n)
		if err != nil || n2 != n {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", raw, n, n2, err)
		}
	})
}
