package mapper

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

func mustLabel(t testing.TB, s string) label.Label {
	t.Helper()
	l, err := label.ParseLabel(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestParsePolicyGood(t *testing.T) {
	text := `# a comment
map https://ws-vml\.cse\.psu\.edu/public\.html root:sysadm_r:analyst_t:s4

	map   https://intranet\.example\.org/hr/.*   system_u:object_r:hr_t:s6:c1  i5   # trailing comment
map https?://([^/]*\.)?example\.org/.* s2:c3,c4/i3
map https://a\.org/#frag s1
forward https://.*\.example\.net/.* http://127.0.0.1:7070 s0-s9/i0-i9
forward .* unix:/run/mlsgate/../mlsgate/map.sock s0-s15/i0-i15
default system_u:object_r:unlabeled_t:s0 i1
`
	p, err := ParsePolicy("/etc/mlsgate/guest.policy", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Maps) != 4 || len(p.Forwards) != 2 {
		t.Fatalf("got %d maps and %d forwards, want 4 and 2", len(p.Maps), len(p.Forwards))
	}
	want := []struct {
		line  int
		label string
		ctx   string
	}{
		{2, "s4/i0", "root:sysadm_r:analyst_t:s4"},
		{4, "s6:c1/i5", "system_u:object_r:hr_t:s6:c1"},
		{5, "s2:c3,c4/i3", ""},
		{6, "s1/i0", ""},
	}
	for i, w := range want {
		r := p.Maps[i]
		if r.Line != w.line || r.Target.Label != mustLabel(t, w.label) {
			t.Errorf("map %d: line %d label %v, want line %d label %s", i, r.Line, r.Target.Label, w.line, w.label)
		}
		got := ""
		if r.Target.Context != nil {
			got = r.Target.Context.String()
		}
		if got != w.ctx {
			t.Errorf("map %d: context %q, want %q", i, got, w.ctx)
		}
	}
	if p.Maps[3].Regex != `https://a\.org/#frag` {
		t.Errorf("a # inside a token must stay in the regex, got %q", p.Maps[3].Regex)
	}
	if f := p.Forwards[1]; f.Upstream != "unix:/run/mlsgate/map.sock" || f.Line != 8 {
		t.Errorf("forward 2: %+v", f)
	}
	if f := p.Forwards[0]; f.Upstream != "http://127.0.0.1:7070" || f.Bounds.String() != "s0-s9/i0-i9" {
		t.Errorf("forward 1: upstream %q bounds %v", f.Upstream, f.Bounds)
	}
	if !p.DefaultSet || p.DefaultAt != 9 || p.Default.Label != mustLabel(t, "s0/i1") || p.Default.Context == nil {
		t.Errorf("default: %+v set=%v at=%d", p.Default, p.DefaultSet, p.DefaultAt)
	}
	if got := p.RuleRef(4); got != "guest.policy:4" {
		t.Errorf("RuleRef = %q", got)
	}
}

func TestParsePolicyEmptyDefault(t *testing.T) {
	p, err := ParsePolicy("empty", []byte("\n# nothing\r\n\t\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.DefaultSet || p.Default.Label != label.Default || p.Default.Context != nil {
		t.Errorf("default of an empty policy: %+v", p.Default)
	}
	if _, ok := p.Match("https://a.org/"); ok {
		t.Error("empty policy matched")
	}
}

func TestParsePolicyBad(t *testing.T) {
	long := strings.Repeat("a", MaxRegexBytes+1)
	cases := []struct {
		name, text string
		line       int
		token      string
		reason     string // a part of the reason
	}{
		{"unknown directive", "map a s1\nlabel a s1\n", 2, "label", "unknown directive"},
		{"map arity", "map https://a\\.org/\n", 1, "map https://a\\.org/", "want \"map <regex> <label>\""},
		{"map too many", "map a s1 i2 i3\n", 1, "map a s1 i2 i3", "want"},
		{"bad regex", "map https://a\\.org/(x s1\n", 1, "https://a\\.org/(x", "missing closing )"},
		{"unbalanced group would pair with anchors", "map a)|(b s1\n", 1, "a)|(b", "bad regex"},
		{"long regex", "map " + long + " s1\n", 1, long[:120] + "...", "limit is 4096"},
		{"bad label", "\n\nmap a s99\n", 3, "s99", "bad label"},
		{"label plus integrity", "map a s3 i2\n", 1, "i2", "write s3/i2"},
		{"context without level", "map a u:r:t s1\n", 1, "u:r:t", "bad label"},
		{"context bad", "map a u:r:t:s99\n", 1, "u:r:t:s99", "bad context"},
		{"context with slash", "map a u:r:t:s3/i2\n", 1, "u:r:t:s3/i2", "separate token: u:r:t:s3 i2"},
		{"context bad integrity", "map a u:r:t:s3 i16\n", 1, "i16", "bad integrity"},
		{"forward arity", "forward a http://x\n", 1, "forward a http://x", "forward <regex> <upstream> <bounds>"},
		{"forward bad upstream", "forward a ftp://x s0-s1\n", 1, "ftp://x", "scheme \"ftp\""},
		{"forward relative unix", "forward a unix:run/x.sock s0-s1\n", 1, "unix:run/x.sock", "not absolute"},
		{"forward upstream query", "forward a http://x/?a=1 s0-s1\n", 1, "http://x/?a=1", "query"},
		{"forward no host", "forward a http:///p s0\n", 1, "http:///p", "no host"},
		{"forward bad bounds", "forward a http://x s9-s2\n", 1, "s9-s2", "bad bounds"},
		{"two defaults", "default s1\n# x\ndefault s2\n", 3, "default", "line 1 already"},
		{"default arity", "default\n", 1, "default", "want"},
		{"control char", "map a\x00 s1\n", 1, "", "control character 0x00"},
		{"not utf8", "map \xff s1\n", 1, "", "UTF-8"},
		{"long line", "# " + strings.Repeat("x", MaxLineBytes) + "\n", 1, "", "limit is 65536"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePolicy("test.policy", []byte(c.text))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrPolicy) {
				t.Errorf("error %v is not ErrPolicy", err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not *ParseError", err)
			}
			if pe.File != "test.policy" || pe.Line != c.line || pe.Token != c.token || !strings.Contains(pe.Reason, c.reason) {
				t.Errorf("got file %q line %d token %q reason %q\nwant line %d token %q reason containing %q",
					pe.File, pe.Line, pe.Token, pe.Reason, c.line, c.token, c.reason)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("test.policy:%d: ", c.line)) {
				t.Errorf("message %q does not start with file:line", msg)
			}
			if c.token != "" && !strings.Contains(msg, fmt.Sprintf("%q", c.token)) {
				t.Errorf("message %q does not name the token", msg)
			}
		})
	}
}

func TestParsePolicyRuleLimit(t *testing.T) {
	var b strings.Builder
	for i := 0; i <= MaxRules; i++ {
		b.WriteString("map a s1\n")
	}
	_, err := ParsePolicy("big", []byte(b.String()))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != MaxRules+1 || !strings.Contains(pe.Reason, "more than 100000 rules") {
		t.Fatalf("got %v", err)
	}
}

func TestMatchFirstRuleWins(t *testing.T) {
	p, err := ParsePolicy("p", []byte(`
map https://a\.org/secret/.* s9
map https://a\.org/.* s1
map https?://([^/]*\.)?a\.org/.* s2
map .*\.pdf s3
forward https://b\.org/.* http://127.0.0.1:1 s0-s15/i0-i15
forward https://b\.org/x.* http://127.0.0.1:2 s0-s15/i0-i15
forward .* http://127.0.0.1:3 s0-s15/i0-i15
forward https://b\.org/xy http://127.0.0.1:4 s0-s15/i0-i15
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url  string
		line int // 0: no rule
	}{
		{"https://a.org/secret/x.pdf", 2},
		{"https://a.org/public/x.pdf", 3},
		{"http://a.org/x", 4},
		{"https://www.a.org/x", 4},
		{"https://wwwa.org/x", 0},
		{"https://c.org/y.pdf", 5},
		{"https://c.org/y.pdf\n", 0},
	} {
		r, ok := p.Match(c.url)
		got := 0
		if ok {
			got = r.Line
		}
		if got != c.line {
			t.Errorf("Match(%q) = line %d, want %d", c.url, got, c.line)
		}
	}
	var ups []string
	for _, f := range p.MatchForwards("https://b.org/xy", 3) {
		ups = append(ups, f.Upstream)
	}
	if got := strings.Join(ups, " "); got != "http://127.0.0.1:1 http://127.0.0.1:2 http://127.0.0.1:3" {
		t.Errorf("MatchForwards = %s", got)
	}
}
