package label

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"
)

// Property tests on random values. Each run uses a fresh seed, printed in
// every failure; reproduce with go test ./label/ -run=TestName -args -label.seed=N.
var seedFlag = flag.Uint64("label.seed", 0, "seed for property tests (0: time-based)")

const iterations = 20000

// universe is deliberately small (plus word-boundary and top categories)
// so random levels often dominate one another; with all 1024 categories
// almost no random pair would be comparable and the properties would hold
// vacuously.
var universe = []int{0, 1, 2, 3, 4, 5, 63, 64, 1023}

type prop struct {
	t    *testing.T
	seed uint64
	r    *rand.Rand
}

func newProp(t *testing.T) *prop {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d", seed)
	return &prop{t: t, seed: seed, r: rand.New(rand.NewPCG(seed, 0x6d6c7367617465))}
}

func (p *prop) fatalf(format string, args ...any) {
	p.t.Helper()
	p.t.Fatalf("seed %d: "+format, append([]any{p.seed}, args...)...)
}

func (p *prop) sens() uint8 {
	if p.r.IntN(8) == 0 {
		return MaxSensitivity
	}
	return uint8(p.r.IntN(4))
}

func (p *prop) integ() Integrity {
	if p.r.IntN(8) == 0 {
		return MaxIntegrity
	}
	return Integrity(p.r.IntN(4))
}

func (p *prop) level() Level {
	l := Level{Sens: p.sens()}
	for _, c := range universe {
		if p.r.IntN(2) == 0 {
			l.Cats.Add(c)
		}
	}
	return l
}

func (p *prop) label() Label { return Label{Secrecy: p.level(), Integrity: p.integ()} }

// nearLevel returns x itself, a neighbour one step up or down, or a fresh
// level, so that chains a ⊵ b ⊵ c and equal pairs occur often.
func (p *prop) nearLevel(x Level) Level {
	switch p.r.IntN(4) {
	case 0:
		return x
	case 1, 2:
		up := p.r.IntN(2) == 0
		if p.r.IntN(3) == 0 {
			if up && x.Sens < MaxSensitivity {
				x.Sens++
			} else if !up && x.Sens > 0 {
				x.Sens--
			}
			return x
		}
		c := universe[p.r.IntN(len(universe))]
		if up {
			x.Cats.Add(c)
		} else {
			x.Cats[c/64] &^= 1 << (c % 64)
		}
		return x
	}
	return p.level()
}

func (p *prop) nearLabel(x Label) Label {
	switch p.r.IntN(3) {
	case 0:
		x.Secrecy = p.nearLevel(x.Secrecy)
	case 1:
		if p.r.IntN(2) == 0 && x.Integrity < MaxIntegrity {
			x.Integrity++
		} else if x.Integrity > 0 {
			x.Integrity--
		}
	default:
		if p.r.IntN(4) == 0 {
			return p.label()
		}
	}
	return x
}

// dominatesRef is the definition spelled out category by category: an
// oracle for the word-wise SubsetOf.
func dominatesRef(a, b Level) bool {
	if a.Sens < b.Sens {
		return false
	}
	for c := 0; c <= MaxCategory; c++ {
		if b.Cats.Has(c) && !a.Cats.Has(c) {
			return false
		}
	}
	return true
}

// lowerNeighbours are the levels just below x: one category removed or
// sensitivity one less. A least upper bound has no neighbour below it that
// is still an upper bound.
func lowerNeighbours(x Level) []Level {
	var out []Level
	if x.Sens > 0 {
		y := x
		y.Sens--
		out = append(out, y)
	}
	for c := 0; c <= MaxCategory; c++ {
		if x.Cats.Has(c) {
			y := x
			y.Cats[c/64] &^= 1 << (c % 64)
			out = append(out, y)
		}
	}
	return out
}

func upperNeighbours(x Level) []Level {
	var out []Level
	if x.Sens < MaxSensitivity {
		y := x
		y.Sens++
		out = append(out, y)
	}
	for _, c := range universe {
		if !x.Cats.Has(c) {
			y := x
			y.Cats.Add(c)
			out = append(out, y)
		}
	}
	return out
}

