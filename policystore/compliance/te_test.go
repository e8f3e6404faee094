package compliance

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const analystTE = `# The analyst's browser, as the policy store generates it.
module analyst 1.0.2;

require {
	type user_home_t, tmp_t;
	attribute domain;
	class file { read write getattr open execute };
	class dir { search add_name };
	class process { signal fork };
	class capability dac_override;
	role system_r;
	bool analyst_net;
}

type analyst_t, domain;
type analyst_exec_t alias { analyst_bin_t };
type analyst_conf_t;
type analyst_data_t;
typeattribute analyst_t domain;
role system_r types analyst_t;

allow analyst_t analyst_exec_t:file { read getattr execute };   # run itself
allow analyst_t analyst_conf_t : file { read getattr open };
allow analyst_t analyst_data_t:{ file dir } { read write search add_name };
allow analyst_t self:process { signal fork };
allow analyst_t self:capability dac_override;
dontaudit analyst_t tmp_t:dir search;
auditallow analyst_t analyst_data_t:file write;
neverallow analyst_t analyst_exec_t:file write;
allowxperm analyst_t analyst_data_t:file ioctl { 0x8900-0x8905 0x5401 };
type_transition analyst_t tmp_t:file analyst_data_t "cache";
optional {
	allow analyst_t user_home_t:file read;
} else {
	allow analyst_t tmp_t:file read;
}
if (analyst_net && !global_ssp) {
	allow analyst_t analyst_bin_t:file getattr;
}
allow system_r system_r;
`

