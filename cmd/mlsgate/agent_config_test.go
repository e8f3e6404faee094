package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/viper"
)

// TestDeployedAgentConfig: the documented example parses, every key in
// it is known, and the environment overrides it.
func TestDeployedAgentConfig(t *testing.T) {
	t.Setenv("MLSGATE_EVENT_RATE", "3")
	cmd := newAgentCmd()
	cfg, err := loadAgentConfig(viper.New(), "../../deploy/agent.yaml", cmd)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PinDir != "/sys/fs/bpf/mlsgate" || cfg.SPIBase != 0xc0000000 || cfg.ResyncInterval != 5*time.Minute || cfg.Integrity["analyst_t"] != 5 {
		t.Errorf("example config read as %+v", cfg)
	}
	if cfg.EventRate != 3 {
		t.Errorf("MLSGATE_EVENT_RATE not applied: %v", cfg.EventRate)
	}
	bad := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(bad, []byte("pin_dri: /x\n"), 0o644)
	if _, err := loadAgentConfig(viper.New(), bad, newAgentCmd()); err == nil || !strings.Contains(err.Error(), "pin_dri") {
		t.Errorf("misspelt key: %v", err)
	}
	os.WriteFile(bad, []byte("default_integrity: i99\n"), 0o644)
	if _, err := loadAgentConfig(viper.New(), bad, newAgentCmd()); err == nil {
		t.Errorf("integrity i99 accepted")
	}
}
