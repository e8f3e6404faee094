package mapper

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mlsgate/mlsgate/label"
)

// Limits on a policy file. They bound the memory and the time a policy can
// cost; the policy store generates files far below them.
const (
	MaxRules       = 100_000   // map and forward rules together
	MaxLineBytes   = 64 << 10  // one line, without its newline
	MaxRegexBytes  = 4 << 10   // one rule's regular expression
	MaxPolicyBytes = 256 << 20 // a whole file
)

// ErrPolicy is matched by every *ParseError.
var ErrPolicy = errors.New("label mapper policy error")

// ParseError reports a line of a policy file that cannot be used.
type ParseError struct {
	File   string // the name given to the parser, usually the path
	Line   int    // 1-based; 0 when the error is about the whole file
	Token  string // the offending token, cut to 120 bytes
	Reason string // what is wrong and how to fix it
}

// Error prints "file:line: \"token\": reason".
func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Token != "" {
		fmt.Fprintf(&b, ": %q", e.Token)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// Is makes errors.Is(err, ErrPolicy) true.
func (e *ParseError) Is(target error) bool { return target == ErrPolicy }

// Target is what a rule, or the default, labels a URL with: always a label,
// and the SELinux context it came from when the policy wrote one.
type Target struct {
	Label   label.Label
	Context *label.Context // nil when the policy wrote a plain label
}

// String prints the target the way a policy file writes it.
func (t Target) String() string {
	if t.Context == nil {
		return t.Label.String()
	}
	return t.Context.String() + " " + t.Label.Integrity.String()
}

// Rule is one "map" line: URLs matching Regex get Target.
type Rule struct {
	Line   int    // line number in the policy file
	Regex  string // as written, without the implicit anchors
	Target Target

	re *regexp.Regexp
}

// ForwardRule is one "forward" line: misses matching Regex are asked of
// Upstream, whose answers must lie within Bounds.
type ForwardRule struct {
	Line     int
	Regex    string
	Upstream string // "http://host:port[/base]" or "unix:/path/to.sock"
	Bounds   label.Bounds

	re *regexp.Regexp
}

// Policy is a compiled, immutable labeling and miss-handler policy. Build it
// with ParsePolicy; it is safe for concurrent use.
type Policy struct {
	File       string
	Maps       []Rule
	Forwards   []ForwardRule
	Default    Target
	DefaultSet bool // a "default" line was present
	DefaultAt  int  // its line

	mapIdx *index
	fwdIdx *index
}

// RuleRef names a rule as "file:line" for answers and logs.
func (p *Policy) RuleRef(line int) string {
	return filepath.Base(p.File) + ":" + strconv.Itoa(line)
}

// ParsePolicy parses and compiles a policy file's contents; name is used in
// errors and rule references. The first error stops parsing and is a
// *ParseError.
func ParsePolicy(name string, data []byte) (*Policy, error) {
	if name == "" {
		name = "policy"
	}
	p := &Policy{File: name, Default: Target{Label: label.Default}}
	if len(data) > MaxPolicyBytes {
		return nil, &ParseError{File: name, Reason: fmt.Sprintf("file is %d bytes; the limit is %d, split the policy", len(data), MaxPolicyBytes)}
	}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if err := p.parseLine(lineNo, line); err != nil {
			return nil, err
		}
	}
	maps := make([]matcher, len(p.Maps))
	for i := range p.Maps {
		maps[i] = matcher{re: p.Maps[i].re, src: p.Maps[i].Regex}
	}
	fwds := make([]matcher, len(p.Forwards))
	for i := range p.Forwards {
		fwds[i] = matcher{re: p.Forwards[i].re, src: p.Forwards[i].Regex}
	}
	p.mapIdx = buildIndex(maps)
	p.fwdIdx = buildIndex(fwds)
	return p, nil
}

