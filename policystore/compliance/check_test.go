package compliance

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

func mustBounds(t testing.TB, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatalf("ParseBounds(%q): %v", s, err)
	}
	return b
}

func mustLabel(t testing.TB, s string) label.Label {
	t.Helper()
	l, err := label.ParseLabel(s)
	if err != nil {
		t.Fatalf("ParseLabel(%q): %v", s, err)
	}
	return l
}

func rule(t testing.TB, from, fromLabels, to, toLabels, source string) Rule {
	return Rule{From: from, To: to, FromLabels: mustBounds(t, fromLabels), ToLabels: mustBounds(t, toLabels), Source: source}
}

func sameRule(t testing.TB, from, fromLabels, to, toLabels, source string) Rule {
	r := rule(t, from, fromLabels, to, toLabels, source)
	r.SameLabel = true
	return r
}

// messages returns the violations' texts.
func messages(vs []Violation) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.Error()
	}
	return out
}

func TestCheck(t *testing.T) {
	t.Parallel()
	lattice := System{AllowUnknown: true}
	hosts := System{Entities: map[string]label.Bounds{
		"guest": mustBounds(t, "s2-s6/i1-i4"),
		"ws1":   mustBounds(t, "s2-s9:c0.c3/i0-i4"),
		"ws3":   mustBounds(t, "s0-s5/i0-i7"),
	}}
	inverted := Rule{From: "guest", To: "ws1", FromLabels: label.Bounds{Low: mustLabel(t, "s5/i1"), High: mustLabel(t, "s3/i1")}, ToLabels: mustBounds(t, "s5/i1"), Source: "bad.te:3"}
	tooHigh := Rule{From: "guest", To: "ws1", FromLabels: mustBounds(t, "s3/i1"), ToLabels: label.Bounds{Low: label.Label{Secrecy: label.Level{Sens: 3}}, High: label.Label{Secrecy: label.Level{Sens: 99}}}, Source: "bad.te:4"}

	tests := map[string]struct {
		sys  System
		rel  Relation
		want []string // whole messages, in order; nil for compliant
	}{
		"empty relation": {sys: hosts},
		"flow up in secrecy, down in integrity": {sys: lattice, rel: Relation{
			rule(t, "ws3", "s2/i5", "guest", "s4:c1/i2", "xfrm in ws3→guest"),
		}},
		"ranges whose worst pair is permitted": {sys: lattice, rel: Relation{
			rule(t, "a", "s0-s3:c1/i6-i9", "b", "s3:c1-s9:c0.c4/i0-i6", "r1"),
		}},
		"same label within both entities": {sys: hosts, rel: Relation{
			sameRule(t, "guest", "s3-s6/i2-i4", "ws1", "s2-s5/i1-i3", "xfrm out guest→ws1"),
		}},
		"write-down": {sys: lattice, rel: Relation{
			rule(t, "ws3", "s5/i2", "guest", "s4/i2", "xfrm out ws3→guest"),
		}, want: []string{
			"xfrm out ws3→guest: ws3 s5/i2 → guest s4/i2 would write down secrecy (s4 does not dominate s5)",
		}},
		"categories not dominated": {sys: lattice, rel: Relation{
			rule(t, "a", "s3:c1,c2/i0", "b", "s7:c1/i0", "r"),
		}, want: []string{
			"r: a s3:c1,c2/i0 → b s7:c1/i0 would write down secrecy (s7:c1 does not dominate s3:c1,c2)",
		}},
		"write-up names the worst integrity pair": {sys: lattice, rel: Relation{
			rule(t, "data_t", "s1/i1-i3", "conf_t", "s1-s2/i2-i9", "analyst.te:7"),
		}, want: []string{
			"analyst.te:7: data_t s1/i1 → conf_t s2/i9 would write up integrity (i1 is below i9)",
		}},
		"both at once, ranges": {sys: lattice, rel: Relation{
			rule(t, "a", "s0-s4/i2-i5", "b", "s2-s8/i0-i4", "both"),
		}, want: []string{
			"both: a s4/i5 → b s2/i0 would write down secrecy (s2 does not dominate s4)",
			"both: a s0/i2 → b s8/i4 would write up integrity (i2 is below i4)",
		}},
		"same label is never a lattice violation": {sys: lattice, rel: Relation{
			sameRule(t, "guest", "s0-s15/i0-i15", "ws1", "s0-s15/i0-i15", "xfrm"),
		}},
		// Only labels in both bounds flow: s3-s6/i1-i4, within guest's and
		// ws1's bounds although ToLabels alone is not within ws1's.
		"same label checks the shared labels only": {sys: hosts, rel: Relation{
			sameRule(t, "guest", "s3-s6/i1-i4", "ws1", "s0-s15/i0-i15", "xfrm out guest→ws1"),
		}},
		"same label beyond an entity": {sys: hosts, rel: Relation{
			sameRule(t, "ws1", "s2-s9/i0-i4", "guest", "s2-s9/i0-i4", "xfrm in ws1→guest"),
		}, want: []string{
			"xfrm in ws1→guest: ws1 s9/i4 → guest s9/i4 puts data at s9/i4 in guest, outside its bounds s2-s6/i1-i4",
		}},
		"product rule beyond both entities": {sys: hosts, rel: Relation{
			rule(t, "guest", "s2-s7/i1-i4", "ws3", "s7-s8/i0", "analyst_guest.te:12"),
		}, want: []string{
			"analyst_guest.te:12: guest s7/i4 → ws3 s7/i0 puts data at s7/i4 in guest, outside its bounds s2-s6/i1-i4",
			"analyst_guest.te:12: guest s2/i1 → ws3 s8/i0 puts data at s8/i0 in ws3, outside its bounds s0-s5/i0-i7",
		}},
		"unknown entity": {sys: hosts, rel: Relation{
			rule(t, "guest", "s3/i1", "ws9", "s3/i1", "xfrm out guest→ws9"),
		}, want: []string{
			`xfrm out guest→ws9: guest s3/i1 → ws9 s3/i1: names "ws9", which the system policy does not bound`,
		}},
		"empty same-label rule": {sys: lattice, rel: Relation{
			sameRule(t, "a", "s0-s2/i0", "b", "s3-s4/i0", "xfrm"),
		}, want: []string{
			"xfrm: a s0-s2/i0 → b s3-s4/i0 (same label): permits no flow: a same-label rule needs a label in both s0-s2/i0 and s3-s4/i0",
		}},
		"inverted bounds": {sys: lattice, rel: Relation{inverted}, want: []string{
			"bad.te:3: guest s5-s3/i1 → ws1 s5/i1: FromLabels are invalid: ",
		}},
		"out-of-range bounds": {sys: lattice, rel: Relation{tooHigh}, want: []string{
			"bad.te:4: guest s3/i1 → ws1 s3-s99/i0: ToLabels are invalid: ",
		}},
		"invalid system bounds": {sys: System{Entities: map[string]label.Bounds{
			"a": {Low: mustLabel(t, "s4/i0"), High: mustLabel(t, "s1/i0")}, "b": mustBounds(t, "s0-s9/i0"),
		}}, rel: Relation{rule(t, "a", "s1/i0", "b", "s1/i0", "")}, want: []string{
			`rule #0: a s1/i0 → b s1/i0: the system's bounds for "a" are invalid: `,
		}},
		"rule order and source-less rules": {sys: lattice, rel: Relation{
			rule(t, "a", "s0/i0", "b", "s1/i0", "ok"),
			{From: "c", To: "d", FromLabels: mustBounds(t, "s2/i0"), ToLabels: mustBounds(t, "s1/i0"), Via: "file { write }"},
			rule(t, "e", "s0/i0", "f", "s0/i3", "last"),
		}, want: []string{
			"rule #1 (file { write }): c s2/i0 → d s1/i0 would write down secrecy (s1 does not dominate s2)",
			"last: e s0/i0 → f s0/i3 would write up integrity (i0 is below i3)",
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got := messages(Check(tc.sys, tc.rel))
			if len(got) != len(tc.want) {
				t.Fatalf("Check: got %d violations %q, want %d %q", len(got), got, len(tc.want), tc.want)
			}
			for i := range got {
				// A want ending in ": " is a prefix: the rest is the label
				// package's wording.
				if got[i] != tc.want[i] && !(strings.HasSuffix(tc.want[i], ": ") && strings.HasPrefix(got[i], tc.want[i])) {
					t.Errorf("violation %d:\n got %s\nwant %s", i, got[i], tc.want[i])
				}
			}
			err := Compliant(tc.sys, tc.rel)
			if (err == nil) != (len(tc.want) == 0) {
				t.Fatalf("Compliant = %v, want error: %v", err, len(tc.want) > 0)
			}
			if err != nil {
				if !errors.Is(err, ErrNotCompliant) {
					t.Errorf("Compliant error %v does not match ErrNotCompliant", err)
				}
				if !strings.Contains(err.Error(), got[0]) {
					t.Errorf("Compliant error %q does not contain %q", err, got[0])
				}
			}
		})
	}
}

