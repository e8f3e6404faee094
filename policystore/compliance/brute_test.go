package compliance

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/label"
)

// The brute-force tests hold Check and Subset, which decide symbolically on
// interval ends, equal to explicit enumeration of every flow on a lattice
// small enough to enumerate: s0..s3, categories c0..c2, i0..i3 (128
// labels). Each run uses a fresh seed, printed; reproduce a failure with
//
//	go test ./policystore/compliance/ -run=TestName -args -compliance.seed=N
var seedFlag = flag.Uint64("compliance.seed", 0, "seed for the random tests (0: time-based)")

const (
	smallSens, smallCats, smallInteg = 4, 3, 4
	nLabels                          = smallSens * (1 << smallCats) * smallInteg
	randomRules                      = 6000
)

// small is every label of the small lattice; small[i] has index i.
var small = func() []label.Label {
	var ls []label.Label
	for s := range smallSens {
		for cats := range 1 << smallCats {
			for i := range smallInteg {
				l := label.Label{Secrecy: label.Level{Sens: uint8(s)}, Integrity: label.Integrity(i)}
				for c := range smallCats {
					if cats&(1<<c) != 0 {
						l.Secrecy.Cats.Add(c)
					}
				}
				ls = append(ls, l)
			}
		}
	}
	return ls
}()

// set is a set of small labels, by index.
type set [nLabels/64 + 1]uint64

func (s *set) add(i int)     { s[i/64] |= 1 << (i % 64) }
func (s set) has(i int) bool { return s[i/64]&(1<<(i%64)) != 0 }

// indexOf returns l's index in small, -1 when l is not a small label.
func indexOf(l label.Label) int {
	for i, m := range small {
		if m == l {
			return i
		}
	}
	return -1
}

// members enumerates the small labels in b (none when b is invalid).
func members(b label.Bounds) set {
	var s set
	if b.Validate() != nil {
		return s
	}
	for i, l := range small {
		if b.Contains(l) {
			s.add(i)
		}
	}
	return s
}

type rnd struct {
	t    *testing.T
	seed uint64
	r    *rand.Rand
}

func newRnd(t *testing.T) *rnd {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -args -compliance.seed=%d)", seed, seed)
	return &rnd{t: t, seed: seed, r: rand.New(rand.NewPCG(seed, 0x636f6d706c))}
}

func (r *rnd) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d: "+format, append([]any{r.seed}, args...)...)
}

func (r *rnd) smallLabel() label.Label { return small[r.r.IntN(nLabels)] }

// smallBounds returns random bounds of the small lattice: mostly valid,
// often a single label, sometimes inverted.
func (r *rnd) smallBounds() label.Bounds {
	a, b := r.smallLabel(), r.smallLabel()
	switch r.r.IntN(10) {
	case 0:
		return label.Bounds{Low: a, High: b} // usually invalid
	case 1, 2:
		return label.Bounds{Low: a, High: a}
	case 3, 4:
		// Narrow: b moved at most one step above a in each part.
		hi := a
		if hi.Secrecy.Sens < smallSens-1 && r.r.IntN(2) == 0 {
			hi.Secrecy.Sens++
		}
		hi.Secrecy.Cats.Add(r.r.IntN(smallCats))
		if hi.Integrity < smallInteg-1 && r.r.IntN(2) == 0 {
			hi.Integrity++
		}
		return label.Bounds{Low: a, High: hi}
	}
	return label.Bounds{Low: label.LabelGLB(a, b), High: label.LabelLUB(a, b)}
}

var entityNames = []string{"a", "b", "c", "d"}

func (r *rnd) smallRule() Rule {
	return Rule{
		From: entityNames[r.r.IntN(len(entityNames))], To: entityNames[r.r.IntN(len(entityNames))],
		FromLabels: r.smallBounds(), ToLabels: r.smallBounds(), SameLabel: r.r.IntN(3) == 0,
		Source: fmt.Sprintf("rand:%d", r.r.IntN(1000)),
	}
}