func cut(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

func (p *Policy) parseLine(n int, raw []byte) error {
	perr := func(tok, format string, args ...any) error {
		return &ParseError{File: p.File, Line: n, Token: cut(tok), Reason: fmt.Sprintf(format, args...)}
	}
	if len(raw) > MaxLineBytes {
		return perr("", "line is %d bytes; the limit is %d", len(raw), MaxLineBytes)
	}
	if !utf8.Valid(raw) {
		return perr("", "line is not valid UTF-8; save the file as UTF-8")
	}
	for i, c := range raw {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return perr("", "control character 0x%02x at column %d; remove it", c, i+1)
		}
	}
	fields := strings.Fields(string(raw))
	for i, f := range fields {
		if strings.HasPrefix(f, "#") {
			fields = fields[:i]
			break
		}
	}
	if len(fields) == 0 {
		return nil
	}
	switch fields[0] {
	case "map":
		return p.parseMap(n, fields, perr)
	case "forward":
		return p.parseForward(n, fields, perr)
	case "default":
		return p.parseDefault(n, fields, perr)
	}
	return perr(fields[0], "unknown directive; a line is \"map <regex> <target>\", \"forward <regex> <upstream> <bounds>\", \"default <target>\" or a # comment")
}

type perrFunc func(tok, format string, args ...any) error

func (p *Policy) countRule(fields []string, perr perrFunc) error {
	if len(p.Maps)+len(p.Forwards) >= MaxRules {
		return perr(fields[0], "more than %d rules; split the policy or merge rules into one regex", MaxRules)
	}
	return nil
}

func (p *Policy) parseMap(n int, fields []string, perr perrFunc) error {
	if len(fields) < 3 || len(fields) > 4 {
		return perr(strings.Join(fields, " "), "want \"map <regex> <label>\" or \"map <regex> <user:role:type:level> [iN]\" (a regex may not contain spaces; write \\x20)")
	}
	if err := p.countRule(fields, perr); err != nil {
		return err
	}
	re, err := compileRule(fields[1], perr)
	if err != nil {
		return err
	}
	t, err := parseTarget(fields[2:], perr)
	if err != nil {
		return err
	}
	p.Maps = append(p.Maps, Rule{Line: n, Regex: fields[1], Target: t, re: re})
	return nil
}

func (p *Policy) parseForward(n int, fields []string, perr perrFunc) error {
	if len(fields) != 4 {
		return perr(strings.Join(fields, " "), "want \"forward <regex> <upstream> <bounds>\", e.g. \"forward https://.*\\.example\\.org/.* http://127.0.0.1:7070 s0-s9/i0-i5\"")
	}
	if err := p.countRule(fields, perr); err != nil {
		return err
	}
	re, err := compileRule(fields[1], perr)
	if err != nil {
		return err
	}
	up, err := ParseUpstream(fields[2])
	if err != nil {
		return perr(fields[2], "%v", err)
	}
	b, err := label.ParseBounds(fields[3])
	if err != nil {
		return perr(fields[3], "bad bounds: %v; write e.g. s0-s9:c0.c3/i0-i5", err)
	}
	p.Forwards = append(p.Forwards, ForwardRule{Line: n, Regex: fields[1], Upstream: up, Bounds: b, re: re})
	return nil
}

func (p *Policy) parseDefault(n int, fields []string, perr perrFunc) error {
	if p.DefaultSet {
		return perr("default", "second default; line %d already set one, keep one of them", p.DefaultAt)
	}
	if len(fields) < 2 || len(fields) > 3 {
		return perr(strings.Join(fields, " "), "want \"default <label>\" or \"default <user:role:type:level> [iN]\"")
	}
	t, err := parseTarget(fields[1:], perr)
	if err != nil {
		return err
	}
	p.Default, p.DefaultSet, p.DefaultAt = t, true, n
	return nil
}

