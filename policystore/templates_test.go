package policystore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// builtinText returns the text of an embedded template.
func builtinText(t *testing.T, name string) string {
	t.Helper()
	b, err := builtinFS.ReadFile("templates/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// templateDir writes files into a fresh directory.
func templateDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDefaultTemplates(t *testing.T) {
	d := DefaultTemplates()
	for _, name := range TemplateNames() {
		if d.Source(name) != "" {
			t.Errorf("%s: source %q, want built-in", name, d.Source(name))
		}
		if _, ok := d.tmpl[name]; !ok {
			t.Errorf("%s missing from the built-in set", name)
		}
	}
	entries, err := builtinFS.ReadDir("templates")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(TemplateNames()) {
		t.Errorf("templates/ embeds %d files, TemplateNames lists %d: keep them in step", len(entries), len(TemplateNames()))
	}
}

func TestLoadTemplatesOverride(t *testing.T) {
	mapperText := strings.Replace(builtinText(t, TmplMapper), "default {{.DefaultLabel}}", "# site rule\ndefault {{.DefaultLabel}}", 1)
	teText := strings.Replace(builtinText(t, TmplGuestTE), "# Run its programs.", "# Site policy: run its programs.", 1)
	dir := templateDir(t, map[string]string{TmplMapper: mapperText, TmplGuestTE: teText, "README": "not a template"})
	set, err := LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := set.Source(TmplMapper), filepath.Join(dir, TmplMapper); got != want {
		t.Errorf("mapper template from %q, want %q", got, want)
	}
	if set.Source(TmplXFRM) != "" {
		t.Errorf("xfrm template from %q, want the built-in one", set.Source(TmplXFRM))
	}
	b, err := GenerateBundle(analystApp(t), analystRequest(), set)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.MapperPolicy, "# site rule\ndefault s0/i0") {
		t.Errorf("the override mapper template was not used:\n%s", b.MapperPolicy)
	}
	if !strings.Contains(b.Modules[0].TE, "# Site policy: run its programs.") {
		t.Error("the override guest.te template was not used")
	}
	if strings.Contains(b.Modules[1].TE, "Site policy") {
		t.Error("the host module picked up the guest override")
	}
}

// TestLoadTemplatesRefused: every broken set is refused as a whole, with
// an error naming the file, the line and the fix.
func TestLoadTemplatesRefused(t *testing.T) {
	xfrm := builtinText(t, TmplXFRM)
	cases := map[string]struct {
		files map[string]string
		want  []string
	}{
		"parse error": {
			map[string]string{TmplGuestTE: "# ok\n# ok\nmodule {{.Module 1.0;\n"},
			[]string{"guest.te.tmpl:3:", "fix ", "or remove it to fall back to the built-in guest.te.tmpl"},
		},
		"one good, one broken": {
			map[string]string{TmplMapper: builtinText(t, TmplMapper), TmplHostFC: "{{if}}\n"},
			[]string{"host.fc.tmpl:1:"},
		},
		"execution error": {
			map[string]string{TmplHostFC: "# line 1\n{{.NoSuchField}}\n"},
			[]string{"host.fc.tmpl:2:", "NoSuchField"},
		},
		"unknown field in rendered yaml": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "    action: block\n", "    action: block\n    sideways: true\n", 1)},
			[]string{"xfrm.yaml.tmpl", "field sideways not found", `"    sideways: true"`},
		},
		"key in yaml": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, `icv_bits: 128}}`, `icv_bits: 128, key: AAAA}}`, 1)},
			[]string{"field key not found"},
		},
		"invalid policy": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "    action: block\n", "    action: drop\n", 1)},
			[]string{"xfrm.yaml.tmpl", "rendered line", `action "drop"`},
		},
		"no catch-all": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "    dst: {{yq .Guest.Any}}\n", "    dst: \"203.0.113.0/24\"\n", 1)},
			[]string{"no unlabeled catch-all block policy pair"},
		},
		"catch-all above allows": {
			map[string]string{TmplXFRM: strings.ReplaceAll(xfrm, "priority: 2000", "priority: 900")},
			[]string{"the catch-all block has priority 900", "larger number"},
		},
		"clear path to a server": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "    dst: {{yq .Host.Prefix}}\n", "    dst: \"0.0.0.0/0\"\n", 1)},
			[]string{"in clear", "labeled tunnel"},
		},
		"invented spi": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "spi: {{$sa.OutSPI}}", "spi: 77777", 1)},
			[]string{"SPI 77777 was not allocated"},
		},
		"sa to elsewhere": {
			map[string]string{TmplXFRM: strings.Replace(xfrm, "dst: {{yq $.Host.Addr}}, spi:", `dst: "192.0.2.99", spi:`, 1)},
			[]string{"the SA runs 192.0.2.7→192.0.2.99"},
		},
		"wrong module name": {
			map[string]string{TmplHostTE: "module other 1.0;\n"},
			[]string{"host.te.tmpl", `the module is named "other"`},
		},
		"misspelt override": {
			map[string]string{"guest.te.tmp.tmpl": "x"},
			[]string{"not a template mlsgate uses"},
		},
		"mapper line": {
			map[string]string{TmplMapper: "# policy\nmap {{.MapperUpstream}}\n"},
			[]string{"mapper.policy.tmpl", `rendered line 2 "map http://192.0.2.1:7070"`, "want \"map <regex>"},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			set, err := LoadTemplates(templateDir(t, c.files))
			if err == nil {
				t.Fatal("the set was accepted")
			}
			if set != nil {
				t.Error("a refused set was returned as well")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
	if _, err := LoadTemplates(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "give a directory") {
		t.Errorf("missing directory: %v", err)
	}
}

// TestTemplateErrorAtGeneration: a template that passes the load-time
// self test but fails on a real application still names file and line.
func TestTemplateErrorAtGeneration(t *testing.T) {
	text := "# analyst-only\n{{if eq .App.Name \"analyst\"}}{{index .App.Integrity \"nope_t\"}}{{.Bogus}}{{end}}\n"
	set, err := LoadTemplates(templateDir(t, map[string]string{TmplHostFC: text}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = GenerateBundle(analystApp(t), analystRequest(), set)
	var te *TemplateError
	if !errors.As(err, &te) || te.File != TmplHostFC || !strings.Contains(err.Error(), "host.fc.tmpl:2:") {
		t.Fatalf("error %v: want a *TemplateError naming host.fc.tmpl:2", err)
	}
}
