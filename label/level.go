package label

import (
	"fmt"
	"strconv"
	"strings"
)

// Level is one MLS security level: a sensitivity s0..s15 and a category
// set. It is comparable with ==, and two levels are equal exactly when
// they print the same.
type Level struct {
	Sens uint8
	Cats CategorySet
}

// ParseLevel parses "sN" or "sN:cats", e.g. "s3" or "s3:c1.c5,c9".
func ParseLevel(s string) (Level, error) {
	return parseLevel(s, s)
}

func parseLevel(in, s string) (Level, error) {
	if s == "" {
		return Level{}, syntaxErr(in, s, "empty level: want sN or sN:cats, e.g. s3:c1.c5")
	}
	if strings.Contains(s, "-") {
		// The common slip is giving a range where a single level belongs.
		return Level{}, syntaxErr(in, s, "level %q is a range: want a single level sN or sN:cats", s)
	}
	sens, cats, hasCats := strings.Cut(s, ":")
	n, st := parseNum(sens, 's', MaxSensitivity)
	switch st {
	case numBad:
		return Level{}, syntaxErr(in, sens, "bad sensitivity %q: want s0..s15", sens)
	case numBig:
		return Level{}, syntaxErr(in, sens, "sensitivity %q out of range: want s0..s15", sens)
	}
	l := Level{Sens: uint8(n)}
	if hasCats {
		if cats == "" {
			return Level{}, syntaxErr(in, s, "empty category list in %q: want sN or sN:cats, e.g. s3:c1.c5", s)
		}
		var err error
		if l.Cats, err = parseCategories(in, cats); err != nil {
			return Level{}, err
		}
	}
	return l, nil
}

// String prints the canonical form: "s3", or "s3:c1.c5,c9".
func (l Level) String() string {
	return string(l.appendText(nil))
}

func (l Level) appendText(b []byte) []byte {
	b = strconv.AppendUint(append(b, 's'), uint64(l.Sens), 10)
	if !l.Cats.IsEmpty() {
		b = l.Cats.appendText(append(b, ':'))
	}
	return b
}

// Validate reports a hand-built level whose sensitivity exceeds s15.
// Parsed levels are always valid.
func (l Level) Validate() error {
	if l.Sens > MaxSensitivity {
		return fmt.Errorf("label: %q: sensitivity s%d %w: want s0..s15", l.String(), l.Sens, ErrOutOfRange)
	}
	return nil
}

// Dominates reports a ⊵ b: a's sensitivity is at least b's and a has all
// of b's categories. It is on the hot path and does not allocate.
func (a Level) Dominates(b Level) bool {
	return a.Sens >= b.Sens && b.Cats.SubsetOf(a.Cats)
}

// LevelLUB returns the least level dominating both a and b.
func LevelLUB(a, b Level) Level {
	return Level{Sens: max(a.Sens, b.Sens), Cats: a.Cats.Union(b.Cats)}
}

// LevelGLB returns the greatest level dominated by both a and b.
func LevelGLB(a, b Level) Level {
	return Level{Sens: min(a.Sens, b.Sens), Cats: a.Cats.Intersect(b.Cats)}
}

// Range is an MLS secrecy range low-high, valid when High ⊵ Low. In an
// SELinux context Low is the current level and High the clearance.
type Range struct {
	Low, High Level
}

// ParseRange parses "low-high" (e.g. "s0-s15:c0.c1023", "s2:c1-s9:c1.c4")
// or a single level "s3", which gives Low == High. A range whose High does
// not dominate its Low is rejected with an error matching ErrInverted.
func ParseRange(s string) (Range, error) {
	return parseRange(s, s)
}

func parseRange(in, s string) (Range, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		l, err := parseLevel(in, s)
		return Range{Low: l, High: l}, err
	}
	if strings.Contains(hi, "-") {
		return Range{}, syntaxErr(in, s, "too many \"-\" in range %q: want low-high, e.g. s0-s3:c1", s)
	}
	if lo == "" || hi == "" {
		return Range{}, syntaxErr(in, s, "range %q lacks a level: want low-high, e.g. s0-s3:c1", s)
	}
	low, err := parseLevel(in, lo)
	if err != nil {
		return Range{}, err
	}
	high, err := parseLevel(in, hi)
	if err != nil {
		return Range{}, err
	}
	r := Range{Low: low, High: high}
	if !high.Dominates(low) {
		return Range{}, r.inverted(in)
	}
	return r, nil
}

func (r Range) inverted(in string) error {
	e := &InvertedError{Input: in, Low: r.Low.String(), High: r.High.String()}
	if r.Low.Dominates(r.High) {
		e.Fix = Range{Low: r.High, High: r.Low}.String()
	}
	return e
}

// String prints "low-high", or the level once when Low == High, as SELinux
// does.
func (r Range) String() string {
	return string(r.appendText(nil))
}

func (r Range) appendText(b []byte) []byte {
	b = r.Low.appendText(b)
	if r.High != r.Low {
		b = r.High.appendText(append(b, '-'))
	}
	return b
}

// Contains reports High ⊵ l ⊵ Low. It does not allocate.
func (r Range) Contains(l Level) bool {
	return r.High.Dominates(l) && l.Dominates(r.Low)
}

// Validate reports out-of-range sensitivities and an inverted range
// (ErrInverted). Parsed ranges are always valid.
func (r Range) Validate() error {
	if err := r.Low.Validate(); err != nil {
		return err
	}
	if err := r.High.Validate(); err != nil {
		return err
	}
	if !r.High.Dominates(r.Low) {
		return r.inverted(r.String())
	}
	return nil
}

// Intersect returns the levels in both r and o: low = LUB of the lows,
// high = GLB of the highs. It reports false when no level is in both
// (the result would be inverted); the Range returned then is meaningless.
func (r Range) Intersect(o Range) (Range, bool) {
	x := Range{Low: LevelLUB(r.Low, o.Low), High: LevelGLB(r.High, o.High)}
	return x, x.High.Dominates(x.Low)
}