func TestParseTE(t *testing.T) {
	t.Parallel()
	m, err := ParseTE("analyst.te", []byte(analystTE))
	if err != nil {
		t.Fatal(err)
	}
	want := Module{
		File: "analyst.te", Name: "analyst", Version: "1.0.2",
		Types:          []string{"analyst_t", "analyst_exec_t", "analyst_conf_t", "analyst_data_t"},
		Required:       []string{"user_home_t", "tmp_t"},
		Attributes:     []string{"domain"},
		Aliases:        map[string]string{"analyst_bin_t": "analyst_exec_t"},
		TypeAttributes: map[string][]string{"analyst_t": {"domain"}},
		Allows: []AVRule{
			{Line: lineOf(t, analystTE, "allow analyst_t analyst_exec_t:file"), Sources: []string{"analyst_t"}, Targets: []string{"analyst_exec_t"}, Classes: []string{"file"}, Perms: []string{"read", "getattr", "execute"}},
			{Line: lineOf(t, analystTE, "allow analyst_t analyst_conf_t"), Sources: []string{"analyst_t"}, Targets: []string{"analyst_conf_t"}, Classes: []string{"file"}, Perms: []string{"read", "getattr", "open"}},
			{Line: lineOf(t, analystTE, "allow analyst_t analyst_data_t:{"), Sources: []string{"analyst_t"}, Targets: []string{"analyst_data_t"}, Classes: []string{"file", "dir"}, Perms: []string{"read", "write", "search", "add_name"}},
			{Line: lineOf(t, analystTE, "allow analyst_t self:process"), Sources: []string{"analyst_t"}, Targets: []string{"self"}, Classes: []string{"process"}, Perms: []string{"signal", "fork"}},
			{Line: lineOf(t, analystTE, "allow analyst_t self:capability"), Sources: []string{"analyst_t"}, Targets: []string{"self"}, Classes: []string{"capability"}, Perms: []string{"dac_override"}},
			{Line: lineOf(t, analystTE, "allow analyst_t user_home_t"), Sources: []string{"analyst_t"}, Targets: []string{"user_home_t"}, Classes: []string{"file"}, Perms: []string{"read"}},
			{Line: lineOf(t, analystTE, "allow analyst_t tmp_t"), Sources: []string{"analyst_t"}, Targets: []string{"tmp_t"}, Classes: []string{"file"}, Perms: []string{"read"}},
			{Line: lineOf(t, analystTE, "allow analyst_t analyst_bin_t"), Sources: []string{"analyst_t"}, Targets: []string{"analyst_bin_t"}, Classes: []string{"file"}, Perms: []string{"getattr"}},
		},
		Neverallows: []AVRule{
			{Line: lineOf(t, analystTE, "neverallow"), Sources: []string{"analyst_t"}, Targets: []string{"analyst_exec_t"}, Classes: []string{"file"}, Perms: []string{"write"}},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("ParseTE:\n got %+v\nwant %+v", m, want)
	}

	// String prints text that parses back to the same module.
	again, err := ParseTE("analyst.te", []byte(m.String()))
	if err != nil {
		t.Fatalf("reparse of\n%s\n: %v", m.String(), err)
	}
	if !sameModule(m, again) {
		t.Fatalf("reparse differs:\n got %+v\nwant %+v\ntext:\n%s", again, m, m.String())
	}
}

// lineOf returns the line of src on which sub first appears.
func lineOf(t *testing.T, src, sub string) int {
	t.Helper()
	i := strings.Index(src, sub)
	if i < 0 {
		t.Fatalf("%q not in source", sub)
	}
	return strings.Count(src[:i], "\n") + 1
}

// sameModule compares modules without line numbers.
func sameModule(a, b Module) bool {
	strip := func(rs []AVRule) []AVRule {
		out := make([]AVRule, len(rs))
		for i, r := range rs {
			r.Line = 0
			out[i] = r
		}
		return out
	}
	a.Allows, b.Allows = strip(a.Allows), strip(b.Allows)
	a.Neverallows, b.Neverallows = strip(a.Neverallows), strip(b.Neverallows)
	if len(a.Aliases) == 0 && len(b.Aliases) == 0 {
		a.Aliases, b.Aliases = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

func TestParseTEForms(t *testing.T) {
	t.Parallel()
	src := "module m 1;\nrequire { type a_t; type b_t; }\n" +
		"allow a_t b_t:file *;\n" +
		"allow a_t { b_t a_t b_t }:file ~{ read };\n" +
		"allow { a_t } b_t:{ file } { read };\n"
	m, err := ParseTE("m.te", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Allows) != 3 || !m.Allows[0].AllPerms || !m.Allows[1].AllPerms || m.Allows[2].AllPerms {
		t.Fatalf("AllPerms wrong: %+v", m.Allows)
	}
	if got := m.Allows[1].Targets; !reflect.DeepEqual(got, []string{"b_t", "a_t"}) {
		t.Errorf("duplicate targets kept: %q", got)
	}
}

func TestParseTEErrors(t *testing.T) {
	t.Parallel()
	const head = "module m 1.0;\nrequire { type a_t; type b_t; attribute dom; }\n" // lines 1-2
	tests := map[string]struct {
		src      string
		sentinel error
		want     string // prefix of the message: file:line: ...
	}{
		"no module statement":    {"type a_t;\n", ErrSyntax, `m.te:1: want "module name version;" first, found "type"`},
		"empty file":             {"", ErrSyntax, `m.te:1: want "module name version;" first, found end of file`},
		"module without version": {"module m;\n", ErrSyntax, `m.te:1: want module version after "m"`},
		"second module":          {head + "module n 1;\n", ErrSyntax, "m.te:3: second module statement"},
		"macro": {head + "\nfiles_read_etc_files(a_t)\n", ErrUnsupported,
			"m.te:4: macro files_read_etc_files(...) is not supported"},
		"m4 quote":       {head + "gen_require(`type x_t;')\n", ErrUnsupported, "m.te:3: m4 syntax '`'"},
		"m4 quote alone": {head + "type `x_t';\n", ErrUnsupported, "m.te:3: m4 syntax '`'"},
		"m4 argument":    {head + "allow $1 b_t:file read;\n", ErrUnsupported, "m.te:3: m4 syntax '$'"},
		"permissive":     {head + "permissive a_t;\n", ErrUnsupported, "m.te:3: permissive domains are not enforced"},
		"range_transition": {head + "range_transition a_t b_t:process s0;\n", ErrUnsupported,
			"m.te:3: range_transition moves a process"},
		"unknown statement": {head + "typebounds a_t b_t;\n", ErrUnsupported, `m.te:3: unsupported statement "typebounds"`},
		"missing semicolon": {head + "allow a_t b_t:file read\nallow a_t b_t:file write;\n", ErrSyntax,
			`m.te:4: want ";", found "allow"`},
		"missing colon":       {head + "allow a_t b_t file read;\n", ErrSyntax, `m.te:3: want ":", found "file"`},
		"empty set":           {head + "allow a_t b_t:file { };\n", ErrSyntax, `m.te:3: empty permission set "{ }"`},
		"unclosed set":        {head + "allow a_t { b_t :file read;\n", ErrSyntax, `m.te:3: want type name or '}' in set, found ":"`},
		"type complement":     {head + "allow a_t ~b_t:file read;\n", ErrUnsupported, `m.te:3: "~" in a type set cannot be expanded`},
		"type exclusion":      {head + "allow a_t { dom -b_t }:file read;\n", ErrUnsupported, `m.te:3: "-" in a type set`},
		"type wildcard":       {head + "allow * b_t:file read;\n", ErrUnsupported, `m.te:3: "*" in a type set`},
		"self as source":      {head + "allow self b_t:file read;\n", ErrSyntax, `m.te:3: "self" may only be a target`},
		"undeclared type":     {head + "\n\nallow a_t c_t:file read;\n", ErrUndeclared, `m.te:5: type "c_t" is neither declared nor required: add "type c_t;"`},
		"attribute in a rule": {head + "allow dom b_t:file read;\n", ErrUndeclared, `m.te:3: rule names attribute "dom"`},
		"declared twice":      {head + "type x_t;\ntype x_t;\n", ErrSyntax, `m.te:4: "x_t" is declared twice (first as type)`},
		"alias of undeclared": {head + "typealias z_t alias y_t;\n", ErrUndeclared, `m.te:3: type "z_t" is neither declared nor required`},
		"unclosed optional":   {head + "optional {\nallow a_t b_t:file read;\n", ErrSyntax, "m.te:3: missing '}' for the block opened here"},
		"unclosed if":         {head + "if (x {\n", ErrSyntax, `m.te:3: unexpected "{" in the condition of "if" on line 3`},
		"bad bool":            {head + "bool x maybe;\n", ErrSyntax, `m.te:3: want true or false`},
		"bad character":       {head + "allow a_t b_t:file read; @\n", ErrSyntax, `m.te:3: unexpected character "@"`},
		"non-ASCII":           {head + "type é_t;\n", ErrSyntax, `m.te:3: unexpected character "\\xc3"`},
		"unterminated string": {head + "type_transition a_t b_t:file b_t \"x;\n", ErrSyntax, `m.te:3: unterminated string`},
		"skipped statement without semicolon": {head + "optional {\ntype_transition a_t b_t:file b_t\n}\n", ErrSyntax,
			`m.te:5: "type_transition" statement on line 4 ends without ';' before '}'`},
		"required as the wrong kind": {head + "require { type dom; }\n", ErrSyntax, `m.te:3: "dom" is required as type but declared as attribute`},
		"alias of an alias":          {head + "typealias a_t alias x_t;\ntypealias x_t alias y_t;\n", ErrSyntax, `m.te:4: "x_t" is an alias; an alias must name a type: use "a_t"`},
		"alias cycle":                {head + "type c_t;\ntypealias y_t alias x_t;\ntypealias x_t alias y_t;\n", ErrSyntax, `m.te:4: "y_t" is an alias`},
		"bad require entry":          {"module m 1;\nrequire {\n\tallow a_t b_t:file read;\n}\n", ErrSyntax, `m.te:3: unexpected "allow" in require`},
		"number as a type":           {head + "allow 42 b_t:file read;\n", ErrSyntax, `m.te:3: want type name, found "42"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseTE("m.te", []byte(tc.src))
			if err == nil {
				t.Fatalf("ParseTE accepted:\n%s", tc.src)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("error %v does not match %v", err, tc.sentinel)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "m.te" || pe.Line == 0 {
				t.Errorf("error %v is not a *ParseError with file and line", err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error:\n got %s\nwant %s...", err, tc.want)
			}
		})
	}
}
