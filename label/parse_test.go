package label

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// cats builds a CategorySet from a list, for expectations.
func cats(cs ...int) CategorySet {
	var s CategorySet
	for _, c := range cs {
		s.Add(c)
	}
	return s
}

func catRange(lo, hi int) CategorySet {
	var s CategorySet
	for c := lo; c <= hi; c++ {
		s.Add(c)
	}
	return s
}

// wantErr checks that err is a parse error of the expected kind whose
// message names the input and the bad token, so users can find the fix.
func wantErr(t *testing.T, in string, err error, kind error, token string) {
	t.Helper()
	if err == nil {
		t.Fatalf("parse %q: no error, want one mentioning %q", in, token)
	}
	if !errors.Is(err, kind) {
		t.Errorf("parse %q: error %q is not %v", in, err, kind)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "label: ") {
		t.Errorf("parse %q: error %q lacks the \"label: \" prefix", in, msg)
	}
	if !strings.Contains(msg, token) {
		t.Errorf("parse %q: error %q does not name token %q", in, msg, token)
	}
	if !strings.Contains(msg, "want") && !strings.Contains(msg, "write") {
		t.Errorf("parse %q: error %q does not say what is expected", in, msg)
	}
	var se *SyntaxError
	if errors.As(err, &se) {
		if se.Input != in {
			t.Errorf("parse %q: SyntaxError.Input = %q", in, se.Input)
		}
		if !strings.Contains(in, se.Token) {
			t.Errorf("parse %q: SyntaxError.Token %q is not part of the input", in, se.Token)
		}
	}
}

func TestCategorySetEncoding(t *testing.T) {
	// The layout is the kernel ABI: bit c%64 of word c/64.
	var s CategorySet
	s.Add(0)
	s.Add(65)
	s.Add(1023)
	want := CategorySet{0: 1, 1: 1 << 1, 15: 1 << 63}
	if s != want {
		t.Fatalf("encoding = %#x, want %#x", s, want)
	}
	for _, c := range []int{0, 65, 1023} {
		if !s.Has(c) {
			t.Errorf("Has(%d) = false", c)
		}
	}
	for _, c := range []int{-1, 1, 64, 1022, 1024, 1 << 20} {
		if s.Has(c) {
			t.Errorf("Has(%d) = true", c)
		}
	}
	if s.Count() != 3 {
		t.Errorf("Count = %d, want 3", s.Count())
	}
}

func TestCategorySetAddPanics(t *testing.T) {
	for _, c := range []int{-1, 1024} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Add(%d) did not panic", c)
				}
			}()
			var s CategorySet
			s.Add(c)
		}()
	}
}

func TestCategorySetOps(t *testing.T) {
	a, b := cats(1, 2, 64, 1023), cats(2, 3, 64)
	if got, want := a.Union(b), cats(1, 2, 3, 64, 1023); got != want {
		t.Errorf("Union = %v, want %v", got, want)
	}
	if got, want := a.Intersect(b), cats(2, 64); got != want {
		t.Errorf("Intersect = %v, want %v", got, want)
	}
	if a.SubsetOf(b) || b.SubsetOf(a) || !cats(2, 64).SubsetOf(a) || !(CategorySet{}).SubsetOf(a) {
		t.Error("SubsetOf wrong")
	}
	if a.IsEmpty() || !(CategorySet{}).IsEmpty() {
		t.Error("IsEmpty wrong")
	}
	// Union and Intersect take values: the receiver must not change.
	if a != cats(1, 2, 64, 1023) {
		t.Errorf("receiver modified: %v", a)
	}
}

