package compliance

import (
	"errors"
	"hash/fnv"
	"reflect"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

// FuzzParseTE holds, for any input: ParseTE does not panic; an error is a
// *ParseError with a line that matches one of the sentinels; a module it
// accepts prints (String) to text that parses back to the same module, and
// its flows check the same way every time and after the round trip. Run it
// with
//
//	go test -run=NONE -fuzz=FuzzParseTE -fuzztime=30s ./policystore/compliance/
func FuzzParseTE(f *testing.F) {
	for _, s := range []string{
		analystTE,
		"module m 1;\nrequire { type a_t; type b_t; }\nallow a_t b_t:file { read write };\n",
		"module m 1;\ntype a_t;\nallow a_t self:process *;\nallow a_t a_t:file ~{ read };\n",
		"module m 1;\ntype a_t alias { x_t y_t };\nif (b) { allow x_t a_t:dir search; } else { allow a_t y_t:file read; }\n",
		"module m 1;\nrequire { type a_t; attribute d; }\nallow d a_t:file read;\n",
		"module m 1;\nfoo(a_t)\n",
		"module m 1;\ntypealias y_t alias x_t;\ntypealias x_t alias y_t;\nallow x_t y_t:file write;\n",
		"module m 1;\noptional { require { type c_t; } allow c_t c_t:file write; }\n",
		"module m 1;\ntype_transition a_t b_t:file c_t \"n\";\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		m, err := ParseTE("f.te", src)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "f.te" || pe.Line < 1 {
				t.Fatalf("error %v is not a *ParseError with a line", err)
			}
			if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrUndeclared) {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		again, err := ParseTE("f.te", []byte(m.String()))
		if err != nil {
			t.Fatalf("printed module does not parse: %v\n%s", err, m.String())
		}
		if !sameModule(m, again) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", again, m)
		}

		labels := map[string]label.Bounds{}
		for _, ty := range append(append([]string(nil), m.Types...), m.Required...) {
			labels[ty] = hashBounds(ty)
		}
		rel, err := m.Flows(labels)
		if err != nil {
			t.Fatalf("Flows with every type labeled: %v", err)
		}
		rel2, err := again.Flows(labels)
		if err != nil {
			t.Fatalf("Flows after the round trip: %v", err)
		}
		if len(rel) != len(rel2) {
			t.Fatalf("round trip changed the flows: %d rules, then %d", len(rel), len(rel2))
		}
		sys := System{AllowUnknown: true}
		v1, v2 := Check(sys, rel), CheckPIDSI(sys, m, labels)
		if !reflect.DeepEqual(v1, v2) {
			t.Fatalf("Check and CheckPIDSI differ:\n%q\n%q", messages(v1), messages(v2))
		}
		v3 := Check(sys, rel2)
		if len(v1) != len(v3) {
			t.Fatalf("round trip changed the verdict: %d violations, then %d", len(v1), len(v3))
		}
		for i := range v1 {
			if v1[i].Kind != v3[i].Kind || v1[i].FlowFrom != v3[i].FlowFrom || v1[i].FlowTo != v3[i].FlowTo {
				t.Fatalf("round trip changed violation %d: %v, then %v", i, v1[i], v3[i])
			}
		}
		if vs := Subset(rel, rel); vs != nil {
			t.Fatalf("flows are not a subset of themselves: %q", messages(vs))
		}
	})
}

// hashBounds gives a type deterministic single-label bounds.
func hashBounds(name string) label.Bounds {
	h := fnv.New32a()
	h.Write([]byte(name))
	x := h.Sum32()
	l := label.Label{Secrecy: label.Level{Sens: uint8(x % 4)}, Integrity: label.Integrity(x / 4 % 4)}
	if x&64 != 0 {
		l.Secrecy.Cats.Add(int(x / 128 % 3))
	}
	return label.Bounds{Low: l, High: l}
}