func (r *rnd) smallSystem() System {
	sys := System{AllowUnknown: r.r.IntN(2) == 0, Entities: map[string]label.Bounds{}}
	for _, e := range entityNames[:3] {
		if r.r.IntN(5) > 0 {
			b := r.smallBounds()
			if r.r.IntN(3) > 0 {
				b = label.Bounds{Low: label.LabelGLB(b.Low, b.High), High: label.LabelLUB(b.Low, b.High)}
			}
			sys.Entities[e] = b
		}
	}
	return sys
}

// flows enumerates a rule's flows as (from, to) label indexes.
func flows(r Rule) [][2]int {
	fl, tl := members(r.FromLabels), members(r.ToLabels)
	var out [][2]int
	for a := range nLabels {
		if !fl.has(a) {
			continue
		}
		if r.SameLabel {
			if tl.has(a) {
				out = append(out, [2]int{a, a})
			}
			continue
		}
		for b := range nLabels {
			if tl.has(b) {
				out = append(out, [2]int{a, b})
			}
		}
	}
	return out
}

type finding struct {
	kind   Kind
	entity string
}

// bruteCheck is Check by enumeration: which findings, in Check's order.
func bruteCheck(sys System, r Rule) []finding {
	var out []finding
	for _, b := range []label.Bounds{r.FromLabels, r.ToLabels} {
		if b.Validate() != nil {
			out = append(out, finding{Malformed, ""})
		}
	}
	if len(out) > 0 {
		return out
	}
	fs := flows(r)
	if len(fs) == 0 {
		return []finding{{Empty, ""}}
	}
	for side, name := range []string{r.From, r.To} {
		eb, known := sys.Entities[name]
		switch {
		case !known && !sys.AllowUnknown:
			out = append(out, finding{UnknownEntity, name})
		case !known:
		case eb.Validate() != nil:
			out = append(out, finding{Malformed, name})
		default:
			in := members(eb)
			for _, f := range fs {
				if !in.has(f[side]) {
					out = append(out, finding{OutOfBounds, name})
					break
				}
			}
		}
	}
	var down, up bool
	for _, f := range fs {
		a, b := small[f[0]], small[f[1]]
		down = down || !b.Secrecy.Dominates(a.Secrecy)
		up = up || a.Integrity < b.Integrity
	}
	if down {
		out = append(out, finding{WriteDown, ""})
	}
	if up {
		out = append(out, finding{WriteUp, ""})
	}
	return out
}

func TestCheckAgainstEnumeration(t *testing.T) {
	t.Parallel()
	r := newRnd(t)
	counts := map[Kind]int{}
	for n := range randomRules {
		sys := r.smallSystem()
		ru := r.smallRule()
		vs := Check(sys, Relation{ru})
		want := bruteCheck(sys, ru)
		if len(vs) != len(want) {
			r.fatalf("rule %d %v, system %v: Check says %q, enumeration %v", n, ru, sys, messages(vs), want)
		}
		fs := map[[2]int]bool{}
		for _, f := range flows(ru) {
			fs[f] = true
		}
		for i, v := range vs {
			counts[v.Kind]++
			if v.Kind != want[i].kind || v.Entity != want[i].entity {
				r.fatalf("rule %d %v, system %v: violation %d is %v %q, enumeration says %v", n, ru, sys, i, v.Kind, v.Entity, want[i])
			}
			// The witness is a flow of the rule that shows the violation.
			if v.HasFlow != (v.Kind == OutOfBounds || v.Kind == WriteDown || v.Kind == WriteUp) {
				r.fatalf("%v: HasFlow %v for kind %v", v, v.HasFlow, v.Kind)
			}
			if !v.HasFlow {
				continue
			}
			if !fs[[2]int{indexOf(v.FlowFrom), indexOf(v.FlowTo)}] {
				r.fatalf("%v: witness is not a flow of the rule", v)
			}
			switch v.Kind {
			case WriteDown:
				if v.FlowTo.Secrecy.Dominates(v.FlowFrom.Secrecy) {
					r.fatalf("%v: witness does not write down", v)
				}
			case WriteUp:
				if v.FlowFrom.Integrity >= v.FlowTo.Integrity {
					r.fatalf("%v: witness does not write up", v)
				}
			case OutOfBounds:
				eb := sys.Entities[v.Entity]
				if (v.Entity != ru.From || eb.Contains(v.FlowFrom)) && (v.Entity != ru.To || eb.Contains(v.FlowTo)) {
					r.fatalf("%v: witness is within %s's bounds %v", v, v.Entity, eb)
				}
			}
		}
	}
	// The generator must reach every verdict, or the test proves little.
	for _, k := range []Kind{Malformed, Empty, UnknownEntity, OutOfBounds, WriteDown, WriteUp} {
		if counts[k] < 20 {
			t.Errorf("seed %d: only %d %v violations in %d rules: the generator is too narrow", r.seed, counts[k], k, randomRules)
		}
	}
	t.Logf("violations by kind: %v", counts)
}

