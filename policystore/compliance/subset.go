package compliance

import (
	"fmt"
	"math/bits"

	"github.com/mlsgate/mlsgate/label"
)

// Subset returns a violation for every rule of sub that permits a flow no
// rule of super permits, so that it returns nil exactly when the flows of sub
// are a subset of the flows of super. It is how a guest bundle's relation is
// compared with the host's system relation when the host gives its policy as
// rules rather than as the lattice. Rules of sub with invalid bounds are
// reported as Malformed and SameLabel rules that permit nothing as Empty, as
// Check does; rules of super with invalid bounds permit nothing.
//
// The decision is exact, also when only several super rules together cover a
// sub rule. A flow is an (entity, label, entity, label) tuple, and a label
// interval [lo,hi] is a box: a sensitivity interval, for every category c
// one of {in}, {out} or {in,out} (in when c ∈ lo, out when c ∉ hi), and an
// integrity interval. A product rule's flows are the product of two such
// boxes, which is again a box. Subtracting one box from another leaves at
// most two pieces per dimension in which the first is wider than the second,
// all of them boxes, disjoint, and together exactly the difference. Subset
// subtracts every product rule of super with the same two entities from the
// sub rule's box; what remains is exactly the sub rule's flows that no
// product rule covers. SameLabel rules of super cover only flows that keep
// their label, so a remaining piece is covered by them only if it is a
// single flow L → L with L in one of their intervals (any bigger piece holds
// a flow that changes label). For a SameLabel sub rule the same is done in
// one label's dimensions with the intervals in which each super rule lets a
// label flow to itself.
//
// Pieces can multiply with the number of super rules that cut the sub rule
// in many dimensions. Past a fixed budget (maxPieces) the rule is reported as
// NotCovered without a witness: an undecided answer counts as non-compliant,
// never the reverse.
//
// Each violation reports a witness: one flow of the sub rule that super does
// not permit.
//
// Flows are direct: a flow A → C that super permits only in two steps (A →
// B, B → C) does not cover a sub rule's A → C. A reference relation meant to
// be transitive must list its composed flows.
//
// SameSecrecy rules are compared conservatively: in sub, one counts as the
// product rule of its bounds (more flows than it permits); in super, one is
// left out (it covers fewer flows than its product). Either way Subset may
// report a flow that is in fact covered, never the reverse.
func Subset(sub, super Relation) []Violation {
	var vs []Violation
	var plain Relation
	for _, r := range super {
		if !r.SameSecrecy || r.SameLabel {
			plain = append(plain, r)
		}
	}
	super = plain
	for i, s := range sub {
		s.SameSecrecy = false
		vs = subsetRule(vs, s, i, super)
	}
	return vs
}

// maxPieces bounds the pieces Subset keeps while deciding one rule.
const maxPieces = 1 << 14

// box is a set of flows: one label interval (the labels of a flow that
// keeps its label) or two (source × destination labels).
type box []label.Bounds

func subsetRule(vs []Violation, s Rule, i int, super Relation) []Violation {
	vs, bad := malformed(vs, s, i)
	if bad {
		return vs
	}
	v := Violation{Rule: s, Index: i}

	// The super rules between the same two entities: their product boxes,
	// and the intervals in which each lets a label flow to itself.
	var products []box
	var diagonal []label.Bounds
	for _, p := range super {
		if p.From != s.From || p.To != s.To || !validBounds(p.FromLabels) || !validBounds(p.ToLabels) {
			continue
		}
		if d, ok := sameLabels(p); ok {
			diagonal = append(diagonal, d)
		}
		if !p.SameLabel {
			products = append(products, box{p.FromLabels, p.ToLabels})
		}
	}
	v.Kind = NotCovered
	reason := "is not permitted by any rule of the reference relation"
	if len(products)+len(diagonal) == 0 {
		reason = fmt.Sprintf("is not permitted: the reference relation has no rule from %s to %s", s.From, s.To)
	}

	if s.SameLabel {
		both, ok := sameLabels(s)
		if !ok {
			v.Kind = Empty
			v.Reason = fmt.Sprintf("permits no flow: a same-label rule needs a label in both %s and %s", s.FromLabels, s.ToLabels)
			return append(vs, v)
		}
		supers := make([]box, len(diagonal))
		for k, d := range diagonal {
			supers[k] = box{d}
		}
		rest, decided := subtractAll(box{both}, supers)
		switch {
		case !decided:
			v.Reason = undecided
			return append(vs, v)
		case len(rest) > 0:
			w := rest[0][0].Low
			v.FlowFrom, v.FlowTo, v.HasFlow, v.Reason = w, w, true, reason
			return append(vs, v)
		}
		return vs
	}

	rest, decided := subtractAll(box{s.FromLabels, s.ToLabels}, products)
	if !decided {
		v.Reason = undecided
		return append(vs, v)
	}
	for _, r := range rest {
		a, b, ok := offDiagonal(r)
		if !ok {
			// r is the single flow a → a: covered if a same-label rule
			// lets a flow to itself.
			if containedInAny(a, diagonal) {
				continue
			}
		}
		v.FlowFrom, v.FlowTo, v.HasFlow, v.Reason = a, b, true, reason
		return append(vs, v)
	}
	return vs
}

