package mapper

import "testing"

func TestTargetsHost(t *testing.T) {
	cases := []struct {
		re, host string
		want     bool
	}{
		{`https?://ws1\.analyst\.example/profile(/.*)?`, "ws1.analyst.example", true},
		{`https?://ws1\.analyst\.example/profile(/.*)?`, "ws2.analyst.example", false},
		{`https://ws1\.analyst\.example(:443)?/.*`, "ws1.analyst.example", true},
		{`http://ws1\.analyst\.example`, "ws1.analyst.example", true},
		{`.*`, "ws3.analyst.example", true},
		{`https?://.*\.analyst\.example/.*`, "open.analyst.example", true},
		{`https?://ws1\.analyst\.example\.evil/.*`, "ws1.analyst.example", false},
		{`https?://ws1\.analyst\.examplex/.*`, "ws1.analyst.example", false},
		{`ftp://ws1\.analyst\.example/.*`, "ws1.analyst.example", false},
		{`(?i)HTTPS://WS1\.ANALYST\.EXAMPLE/.*`, "ws1.analyst.example", true},
		{`https?://ws1\.analyst\.example\b/x`, "ws1.analyst.example", true},
		{`https?://ws1\.analyst\.example\B.*`, "ws1.analyst.example", false},
		{`https?://(ws1|ws2)\.analyst\.example/.*`, "ws2.analyst.example", true},
		{`https?://ws1\.analyst\.example$`, "ws1.analyst.example", true},
		{`https?://ws1\.analyst\.example/[^a-z]`, "ws1.analyst.example", true},
	}
	for _, c := range cases {
		p, err := CompileAnchored(c.re)
		if err != nil {
			t.Fatal(err)
		}
		if got := TargetsHost(p, c.host); got != c.want {
			t.Errorf("TargetsHost(%q, %q) = %v, want %v", c.re, c.host, got, c.want)
		}
	}
}