// split cuts a rule's bounds into two or three rules whose union is the
// rule, along a random sensitivity or category of its FromLabels or
// ToLabels, so that Subset must use several super rules together.
func (r *rnd) split(ru Rule) Relation {
	if ru.FromLabels.Validate() != nil || ru.ToLabels.Validate() != nil {
		return Relation{ru}
	}
	side := &ru.FromLabels
	if r.r.IntN(2) == 0 && !ru.SameLabel {
		side = &ru.ToLabels
	}
	b := *side
	lo, hi := b, b
	free := b.High.Secrecy.Cats.Intersect(complement(b.Low.Secrecy.Cats))
	switch {
	case b.High.Secrecy.Sens > b.Low.Secrecy.Sens && r.r.IntN(2) == 0:
		k := b.Low.Secrecy.Sens + 1 + uint8(r.r.IntN(int(b.High.Secrecy.Sens-b.Low.Secrecy.Sens)))
		lo.High.Secrecy.Sens, hi.Low.Secrecy.Sens = k-1, k
		// Both halves keep the categories; the lower half's High must
		// still dominate its Low.
	case !free.IsEmpty():
		c := 0
		for !free.Has(c) {
			c++
		}
		lo.High.Secrecy.Cats = b.High.Secrecy.Cats.Intersect(complement(single(c)))
		hi.Low.Secrecy.Cats.Add(c)
	case b.High.Integrity > b.Low.Integrity:
		k := b.Low.Integrity + 1
		lo.High.Integrity, hi.Low.Integrity = k-1, k
	default:
		return Relation{ru}
	}
	a, c := ru, ru
	if side == &ru.FromLabels {
		a.FromLabels, c.FromLabels = lo, hi
	} else {
		a.ToLabels, c.ToLabels = lo, hi
	}
	if ru.SameLabel {
		a.ToLabels, c.ToLabels = a.FromLabels, c.FromLabels
	}
	return Relation{a, c}
}

// widen extends valid bounds down and up to random labels.
func (r *rnd) widen(b label.Bounds) label.Bounds {
	if b.Validate() != nil {
		return b
	}
	return label.Bounds{Low: label.LabelGLB(b.Low, r.smallLabel()), High: label.LabelLUB(b.High, r.smallLabel())}
}

func complement(s label.CategorySet) label.CategorySet {
	for i := range s {
		s[i] = ^s[i]
	}
	return s
}

func single(c int) label.CategorySet {
	var s label.CategorySet
	s.Add(c)
	return s
}

// coveredBy reports by enumeration whether flow f of entities from → to is
// a flow of some rule of super.
func coveredBy(from, to string, f [2]int, super Relation, memo map[label.Bounds]set) bool {
	mem := func(b label.Bounds) set {
		s, ok := memo[b]
		if !ok {
			s = members(b)
			memo[b] = s
		}
		return s
	}
	for _, p := range super {
		if p.From != from || p.To != to {
			continue
		}
		fl, tl := mem(p.FromLabels), mem(p.ToLabels)
		if fl.has(f[0]) && tl.has(f[1]) && (!p.SameLabel || f[0] == f[1]) {
			return true
		}
	}
	return false
}

