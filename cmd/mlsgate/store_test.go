package main

import (
	"strings"
	"testing"
)

func TestStoreCommands(t *testing.T) {
	var out strings.Builder
	if err := run([]string{"store", "check", "../../examples/analyst"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "2 applications") || !strings.Contains(out.String(), "analyst") {
		t.Errorf("check output:\n%s", out.String())
	}
	out.Reset()
	err := run([]string{"store", "resolve", "--apps", "../../examples/analyst", "-o", "json",
		"http://ws1.analyst.example/profile", "http://nobody.example/"}, &out)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 URLs") {
		t.Errorf("resolve error %v, want one counting the URL that did not resolve", err)
	}
	for _, want := range []string{`"app": "analyst"`, `"server": "ws1"`, `"range": "s6-s15/i5-i10"`, `no application claims host \"nobody.example\"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("resolve output lacks %s:\n%s", want, out.String())
		}
	}
}