const undecided = "could not be decided within the work budget; counted as not permitted"

func containedInAny(l label.Label, in []label.Bounds) bool {
	for _, b := range in {
		if b.Contains(l) {
			return true
		}
	}
	return false
}

// offDiagonal returns a flow a → b of the product box r with a ≠ b, or, when
// r is the single flow a → a, that flow and false.
func offDiagonal(r box) (a, b label.Label, ok bool) {
	for _, a := range [2]label.Label{r[0].Low, r[0].High} {
		for _, b := range [2]label.Label{r[1].Low, r[1].High} {
			if a != b {
				return a, b, true
			}
		}
	}
	return r[0].Low, r[0].Low, false
}

// subtractAll removes every box of supers from target and returns the
// remaining disjoint pieces. decided is false when the pieces exceeded
// maxPieces.
func subtractAll(target box, supers []box) (rest []box, decided bool) {
	work := []box{target}
	for _, p := range supers {
		var next []box
		for _, b := range work {
			next = subtract(next, b, p)
			if len(next) > maxPieces {
				return nil, false
			}
		}
		work = next
		if len(work) == 0 {
			break
		}
	}
	return work, true
}

// subtract appends to out the pieces of b outside p: disjoint boxes whose
// union is exactly b \ p. b and p have the same number of components.
func subtract(out []box, b, p box) []box {
	for k := range b {
		if _, ok := b[k].Intersect(p[k]); !ok {
			return append(out, b)
		}
	}
	cur := append(box(nil), b...)
	// piece returns a copy of cur with component k replaced.
	piece := func(k int, c label.Bounds) box {
		n := append(box(nil), cur...)
		n[k] = c
		return n
	}
	for k := range cur {
		q := p[k]
		// Sensitivity: the parts below and above q's interval.
		if c := cur[k]; c.Low.Secrecy.Sens < q.Low.Secrecy.Sens {
			c.High.Secrecy.Sens = q.Low.Secrecy.Sens - 1
			out = append(out, piece(k, c))
			cur[k].Low.Secrecy.Sens = q.Low.Secrecy.Sens
		}
		if c := cur[k]; c.High.Secrecy.Sens > q.High.Secrecy.Sens {
			c.Low.Secrecy.Sens = q.High.Secrecy.Sens + 1
			out = append(out, piece(k, c))
			cur[k].High.Secrecy.Sens = q.High.Secrecy.Sens
		}
		// Categories free in cur (in High, not in Low) that q fixes: in
		// (c ∈ q.Low) or out (c ∉ q.High).
		for w := range cur[k].Low.Secrecy.Cats {
			free := cur[k].High.Secrecy.Cats[w] &^ cur[k].Low.Secrecy.Cats[w]
			cut := free & (q.Low.Secrecy.Cats[w] | ^q.High.Secrecy.Cats[w])
			for cut != 0 {
				bit := uint64(1) << bits.TrailingZeros64(cut)
				cut &^= bit
				c := cur[k]
				if q.Low.Secrecy.Cats[w]&bit != 0 {
					// q has the category; the piece lacks it.
					c.High.Secrecy.Cats[w] &^= bit
					out = append(out, piece(k, c))
					cur[k].Low.Secrecy.Cats[w] |= bit
				} else {
					// q lacks the category; the piece has it.
					c.Low.Secrecy.Cats[w] |= bit
					out = append(out, piece(k, c))
					cur[k].High.Secrecy.Cats[w] &^= bit
				}
			}
		}
		// Integrity, like sensitivity.
		if c := cur[k]; c.Low.Integrity < q.Low.Integrity {
			c.High.Integrity = q.Low.Integrity - 1
			out = append(out, piece(k, c))
			cur[k].Low.Integrity = q.Low.Integrity
		}
		if c := cur[k]; c.High.Integrity > q.High.Integrity {
			c.Low.Integrity = q.High.Integrity + 1
			out = append(out, piece(k, c))
			cur[k].High.Integrity = q.High.Integrity
		}
	}
	// What is left of cur is b ∩ p: covered.
	return out
}