func TestSubsetAgainstEnumeration(t *testing.T) {
	t.Parallel()
	r := newRnd(t)
	var covered, notCovered, byUnion int
	for n := range randomRules {
		sub := r.smallRule()
		sub.From, sub.To = entityNames[r.r.IntN(2)], entityNames[r.r.IntN(2)]
		var super Relation
		if r.r.IntN(2) == 0 {
			// Pieces of the sub rule, some widened; sometimes one is
			// dropped, changes kind, or a random rule joins them.
			super = Relation{sub}
			for range 3 {
				var next Relation
				for _, p := range super {
					if r.r.IntN(3) > 0 {
						next = append(next, r.split(p)...)
					} else {
						next = append(next, p)
					}
				}
				super = next
			}
			for i := range super {
				if r.r.IntN(4) == 0 {
					super[i].FromLabels = r.widen(super[i].FromLabels)
					if super[i].SameLabel {
						super[i].ToLabels = super[i].FromLabels
					}
				}
			}
			if r.r.IntN(5) == 0 {
				super = append(super[:0:0], super[1:]...)
			}
			if r.r.IntN(5) == 0 && len(super) > 0 {
				i := r.r.IntN(len(super))
				super[i].SameLabel = !super[i].SameLabel
			}
			if r.r.IntN(3) == 0 {
				super = append(super, r.smallRule())
			}
			r.r.Shuffle(len(super), func(i, j int) { super[i], super[j] = super[j], super[i] })
		} else {
			for range 1 + r.r.IntN(4) {
				p := r.smallRule()
				p.From, p.To = entityNames[r.r.IntN(2)], entityNames[r.r.IntN(2)]
				super = append(super, p)
			}
		}
		vs := Subset(Relation{sub}, super)

		// Enumeration.
		want := bruteCheck(System{AllowUnknown: true}, Rule{FromLabels: sub.FromLabels, ToLabels: sub.ToLabels, SameLabel: sub.SameLabel})
		if len(want) > 0 && (want[0].kind == Malformed || want[0].kind == Empty) {
			if len(vs) != len(want) || vs[0].Kind != want[0].kind {
				r.fatalf("case %d: sub %v: Subset says %q, enumeration %v", n, sub, messages(vs), want)
			}
			continue
		}
		memo := map[label.Bounds]set{}
		var missing [][2]int
		for _, f := range flows(sub) {
			if !coveredBy(sub.From, sub.To, f, super, memo) {
				missing = append(missing, f)
			}
		}
		switch {
		case len(missing) == 0 && len(vs) == 0:
			covered++
			single := false
			for _, p := range super {
				if Subset(Relation{sub}, Relation{p}) == nil {
					single = true
				}
			}
			if !single {
				byUnion++
			}
		case len(missing) > 0 && len(vs) == 1 && vs[0].Kind == NotCovered && vs[0].HasFlow:
			notCovered++
			f := [2]int{indexOf(vs[0].FlowFrom), indexOf(vs[0].FlowTo)}
			isFlow := false
			for _, g := range flows(sub) {
				isFlow = isFlow || g == f
			}
			if !isFlow || coveredBy(sub.From, sub.To, f, super, memo) {
				r.fatalf("case %d: sub %v, super %v: witness %v → %v is not an uncovered flow of the sub rule", n, sub, super, vs[0].FlowFrom, vs[0].FlowTo)
			}
		default:
			r.fatalf("case %d: sub %v, super %v: Subset says %q; enumeration finds %d uncovered flows, e.g. %v", n, sub, super, messages(vs), len(missing), missing[:min(1, len(missing))])
		}
	}
	if covered < randomRules/10 || notCovered < randomRules/10 || byUnion < 50 {
		t.Errorf("seed %d: too few of a kind: %d covered (%d only by a union of rules), %d not covered", r.seed, covered, byUnion, notCovered)
	}
	t.Logf("%d covered (%d only by a union of rules), %d not covered", covered, byUnion, notCovered)
}

// Full lattice: random levels over all sixteen sensitivities and a spread of
// categories, including word boundaries and c1023.
var bigCats = []int{0, 1, 2, 63, 64, 500, 1023}

func (r *rnd) bigLevel() label.Level {
	l := label.Level{Sens: uint8(r.r.IntN(label.MaxSensitivity + 1))}
	for _, c := range bigCats {
		if r.r.IntN(3) == 0 {
			l.Cats.Add(c)
		}
	}
	return l
}

