package policystore

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/ipsec"
)

// TestCheckBundleValues: a receiver applies the store's own rules to a
// bundle's SAs and policies; what the codec would accept but the store
// never writes is refused.
func TestCheckBundleValues(t *testing.T) {
	b, err := GenerateBundle(analystApp(t), analystRequest(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b.States {
		if err := CheckState(&b.States[i]); err != nil {
			t.Fatalf("generated states[%d]: %v", i, err)
		}
	}
	for i := range b.Policies {
		if err := CheckPolicy(&b.Policies[i]); err != nil {
			t.Fatalf("generated policies[%d]: %v", i, err)
		}
	}
	for name, c := range map[string]struct {
		edit func(*ipsec.State)
		want string
	}{
		"no replay window": {func(s *ipsec.State) { s.ReplayWindow = 0 }, "replay window 0"},
		"ah":               {func(s *ipsec.State) { s.Proto = ipsec.ProtoAH }, `proto "ah"`},
		"mode 4":           {func(s *ipsec.State) { s.Mode = 4 }, `mode "mode(4)"`},
		"no cipher":        {func(s *ipsec.State) { s.AEAD = nil }, "name"},
		"extra enc":        {func(s *ipsec.State) { s.Crypt = &ipsec.Algo{Name: "cbc(aes)"} }, "besides its AEAD"},
		"selector":         {func(s *ipsec.State) { s.Selector = &ipsec.Selector{} }, "selector"},
	} {
		s := b.States[0]
		c.edit(&s)
		if err := CheckState(&s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	for name, c := range map[string]struct {
		edit func(*ipsec.Policy)
		want string
	}{
		"dir 7":    {func(p *ipsec.Policy) { p.Dir = 7 }, `dir "dir(7)"`},
		"optional": {func(p *ipsec.Policy) { p.Templates = []ipsec.Template{{Optional: true}} }, "optional"},
		"ports":    {func(p *ipsec.Policy) { p.DstPort = 443 }, "ports"},
	} {
		p := b.Policies[0]
		c.edit(&p)
		if err := CheckPolicy(&p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}
