package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchCommand runs the two benchmarks that need no privileges in
// quick mode and checks the results folder.
func TestBenchCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "results")
	var out bytes.Buffer
	if err := run([]string{"bench", "mapper", "bundle", "--quick", "--out", dir, "--apps", "../../examples/analyst"}, &out); err != nil {
		t.Fatal(err)
	}
	var r struct {
		Quick     bool            `json:"quick"`
		Mapper    json.RawMessage `json:"mapper"`
		MapperAPI json.RawMessage `json:"mapper_api"`
		Bundle    json.RawMessage `json:"bundle"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil || !r.Quick || len(r.Mapper) == 0 || len(r.MapperAPI) == 0 || len(r.Bundle) == 0 {
		t.Errorf("results.json: %v, %s", err, b)
	}
	for _, f := range []string{"report.md", "per-packet.svg"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(out.String(), "Label mapper over its HTTP API") || !strings.Contains(out.String(), "results: ") {
		t.Errorf("output:\n%s", out.String())
	}
	if err := run([]string{"bench", "fastpth"}, &out); err == nil || !strings.Contains(err.Error(), "fastpth") {
		t.Errorf("misspelt benchmark: %v", err)
	}
}
