package label

import (
	"errors"
	"testing"
)

// The fuzz targets hold one property for every parser: when text parses,
// its printed form parses back to the same value and prints identically
// (print(parse(print(x))) == print(x)); when it does not, the error is one
// of ours. Run one with e.g.
//
//	go test -run=NONE -fuzz=FuzzParseLevel -fuzztime=20s ./label/

var seedLevels = []string{
	"s0", "s3", "s15", "s16", "s3:c1.c5,c9", "s3:c1,c2", "s0:c0.c1023", "s1:c63,c64",
	"s2:c5.c1", "s3:", "s03", "s3:c1..c2", "s3:c1,,c2", "s0:c1023,c1022,c1021", "",
}

var seedRanges = []string{
	"s0-s15:c0.c1023", "s2:c1-s9:c1.c4", "s3", "s3-s3", "s9-s2", "s0-s3-s5", "-", "s2:c1-s9:c2",
}

func checkParseErr(t *testing.T, in string, err error) {
	t.Helper()
	if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrInverted) {
		t.Fatalf("parse %q: error %v is neither ErrSyntax nor ErrInverted", in, err)
	}
}

func fuzzRoundTrip[T comparable](t *testing.T, in string, parse func(string) (T, error), str func(T) string) (T, bool) {
	t.Helper()
	v, err := parse(in)
	if err != nil {
		checkParseErr(t, in, err)
		return v, false
	}
	p1 := str(v)
	v2, err := parse(p1)
	if err != nil {
		t.Fatalf("parse %q ok, but its printed form %q fails: %v", in, p1, err)
	}
	if v2 != v {
		t.Fatalf("parse %q = %v; reparse of %q differs: %v", in, v, p1, v2)
	}
	if p2 := str(v2); p2 != p1 {
		t.Fatalf("printing unstable for %q: %q then %q", in, p1, p2)
	}
	return v, true
}

func FuzzParseLevel(f *testing.F) {
	for _, s := range seedLevels {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		l, ok := fuzzRoundTrip(t, in, ParseLevel, Level.String)
		if ok {
			if err := l.Validate(); err != nil {
				t.Fatalf("parsed %q but Validate: %v", in, err)
			}
			cs, err := ParseCategories(l.Cats.String())
			if err != nil || cs != l.Cats {
				t.Fatalf("categories of %q do not round-trip: %v %v", in, cs, err)
			}
		}
	})
}

func FuzzParseCategories(f *testing.F) {
	for _, s := range []string{"", "c1.c5,c9", "c1,c2", "c0.c1023", "c5.c1", "c1,,c2", "c1024", "c63.c65,c1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fuzzRoundTrip(t, in, ParseCategories, CategorySet.String)
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range append(seedRanges, seedLevels...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, ok := fuzzRoundTrip(t, in, ParseRange, Range.String)
		if ok {
			if err := r.Validate(); err != nil {
				t.Fatalf("parsed %q but Validate: %v", in, err)
			}
			if !r.Contains(r.Low) || !r.Contains(r.High) {
				t.Fatalf("range %v does not contain its ends", r)
			}
		}
	})
}

func FuzzParseContext(f *testing.F) {
	for _, s := range []string{
		"user_u:role_r:type_t", "system_u:object_r:analyst_t:s0-s3:c1", "u:r:t:s9-s2",
		"unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023", "u:r", "u:r:t:", "u:r:t:s0:c1:c2", "a.b:r-1:T_9:s3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		fuzzRoundTrip(t, in, ParseContext, Context.String)
	})
}

func FuzzParseLabel(f *testing.F) {
	for _, s := range append([]string{"s3:c1,c2/i5", "s0/i0", "s3/i16", "s3/i1/i2", "s15:c0.c1023/i15", "/i5", "s3/"}, seedLevels...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		l, ok := fuzzRoundTrip(t, in, ParseLabel, Label.String)
		if ok {
			if err := l.Validate(); err != nil {
				t.Fatalf("parsed %q but Validate: %v", in, err)
			}
		}
	})
}

func FuzzParseBounds(f *testing.F) {
	for _, s := range append([]string{"s6-s15/i5-i15", "s0-s5:c0.c3/i0-i3", "s3/i2", "s3", "s2-s9/i9-i2", "s3/i1-i2-i3"}, seedRanges...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		b, ok := fuzzRoundTrip(t, in, ParseBounds, Bounds.String)
		if ok {
			if err := b.Validate(); err != nil {
				t.Fatalf("parsed %q but Validate: %v", in, err)
			}
			if !b.Contains(b.Low) || !b.Contains(b.High) {
				t.Fatalf("bounds %v do not contain their ends", b)
			}
		}
	})
}