func (r *rnd) bigBounds() label.Bounds {
	a := label.Label{Secrecy: r.bigLevel(), Integrity: label.Integrity(r.r.IntN(label.MaxIntegrity + 1))}
	b := label.Label{Secrecy: r.bigLevel(), Integrity: label.Integrity(r.r.IntN(label.MaxIntegrity + 1))}
	return label.Bounds{Low: label.LabelGLB(a, b), High: label.LabelLUB(a, b)}
}

// permittedRule builds a random product rule all of whose flows the lattice
// permits: ToLabels starts at or above FromLabels' top in secrecy and ends
// at or below its bottom in integrity.
func (r *rnd) permittedRule(i int) Rule {
	fl := r.bigBounds()
	var tl label.Bounds
	tl.Low.Secrecy = label.LevelLUB(fl.High.Secrecy, r.bigLevel())
	tl.High.Secrecy = label.LevelLUB(tl.Low.Secrecy, r.bigLevel())
	tl.High.Integrity = label.Integrity(r.r.IntN(int(fl.Low.Integrity) + 1))
	tl.Low.Integrity = label.Integrity(r.r.IntN(int(tl.High.Integrity) + 1))
	return Rule{
		From: entityNames[r.r.IntN(len(entityNames))], To: entityNames[r.r.IntN(len(entityNames))],
		FromLabels: fl, ToLabels: tl, Source: fmt.Sprintf("permitted:%d", i),
	}
}

// TestPermittedFlowsComply: relations built only from flows the lattice
// permits comply, with or without entity bounds that cover them, and are a
// subset of themselves and of any relation they were narrowed from.
func TestPermittedFlowsComply(t *testing.T) {
	t.Parallel()
	r := newRnd(t)
	for n := range 500 {
		var rel Relation
		for i := range 1 + r.r.IntN(12) {
			ru := r.permittedRule(i)
			if r.r.IntN(3) == 0 {
				// A same-label rule at any labels is permitted too.
				b := r.bigBounds()
				ru = Rule{From: ru.From, To: ru.To, FromLabels: b, ToLabels: b, SameLabel: true, Source: ru.Source}
			}
			rel = append(rel, ru)
		}
		if err := Compliant(System{AllowUnknown: true}, rel); err != nil {
			r.fatalf("relation %d: %v", n, err)
		}
		// Entity bounds that cover every label each entity holds.
		sys := System{Entities: map[string]label.Bounds{}}
		grow := func(e string, b label.Bounds) {
			if old, ok := sys.Entities[e]; ok {
				b = label.Bounds{Low: label.LabelGLB(old.Low, b.Low), High: label.LabelLUB(old.High, b.High)}
			}
			sys.Entities[e] = b
		}
		for _, ru := range rel {
			grow(ru.From, ru.FromLabels)
			grow(ru.To, ru.ToLabels)
		}
		if err := Compliant(sys, rel); err != nil {
			r.fatalf("relation %d with entity bounds: %v", n, err)
		}
		if vs := Subset(rel, rel); vs != nil {
			r.fatalf("relation %d is not a subset of itself: %q", n, messages(vs))
		}
		// Narrow each rule to a random label of each end: still covered.
		narrow := make(Relation, len(rel))
		for i, ru := range rel {
			pick := func(b label.Bounds) label.Label {
				return label.LabelGLB(b.High, label.LabelLUB(b.Low, label.Label{Secrecy: r.bigLevel(), Integrity: label.Integrity(r.r.IntN(16))}))
			}
			a := pick(ru.FromLabels)
			ru.FromLabels = label.Bounds{Low: a, High: a}
			if !ru.SameLabel {
				b := pick(ru.ToLabels)
				ru.ToLabels = label.Bounds{Low: b, High: b}
			} else {
				ru.ToLabels = ru.FromLabels
			}
			narrow[i] = ru
		}
		if vs := Subset(narrow, rel); vs != nil {
			r.fatalf("relation %d: narrowed rules not covered: %q", n, messages(vs))
		}
	}
}
