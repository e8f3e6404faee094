package compliance

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Sentinels for errors.Is on ParseTE's errors.
var (
	// ErrSyntax: the text is not a policy module as ParseTE reads it.
	ErrSyntax = errors.New("policy module syntax error")
	// ErrUnsupported: a statement ParseTE deliberately refuses because it
	// could hide flows (m4 macros, permissive domains, range transitions)
	// or one it does not know.
	ErrUnsupported = errors.New("unsupported policy statement")
	// ErrUndeclared: a rule names a type the module neither declares nor
	// requires, or an attribute, whose member types one module cannot tell.
	ErrUndeclared = errors.New("undeclared type")
)

// ParseError reports where and why ParseTE refused a module. Its message is
// "file:line: what is wrong with token, and the fix".
type ParseError struct {
	File  string
	Line  int
	Token string // the offending token, "" at end of input
	Msg   string // names Token
	Err   error  // ErrSyntax, ErrUnsupported or ErrUndeclared
}

// Error prints "file:line: message".
func (e *ParseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Unwrap returns the sentinel the error matches.
func (e *ParseError) Unwrap() error { return e.Err }

// Module is an SELinux policy module (.te) as ParseTE reads it: the
// declarations that matter for flows and the access vector rules.
type Module struct {
	// File is the name given to ParseTE; errors and rule sources use it.
	File string
	// Name and Version come from the module statement.
	Name, Version string
	// Types are the types the module declares, Required those it requires,
	// Attributes the attributes it declares or requires, all in order of
	// first appearance.
	Types, Required, Attributes []string
	// Aliases maps each type alias to its type.
	Aliases map[string]string
	// TypeAttributes maps a type to the attributes it is given, by its
	// declaration ("type t, a;") or by typeattribute statements. They grant
	// nothing here, but some exempt the type from the OS's MLS constraints
	// (see FlowsMLS).
	TypeAttributes map[string][]string
	// Allows are the allow rules, including those inside optional, if and
	// else blocks: a block may be enabled, so its rules count.
	Allows []AVRule
	// Neverallows are recorded for reference; they grant nothing.
	Neverallows []AVRule
}

// AVRule is one allow or neverallow statement.
type AVRule struct {
	Line             int
	Sources, Targets []string // type names as written; Targets may hold "self"
	Classes          []string
	Perms            []string
	// AllPerms is set for "*" and for a complement "~{ ... }": the rule
	// grants permissions it does not list, so its flows go both ways.
	AllPerms bool
}

type tokKind uint8

const (
	tokWord tokKind = iota
	tokPunct
	tokString
	tokEOF
)

type token struct {
	kind tokKind
	text string
	line int
}

// ParseTE parses an SELinux policy module source as the policy store
// generates it. file names the source in errors and in the Source of the
// rules Flows makes, e.g. "analyst.te".
//
// It reads: "module name version;"; require blocks (type, attribute, class,
// role, bool declarations); "type t [alias a] [, attr...];", "typealias",
// "attribute"; allow, neverallow, auditallow and dontaudit rules with names
// or brace sets, "self" as a target, and "*" or "~{...}" permissions;
// optional { } else { } blocks and if (...) { } else { } conditionals; and
// comments from '#'. Rules inside optional and conditional blocks all count,
// in either branch: whichever is enabled, its flows are within the union.
//
// It ignores statements that grant no access: typeattribute, roleattribute,
// attribute_role, role, role allow and role_transition, dontaudit,
// auditallow, the *xperm rules (which only narrow ioctls an allow rule
// grants), and type_transition/type_change/type_member (which choose the
// type of new objects; creating or relabeling them needs allow rules, which
// are checked).
//
// Anything else is an error naming file:line and the token, because a
// statement it does not understand could grant flows it would then miss: m4
// macros (expand the policy first), permissive (an unenforced domain has no
// bounded flows), range_transition (moves a process to a level its type's
// labels do not give), and statements it does not know. Rules naming
// undeclared types, or attributes (whose members lie outside the module),
// are errors too.
func ParseTE(file string, src []byte) (Module, error) {
	toks, err := lex(file, src)
	if err != nil {
		return Module{}, err
	}
	p := &teParser{file: file, toks: toks, m: Module{File: file}, declared: map[string]string{}}
	if err := p.module(); err != nil {
		return Module{}, err
	}
	return p.m, nil
}

func lex(file string, src []byte) ([]token, error) {
	var toks []token
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case isWordStart(c):
			j := i + 1
			for j < len(src) && isWordByte(src[j]) {
				j++
			}
			toks = append(toks, token{tokWord, string(src[i:j]), line})
			i = j
		case c == '"':
			j := i + 1
			for j < len(src) && src[j] != '"' && src[j] != '\n' {
				j++
			}
			if j == len(src) || src[j] != '"' {
				return nil, &ParseError{file, line, string(src[i:j]), fmt.Sprintf("unterminated string %q: close it with '\"' on the same line", src[i:j]), ErrSyntax}
			}
			toks = append(toks, token{tokString, string(src[i : j+1]), line})
			i = j + 1
		case strings.IndexByte("{};:,~*()-!&|^=", c) >= 0:
			toks = append(toks, token{tokPunct, string(c), line})
			i++
		case c == '`' || c == '\'' || c == '$':
			return nil, &ParseError{file, line, string(c), fmt.Sprintf("m4 syntax %q: expand the policy with m4 (the SELinux devel Makefile) before checking it", c), ErrUnsupported}
		default:
			tok := string(c)
			if c >= 0x80 || c < 0x20 {
				tok = fmt.Sprintf("\\x%02x", c)
			}
			return nil, &ParseError{file, line, tok, fmt.Sprintf("unexpected character %q", tok), ErrSyntax}
		}
	}
	return append(toks, token{tokEOF, "", line}), nil
}

func isWordStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

func isWordByte(c byte) bool { return isWordStart(c) || c == '.' || c == '-' }

// isName reports whether a word is an identifier (types, classes,
// permissions), not a number or version.
func isName(s string) bool {
	c := s[0]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

type teParser struct {
	file string
	toks []token
	pos  int
	m    Module
	// declared maps each declared or required name to what it is: "type",
	// "alias" or "attribute".
	declared map[string]string
	// uses are the type names rules mention, checked at the end.
	uses []nameUse
}

// nameUse is a type name in a rule, checked once the whole module is read
// (a declaration may follow its use).
type nameUse struct {
	name string
	line int
	// aliasTarget marks the type of an alias declaration, which must be
	// a type, not another alias.
	aliasTarget bool
}

func (p *teParser) peek() token { return p.toks[p.pos] }

func (p *teParser) next() token {
	t := p.toks[p.pos]
	if t.kind != tokEOF {
		p.pos++
	}
	return t
}

func (p *teParser) errf(t token, sentinel error, format string, args ...any) error {
	return &ParseError{File: p.file, Line: t.line, Token: t.text, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

func describe(t token) string {
	if t.kind == tokEOF {
		return "end of file"
	}
	return fmt.Sprintf("%q", t.text)
}

func (p *teParser) expect(punct string) error {
	t := p.next()
	if t.kind != tokPunct || t.text != punct {
		return p.errf(t, ErrSyntax, "want %q, found %s", punct, describe(t))
	}
	return nil
}

func (p *teParser) name(what string) (token, error) {
	t := p.next()
	if t.kind != tokWord || !isName(t.text) {
		return t, p.errf(t, ErrSyntax, "want %s name, found %s", what, describe(t))
	}
	return t, nil
}

func (p *teParser) isPunct(s string) bool {
	t := p.peek()
	return t.kind == tokPunct && t.text == s
}

func (p *teParser) module() error {
	t := p.next()
	if t.kind != tokWord || t.text != "module" {
		return p.errf(t, ErrSyntax, "want \"module name version;\" first, found %s", describe(t))
	}
	n, err := p.name("module")
	if err != nil {
		return err
	}
	v := p.next()
	if v.kind != tokWord {
		return p.errf(v, ErrSyntax, "want module version after %q, e.g. 1.0, found %s", n.text, describe(v))
	}
	if err := p.expect(";"); err != nil {
		return err
	}
	p.m.Name, p.m.Version = n.text, v.text
	if err := p.statements(nil); err != nil {
		return err
	}
	return p.checkUses()
}

// statements parses statements up to end of file, or, when open is a '{',
// up to and including the '}' that closes it.
func (p *teParser) statements(open *token) error {
	inBlock := open != nil
	for {
		t := p.peek()
		switch {
		case t.kind == tokEOF && inBlock:
			return p.errf(*open, ErrSyntax, "missing '}' for the block opened here: it is still open at end of file")
		case t.kind == tokEOF:
			return nil
		case inBlock && t.kind == tokPunct && t.text == "}":
			p.next()
			return nil
		}
		if err := p.statement(); err != nil {
			return err
		}
	}
}

func (p *teParser) statement() error {
	t := p.next()
	if t.kind != tokWord {
		return p.errf(t, ErrSyntax, "want a statement, found %s", describe(t))
	}
	if p.isPunct("(") && t.text != "if" {
		return p.errf(t, ErrUnsupported, "macro %s(...) is not supported: expand the policy with m4 (the SELinux devel Makefile) first, or write the rules it stands for", t.text)
	}
	switch t.text {
	case "module":
		return p.errf(t, ErrSyntax, "second module statement: a file holds one module")
	case "require":
		return p.require()
	case "type":
		return p.typeDecl()
	case "typealias":
		n, err := p.name("type")
		if err != nil {
			return err
		}
		if k := p.next(); k.kind != tokWord || k.text != "alias" {
			return p.errf(k, ErrSyntax, "want \"alias\" after \"typealias %s\", found %s", n.text, describe(k))
		}
		if err := p.aliases(n); err != nil {
			return err
		}
		return p.expect(";")
	case "attribute":
		n, err := p.name("attribute")
		if err != nil {
			return err
		}
		if err := p.declare(n, "attribute"); err != nil {
			return err
		}
		return p.expect(";")
	case "allow", "neverallow", "auditallow", "dontaudit":
		return p.avRule(t)
	case "typeattribute":
		return p.typeAttribute()
	case "roleattribute", "attribute_role", "role", "role_transition",
		"type_transition", "type_change", "type_member",
		"allowxperm", "auditallowxperm", "dontauditxperm", "neverallowxperm":
		return p.skipStatement(t)
	case "bool":
		if _, err := p.name("boolean"); err != nil {
			return err
		}
		if v := p.next(); v.kind != tokWord || v.text != "true" && v.text != "false" {
			return p.errf(v, ErrSyntax, "want true or false for the boolean's default, found %s", describe(v))
		}
		return p.expect(";")
	case "optional":
		return p.block(t, false)
	case "if":
		return p.block(t, true)
	case "permissive":
		return p.errf(t, ErrUnsupported, "permissive domains are not enforced, so their flows are unbounded: remove the permissive statement")
	case "range_transition":
		return p.errf(t, ErrUnsupported, "range_transition moves a process to a level its type's labels do not give: not supported by the compliance check")
	}
	return p.errf(t, ErrUnsupported, "unsupported statement %q: the compliance check reads module, require, type, typealias, attribute, allow, neverallow, optional and if, and ignores rules that grant nothing", t.text)
}

// block parses "optional { ... } [else { ... }]" or "if (cond) { ... } [else
// { ... }]". Both branches' rules are kept.
func (p *teParser) block(kw token, cond bool) error {
	if cond {
		if err := p.expect("("); err != nil {
			return err
		}
		depth := 1
		for depth > 0 {
			t := p.next()
			switch {
			case t.kind == tokEOF:
				return p.errf(kw, ErrSyntax, "unterminated condition of \"if\": missing ')'")
			case t.kind == tokPunct && t.text == "(":
				depth++
			case t.kind == tokPunct && t.text == ")":
				depth--
			case t.kind == tokPunct && strings.Contains("{};", t.text):
				return p.errf(t, ErrSyntax, "unexpected %q in the condition of \"if\" on line %d: missing ')'", t.text, kw.line)
			}
		}
	}
	open := p.peek()
	if err := p.expect("{"); err != nil {
		return err
	}
	if err := p.statements(&open); err != nil {
		return err
	}
	if t := p.peek(); t.kind == tokWord && t.text == "else" {
		p.next()
		open := p.peek()
		if err := p.expect("{"); err != nil {
			return err
		}
		return p.statements(&open)
	}
	return nil
}

// skipStatement skips to the ';' that ends a statement granting nothing.
// Brace sets inside it must balance; a '}' closing something outside the
// statement shows that its ';' is missing.
func (p *teParser) skipStatement(kw token) error {
	depth := 0
	for {
		t := p.next()
		switch {
		case t.kind == tokEOF:
			return p.errf(kw, ErrSyntax, "%q statement has no ';'", kw.text)
		case t.kind != tokPunct:
		case t.text == "{":
			depth++
		case t.text == "}":
			if depth--; depth < 0 {
				return p.errf(t, ErrSyntax, "%q statement on line %d ends without ';' before '}'", kw.text, kw.line)
			}
		case t.text == ";" && depth == 0:
			return nil
		case t.text == ";":
			return p.errf(t, ErrSyntax, "';' inside a brace set of the %q statement on line %d: missing '}'", kw.text, kw.line)
		}
	}
}

func (p *teParser) require() error {
	if err := p.expect("{"); err != nil {
		return err
	}
	for !p.isPunct("}") {
		kw := p.next()
		if kw.kind != tokWord {
			return p.errf(kw, ErrSyntax, "want a declaration (type, attribute, class, role, bool) in require, found %s", describe(kw))
		}
		switch kw.text {
		case "type", "attribute":
			for {
				n, err := p.name(kw.text)
				if err != nil {
					return err
				}
				kind := "required"
				if kw.text == "attribute" {
					kind = "attribute"
				}
				switch prev, dup := p.declared[n.text]; {
				case !dup:
					if err := p.declare(n, kind); err != nil {
						return err
					}
				case (prev == "attribute") != (kind == "attribute"):
					return p.errf(n, ErrSyntax, "%q is required as %s but declared as %s", n.text, kw.text, prev)
				}
				if !p.isPunct(",") {
					break
				}
				p.next()
			}
			if err := p.expect(";"); err != nil {
				return err
			}
		case "class":
			if _, err := p.name("class"); err != nil {
				return err
			}
			if _, _, err := p.set("permission", true); err != nil {
				return err
			}
			if err := p.expect(";"); err != nil {
				return err
			}
		case "role", "bool", "attribute_role", "user", "sensitivity", "category":
			if err := p.skipStatement(kw); err != nil {
				return err
			}
		default:
			return p.errf(kw, ErrSyntax, "unexpected %q in require: want type, attribute, class, role or bool", kw.text)
		}
	}
	p.next()
	return nil
}

// declare records a declared name of kind "type", "required", "alias" or
// "attribute".
func (p *teParser) declare(n token, kind string) error {
	if prev, dup := p.declared[n.text]; dup {
		return p.errf(n, ErrSyntax, "%q is declared twice (first as %s)", n.text, prev)
	}
	p.declared[n.text] = kind
	switch kind {
	case "type":
		p.m.Types = append(p.m.Types, n.text)
	case "required":
		p.m.Required = append(p.m.Required, n.text)
	case "attribute":
		p.m.Attributes = append(p.m.Attributes, n.text)
	}
	return nil
}

// typeDecl parses "type NAME [alias ALIASES] [, ATTR ...];". The
// attributes are ignored: rules naming attributes are refused anyway.
func (p *teParser) typeDecl() error {
	n, err := p.name("type")
	if err != nil {
		return err
	}
	if n.text == "self" {
		return p.errf(n, ErrSyntax, "\"self\" is reserved: choose another type name")
	}
	if prev := p.declared[n.text]; prev == "required" {
		// A module may require a type and declare it in an optional
		// block's else branch; keep one record of it.
		p.declared[n.text] = "type"
		p.m.Types = append(p.m.Types, n.text)
	} else if err := p.declare(n, "type"); err != nil {
		return err
	}
	if t := p.peek(); t.kind == tokWord && t.text == "alias" {
		p.next()
		if err := p.aliases(n); err != nil {
			return err
		}
	}
	for p.isPunct(",") {
		p.next()
		a, err := p.name("attribute")
		if err != nil {
			return err
		}
		p.m.addTypeAttribute(n.text, a.text)
	}
	return p.expect(";")
}

// typeAttribute parses "typeattribute TYPE ATTR [, ATTR ...];".
func (p *teParser) typeAttribute() error {
	n, err := p.name("type")
	if err != nil {
		return err
	}
	for first := true; first || p.isPunct(","); first = false {
		if !first {
			p.next()
		}
		a, err := p.name("attribute")
		if err != nil {
			return err
		}
		p.m.addTypeAttribute(n.text, a.text)
	}
	return p.expect(";")
}

func (m *Module) addTypeAttribute(typ, attr string) {
	if m.TypeAttributes == nil {
		m.TypeAttributes = map[string][]string{}
	}
	if !slices.Contains(m.TypeAttributes[typ], attr) {
		m.TypeAttributes[typ] = append(m.TypeAttributes[typ], attr)
	}
}

func (p *teParser) aliases(typ token) error {
	names, _, err := p.set("alias", false)
	if err != nil {
		return err
	}
	for _, a := range names {
		if err := p.declare(a, "alias"); err != nil {
			return err
		}
		if p.m.Aliases == nil {
			p.m.Aliases = map[string]string{}
		}
		p.m.Aliases[a.text] = typ.text
	}
	p.uses = append(p.uses, nameUse{typ.text, typ.line, true})
	return nil
}

// set parses a name or a brace set of names. With perms it also accepts
// "*" and "~" followed by a name or set, reported as all.
func (p *teParser) set(what string, perms bool) (names []token, all bool, err error) {
	t := p.next()
	switch {
	case t.kind == tokPunct && (t.text == "*" || t.text == "~") && perms:
		if t.text == "~" {
			if _, _, err := p.set(what, false); err != nil {
				return nil, false, err
			}
		}
		return nil, true, nil
	case t.kind == tokPunct && (t.text == "*" || t.text == "~" || t.text == "-"):
		return nil, false, p.errf(t, ErrUnsupported, "%q in a %s set cannot be expanded from one module: list the %ss", t.text, what, what)
	case t.kind == tokWord:
		if !isName(t.text) {
			return nil, false, p.errf(t, ErrSyntax, "want %s name, found %s", what, describe(t))
		}
		return []token{t}, false, nil
	case t.kind == tokPunct && t.text == "{":
		for {
			t := p.next()
			switch {
			case t.kind == tokPunct && t.text == "}":
				if len(names) == 0 {
					return nil, false, p.errf(t, ErrSyntax, "empty %s set \"{ }\"", what)
				}
				return names, false, nil
			case t.kind == tokWord && isName(t.text):
				names = append(names, t)
			case t.kind == tokPunct && (t.text == "*" || t.text == "~" || t.text == "-"):
				return nil, false, p.errf(t, ErrUnsupported, "%q in a %s set cannot be expanded from one module: list the %ss", t.text, what, what)
			default:
				return nil, false, p.errf(t, ErrSyntax, "want %s name or '}' in set, found %s", what, describe(t))
			}
		}
	}
	return nil, false, p.errf(t, ErrSyntax, "want %s name or set, found %s", what, describe(t))
}

func texts(ts []token) []string {
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		if !slices.Contains(out, t.text) {
			out = append(out, t.text)
		}
	}
	return out
}

// avRule parses "KW SOURCES TARGETS : CLASSES PERMS;", or the role allow
// "allow ROLES ROLES;".
func (p *teParser) avRule(kw token) error {
	src, _, err := p.set("type", false)
	if err != nil {
		return err
	}
	tgt, _, err := p.set("type", false)
	if err != nil {
		return err
	}
	if kw.text == "allow" && p.isPunct(";") {
		p.next() // role allow: grants no access between types
		return nil
	}
	if err := p.expect(":"); err != nil {
		return err
	}
	cls, _, err := p.set("class", false)
	if err != nil {
		return err
	}
	perms, all, err := p.set("permission", true)
	if err != nil {
		return err
	}
	if err := p.expect(";"); err != nil {
		return err
	}
	r := AVRule{Line: kw.line, Sources: texts(src), Targets: texts(tgt), Classes: texts(cls), Perms: texts(perms), AllPerms: all}
	for _, s := range src {
		if s.text == "self" {
			return p.errf(s, ErrSyntax, "\"self\" may only be a target")
		}
		p.uses = append(p.uses, nameUse{s.text, s.line, false})
	}
	for _, t := range tgt {
		if t.text != "self" {
			p.uses = append(p.uses, nameUse{t.text, t.line, false})
		}
	}
	switch kw.text {
	case "allow":
		p.m.Allows = append(p.m.Allows, r)
	case "neverallow":
		p.m.Neverallows = append(p.m.Neverallows, r)
	}
	return nil
}

// checkUses refuses rules naming undeclared types or attributes.
func (p *teParser) checkUses() error {
	for _, u := range p.uses {
		switch p.declared[u.name] {
		case "alias":
			if u.aliasTarget {
				return &ParseError{p.file, u.line, u.name, fmt.Sprintf("%q is an alias; an alias must name a type: use %q", u.name, p.m.Aliases[u.name]), ErrSyntax}
			}
		case "type", "required":
		case "attribute":
			return &ParseError{p.file, u.line, u.name, fmt.Sprintf("rule names attribute %q, whose member types are not all in this module: name the types instead", u.name), ErrUndeclared}
		default:
			return &ParseError{p.file, u.line, u.name, fmt.Sprintf("type %q is neither declared nor required: add \"type %s;\" to the require block", u.name, u.name), ErrUndeclared}
		}
	}
	return nil
}

// resolve returns the type a name or alias stands for.
func (m Module) resolve(name string) string {
	if t, ok := m.Aliases[name]; ok {
		return t
	}
	return name
}

// String prints the module as policy text that ParseTE reads back to the
// same declarations and rules (comments, ignored statements and line
// numbers aside).
func (m Module) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "module %s %s;\n", m.Name, m.Version)
	if len(m.Required) > 0 || len(m.Attributes) > 0 {
		b.WriteString("\nrequire {\n")
		for _, t := range m.Required {
			fmt.Fprintf(&b, "\ttype %s;\n", t)
		}
		for _, a := range m.Attributes {
			fmt.Fprintf(&b, "\tattribute %s;\n", a)
		}
		b.WriteString("}\n")
	}
	if len(m.Types) > 0 {
		b.WriteString("\n")
	}
	for _, t := range m.Types {
		fmt.Fprintf(&b, "type %s;\n", t)
	}
	aliases := make([]string, 0, len(m.Aliases))
	for a := range m.Aliases {
		aliases = append(aliases, a)
	}
	sort.Strings(aliases)
	for _, a := range aliases {
		fmt.Fprintf(&b, "typealias %s alias %s;\n", m.Aliases[a], a)
	}
	typed := make([]string, 0, len(m.TypeAttributes))
	for t := range m.TypeAttributes {
		typed = append(typed, t)
	}
	sort.Strings(typed)
	for _, t := range typed {
		fmt.Fprintf(&b, "typeattribute %s %s;\n", t, strings.Join(m.TypeAttributes[t], ", "))
	}
	if len(m.Allows)+len(m.Neverallows) > 0 {
		b.WriteString("\n")
	}
	for _, r := range m.Allows {
		b.WriteString(r.format("allow"))
	}
	for _, r := range m.Neverallows {
		b.WriteString(r.format("neverallow"))
	}
	return b.String()
}

func (r AVRule) format(kw string) string {
	perms := braced(r.Perms)
	if r.AllPerms {
		perms = "*"
	}
	return fmt.Sprintf("%s %s %s:%s %s;\n", kw, braced(r.Sources), braced(r.Targets), braced(r.Classes), perms)
}

func braced(names []string) string {
	if len(names) == 1 {
		return names[0]
	}
	return "{ " + strings.Join(names, " ") + " }"
}