func TestCategories(t *testing.T) {
	tests := []struct {
		in, out string
		want    CategorySet
	}{
		{"", "", CategorySet{}},
		{"c0", "c0", cats(0)},
		{"c1023", "c1023", cats(1023)},
		{"c1,c2", "c1,c2", cats(1, 2)},
		{"c1.c2", "c1,c2", cats(1, 2)},
		{"c1.c3", "c1.c3", cats(1, 2, 3)},
		{"c1,c2,c3", "c1.c3", cats(1, 2, 3)},
		{"c1.c5,c9", "c1.c5,c9", cats(1, 2, 3, 4, 5, 9)},
		{"c9,c1.c5", "c1.c5,c9", cats(1, 2, 3, 4, 5, 9)},
		{"c3.c3", "c3", cats(3)},
		{"c1,c1,c1.c2", "c1,c2", cats(1, 2)},
		{"c1.c4,c3.c6", "c1.c6", catRange(1, 6)},
		{"c62.c66", "c62.c66", catRange(62, 66)},
		{"c63,c64", "c63,c64", cats(63, 64)},
		{"c0.c1023", "c0.c1023", catRange(0, 1023)},
		{"c0,c2,c4", "c0,c2,c4", cats(0, 2, 4)},
		{"c1022,c1023", "c1022,c1023", cats(1022, 1023)},
	}
	for _, tt := range tests {
		got, err := ParseCategories(tt.in)
		if err != nil {
			t.Errorf("ParseCategories(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseCategories(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseCategories(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
	}
}

func TestCategoriesErrors(t *testing.T) {
	tests := []struct{ in, token string }{
		{"cx", `"cx"`},
		{"c1.cx", `"cx"`},
		{"c1024", `"c1024"`},
		{"c99999999999999999999", `"c99999999999999999999"`},
		{"c5.c1", `"c5.c1"`},
		{"c1.c2.c3", `"c1.c2.c3"`},
		{"c1,,c2", `"c1,,c2"`},
		{"c1,", `"c1,"`},
		{",c1", `",c1"`},
		{"c01", `"c01"`},
		{"c+1", `"c+1"`},
		{"c-1", `"c-1"`},
		{"c", `"c"`},
		{"1", `"1"`},
		{"C1", `"C1"`},
		{" c1", `" c1"`},
		{"c1 ", `"c1 "`},
		{"c1:c2", `"c1:c2"`},
	}
	for _, tt := range tests {
		_, err := ParseCategories(tt.in)
		wantErr(t, tt.in, err, ErrSyntax, tt.token)
	}
}

func TestLevel(t *testing.T) {
	tests := []struct {
		in, out string
		want    Level
	}{
		{"s0", "s0", Level{}},
		{"s3", "s3", Level{Sens: 3}},
		{"s15", "s15", Level{Sens: 15}},
		{"s3:c1.c5,c9", "s3:c1.c5,c9", Level{3, cats(1, 2, 3, 4, 5, 9)}},
		{"s3:c1,c2", "s3:c1,c2", Level{3, cats(1, 2)}},
		{"s0:c0.c1023", "s0:c0.c1023", Level{0, catRange(0, 1023)}},
		{"s1:c2,c1", "s1:c1,c2", Level{1, cats(1, 2)}},
	}
	for _, tt := range tests {
		got, err := ParseLevel(tt.in)
		if err != nil {
			t.Errorf("ParseLevel(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseLevel(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseLevel(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
	}
}

func TestLevelErrors(t *testing.T) {
	tests := []struct{ in, token string }{
		{"", `""`},
		{"s16", `sensitivity "s16" out of range`},
		{"s255", `"s255"`},
		{"s256", `"s256"`},
		{"sx", `bad sensitivity "sx"`},
		{"s03", `"s03"`},
		{"S3", `"S3"`},
		{"3", `"3"`},
		{"s", `"s"`},
		{"s3:", `"s3:"`},
		{"s3:c1.cx", `bad category "cx": want c0..c1023`},
		{"s3:c1024", `"c1024"`},
		{"s3:c5.c1", `"c5.c1"`},
		{"s3:c1:c2", `"c1:c2"`},
		{"s0-s3", `"s0-s3"`},
		{":c1", `""`},
	}
	for _, tt := range tests {
		_, err := ParseLevel(tt.in)
		wantErr(t, tt.in, err, ErrSyntax, tt.token)
	}
	// The exact wording in the design brief.
	_, err := ParseLevel("s3:c1.cx")
	if got, want := err.Error(), `label: "s3:c1.cx": bad category "cx": want c0..c1023`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	_, err = ParseLevel("s16")
	if got, want := err.Error(), `label: "s16": sensitivity "s16" out of range: want s0..s15`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}

func TestRange(t *testing.T) {
	s0, s15all := Level{}, Level{15, catRange(0, 1023)}
	tests := []struct {
		in, out string
		want    Range
	}{
		{"s3", "s3", Range{Level{Sens: 3}, Level{Sens: 3}}},
		{"s3-s3", "s3", Range{Level{Sens: 3}, Level{Sens: 3}}},
		{"s0-s15:c0.c1023", "s0-s15:c0.c1023", Range{s0, s15all}},
		{"s2:c1-s9:c1.c4", "s2:c1-s9:c1.c4", Range{Level{2, cats(1)}, Level{9, catRange(1, 4)}}},
		{"s2:c1-s2:c1,c2", "s2:c1-s2:c1,c2", Range{Level{2, cats(1)}, Level{2, cats(1, 2)}}},
		{"s0:c1-s0:c1", "s0:c1", Range{Level{0, cats(1)}, Level{0, cats(1)}}},
	}
	for _, tt := range tests {
		got, err := ParseRange(tt.in)
		if err != nil {
			t.Errorf("ParseRange(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseRange(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseRange(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("ParseRange(%q).Validate(): %v", tt.in, err)
		}
	}
}

func TestRangeErrors(t *testing.T) {
	tests := []struct{ in, token string }{
		{"", `""`},
		{"-", `range "-" lacks a level`},
		{"s0-", `"s0-"`},
		{"-s3", `"-s3"`},
		{"s0-s3-s5", `"s0-s3-s5"`},
		{"s0-s16", `"s16"`},
		{"s0-s3:cx", `"cx"`},
		{"s0:c1023-s3:c1024", `"c1024"`},
		{"s0--s3", `"s0--s3"`},
	}
	for _, tt := range tests {
		_, err := ParseRange(tt.in)
		wantErr(t, tt.in, err, ErrSyntax, tt.token)
	}
}

func TestRangeInverted(t *testing.T) {
	tests := []struct{ in, fix string }{
		{"s9-s2", "(s2-s9)"},
		{"s3:c1,c2-s3:c1", "(s3:c1-s3:c1,c2)"},
		{"s2:c1-s9:c2", "with high dominating low"}, // incomparable: no swap fixes it
		{"s5:c0.c1023-s0", "(s0-s5:c0.c1023)"},
	}
	for _, tt := range tests {
		_, err := ParseRange(tt.in)
		wantErr(t, tt.in, err, ErrInverted, tt.in)
		if err == nil {
			continue
		}
		if errors.Is(err, ErrSyntax) {
			t.Errorf("ParseRange(%q): inverted range also matches ErrSyntax", tt.in)
		}
		for _, w := range []string{"inverted", "write low-high", tt.fix} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseRange(%q): error %q lacks %q", tt.in, err, w)
			}
		}
		var ie *InvertedError
		if !errors.As(err, &ie) {
			t.Errorf("ParseRange(%q): error %T is not *InvertedError", tt.in, err)
		}
	}
	got := (&InvertedError{Input: "s9-s2", Low: "s9", High: "s2", Fix: "s2-s9"}).Error()
	if want := `label: "s9-s2": inverted range: high s2 does not dominate low s9; write low-high (s2-s9)`; got != want {
		t.Errorf("InvertedError = %q, want %q", got, want)
	}
}

func TestValidateHandBuilt(t *testing.T) {
	if err := (Range{Low: Level{Sens: 9}, High: Level{Sens: 2}}).Validate(); !errors.Is(err, ErrInverted) || !strings.Contains(err.Error(), "s9-s2") {
		t.Errorf("inverted Range.Validate = %v", err)
	}
	if err := (Range{Low: Level{Sens: 2}, High: Level{Sens: 16}}).Validate(); !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), "s16") {
		t.Errorf("s16 Range.Validate = %v", err)
	}
	if err := (Label{Integrity: 16}).Validate(); !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), "i16") {
		t.Errorf("i16 Label.Validate = %v", err)
	}
	b := Bounds{Low: Label{Integrity: 5}, High: Label{Integrity: 2}}
	if err := b.Validate(); !errors.Is(err, ErrInverted) || !strings.Contains(err.Error(), "s0/i2-i5") {
		t.Errorf("inverted Bounds.Validate = %v", err)
	}
	if err := (Bounds{High: Label{Secrecy: Level{Sens: 3}, Integrity: 4}}).Validate(); err != nil {
		t.Errorf("valid Bounds.Validate = %v", err)
	}
	if _, err := json.Marshal(Label{Secrecy: Level{Sens: 200}}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("marshal s200: err = %v, want ErrOutOfRange", err)
	}
}

