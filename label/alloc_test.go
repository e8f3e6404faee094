package label

import "testing"

var sink bool

// The fast-path comparisons run per packet in the reference verdict; an
// allocation there would show up in every benchmark against the C side.
func TestHotPathDoesNotAllocate(t *testing.T) {
	a, _ := ParseLabel("s9:c0.c1023/i9")
	b, _ := ParseLabel("s3:c1,c5,c1000/i2")
	r, _ := ParseRange("s0-s15:c0.c1023")
	bd, _ := ParseBounds("s0-s15:c0.c1023/i0-i15")
	for name, f := range map[string]func(){
		"Level.Dominates": func() { sink = a.Secrecy.Dominates(b.Secrecy) },
		"Label.Dominates": func() { sink = a.Dominates(b) },
		"Range.Contains":  func() { sink = r.Contains(b.Secrecy) },
		"Bounds.Contains": func() { sink = bd.Contains(b) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s allocates %v times per call", name, n)
		}
	}
	if !sink {
		t.Error("sanity: last comparison should be true")
	}
}

func BenchmarkLabelDominates(b *testing.B) {
	x, _ := ParseLabel("s9:c0.c1023/i9")
	y, _ := ParseLabel("s3:c1,c5,c1000/i2")
	for b.Loop() {
		sink = x.Dominates(y)
	}
}

func BenchmarkBoundsContains(b *testing.B) {
	bd, _ := ParseBounds("s0-s15:c0.c1023/i0-i15")
	y, _ := ParseLabel("s3:c1,c5,c1000/i2")
	for b.Loop() {
		sink = bd.Contains(y)
	}
}
