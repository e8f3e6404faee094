package label

import (
	"math/bits"
	"strconv"
	"strings"
)

// Bounds of the MLS model. They match the kernel map value, which has room
// for exactly these; changing them changes the C ABI.
const (
	MaxSensitivity = 15
	MaxCategory    = 1023
	MaxIntegrity   = 15
)

// CategorySet is a set of categories c0..c1023.
//
// Category c is bit c%64 of word c/64. This is exactly the kernel encoding
// (C: __u64 cats[16]) used by the BPF fast path, so a CategorySet is copied
// into a map value as-is and the C subset test (cats[i] & ~other[i]) agrees
// with SubsetOf word for word. Do not change the layout without the C side.
type CategorySet [16]uint64

// Has reports whether c is in the set. Out-of-range c is never a member.
func (s CategorySet) Has(c int) bool {
	if c < 0 || c > MaxCategory {
		return false
	}
	return s[c/64]&(1<<(c%64)) != 0
}

// Add puts c in the set. It panics if c is outside 0..MaxCategory: user
// text goes through ParseCategories, so a bad c here is a programming error.
func (s *CategorySet) Add(c int) {
	if c < 0 || c > MaxCategory {
		panic("label: CategorySet.Add: category " + strconv.Itoa(c) + " out of range 0..1023")
	}
	s[c/64] |= 1 << (c % 64)
}

// Union returns s ∪ o.
func (s CategorySet) Union(o CategorySet) CategorySet {
	for i := range s {
		s[i] |= o[i]
	}
	return s
}

// Intersect returns s ∩ o.
func (s CategorySet) Intersect(o CategorySet) CategorySet {
	for i := range s {
		s[i] &= o[i]
	}
	return s
}

// SubsetOf reports whether s ⊆ o. It is on the hot path: it does not
// allocate, and it ORs all sixteen words instead of returning early, which
// avoids a branch per word (measured faster) and mirrors the bounded,
// branch-light loop the BPF verifier wants on the C side.
func (s CategorySet) SubsetOf(o CategorySet) bool {
	var extra uint64
	for i := range s {
		extra |= s[i] &^ o[i]
	}
	return extra == 0
}

// IsEmpty reports whether the set has no categories.
func (s CategorySet) IsEmpty() bool {
	return s == CategorySet{}
}

// Count returns the number of categories in the set.
func (s CategorySet) Count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// String prints the set the way the SELinux kernel does, so our logs match
// what `ls -Z` and audit records show: runs of three or more consecutive
// categories as c1.c5, shorter runs one by one (c1,c2), comma separated,
// ascending. The empty set prints as "".
func (s CategorySet) String() string {
	return string(s.appendText(nil))
}

func (s CategorySet) appendText(b []byte) []byte {
	first := true
	for c := 0; c <= MaxCategory; c++ {
		if !s.Has(c) {
			continue
		}
		start := c
		for c < MaxCategory && s.Has(c+1) {
			c++
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendCat(b, start)
		switch {
		case c-start >= 2:
			b = append(b, '.')
			b = appendCat(b, c)
		case c-start == 1:
			b = append(b, ',')
			b = appendCat(b, c)
		}
	}
	return b
}

func appendCat(b []byte, c int) []byte {
	return strconv.AppendInt(append(b, 'c'), int64(c), 10)
}

// ParseCategories parses a category list such as "c1.c5,c9": items are
// separated by commas, each a category cN or an inclusive range cN.cM with
// N <= M. Duplicates and overlaps are allowed, as in SELinux. The empty
// string is the empty set, so that String and ParseCategories round-trip.
func ParseCategories(s string) (CategorySet, error) {
	return parseCategories(s, s)
}

// parseCategories parses s, reporting errors against the whole input in.
func parseCategories(in, s string) (CategorySet, error) {
	var set CategorySet
	if s == "" {
		return set, nil
	}
	for item := range strings.SplitSeq(s, ",") {
		if item == "" {
			return set, syntaxErr(in, s, "empty item in category list %q: want cN or cN.cM, comma separated", s)
		}
		lo, hi, isRange := strings.Cut(item, ".")
		a, err := parseCat(in, lo)
		if err != nil {
			return set, err
		}
		b := a
		if isRange {
			if strings.Contains(hi, ".") {
				return set, syntaxErr(in, item, "bad category range %q: want cN.cM", item)
			}
			if b, err = parseCat(in, hi); err != nil {
				return set, err
			}
			if b < a {
				return set, syntaxErr(in, item, "reversed category range %q: want low first, c%d.c%d", item, b, a)
			}
		}
		for c := a; c <= b; c++ {
			set.Add(c)
		}
	}
	return set, nil
}

func parseCat(in, tok string) (int, error) {
	n, st := parseNum(tok, 'c', MaxCategory)
	switch st {
	case numBad:
		return 0, syntaxErr(in, tok, "bad category %q: want c0..c1023", tok)
	case numBig:
		return 0, syntaxErr(in, tok, "category %q out of range: want c0..c1023", tok)
	}
	return n, nil
}

type numStatus int

const (
	numOK numStatus = iota
	numBad
	numBig
)

// parseNum parses prefix followed by a decimal number no greater than max.
// Unlike strconv it rejects signs, spaces and leading zeros: SELinux names
// like "c01" or "s+1" do not exist, and accepting them would let two
// spellings mean one level.
func parseNum(tok string, prefix byte, max int) (int, numStatus) {
	if len(tok) < 2 || tok[0] != prefix {
		return 0, numBad
	}
	digits := tok[1:]
	if len(digits) > 1 && digits[0] == '0' {
		return 0, numBad
	}
	n, big := 0, false
	for i := 0; i < len(digits); i++ {
		d := digits[i]
		if d < '0' || d > '9' {
			return 0, numBad
		}
		if !big {
			n = n*10 + int(d-'0')
			big = n > max
		}
	}
	if big {
		return 0, numBig
	}
	return n, numOK
}
