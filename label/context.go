package label

import "strings"

// Context is an SELinux security context user:role:type[:range]. HasRange
// tells "u:r:t" (no MLS part, Range is zero) from "u:r:t:s0".
type Context struct {
	User, Role, Type string
	Range            Range
	HasRange         bool
}

// ParseContext parses "user_u:role_r:type_t" or
// "system_u:object_r:analyst_t:s0-s3:c1". The MLS part may itself contain
// ':', so the text is split on the first three colons only.
//
// User, role and type must be non-empty and made of letters, digits, '_',
// '.' and '-', starting with a letter, digit or '_'. That is a little
// looser than checkpolicy's identifiers (which start with a letter or '_')
// so that no context the kernel reports is refused, and strict enough that
// whitespace, quotes and separators never get through into map keys or logs.
func ParseContext(s string) (Context, error) {
	parts := strings.SplitN(s, ":", 4)
	if len(parts) < 3 {
		return Context{}, syntaxErr(s, s, "context %q has %d of 3 required fields: want user:role:type[:range]", s, len(parts))
	}
	c := Context{User: parts[0], Role: parts[1], Type: parts[2]}
	for _, f := range [...]struct{ what, id string }{{"user", c.User}, {"role", c.Role}, {"type", c.Type}} {
		if err := checkIdent(s, f.what, f.id); err != nil {
			return Context{}, err
		}
	}
	if len(parts) == 4 {
		if parts[3] == "" {
			return Context{}, syntaxErr(s, s, "empty range after type %q: want user:role:type or user:role:type:range", c.Type)
		}
		r, err := parseRange(s, parts[3])
		if err != nil {
			return Context{}, err
		}
		c.Range, c.HasRange = r, true
	}
	return c, nil
}

func checkIdent(in, what, id string) error {
	if id == "" {
		return syntaxErr(in, id, "empty %s: want an identifier of letters, digits, '_', '.', '-'", what)
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_'
		if i > 0 {
			ok = ok || ch == '.' || ch == '-'
		}
		if !ok {
			return syntaxErr(in, id, "bad %s %q: want letters, digits, '_', '.', '-', starting with a letter, digit or '_'", what, id)
		}
	}
	return nil
}

// String prints "user:role:type" or "user:role:type:range".
func (c Context) String() string {
	s := c.User + ":" + c.Role + ":" + c.Type
	if c.HasRange {
		s += ":" + c.Range.String()
	}
	return s
}