func TestIntegrity(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Integrity
	}{{"i0", 0}, {"i5", 5}, {"i15", 15}} {
		got, err := ParseIntegrity(tt.in)
		if err != nil || got != tt.want || got.String() != tt.in {
			t.Errorf("ParseIntegrity(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, tt := range []struct{ in, token string }{
		{"", `""`}, {"i16", `integrity "i16" out of range`}, {"ix", `bad integrity "ix"`},
		{"i05", `"i05"`}, {"5", `"5"`}, {"I5", `"I5"`}, {"i-1", `"i-1"`},
	} {
		_, err := ParseIntegrity(tt.in)
		wantErr(t, tt.in, err, ErrSyntax, tt.token)
	}
}

func TestIntegrityPolicy(t *testing.T) {
	var zero IntegrityPolicy
	if got := zero.Of("anything_t"); got != 0 {
		t.Errorf("zero policy Of = %v, want i0", got)
	}
	p := IntegrityPolicy{Default: 2, ByType: map[string]Integrity{"httpd_t": 9, "data_t": 0}}
	for typ, want := range map[string]Integrity{"httpd_t": 9, "data_t": 0, "other_t": 2, "": 2} {
		if got := p.Of(typ); got != want {
			t.Errorf("Of(%q) = %v, want %v", typ, got, want)
		}
	}
}

func TestContext(t *testing.T) {
	tests := []struct {
		in, out string
		want    Context
	}{
		{"user_u:role_r:type_t", "user_u:role_r:type_t", Context{User: "user_u", Role: "role_r", Type: "type_t"}},
		{"system_u:object_r:analyst_t:s0-s3:c1", "system_u:object_r:analyst_t:s0-s3:c1",
			Context{"system_u", "object_r", "analyst_t", Range{Level{}, Level{3, cats(1)}}, true}},
		{"u:r:t:s0", "u:r:t:s0", Context{"u", "r", "t", Range{}, true}},
		{"u:r:t:s2:c1-s9:c1.c4", "u:r:t:s2:c1-s9:c1.c4", Context{"u", "r", "t", Range{Level{2, cats(1)}, Level{9, catRange(1, 4)}}, true}},
		{"u:r:t:s3-s3", "u:r:t:s3", Context{"u", "r", "t", Range{Level{Sens: 3}, Level{Sens: 3}}, true}},
		{"unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023", "unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023",
			Context{"unconfined_u", "unconfined_r", "unconfined_t", Range{Level{}, Level{0, catRange(0, 1023)}}, true}},
		{"a.b:r-1:T_9", "a.b:r-1:T_9", Context{User: "a.b", Role: "r-1", Type: "T_9"}},
	}
	for _, tt := range tests {
		got, err := ParseContext(tt.in)
		if err != nil {
			t.Errorf("ParseContext(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseContext(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseContext(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
	}
}

func TestContextErrors(t *testing.T) {
	tests := []struct {
		in, token string
		kind      error
	}{
		{"", `""`, ErrSyntax},
		{"u:r", `"u:r"`, ErrSyntax},
		{"u", `"u"`, ErrSyntax},
		{":r:t", "empty user", ErrSyntax},
		{"u::t", "empty role", ErrSyntax},
		{"u:r:", "empty type", ErrSyntax},
		{"u:r:t:", `"t"`, ErrSyntax},
		{"u u:r:t", `"u u"`, ErrSyntax},
		{"u:r$:t", `"r$"`, ErrSyntax},
		{"u:r:-t", `"-t"`, ErrSyntax},
		{"u:r:t:s16", `"s16"`, ErrSyntax},
		{"u:r:t:s0-s3:cx", `"cx"`, ErrSyntax},
		{"u:r:t:s9-s2", "s9-s2", ErrInverted},
		{"u:r:t:s0:c1:c2", `"c1:c2"`, ErrSyntax},
	}
	for _, tt := range tests {
		_, err := ParseContext(tt.in)
		wantErr(t, tt.in, err, tt.kind, tt.token)
	}
}

func TestLabel(t *testing.T) {
	tests := []struct {
		in, out string
		want    Label
	}{
		{"s3:c1,c2/i5", "s3:c1,c2/i5", Label{Level{3, cats(1, 2)}, 5}},
		{"s3:c1,c2", "s3:c1,c2/i0", Label{Level{3, cats(1, 2)}, 0}},
		{"s0", "s0/i0", Default},
		{"s0/i0", "s0/i0", Default},
		{"s15:c0.c1023/i15", "s15:c0.c1023/i15", Label{Level{15, catRange(0, 1023)}, 15}},
	}
	for _, tt := range tests {
		got, err := ParseLabel(tt.in)
		if err != nil {
			t.Errorf("ParseLabel(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseLabel(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseLabel(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
	}
	if Default.String() != "s0/i0" {
		t.Errorf("Default = %v, want s0/i0", Default)
	}
}

func TestLabelErrors(t *testing.T) {
	for _, tt := range []struct{ in, token string }{
		{"", `""`},
		{"/i5", `empty level`},
		{"s3/", `""`},
		{"s3/i16", `"i16"`},
		{"s3/5", `"5"`},
		{"s3/i1/i2", `"s3/i1/i2"`},
		{"s3-s5/i2", `"s3-s5"`},
		{"s3:cx/i2", `"cx"`},
		{"s16/i2", `"s16"`},
	} {
		_, err := ParseLabel(tt.in)
		wantErr(t, tt.in, err, ErrSyntax, tt.token)
	}
}

func TestFromContext(t *testing.T) {
	p := IntegrityPolicy{Default: 1, ByType: map[string]Integrity{"httpd_t": 8}}
	c, err := ParseContext("system_u:system_r:httpd_t:s2:c1-s9:c1.c4")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := FromContext(c, p), (Label{Level{2, cats(1)}, 8}); got != want {
		t.Errorf("FromContext = %v, want %v", got, want)
	}
	c, _ = ParseContext("u:r:data_t")
	if got, want := FromContext(c, p), (Label{Integrity: 1}); got != want {
		t.Errorf("FromContext without range = %v, want %v", got, want)
	}
}

func TestBounds(t *testing.T) {
	lab := func(sens uint8, c CategorySet, i Integrity) Label { return Label{Level{sens, c}, i} }
	tests := []struct {
		in, out string
		want    Bounds
	}{
		{"s6-s15/i5-i15", "s6-s15/i5-i15", Bounds{lab(6, CategorySet{}, 5), lab(15, CategorySet{}, 15)}},
		{"s0-s5:c0.c3/i0-i3", "s0-s5:c0.c3/i0-i3", Bounds{lab(0, CategorySet{}, 0), lab(5, catRange(0, 3), 3)}},
		{"s3/i2", "s3/i2", Bounds{lab(3, CategorySet{}, 2), lab(3, CategorySet{}, 2)}},
		{"s3", "s3/i0", Bounds{lab(3, CategorySet{}, 0), lab(3, CategorySet{}, 0)}},
		{"s0-s3", "s0-s3/i0", Bounds{lab(0, CategorySet{}, 0), lab(3, CategorySet{}, 0)}},
		{"s3/i2-i2", "s3/i2", Bounds{lab(3, CategorySet{}, 2), lab(3, CategorySet{}, 2)}},
		{"s3-s3/i0-i15", "s3/i0-i15", Bounds{lab(3, CategorySet{}, 0), lab(3, CategorySet{}, 15)}},
	}
	for _, tt := range tests {
		got, err := ParseBounds(tt.in)
		if err != nil {
			t.Errorf("ParseBounds(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseBounds(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.out {
			t.Errorf("ParseBounds(%q).String() = %q, want %q", tt.in, s, tt.out)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("ParseBounds(%q).Validate(): %v", tt.in, err)
		}
	}
}

func TestBoundsErrors(t *testing.T) {
	for _, tt := range []struct {
		in, token string
		kind      error
	}{
		{"", `""`, ErrSyntax},
		{"s3/", `""`, ErrSyntax},
		{"s3/i2-", `""`, ErrSyntax},
		{"s3/-i2", `""`, ErrSyntax},
		{"s3/i1-i2-i3", `"i1-i2-i3"`, ErrSyntax},
		{"s3/i2/i3", `"s3/i2/i3"`, ErrSyntax},
		{"s3/i16", `"i16"`, ErrSyntax},
		{"s3/ix-i2", `"ix"`, ErrSyntax},
		{"s3-s16/i2", `"s16"`, ErrSyntax},
		{"s9-s2/i0-i3", "s9-s2", ErrInverted},
		{"s2-s9/i9-i2", "(i2-i9)", ErrInverted},
	} {
		_, err := ParseBounds(tt.in)
		wantErr(t, tt.in, err, tt.kind, tt.token)
	}
}

func TestDominatesExamples(t *testing.T) {
	mustLevel := func(s string) Level {
		l, err := ParseLevel(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"s3", "s3", true},
		{"s3", "s2", true},
		{"s2", "s3", false},
		{"s3:c1,c2", "s2:c1", true},
		{"s3:c1", "s2:c1,c2", false},
		{"s3:c1", "s3:c2", false},
		{"s0:c0.c1023", "s0:c1023", true},
		{"s15", "s0:c5", false},
	} {
		if got := mustLevel(tt.a).Dominates(mustLevel(tt.b)); got != tt.want {
			t.Errorf("%s ⊵ %s = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	web, _ := ParseBounds("s6-s15/i5-i15")
	for _, tt := range []struct {
		l    string
		want bool
	}{{"s6/i5", true}, {"s15/i15", true}, {"s9:c3/i7", false}, {"s5/i9", false}, {"s9/i4", false}} {
		l, err := ParseLabel(tt.l)
		if err != nil {
			t.Fatal(err)
		}
		if got := web.Contains(l); got != tt.want {
			t.Errorf("%v.Contains(%v) = %v, want %v", web, l, got, tt.want)
		}
	}
}

func TestTextMarshal(t *testing.T) {
	type policy struct {
		Level     Level
		Range     Range
		Integrity Integrity
		Context   Context
		Label     Label
		Bounds    Bounds
	}
	in := `{"Level":"s3:c1.c5","Range":"s0-s3:c1","Integrity":"i4","Context":"u:r:t:s1","Label":"s2:c1,c2/i3","Bounds":"s0-s5/i1-i4"}`
	var p policy
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Errorf("round trip:\n got %s\nwant %s", out, in)
	}
	// A bad value keeps its message and leaves the target unchanged.
	l := Label{Integrity: 7}
	err = json.Unmarshal([]byte(`"s3:cx"`), &l)
	if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), `"cx"`) {
		t.Errorf("unmarshal bad label: %v", err)
	}
	if l != (Label{Integrity: 7}) {
		t.Errorf("failed unmarshal changed target to %v", l)
	}
}