// TestCheckWitnessesAreRealFlows: every witness lies in the rule's bounds
// and shows what its kind says.
func TestCheckWitnessesAreRealFlows(t *testing.T) {
	t.Parallel()
	rel := Relation{
		rule(t, "a", "s0-s4:c0/i2-i5", "b", "s2-s8/i0-i4", "r0"),
		rule(t, "a", "s3:c1/i3", "b", "s3:c2/i3", "r1"),
	}
	vs := Check(System{AllowUnknown: true}, rel)
	if len(vs) != 3 {
		t.Fatalf("want 3 violations, got %q", messages(vs))
	}
	for _, v := range vs {
		if !v.HasFlow || !v.Rule.FromLabels.Contains(v.FlowFrom) || !v.Rule.ToLabels.Contains(v.FlowTo) {
			t.Errorf("%v: witness outside the rule", v)
		}
		switch v.Kind {
		case WriteDown:
			if v.FlowTo.Secrecy.Dominates(v.FlowFrom.Secrecy) {
				t.Errorf("%v: witness does not write down", v)
			}
		case WriteUp:
			if v.FlowFrom.Integrity >= v.FlowTo.Integrity {
				t.Errorf("%v: witness does not write up", v)
			}
		default:
			t.Errorf("%v: unexpected kind %v", v, v.Kind)
		}
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k := Malformed; k <= PolicyError; k++ {
		if s := k.String(); s == "" || strings.HasPrefix(s, "kind(") {
			t.Errorf("Kind %d has no name", k)
		}
	}
	if s := Kind(200).String(); s != "kind(200)" {
		t.Errorf("Kind(200) = %q", s)
	}
}
