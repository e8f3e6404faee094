package compliance

import (
	"fmt"

	"github.com/mlsgate/mlsgate/label"
)

// Check returns every way rel breaks sys: rules with invalid or empty
// bounds, rules naming entities the system does not know, rules putting data
// outside an entity's bounds, and flows the MLS lattice forbids. It returns
// nil when rel complies.
//
// The check is exact. A product rule permits every pair of its labels, and
// all pairs are permitted exactly when the worst pair is: in secrecy the
// highest source label against the lowest destination label, in integrity
// the lowest source integrity against the highest destination integrity.
// Those corner labels are the witness a violation reports. A SameLabel rule
// moves each label of its bounds' intersection to itself, which the lattice
// always permits, so only the entities' bounds can forbid it.
//
// Violations come in rule order and, within a rule, in a fixed order: the
// rule's bounds, the From entity, the To entity, secrecy, integrity. The
// output is therefore deterministic.
func Check(sys System, rel Relation) []Violation {
	var vs []Violation
	for i, r := range rel {
		vs = checkRule(vs, sys, r, i)
	}
	return vs
}

// Compliant is Check as one error: nil when rel complies with sys, else the
// violations joined (errors.Join), each matching ErrNotCompliant.
func Compliant(sys System, rel Relation) error {
	return join(Check(sys, rel))
}

func checkRule(vs []Violation, sys System, r Rule, i int) []Violation {
	vs, bad := malformed(vs, r, i)
	if bad {
		return vs
	}
	v := Violation{Rule: r, Index: i}

	// The labels each end may hold.
	fromEnd, toEnd := r.FromLabels, r.ToLabels
	if r.SameLabel {
		both, ok := sameLabels(r)
		if !ok {
			v.Kind = Empty
			v.Reason = fmt.Sprintf("permits no flow: a same-label rule needs a label in both %s and %s", r.FromLabels, r.ToLabels)
			return append(vs, v)
		}
		fromEnd, toEnd = both, both
	}

	// Entity bounds, From before To.
	for _, end := range [...]struct {
		isFrom bool
		name   string
		labels label.Bounds
	}{{true, r.From, fromEnd}, {false, r.To, toEnd}} {
		eb, known := sys.Entities[end.name]
		v := Violation{Rule: r, Index: i, Entity: end.name}
		switch {
		case !known && !sys.AllowUnknown:
			v.Kind = UnknownEntity
			v.Reason = fmt.Sprintf("names %q, which the system policy does not bound", end.name)
			vs = append(vs, v)
		case !known:
		case !validBounds(eb):
			v.Kind = Malformed
			v.Reason = fmt.Sprintf("the system's bounds for %q are invalid: %v", end.name, eb.Validate())
			vs = append(vs, v)
		default:
			w, ok := within(end.labels, eb)
			if ok {
				continue
			}
			v.Kind, v.HasFlow = OutOfBounds, true
			switch {
			case r.SameLabel:
				v.FlowFrom, v.FlowTo = w, w
			case end.isFrom:
				v.FlowFrom, v.FlowTo = w, toEnd.Low
			default:
				v.FlowFrom, v.FlowTo = fromEnd.Low, w
			}
			v.Reason = fmt.Sprintf("puts data at %s in %s, outside its bounds %s", w, end.name, eb)
			vs = append(vs, v)
		}
	}

	if r.SameLabel {
		return vs
	}
	// Secrecy: every destination level must dominate every source level; the
	// lowest destination against the highest source decides. A same-secrecy
	// rule moves data only between equal levels, which needs the two secrecy
	// ranges to meet and is otherwise always permitted.
	if r.SameSecrecy {
		fr := label.Range{Low: r.FromLabels.Low.Secrecy, High: r.FromLabels.High.Secrecy}
		tr := label.Range{Low: r.ToLabels.Low.Secrecy, High: r.ToLabels.High.Secrecy}
		if _, ok := fr.Intersect(tr); !ok {
			vs = append(vs, Violation{
				Kind: Empty, Rule: r, Index: i,
				Reason: fmt.Sprintf("permits no flow: a same-secrecy rule needs a level in both %s and %s", fr, tr),
			})
		}
	} else if a, b := r.FromLabels.High, r.ToLabels.Low; !b.Secrecy.Dominates(a.Secrecy) {
		vs = append(vs, Violation{
			Kind: WriteDown, Rule: r, Index: i, FlowFrom: a, FlowTo: b, HasFlow: true,
			Reason: fmt.Sprintf("would write down secrecy (%s does not dominate %s)", b.Secrecy, a.Secrecy),
		})
	}
	// Integrity: every source integrity must be at least every destination
	// integrity; the lowest source against the highest destination decides.
	if a, b := r.FromLabels.Low, r.ToLabels.High; a.Integrity < b.Integrity {
		vs = append(vs, Violation{
			Kind: WriteUp, Rule: r, Index: i, FlowFrom: a, FlowTo: b, HasFlow: true,
			Reason: fmt.Sprintf("would write up integrity (%s is below %s)", a.Integrity, b.Integrity),
		})
	}
	return vs
}

// malformed appends a Malformed violation for each invalid bound of r and
// reports whether there was one.
func malformed(vs []Violation, r Rule, i int) ([]Violation, bool) {
	n := len(vs)
	for _, end := range [...]struct {
		name string
		b    label.Bounds
	}{{"FromLabels", r.FromLabels}, {"ToLabels", r.ToLabels}} {
		if err := end.b.Validate(); err != nil {
			vs = append(vs, Violation{Kind: Malformed, Rule: r, Index: i,
				Reason: fmt.Sprintf("%s are invalid: %v", end.name, err)})
		}
	}
	return vs, len(vs) > n
}
