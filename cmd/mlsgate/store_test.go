package main

import (
	"os"
	"path/filepath"
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

func TestStoreBundleCommand(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	err := run([]string{"store", "bundle", "analyst", "--apps", "../../examples/analyst",
		"--ca", filepath.Join(dir, "ca"), "--out", filepath.Join(dir, "b"), "--guest", "vm7", "--guest-addr", "10.70.0.7"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bundle analyst v1 for guest vm7", "compliant", "10 SAs", "4 certificates"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, f := range []string{"bundle.json", "mapper.policy", "mlsgate_analyst.te", "mlsgate_analyst_host.te", "certs/vm7.pem", "certs/vm7-key.pem", "certs/ws1.pem"} {
		if _, err := os.Stat(filepath.Join(dir, "b", f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "b", "bundle.json")); err == nil && fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("bundle.json holds SA keys but has mode %v", fi.Mode().Perm())
	}
	// The mapper accepts the policy the store generated.
	out.Reset()
	if err := run([]string{"mapper", "check", filepath.Join(dir, "b", "mapper.policy")}, &out); err != nil || !strings.Contains(out.String(), "6 map rules, 1 forward rules") {
		t.Fatalf("mapper check: %v\n%s", err, out.String())
	}
	// A host not cleared for the guest's range gets no bundle.
	err = run([]string{"store", "bundle", "analyst", "--apps", "../../examples/analyst", "--out", filepath.Join(dir, "c"), "--clearance", "s0-s5/i0-i15"}, &out)
	if err == nil || !strings.Contains(err.Error(), "not within the host's clearance") {
		t.Fatalf("bundle beyond clearance: %v", err)
	}
}

func TestMapperLookupCommand(t *testing.T) {
	// No forward rules: nothing leaves the process.
	policy := filepath.Join(t.TempDir(), "p.policy")
	src := "map https?://ws1\\.analyst\\.example/profile(/.*)? system_u:object_r:analyst_t:s10 i8\nmap https?://ws3\\.analyst\\.example/.* s4/i5\ndefault s0/i0\n"
	if err := os.WriteFile(policy, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run([]string{"mapper", "lookup", "--policy", policy, "-o", "json", "http://ws1.analyst.example/profile", "http://nobody.example/"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"label": "s10/i8"`, `"source": "rule"`, `"label": "s0/i0"`, `"source": "default"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("lookup output lacks %s:\n%s", want, out.String())
		}
	}
	if err := os.WriteFile(policy, []byte("map ( s1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"mapper", "check", policy}, &out); err == nil || !strings.Contains(err.Error(), "p.policy:1") {
		t.Fatalf("bad policy: %v", err)
	}
}
