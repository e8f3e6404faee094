package main

import (
	"strings"
	"testing"
)

func TestRunLabel(t *testing.T) {
	var out strings.Builder
	if err := run([]string{"label", "bounds", "s6-s15/i5-i15", "s0:c3,c2,c1/i1"}, &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "s6-s15/i5-i15\ns0:c1.c3/i1\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	err := run([]string{"label", "level", "s3:c1.cx"}, &out)
	if err == nil || !strings.Contains(err.Error(), `"cx"`) {
		t.Errorf("error %v, want one naming the bad token \"cx\"", err)
	}
	if err := run([]string{"label", "colour", "s1"}, &out); err == nil || !strings.Contains(err.Error(), "want level") {
		t.Errorf("error %v, want one listing the kinds", err)
	}
}
