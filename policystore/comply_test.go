package policystore

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

func analystBundle(t *testing.T) (*Application, *Bundle) {
	t.Helper()
	app := analystApp(t)
	b, err := GenerateBundle(app, analystRequest(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return app, b
}

func TestCheckBundleAnalystCompliant(t *testing.T) {
	app, b := analystBundle(t)
	if err := CheckBundle(app, b, SystemPolicy{}); err != nil {
		t.Fatal(err)
	}
	// A host cleared for the guest's whole range accepts it too.
	if err := CheckBundle(app, b, SystemPolicy{Clearance: mustBoundsPS(t, "s0-s15/i0-i12")}); err != nil {
		t.Fatal(err)
	}
}

func mustBoundsPS(t *testing.T, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckBundleFindsViolations tampers with a compliant bundle in the
// ways a bad template, a bad authority or a bad administrator could, and
// expects each change to be named.
func TestCheckBundleFindsViolations(t *testing.T) {
	cases := []struct {
		name   string
		sys    string // host clearance; "" for the whole lattice
		tamper func(t *testing.T, app *Application, b *Bundle)
		want   []string
	}{
		{"host not cleared for the guest", "s0-s9/i0-i15", func(*testing.T, *Application, *Bundle) {},
			[]string{"guest range s0-s15/i5-i10 is not within the host's clearance"}},
		{"secret SA toward the open server", "", func(t *testing.T, app *Application, b *Bundle) {
			for i := range b.States {
				if strings.HasSuffix(b.States[i].Context, ":s4") {
					b.States[i].Label = mustLabel(t, "s9/i5")
				}
			}
		}, []string{"xfrm state spi", "outside its bounds s0-s5/i5-i10", "ws3"}},
		{"SA below the guest's integrity", "", func(t *testing.T, app *Application, b *Bundle) {
			b.States[0].Label.Integrity = 0
		}, []string{"xfrm state spi", "guest", "outside its bounds s0-s15/i5-i10"}},
		{"policy context wider than the server", "", func(t *testing.T, app *Application, b *Bundle) {
			for i := range b.Policies {
				if strings.HasSuffix(b.Policies[i].Context, ":s0-s5") {
					b.Policies[i].Context = strings.TrimSuffix(b.Policies[i].Context, "s0-s5") + "s0-s15"
				}
			}
		}, []string{"xfrm policy #", "ws3", "outside its bounds s0-s5/i5-i10"}},
		{"clear channel to a server", "", func(t *testing.T, app *Application, b *Bundle) {
			for i := range b.Policies {
				if b.Policies[i].Context != "" {
					b.Policies[i].Context = ""
					return
				}
			}
		}, []string{"in clear, without a label"}},
		{"program writes its configuration", "", func(t *testing.T, app *Application, b *Bundle) {
			b.Modules[0].TE += "\nallow analyst_t analyst_conf_t:file write;\n"
		}, []string{"mlsgate_analyst.te:", "write up integrity", "analyst_conf_t"}},
		{"module exempts the app from MLS", "", func(t *testing.T, app *Application, b *Bundle) {
			b.Modules[0].TE = strings.Replace(b.Modules[0].TE, "type analyst_t;", "type analyst_t, mlstrustedsubject;", 1)
			b.Modules[0].TE = strings.Replace(b.Modules[0].TE, "require {", "require {\n\tattribute mlstrustedsubject;", 1)
		}, []string{"mlstrustedsubject", "exempts it from MLS constraints"}},
		{"mapper labels a server outside its range", "", func(t *testing.T, app *Application, b *Bundle) {
			b.MapperPolicy = strings.Replace(b.MapperPolicy, "analyst_t:s4 i5", "analyst_t:s12 i5", 1)
		}, []string{"mapper.policy:", "ws3.analyst.example", "outside the server's range s0-s5/i5-i10"}},
		{"mapper trusts upstream beyond the guest", "", func(t *testing.T, app *Application, b *Bundle) {
			b.MapperPolicy = strings.Replace(b.MapperPolicy, "s0-s15/i5-i10", "s0-s15/i0-i15", 1)
		}, []string{"mapper.policy:", "beyond the guest range"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			app, b := analystBundle(t)
			c.tamper(t, app, b)
			var sys SystemPolicy
			if c.sys != "" {
				sys.Clearance = mustBoundsPS(t, c.sys)
			}
			err := CheckBundle(app, b, sys)
			if err == nil {
				t.Fatal("tampered bundle passed")
			}
			if !errors.Is(err, ErrNotCompliant) {
				t.Errorf("%v is not ErrNotCompliant", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not name %q:\n%v", w, err)
				}
			}
		})
	}
}
