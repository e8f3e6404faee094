package compliance

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/mlsgate/mlsgate/label"
)

// Rule says that information may flow from entity From, holding data at a
// label in FromLabels, to entity To, which then holds it at a label in
// ToLabels.
type Rule struct {
	// From and To name the entities: SELinux types, "guest", "ws1", ...
	From, To string
	// FromLabels and ToLabels bound the labels at the two ends.
	FromLabels, ToLabels label.Bounds
	// SameLabel restricts the rule to flows that keep their label: one label
	// L in both FromLabels and ToLabels at both ends, as labeled IPsec
	// carries data. Without it any label of FromLabels may flow to any label
	// of ToLabels.
	SameLabel bool
	// SameSecrecy restricts the rule to flows between labels of equal
	// secrecy, while integrity may differ: what an OS with MLS constraints
	// enforces for a TE allow rule (a write needs equal levels; a read down
	// is a flow up, which the lattice permits anyway). The lattice check then
	// covers integrity only, and the two secrecy ranges must meet. SameLabel
	// takes precedence when both are set.
	SameSecrecy bool
	// Source says where the rule came from, e.g. "analyst_guest.te:12" or
	// "xfrm out guest→ws1". Violations quote it.
	Source string
	// Via optionally says what in the source makes the flow, e.g.
	// "file { write append }". Violations quote it after Source.
	Via string
}

// Relation is a policy as a set of flows: the union of its rules' flows.
type Relation []Rule

// String prints the rule as "from FromLabels → to ToLabels", with "(same
// label)" for SameLabel rules.
func (r Rule) String() string {
	s := r.From + " " + r.FromLabels.String() + " → " + r.To + " " + r.ToLabels.String()
	switch {
	case r.SameLabel:
		s += " (same label)"
	case r.SameSecrecy:
		s += " (same secrecy)"
	}
	return s
}

// where names the rule in messages: its Source and Via, or its position.
func (r Rule) where(index int) string {
	w := r.Source
	if w == "" {
		w = "rule #" + strconv.Itoa(index)
	}
	if r.Via != "" {
		w += " (" + r.Via + ")"
	}
	return w
}

// System is the reference policy: the MLS lattice plus optional bounds per
// entity.
type System struct {
	// Entities bounds the labels each entity's data may have. A rule whose
	// labels at an end leave that end's bounds is a violation.
	Entities map[string]label.Bounds
	// AllowUnknown lets rules name entities missing from Entities, which are
	// then checked against the lattice only. Without it such a rule is a
	// violation: the system does not know the entity.
	AllowUnknown bool
}

// FlowPermitted reports whether the MLS lattice permits information at label
// a to flow to label b: b's secrecy dominates a's (no write-down, no read-up)
// and a's integrity is at least b's (no write-up of low integrity).
func FlowPermitted(a, b label.Label) bool {
	return b.Secrecy.Dominates(a.Secrecy) && a.Integrity >= b.Integrity
}

// Kind classifies a Violation.
type Kind uint8

// The kinds of Violation, in the order Check reports them for one rule.
const (
	// Malformed: a bound of the rule (or the system's bound for one of its
	// entities) is invalid, e.g. inverted.
	Malformed Kind = iota + 1
	// Empty: a SameLabel rule whose FromLabels and ToLabels share no label,
	// so it permits nothing; almost certainly a mistake in its bounds.
	Empty
	// UnknownEntity: the rule names an entity the system does not bound and
	// the system does not allow unknown entities.
	UnknownEntity
	// OutOfBounds: the rule puts data at a label outside an entity's bounds.
	OutOfBounds
	// WriteDown: the rule lets information flow to a secrecy level that does
	// not dominate its own (a write-down, or a read-up from the reader's
	// side).
	WriteDown
	// WriteUp: the rule lets information flow to a higher integrity level.
	WriteUp
	// NotCovered: Subset found a flow of the sub relation that the super
	// relation does not permit.
	NotCovered
	// PolicyError: the policy could not be turned into flows (CheckPIDSI),
	// so nothing about it is known to comply.
	PolicyError
)

var kindNames = [...]string{
	Malformed:     "malformed",
	Empty:         "empty",
	UnknownEntity: "unknown entity",
	OutOfBounds:   "out of bounds",
	WriteDown:     "write-down",
	WriteUp:       "write-up",
	NotCovered:    "not covered",
	PolicyError:   "policy error",
}

// String names the kind, e.g. "write-down".
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ErrNotCompliant is matched (errors.Is) by every Violation and so by the
// error Compliant returns.
var ErrNotCompliant = errors.New("not compliant")

// Violation is one reason a relation does not comply. It is an error whose
// message names the rule (its Source), the offending flow as concrete labels
// and why it is not permitted, e.g.
//
//	xfrm out ws3→guest: ws3 s5/i2 → guest s4/i2 would write down secrecy (s4 does not dominate s5)
type Violation struct {
	Kind Kind
	// Rule is the offending rule and Index its position in the relation
	// checked (the sub relation for Subset).
	Rule  Rule
	Index int
	// Entity names the entity concerned for Malformed (when the system's
	// bound is at fault), UnknownEntity and OutOfBounds; otherwise "".
	Entity string
	// Flow is a witness: a concrete flow the rule permits, FlowFrom in
	// Rule.From to FlowTo in Rule.To, that shows the violation. HasFlow is
	// false for Malformed, Empty, UnknownEntity and PolicyError, and for a
	// NotCovered whose decision exceeded Subset's work budget.
	FlowFrom, FlowTo label.Label
	HasFlow          bool
	// Reason says why, in words.
	Reason string
}

// Error prints "source (via): from A → to B reason", or "source (via):
// rule: reason" when there is no witness flow, or "cannot check source:
// reason" for a PolicyError.
func (v Violation) Error() string {
	if v.Kind == PolicyError {
		return "cannot check " + v.Rule.where(v.Index) + ": " + v.Reason
	}
	var b strings.Builder
	b.WriteString(v.Rule.where(v.Index))
	b.WriteString(": ")
	switch {
	case v.HasFlow:
		fmt.Fprintf(&b, "%s %s → %s %s ", v.Rule.From, v.FlowFrom, v.Rule.To, v.FlowTo)
	case v.Rule.From != "" || v.Rule.To != "":
		b.WriteString(v.Rule.String())
		b.WriteString(": ")
	}
	b.WriteString(v.Reason)
	return b.String()
}

// Is makes errors.Is(v, ErrNotCompliant) true.
func (v Violation) Is(target error) bool { return target == ErrNotCompliant }

// join turns violations into one error, nil when there are none.
func join(vs []Violation) error {
	if len(vs) == 0 {
		return nil
	}
	errs := make([]error, len(vs))
	for i, v := range vs {
		errs[i] = v
	}
	return errors.Join(errs...)
}

// within reports inner ⊆ outer for a non-empty interval inner: an interval
// of a lattice lies within another exactly when both of its ends do. When it
// does not, it also returns a label of inner outside outer.
func within(inner, outer label.Bounds) (label.Label, bool) {
	if !outer.Contains(inner.High) {
		return inner.High, false
	}
	if !outer.Contains(inner.Low) {
		return inner.Low, false
	}
	return label.Label{}, true
}

// validBounds is label.Bounds.Validate as a bool.
func validBounds(b label.Bounds) bool { return b.Validate() == nil }

// sameLabels returns the labels at which a valid SameLabel rule moves data: the
// labels in both bounds. ok is false when there are none.
func sameLabels(r Rule) (label.Bounds, bool) {
	return r.FromLabels.Intersect(r.ToLabels)
}
