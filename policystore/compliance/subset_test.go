package compliance

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

func TestSubset(t *testing.T) {
	t.Parallel()
	host := Relation{
		rule(t, "guest", "s0-s5/i0-i3", "ws1", "s5-s9/i0-i3", "host:1"),
		sameRule(t, "guest", "s0-s9:c0.c3/i0-i7", "ws2", "s0-s9:c0.c3/i0-i7", "host:2"),
		// Two rules that only together cover s0-s3 → ws3 s3.
		rule(t, "guest", "s0-s1/i2", "ws3", "s3/i0", "host:3"),
		rule(t, "guest", "s2-s3/i2", "ws3", "s3/i0", "host:4"),
		// Same-label rules covering, between them, s0-s3 with c0 either way.
		sameRule(t, "ws4", "s0:c0-s3:c0/i1", "guest", "s0:c0-s3:c0/i1", "host:5"),
		sameRule(t, "ws4", "s0-s3/i1", "guest", "s0-s3/i1", "host:6"),
	}
	tests := map[string]struct {
		sub  Relation
		want []string
	}{
		"identical": {sub: Relation{host[0], host[1]}},
		"narrower product rule": {sub: Relation{
			rule(t, "guest", "s1-s2/i1", "ws1", "s6/i2", "g:1"),
		}},
		"product rule with one label is a same-label flow": {sub: Relation{
			rule(t, "guest", "s4:c1/i3", "ws2", "s4:c1/i3", "g:1"),
		}},
		"same label under a product rule": {sub: Relation{
			sameRule(t, "guest", "s5/i0-i3", "ws1", "s5/i0-i3", "g:1"),
		}},
		"covered only by two rules together": {sub: Relation{
			rule(t, "guest", "s0-s3/i2", "ws3", "s3/i0", "g:1"),
		}},
		"same-label covered only by two rules together": {sub: Relation{
			sameRule(t, "ws4", "s0-s3:c0/i1", "guest", "s0-s3:c0/i1", "g:1"),
		}},
		"wider than any rule": {sub: Relation{
			rule(t, "guest", "s0-s6/i0-i3", "ws1", "s5-s9/i0-i3", "g:1"),
		}, want: []string{
			"g:1: guest s6/i0 → ws1 s5/i0 is not permitted by any rule of the reference relation",
		}},
		"beyond two rules together": {sub: Relation{
			rule(t, "guest", "s0-s4/i2", "ws3", "s3/i0", "g:1"),
		}, want: []string{
			"g:1: guest s4/i2 → ws3 s3/i0 is not permitted by any rule of the reference relation",
		}},
		"same-label rules do not cover a change of label": {sub: Relation{
			rule(t, "guest", "s4/i3", "ws2", "s5/i3", "g:1"),
		}, want: []string{
			"g:1: guest s4/i3 → ws2 s5/i3 is not permitted by any rule of the reference relation",
		}},
		"product rule over a same-label rule": {sub: Relation{
			rule(t, "guest", "s1-s2/i1", "ws2", "s1-s2/i1", "g:1"),
		}, want: []string{
			"g:1: guest s1/i1 → ws2 s2/i1 is not permitted by any rule of the reference relation",
		}},
		"same label partly outside": {sub: Relation{
			sameRule(t, "ws4", "s0-s4/i1", "guest", "s0-s4/i1", "g:1"),
		}, want: []string{
			"g:1: ws4 s4/i1 → guest s4/i1 is not permitted by any rule of the reference relation",
		}},
		"no rule between the entities": {sub: Relation{
			rule(t, "ws1", "s5/i0", "guest", "s5/i0", "g:1"),
		}, want: []string{
			"g:1: ws1 s5/i0 → guest s5/i0 is not permitted: the reference relation has no rule from ws1 to guest",
		}},
		"malformed and empty rules": {sub: Relation{
			{From: "guest", To: "ws1", FromLabels: label.Bounds{Low: mustLabel(t, "s3/i0"), High: mustLabel(t, "s1/i0")}, ToLabels: mustBounds(t, "s5/i0"), Source: "g:1"},
			sameRule(t, "guest", "s0/i0", "ws2", "s1/i0", "g:2"),
		}, want: []string{
			"g:1: guest s3-s1/i0 → ws1 s5/i0: FromLabels are invalid: ",
			"g:2: guest s0/i0 → ws2 s1/i0 (same label): permits no flow: ",
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got := messages(Subset(tc.sub, host))
			if len(got) != len(tc.want) {
				t.Fatalf("Subset: got %q, want %q", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] && !(strings.HasSuffix(tc.want[i], ": ") && strings.HasPrefix(got[i], tc.want[i])) {
					t.Errorf("violation %d:\n got %s\nwant %s", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestSubsetBudget: a sub rule cut in many category dimensions by many
// super rules exceeds the budget and is reported, without a witness.
func TestSubsetBudget(t *testing.T) {
	t.Parallel()
	sub := Relation{rule(t, "a", "s0-s0:c0.c1023/i0", "b", "s0-s0:c0.c1023/i0", "wide")}
	var super Relation
	// Each super rule fixes one category in the source and one in the
	// destination, so every subtraction splits every piece in two ways.
	for c := 0; c < 40; c++ {
		var lo label.Label
		lo.Secrecy.Cats.Add(c)
		var hi label.Label
		hi.Secrecy.Cats = label.CategorySet{}
		for k := 0; k <= label.MaxCategory; k++ {
			hi.Secrecy.Cats.Add(k)
		}
		b := label.Bounds{Low: lo, High: hi}
		super = append(super, Rule{From: "a", To: "b", FromLabels: b, ToLabels: b})
	}
	vs := Subset(sub, super)
	if len(vs) != 1 || vs[0].Kind != NotCovered || vs[0].HasFlow || !strings.Contains(vs[0].Error(), "work budget") {
		t.Fatalf("want one undecided NotCovered, got %q", messages(vs))
	}
}