// orderChecker checks the partial-order laws on triples and counts how
// often each law's premise held, so that a generator too sparse to test
// anything fails loudly instead of passing vacuously.
type orderChecker[T comparable] struct {
	p                *prop
	dom              func(a, b T) bool
	antisym, transit int
}

func (o *orderChecker[T]) check(a, b, c T) {
	p := o.p
	p.t.Helper()
	if !o.dom(a, a) {
		p.fatalf("not reflexive: %v", a)
	}
	if o.dom(a, b) && o.dom(b, a) {
		o.antisym++
		if a != b {
			p.fatalf("not antisymmetric: %v ⊵ %v ⊵ %v but unequal", a, b, a)
		}
	}
	if o.dom(a, b) && o.dom(b, c) {
		o.transit++
		if !o.dom(a, c) {
			p.fatalf("not transitive: %v ⊵ %v ⊵ %v but not %v ⊵ %v", a, b, c, a, c)
		}
	}
}

func (o *orderChecker[T]) done() {
	if o.antisym < iterations/20 || o.transit < iterations/20 {
		o.p.fatalf("generator too sparse: antisymmetry premise held %d times, transitivity %d, of %d", o.antisym, o.transit, iterations)
	}
}

func TestLevelOrder(t *testing.T) {
	p := newProp(t)
	o := &orderChecker[Level]{p: p, dom: Level.Dominates}
	for range iterations {
		a := p.level()
		b := p.nearLevel(a)
		c := p.nearLevel(b)
		o.check(a, b, c)
		o.check(c, b, a)
		if got, want := a.Dominates(b), dominatesRef(a, b); got != want {
			p.fatalf("%v ⊵ %v = %v, definition says %v", a, b, got, want)
		}
	}
	o.done()
}

func TestLabelOrder(t *testing.T) {
	p := newProp(t)
	o := &orderChecker[Label]{p: p, dom: Label.Dominates}
	for range iterations {
		a := p.label()
		b := p.nearLabel(a)
		c := p.nearLabel(b)
		o.check(a, b, c)
		o.check(c, b, a)
		want := dominatesRef(a.Secrecy, b.Secrecy) && a.Integrity >= b.Integrity
		if got := a.Dominates(b); got != want {
			p.fatalf("%v ⊵ %v = %v, definition says %v", a, b, got, want)
		}
	}
	o.done()
}

func TestLevelLUBGLB(t *testing.T) {
	p := newProp(t)
	leastHits, greatestHits := 0, 0
	for range iterations {
		a := p.level()
		b := p.nearLevel(a)
		u, g := LevelLUB(a, b), LevelGLB(a, b)
		if !u.Dominates(a) || !u.Dominates(b) {
			p.fatalf("LUB(%v, %v) = %v is not an upper bound", a, b, u)
		}
		if !a.Dominates(g) || !b.Dominates(g) {
			p.fatalf("GLB(%v, %v) = %v is not a lower bound", a, b, g)
		}
		if LevelLUB(b, a) != u || LevelGLB(b, a) != g || LevelLUB(a, a) != a || LevelGLB(a, a) != a {
			p.fatalf("LUB/GLB of %v, %v not commutative or idempotent", a, b)
		}
		for range 4 {
			c := p.nearLevel(p.nearLevel(u))
			if c.Dominates(a) && c.Dominates(b) {
				leastHits++
				if !c.Dominates(u) {
					p.fatalf("LUB(%v, %v) = %v is not least: %v is an upper bound below it", a, b, u, c)
				}
			}
			c = p.nearLevel(p.nearLevel(g))
			if a.Dominates(c) && b.Dominates(c) {
				greatestHits++
				if !g.Dominates(c) {
					p.fatalf("GLB(%v, %v) = %v is not greatest: %v is a lower bound above it", a, b, g, c)
				}
			}
		}
		for _, c := range lowerNeighbours(u) {
			if c.Dominates(a) && c.Dominates(b) {
				p.fatalf("LUB(%v, %v) = %v is not least: %v is an upper bound", a, b, u, c)
			}
		}
		for _, c := range upperNeighbours(g) {
			if a.Dominates(c) && b.Dominates(c) {
				p.fatalf("GLB(%v, %v) = %v is not greatest: %v is a lower bound", a, b, g, c)
			}
		}
	}
	if leastHits < iterations/10 || greatestHits < iterations/10 {
		p.fatalf("generator too sparse: %d upper-bound and %d lower-bound candidates", leastHits, greatestHits)
	}
}

