package compliance_test

import (
	"fmt"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore/compliance"
)

func bounds(s string) label.Bounds {
	b, err := label.ParseBounds(s)
	if err != nil {
		panic(err)
	}
	return b
}

// A guest bundle's XFRM flows checked against the host's lattice and the
// guest's range.
func ExampleCheck() {
	sys := compliance.System{Entities: map[string]label.Bounds{
		"guest": bounds("s2-s6/i1-i4"),
		"ws3":   bounds("s0-s5/i0-i7"),
	}}
	rel := compliance.Relation{
		{From: "guest", To: "ws3", FromLabels: bounds("s2-s5/i1-i4"), ToLabels: bounds("s2-s5/i1-i4"), SameLabel: true, Source: "xfrm out guest→ws3"},
		{From: "ws3", To: "guest", FromLabels: bounds("s5/i2"), ToLabels: bounds("s4/i2"), Source: "xfrm in ws3→guest"},
	}
	for _, v := range compliance.Check(sys, rel) {
		fmt.Println(v)
	}
	// Output:
	// xfrm in ws3→guest: ws3 s5/i2 → guest s4/i2 would write down secrecy (s4 does not dominate s5)
}

// PIDSI: the program's configuration ranks above the data it works on, so
// reading the configuration complies and writing it does not.
func ExampleCheckPIDSI() {
	mod, err := compliance.ParseTE("analyst.te", []byte(`module analyst 1.0;
require { type analyst_t, analyst_conf_t, analyst_data_t; }
allow analyst_t analyst_conf_t:file { read getattr };
allow analyst_t analyst_data_t:file { read write };
allow analyst_t analyst_conf_t:file append;
`))
	if err != nil {
		panic(err)
	}
	labels := map[string]label.Bounds{
		"analyst_t":      bounds("s0/i2"),
		"analyst_data_t": bounds("s0/i2"),
		"analyst_conf_t": bounds("s0/i10"),
	}
	for _, v := range compliance.CheckPIDSI(compliance.System{AllowUnknown: true}, mod, labels) {
		fmt.Println(v)
	}
	// Output:
	// analyst.te:5 (write: file append): analyst_t s0/i2 → analyst_conf_t s0/i10 would write up integrity (i2 is below i10)
}
