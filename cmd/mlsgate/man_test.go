package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPages: 'mlsgate man DIR' writes a page per command, with the
// command's flags and the inherited logging flags, dated by
// SOURCE_DATE_EPOCH so that the same tree gives the same pages.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	env := func(k string) string {
		if k == "SOURCE_DATE_EPOCH" {
			return "1764633600" // 2025-12-02
		}
		return ""
	}
	if err := writeManPages(newRoot(), dir, env); err != nil {
		t.Fatal(err)
	}
	for page, want := range map[string]string{
		"mlsgate.1":              "MLSGATE",
		"mlsgate-agent.1":        "--pin-dir",
		"mlsgate-status.1":       "--output",
		"mlsgate-version.1":      "VCS revision",
		"mlsgate-store-serve.1":  "--log-format",
		"mlsgate-mapper-serve.1": "--log-level",
	} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Errorf("%s: %v", page, err)
			continue
		}
		s := string(b)
		if !strings.HasPrefix(s, ".nh") && !strings.Contains(s, ".TH") {
			t.Errorf("%s is not a man page:\n%.200s", page, s)
		}
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %q", page, want)
		}
		if !strings.Contains(s, "Dec 2025") {
			t.Errorf("%s is not dated by SOURCE_DATE_EPOCH:\n%.300s", page, s)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "mlsgate-man.1")); err == nil {
		t.Error("the hidden man command has a page")
	}
	if err := writeManPages(newRoot(), t.TempDir(), func(string) string { return "yesterday" }); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
	// The command line: what 'make man' runs.
	if err := run([]string{"man", filepath.Join(t.TempDir(), "man")}, &strings.Builder{}); err != nil {
		t.Errorf("mlsgate man: %v", err)
	}
}
