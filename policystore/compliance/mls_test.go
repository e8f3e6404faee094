package compliance

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

// TestSameSecrecyAgainstEnumeration holds Check on SameSecrecy rules equal
// to enumerating their flows (pairs of labels with equal secrecy) on the
// small lattice, with the lattice alone as the system.
func TestSameSecrecyAgainstEnumeration(t *testing.T) {
	r := newRnd(t)
	sys := System{AllowUnknown: true}
	var bad, good, empty int
	for range randomRules {
		ru := r.smallRule()
		ru.SameLabel, ru.SameSecrecy = false, true
		if ru.FromLabels.Validate() != nil || ru.ToLabels.Validate() != nil {
			continue
		}
		from, to := members(ru.FromLabels), members(ru.ToLabels)
		any, permitted := false, true
		for i, a := range small {
			if !from.has(i) {
				continue
			}
			for j, b := range small {
				if to.has(j) && a.Secrecy == b.Secrecy {
					any = true
					permitted = permitted && FlowPermitted(a, b)
				}
			}
		}
		vs := Check(sys, Relation{ru})
		kinds := map[Kind]bool{}
		for _, v := range vs {
			kinds[v.Kind] = true
		}
		// Levels with equal secrecy exist in both ranges iff the secrecy
		// ranges meet (categories included), which Check decides on ends.
		switch {
		case !any:
			empty++
			if !kinds[Empty] {
				r.fatalf("rule %v has no flow but Check says %v", ru, vs)
			}
		case permitted:
			good++
			if len(vs) != 0 {
				r.fatalf("rule %v: every flow is permitted but Check says %v", ru, vs)
			}
		default:
			bad++
			if !kinds[WriteUp] || kinds[WriteDown] {
				r.fatalf("rule %v: a flow writes up integrity but Check says %v", ru, vs)
			}
		}
	}
	if bad < 100 || good < 100 || empty < 100 {
		t.Fatalf("too few cases of a kind: %d violating, %d compliant, %d empty", bad, good, empty)
	}
}

func TestFlowsMLSRefusesExemptTypes(t *testing.T) {
	src := `module m 1.0;
require { class file { read write }; attribute mlstrustedsubject; }
type app_t;
type conf_t;
type data_t;
typeattribute app_t mlstrustedsubject;
allow app_t conf_t:file read;
allow app_t data_t:file { read write };
`
	m, err := ParseTE("m.te", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	lbl := map[string]label.Bounds{"app_t": mustBounds(t, "s0-s15/i5"), "conf_t": mustBounds(t, "s0/i12"), "data_t": mustBounds(t, "s0-s15/i5")}
	if _, err := m.FlowsMLS(lbl); !errors.Is(err, ErrMLSExempt) || !strings.Contains(err.Error(), `"app_t"`) {
		t.Fatalf("FlowsMLS: %v, want ErrMLSExempt naming app_t", err)
	}
	m.TypeAttributes = nil
	vs := CheckPIDSIMLS(System{AllowUnknown: true}, m, lbl)
	if len(vs) != 0 {
		t.Fatalf("a ranged process reading higher-integrity configuration and its data: %v", vs)
	}
	// Writing its configuration is an integrity write-up even under MLS.
	m.Allows = append(m.Allows, AVRule{Line: 9, Sources: []string{"app_t"}, Targets: []string{"conf_t"}, Classes: []string{"file"}, Perms: []string{"write"}})
	if vs := CheckPIDSIMLS(System{AllowUnknown: true}, m, lbl); len(vs) != 1 || vs[0].Kind != WriteUp || !strings.Contains(vs[0].Error(), "m.te:9") {
		t.Fatalf("writing configuration: %v", vs)
	}
	m.Allows = m.Allows[:len(m.Allows)-1]
	// The same module read as product rules: a ranged type writes down.
	if vs := CheckPIDSI(System{AllowUnknown: true}, m, lbl); len(vs) == 0 {
		t.Fatal("product reading of a ranged type found nothing")
	}
}
