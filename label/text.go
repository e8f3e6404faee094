package label

// Text marshaling lets policy files (JSON, YAML, TOML) hold labels as the
// strings users write, with the parsers' errors, instead of as structs.
// Marshaling validates first, so a hand-built value that could not be
// parsed back is never written out; unmarshaling leaves the receiver
// unchanged on error.

func marshal[T interface {
	Validate() error
	appendText([]byte) []byte
}](v T) ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	return v.appendText(nil), nil
}

func unmarshal[T any](dst *T, b []byte, parse func(string) (T, error)) error {
	v, err := parse(string(b))
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (l Level) MarshalText() ([]byte, error) { return marshal(l) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *Level) UnmarshalText(b []byte) error { return unmarshal(l, b, ParseLevel) }

// MarshalText implements encoding.TextMarshaler.
func (r Range) MarshalText() ([]byte, error) { return marshal(r) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Range) UnmarshalText(b []byte) error { return unmarshal(r, b, ParseRange) }

// MarshalText implements encoding.TextMarshaler.
func (i Integrity) MarshalText() ([]byte, error) { return marshal(i) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (i *Integrity) UnmarshalText(b []byte) error { return unmarshal(i, b, ParseIntegrity) }

// MarshalText implements encoding.TextMarshaler. It validates the range
// only; the identifiers are the caller's.
func (c Context) MarshalText() ([]byte, error) {
	if c.HasRange {
		if err := c.Range.Validate(); err != nil {
			return nil, err
		}
	}
	return []byte(c.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *Context) UnmarshalText(b []byte) error { return unmarshal(c, b, ParseContext) }

// MarshalText implements encoding.TextMarshaler.
func (l Label) MarshalText() ([]byte, error) { return marshal(l) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *Label) UnmarshalText(b []byte) error { return unmarshal(l, b, ParseLabel) }

// MarshalText implements encoding.TextMarshaler.
func (b Bounds) MarshalText() ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bounds) UnmarshalText(t []byte) error { return unmarshal(b, t, ParseBounds) }