// compileRule compiles a rule's regex anchored at both ends.
func compileRule(src string, perr perrFunc) (*regexp.Regexp, error) {
	if len(src) > MaxRegexBytes {
		return nil, perr(src, "regex is %d bytes; the limit is %d, split the rule", len(src), MaxRegexBytes)
	}
	// Parse the text alone first: errors then quote the user's text, not
	// ours, and "a)|(b" cannot pair up with the anchoring group.
	if _, err := syntax.Parse(src, syntax.Perl); err != nil {
		return nil, perr(src, "bad regex: %s; the syntax is Go RE2 (https://pkg.go.dev/regexp/syntax)", regexReason(err))
	}
	re, err := regexp.Compile(`^(?:` + src + `)$`)
	if err != nil {
		return nil, perr(src, "bad regex: %s; simplify it or split the rule", regexReason(err))
	}
	return re, nil
}

// parseTarget parses "<label>" or "<context> [iN]".
func parseTarget(toks []string, perr perrFunc) (Target, error) {
	tok := toks[0]
	if l, err := label.ParseLabel(tok); err == nil {
		if len(toks) > 1 {
			return Target{}, perr(toks[1], "a plain label carries its own integrity; write %s/%s instead of two tokens", strings.SplitN(tok, "/", 2)[0], toks[1])
		}
		return Target{Label: l}, nil
	} else if strings.Count(tok, ":") < 3 {
		return Target{}, perr(tok, "bad label: %v; write a label like s3:c1,c2/i5 or a context like user_u:object_r:type_t:s3", err)
	}
	var integ label.Integrity
	if len(toks) > 1 {
		i, err := label.ParseIntegrity(toks[1])
		if err != nil {
			return Target{}, perr(toks[1], "bad integrity after the context: %v; write i0 to i15", err)
		}
		integ = i
	}
	c, err := label.ParseContext(tok)
	if err != nil {
		if strings.Contains(tok, "/") {
			return Target{}, perr(tok, "bad context: %v; give the integrity as a separate token: %s", err, strings.Replace(tok, "/", " ", 1))
		}
		return Target{}, perr(tok, "bad context: %v; write user:role:type:level, e.g. system_u:object_r:analyst_t:s4", err)
	}
	if !c.HasRange {
		return Target{}, perr(tok, "context has no MLS level; append one, e.g. %s:s0", tok)
	}
	l := label.FromContext(c, label.IntegrityPolicy{Default: integ})
	return Target{Label: l, Context: &c}, nil
}

// ParseUpstream checks an upstream mapper address and returns its canonical
// form: an http or https base URL with a host and no query, user info or
// fragment ("http://127.0.0.1:7070"), or "unix:" followed by an absolute
// socket path.
func ParseUpstream(s string) (string, error) {
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		if !strings.HasPrefix(rest, "/") {
			return "", fmt.Errorf("unix socket path %q is not absolute; write unix:/run/mlsgate/mapper.sock", rest)
		}
		return "unix:" + filepath.Clean(rest), nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("upstream is not a URL (%v); write http://host:port or unix:/path", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("upstream scheme %q is not supported; write http://host:port or unix:/path", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("upstream has no host; write http://host:port")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return "", errors.New("upstream may not carry user info, a query or a fragment; write http://host:port[/base]")
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// Match returns the first map rule, in file order, whose regex matches the
// normalized URL u.
func (p *Policy) Match(u string) (*Rule, bool) {
	var buf [1]int32
	ids := p.mapIdx.match(u, 1, buf[:0])
	if len(ids) == 0 {
		return nil, false
	}
	return &p.Maps[ids[0]], true
}

// MatchForwards returns up to max forward rules, in file order, whose regex
// matches the normalized URL u.
func (p *Policy) MatchForwards(u string, max int) []*ForwardRule {
	var buf [8]int32
	ids := p.fwdIdx.match(u, max, buf[:0])
	out := make([]*ForwardRule, len(ids))
	for i, id := range ids {
		out[i] = &p.Forwards[id]
	}
	return out
}

func regexReason(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return fmt.Sprintf("%s in %q", se.Code, cut(se.Expr))
	}
	return err.Error()
}