func TestLabelLUBGLB(t *testing.T) {
	p := newProp(t)
	leastHits, greatestHits := 0, 0
	for range iterations {
		a := p.label()
		b := p.nearLabel(a)
		u, g := LabelLUB(a, b), LabelGLB(a, b)
		if !u.Dominates(a) || !u.Dominates(b) {
			p.fatalf("LUB(%v, %v) = %v is not an upper bound", a, b, u)
		}
		if !a.Dominates(g) || !b.Dominates(g) {
			p.fatalf("GLB(%v, %v) = %v is not a lower bound", a, b, g)
		}
		for range 4 {
			c := p.nearLabel(p.nearLabel(u))
			if c.Dominates(a) && c.Dominates(b) {
				leastHits++
				if !c.Dominates(u) {
					p.fatalf("LUB(%v, %v) = %v is not least: %v is an upper bound below it", a, b, u, c)
				}
			}
			c = p.nearLabel(p.nearLabel(g))
			if a.Dominates(c) && b.Dominates(c) {
				greatestHits++
				if !g.Dominates(c) {
					p.fatalf("GLB(%v, %v) = %v is not greatest: %v is a lower bound above it", a, b, g, c)
				}
			}
		}
		if u.Integrity > 0 {
			c := u
			c.Integrity--
			if c.Dominates(a) && c.Dominates(b) {
				p.fatalf("LUB(%v, %v) = %v is not least: %v is an upper bound", a, b, u, c)
			}
		}
		if g.Integrity < MaxIntegrity {
			c := g
			c.Integrity++
			if a.Dominates(c) && b.Dominates(c) {
				p.fatalf("GLB(%v, %v) = %v is not greatest: %v is a lower bound", a, b, g, c)
			}
		}
	}
	if leastHits < iterations/10 || greatestHits < iterations/10 {
		p.fatalf("generator too sparse: %d upper-bound and %d lower-bound candidates", leastHits, greatestHits)
	}
}

// validRange returns a range around x: High is pushed up from Low, so it
// is valid by construction.
func (p *prop) validRange(x Level) Range {
	lo := p.nearLevel(x)
	return Range{Low: lo, High: LevelLUB(lo, p.nearLevel(p.nearLevel(lo)))}
}

func TestRangeContainsIntersect(t *testing.T) {
	p := newProp(t)
	okHits, inBoth := 0, 0
	for range iterations {
		a := p.validRange(p.level())
		b := p.validRange(a.Low)
		if err := a.Validate(); err != nil {
			p.fatalf("generated %v: %v", a, err)
		}
		x, ok := a.Intersect(b)
		if ok {
			okHits++
			if err := x.Validate(); err != nil {
				p.fatalf("%v ∩ %v = %v reported ok but: %v", a, b, x, err)
			}
			for _, end := range []Level{x.Low, x.High} {
				if !a.Contains(end) || !b.Contains(end) {
					p.fatalf("%v ∩ %v = %v: end %v not in both", a, b, x, end)
				}
			}
		} else if a.Contains(x.Low) && b.Contains(x.Low) {
			p.fatalf("%v ∩ %v reported empty, but %v is in both", a, b, x.Low)
		}
		for range 4 {
			l := p.nearLevel(p.nearLevel([]Level{a.Low, a.High, b.Low, b.High}[p.r.IntN(4)]))
			for _, r := range []Range{a, b} {
				want := dominatesRef(r.High, l) && dominatesRef(l, r.Low)
				if got := r.Contains(l); got != want {
					p.fatalf("%v.Contains(%v) = %v, want %v", r, l, got, want)
				}
			}
			both := a.Contains(l) && b.Contains(l)
			if both {
				inBoth++
				if !ok {
					p.fatalf("%v ∩ %v reported empty, but %v is in both", a, b, l)
				}
			}
			if ok && x.Contains(l) != both {
				p.fatalf("%v ∩ %v = %v: Contains(%v) = %v, but in both = %v", a, b, x, l, x.Contains(l), both)
			}
		}
	}
	if okHits < iterations/10 || inBoth < iterations/10 {
		p.fatalf("generator too sparse: %d non-empty intersections, %d levels in both", okHits, inBoth)
	}
}

