package label

import (
	"fmt"
	"strconv"
)

// Integrity is an integrity level i0..i15; higher is more trusted. It is
// not part of SELinux MLS: the policy gives each SELinux type one (see
// IntegrityPolicy), ranking program and trusted-server types above data as
// in the paper's PIDSI scheme.
type Integrity uint8

// ParseIntegrity parses "iN", N in 0..15.
func ParseIntegrity(s string) (Integrity, error) {
	return parseIntegrity(s, s)
}

func parseIntegrity(in, s string) (Integrity, error) {
	n, st := parseNum(s, 'i', MaxIntegrity)
	switch st {
	case numBad:
		return 0, syntaxErr(in, s, "bad integrity %q: want i0..i15", s)
	case numBig:
		return 0, syntaxErr(in, s, "integrity %q out of range: want i0..i15", s)
	}
	return Integrity(n), nil
}

// String prints "iN".
func (i Integrity) String() string {
	return string(i.appendText(nil))
}

func (i Integrity) appendText(b []byte) []byte {
	return strconv.AppendUint(append(b, 'i'), uint64(i), 10)
}

// Validate reports a hand-built integrity above i15.
func (i Integrity) Validate() error {
	if i > MaxIntegrity {
		return fmt.Errorf("label: %q: integrity %w: want i0..i15", i.String(), ErrOutOfRange)
	}
	return nil
}

// IntegrityPolicy assigns an integrity level per SELinux type; types not
// listed get Default. The zero value gives every type i0, the conservative
// choice: an unknown type is never trusted by accident.
type IntegrityPolicy struct {
	Default Integrity
	ByType  map[string]Integrity
}

// Of returns the integrity level of typ.
func (p IntegrityPolicy) Of(typ string) Integrity {
	if i, ok := p.ByType[typ]; ok {
		return i
	}
	return p.Default
}
