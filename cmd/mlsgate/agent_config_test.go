package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDeployedAgentConfig: the documented example parses, every key in
// it is known, and the environment overrides it.
func TestDeployedAgentConfig(t *testing.T) {
	t.Setenv("MLSGATE_AGENT_EVENT_RATE", "3")
	cfg, _, err := loadAgentConfig(daemonCmd(t, []string{"agent"}, "--config", exampleCopy(t, "agent")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PinDir != "/sys/fs/bpf/mlsgate" || cfg.SPIBase != 0xc0000000 || cfg.ResyncInterval != 5*time.Minute || cfg.Integrity["analyst_t"] != 5 {
		t.Errorf("example config read as %+v", cfg)
	}
	if cfg.EventRate != 3 {
		t.Errorf("MLSGATE_AGENT_EVENT_RATE not applied: %v", cfg.EventRate)
	}
	bad := filepath.Join(t.TempDir(), "agent.yaml")
	load := func(body string) error {
		t.Helper()
		if err := os.WriteFile(bad, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := loadAgentConfig(daemonCmd(t, []string{"agent"}, "--config", bad))
		return err
	}
	if err := load("enforce: true\npin_dri: /x\n"); err == nil || !strings.Contains(err.Error(), `line 2: unknown key "pin_dri" (did you mean "pin_dir"?)`) || !strings.Contains(err.Error(), bad) {
		t.Errorf("misspelt key: %v", err)
	}
	if err := load("default_integrity: i99\n"); err == nil {
		t.Errorf("integrity i99 accepted")
	}
	if err := load("integrity:\n  analyst_t: i99\n"); err == nil || !strings.Contains(err.Error(), "analyst_t") {
		t.Errorf("integrity.analyst_t i99: %v", err)
	}
}
