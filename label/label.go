package label

import "strings"

// Label is what the fast path compares: a secrecy level and an integrity
// level. It is comparable with ==.
type Label struct {
	Secrecy   Level
	Integrity Integrity
}

// Default is s0, no categories, i0: the paper's low-secrecy/low-integrity
// label for anything the policy does not name. Low secrecy means it may
// flow anywhere; low integrity means nothing trusts it.
var Default = Label{}

// ParseLabel parses "level/iN", e.g. "s3:c1,c2/i5". The "/iN" part is
// optional and defaults to i0, the lowest and so the conservative choice.
func ParseLabel(s string) (Label, error) {
	return parseLabel(s, s)
}

func parseLabel(in, s string) (Label, error) {
	sec, integ, hasInteg := strings.Cut(s, "/")
	if strings.Contains(integ, "/") {
		return Label{}, syntaxErr(in, s, "too many \"/\" in label %q: want level or level/iN, e.g. s3:c1/i5", s)
	}
	lv, err := parseLevel(in, sec)
	if err != nil {
		return Label{}, err
	}
	l := Label{Secrecy: lv}
	if hasInteg {
		if l.Integrity, err = parseIntegrity(in, integ); err != nil {
			return Label{}, err
		}
	}
	return l, nil
}

// String prints "level/iN", always with the integrity so that the printed
// form never hides a default.
func (l Label) String() string {
	return string(l.appendText(nil))
}

func (l Label) appendText(b []byte) []byte {
	return l.Integrity.appendText(append(l.Secrecy.appendText(b), '/'))
}

// Validate reports a hand-built label with an out-of-range part.
func (l Label) Validate() error {
	if err := l.Secrecy.Validate(); err != nil {
		return err
	}
	return l.Integrity.Validate()
}

// Dominates reports a ⊵ b: a.Secrecy ⊵ b.Secrecy and a.Integrity >=
// b.Integrity. This is the product order, so LabelLUB and LabelGLB take
// max and min integrity respectively. It does not allocate.
func (a Label) Dominates(b Label) bool {
	return a.Integrity >= b.Integrity && a.Secrecy.Dominates(b.Secrecy)
}

// LabelLUB returns the least label dominating a and b.
func LabelLUB(a, b Label) Label {
	return Label{Secrecy: LevelLUB(a.Secrecy, b.Secrecy), Integrity: max(a.Integrity, b.Integrity)}
}

// LabelGLB returns the greatest label dominated by a and b.
func LabelGLB(a, b Label) Label {
	return Label{Secrecy: LevelGLB(a.Secrecy, b.Secrecy), Integrity: min(a.Integrity, b.Integrity)}
}

// FromContext labels a subject or object: its secrecy is the context's
// current level (Range.Low; s0 when the context has no MLS part) and its
// integrity is what p assigns to the context's type.
func FromContext(c Context, p IntegrityPolicy) Label {
	return Label{Secrecy: c.Range.Low, Integrity: p.Of(c.Type)}
}

// Bounds is a secrecy range and an integrity range, e.g. the labels a guest
// or a web server may hold. It is valid when High ⊵ Low.
type Bounds struct {
	Low, High Label
}

// ParseBounds parses "secrecy-range/integrity-range", e.g.
// "s6-s15/i5-i15", "s0-s5:c0.c3/i0-i3", or single ends "s3/i2".
//
// The integrity part is optional and defaults to i0-i0: like ParseLabel's
// default it trusts nothing unless the policy says so. Bounds that should
// admit any integrity must say "/i0-i15".
func ParseBounds(s string) (Bounds, error) {
	sec, integ, hasInteg := strings.Cut(s, "/")
	if strings.Contains(integ, "/") {
		return Bounds{}, syntaxErr(s, s, "too many \"/\" in bounds %q: want range or range/iN-iM, e.g. s0-s3/i2-i5", s)
	}
	r, err := parseRange(s, sec)
	if err != nil {
		return Bounds{}, err
	}
	b := Bounds{Low: Label{Secrecy: r.Low}, High: Label{Secrecy: r.High}}
	if !hasInteg {
		return b, nil
	}
	lo, hi, isRange := strings.Cut(integ, "-")
	if strings.Contains(hi, "-") {
		return Bounds{}, syntaxErr(s, integ, "too many \"-\" in integrity range %q: want iN-iM or iN", integ)
	}
	if b.Low.Integrity, err = parseIntegrity(s, lo); err != nil {
		return Bounds{}, err
	}
	b.High.Integrity = b.Low.Integrity
	if isRange {
		if b.High.Integrity, err = parseIntegrity(s, hi); err != nil {
			return Bounds{}, err
		}
		if b.High.Integrity < b.Low.Integrity {
			return Bounds{}, &InvertedError{Input: s, Low: lo, High: hi, Fix: hi + "-" + lo}
		}
	}
	return b, nil
}

// String prints "secrecy-range/integrity-range", each end once when low
// and high are equal, and always with the integrity part.
func (b Bounds) String() string {
	out := Range{Low: b.Low.Secrecy, High: b.High.Secrecy}.appendText(nil)
	out = b.Low.Integrity.appendText(append(out, '/'))
	if b.High.Integrity != b.Low.Integrity {
		out = b.High.Integrity.appendText(append(out, '-'))
	}
	return string(out)
}

// Contains reports b.High ⊵ l ⊵ b.Low, for secrecy and integrity alike.
// It does not allocate.
func (b Bounds) Contains(l Label) bool {
	return b.High.Dominates(l) && l.Dominates(b.Low)
}

// Validate reports out-of-range parts and inverted bounds (ErrInverted).
// Parsed bounds are always valid.
func (b Bounds) Validate() error {
	if err := b.Low.Validate(); err != nil {
		return err
	}
	if err := b.High.Validate(); err != nil {
		return err
	}
	if !b.High.Dominates(b.Low) {
		e := &InvertedError{Input: b.String(), Low: b.Low.String(), High: b.High.String()}
		if b.Low.Dominates(b.High) {
			e.Fix = Bounds{Low: b.High, High: b.Low}.String()
		}
		return e
	}
	return nil
}

// Intersect returns the labels in both b and o: low = LUB of the lows,
// high = GLB of the highs. It reports false when no label is in both.
func (b Bounds) Intersect(o Bounds) (Bounds, bool) {
	x := Bounds{Low: LabelLUB(b.Low, o.Low), High: LabelGLB(b.High, o.High)}
	return x, x.High.Dominates(x.Low)
}