func (p *prop) validBounds(x Label) Bounds {
	lo := p.nearLabel(x)
	return Bounds{Low: lo, High: LabelLUB(lo, p.nearLabel(p.nearLabel(lo)))}
}

func TestBoundsContainsIntersect(t *testing.T) {
	p := newProp(t)
	okHits, inBoth := 0, 0
	for range iterations {
		a := p.validBounds(p.label())
		b := p.validBounds(a.Low)
		if err := a.Validate(); err != nil {
			p.fatalf("generated %v: %v", a, err)
		}
		x, ok := a.Intersect(b)
		if ok {
			okHits++
			if err := x.Validate(); err != nil {
				p.fatalf("%v ∩ %v = %v reported ok but: %v", a, b, x, err)
			}
			for _, end := range []Label{x.Low, x.High} {
				if !a.Contains(end) || !b.Contains(end) {
					p.fatalf("%v ∩ %v = %v: end %v not in both", a, b, x, end)
				}
			}
		} else if a.Contains(x.Low) && b.Contains(x.Low) {
			p.fatalf("%v ∩ %v reported empty, but %v is in both", a, b, x.Low)
		}
		for range 4 {
			l := p.nearLabel(p.nearLabel([]Label{a.Low, a.High, b.Low, b.High}[p.r.IntN(4)]))
			for _, r := range []Bounds{a, b} {
				want := r.High.Dominates(l) && l.Dominates(r.Low)
				if got := r.Contains(l); got != want {
					p.fatalf("%v.Contains(%v) = %v, want %v", r, l, got, want)
				}
			}
			both := a.Contains(l) && b.Contains(l)
			if both {
				inBoth++
				if !ok {
					p.fatalf("%v ∩ %v reported empty, but %v is in both", a, b, l)
				}
			}
			if ok && x.Contains(l) != both {
				p.fatalf("%v ∩ %v = %v: Contains(%v) = %v, but in both = %v", a, b, x, l, x.Contains(l), both)
			}
		}
	}
	if okHits < iterations/10 || inBoth < iterations/10 {
		p.fatalf("generator too sparse: %d non-empty intersections, %d labels in both", okHits, inBoth)
	}
}

// TestRandomRoundTrip prints random values and parses them back: the fuzz
// targets start from text, this starts from values, including ones the
// fuzzer would take long to build (many runs, word boundaries).
func TestRandomRoundTrip(t *testing.T) {
	p := newProp(t)
	for range iterations / 4 {
		l := Label{Secrecy: Level{Sens: uint8(p.r.IntN(MaxSensitivity + 1))}, Integrity: Integrity(p.r.IntN(MaxIntegrity + 1))}
		for range p.r.IntN(40) {
			start := p.r.IntN(MaxCategory + 1)
			for c := start; c <= min(MaxCategory, start+p.r.IntN(4)); c++ {
				l.Secrecy.Cats.Add(c)
			}
		}
		got, err := ParseLabel(l.String())
		if err != nil || got != l {
			p.fatalf("%v does not round-trip: %v, %v", l, got, err)
		}
	}
}
