package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
)

// Config is the agent's configuration: /etc/mlsgate/agent.yaml, MLSGATE_AGENT_*
// environment variables and flags, merged by the command (see
// deploy/agent.yaml for the documented example).
type Config struct {
	// StateDir keeps the desired state (guests, peers, static SAs) across
	// restarts.
	StateDir string `mapstructure:"state_dir"`
	// PinDir is where the maps and links are pinned in bpffs.
	PinDir string `mapstructure:"pin_dir"`
	// Listen serves /metrics, /healthz and /readyz on TCP, nothing else;
	// "" for none.
	Listen string `mapstructure:"listen"`
	// Socket serves the API (status, guests, peers, SAs, events) and the
	// same health and metrics on a Unix socket; "" for none (then nothing
	// can change the agent's policy while it runs).
	Socket string `mapstructure:"socket"`
	// SocketGroup may use the socket besides root: the socket is made
	// 0660 root:SocketGroup. A group that does not exist (or "") leaves
	// the socket to root alone.
	SocketGroup string `mapstructure:"socket_group"`
	// Interfaces are the glob patterns (filepath.Match) of interface names
	// the agent may manage, e.g. "vif*". An interface is managed only when
	// it matches and a guest is declared on it: the agent never guesses.
	Interfaces []string `mapstructure:"interfaces"`
	// Undeclared says what happens on an interface that matches Interfaces
	// but has no declared guest: "deny" (the default; also "") attaches the
	// programs with a deny-all entry, reason deny_undeclared; "pass" leaves
	// it alone (unfiltered), as before, for a migration.
	Undeclared string `mapstructure:"undeclared"`
	// Enforce drops denied packets; false only counts and reports them.
	Enforce bool `mapstructure:"enforce"`
	// SPIBase and SPISlots: the host's SPI range, kept in a dense array.
	SPIBase  uint32 `mapstructure:"spi_base"`
	SPISlots uint32 `mapstructure:"spi_slots"`
	// APIPort is the host's TCP port guests may reach (the loader's API).
	APIPort uint16 `mapstructure:"api_port"`
	// EventSample sends 1 in N denials to the event ring (0: none).
	EventSample uint32 `mapstructure:"event_sample"`
	// EventRate caps denial log lines per second.
	EventRate float64 `mapstructure:"event_rate"`
	// ResyncInterval: this often the agent plans everything in full (the
	// safety net of the incremental sync) and counts what that corrects in
	// mlsgate_reconcile_drift_total; 0 never.
	ResyncInterval time.Duration `mapstructure:"resync_interval"`
	// DriftInterval reads the links and the vifs map back this often and
	// repairs what changed behind the agent's back (0: never).
	DriftInterval time.Duration `mapstructure:"drift_interval"`
	// Integrity gives the integrity of SA contexts by SELinux type
	// (PIDSI); types not listed get DefaultIntegrity.
	Integrity        map[string]label.Integrity `mapstructure:"integrity"`
	DefaultIntegrity label.Integrity            `mapstructure:"default_integrity"`
}

// DefaultConfig is what the agent runs with when nothing is configured.
func DefaultConfig() Config {
	o := bpf.DefaultOptions()
	return Config{
		StateDir:       "/var/lib/mlsgate/agent",
		PinDir:         "/sys/fs/bpf/mlsgate",
		Listen:         "127.0.0.1:9471",
		Socket:         "/run/mlsgate/agent.sock",
		SocketGroup:    "mlsgate",
		Interfaces:     []string{"vif*"},
		Undeclared:     UndeclaredDeny,
		Enforce:        true,
		SPIBase:        o.SPIBase,
		SPISlots:       o.SPISlots,
		EventSample:    1,
		EventRate:      20,
		ResyncInterval: 5 * time.Minute,
		DriftInterval:  30 * time.Second,
	}
}

// Validate checks the configuration and names the bad field.
func (c *Config) Validate() error {
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state_dir %q: want an absolute path", c.StateDir)
	}
	if c.PinDir == "" || !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("pin_dir %q: want an absolute path under a bpffs mount (/sys/fs/bpf/...)", c.PinDir)
	}
	if len(c.Interfaces) == 0 {
		return errors.New("interfaces: give at least one pattern, e.g. vif*")
	}
	for _, p := range c.Interfaces {
		if _, err := filepath.Match(p, "x"); err != nil {
			return fmt.Errorf("interfaces: bad pattern %q: %v", p, err)
		}
	}
	switch c.Undeclared {
	case "", UndeclaredDeny, UndeclaredPass:
	default:
		return fmt.Errorf("undeclared %q: want deny (the default: interfaces without a declared guest drop everything) or pass", c.Undeclared)
	}
	if uint64(c.SPIBase)+uint64(c.SPISlots) > 1<<32 {
		return fmt.Errorf("spi_base %#x + spi_slots %d passes 0xffffffff", c.SPIBase, c.SPISlots)
	}
	if c.EventRate < 0 {
		return fmt.Errorf("event_rate %v: want 0 (no denial logs) or more", c.EventRate)
	}
	if err := c.DefaultIntegrity.Validate(); err != nil {
		return fmt.Errorf("default_integrity: %w", err)
	}
	for t, i := range c.Integrity {
		if err := i.Validate(); err != nil {
			return fmt.Errorf("integrity.%s: %w", t, err)
		}
	}
	if c.ResyncInterval < 0 {
		return fmt.Errorf("resync_interval %v: want 0 (never) or more", c.ResyncInterval)
	}
	if c.DriftInterval < 0 {
		return fmt.Errorf("drift_interval %v: want 0 (never) or more, e.g. 30s", c.DriftInterval)
	}
	return nil
}

func (c *Config) bpfOptions() bpf.Options {
	return bpf.Options{SPIBase: c.SPIBase, SPISlots: c.SPISlots, APIPort: c.APIPort, Enforce: c.Enforce, EventSample: c.EventSample}
}

// enforcement is a guest's mode: "audit" when its denials are only
// counted (its flag, or enforce off for the whole agent), else "enforce".
func (c *Config) enforcement(g GuestSpec) string {
	if g.Audit || !c.Enforce {
		return "audit"
	}
	return "enforce"
}

// Values of Config.Undeclared.
const (
	UndeclaredDeny = "deny"
	UndeclaredPass = "pass"
)

// undeclaredMode is Undeclared with the default filled in.
func (c *Config) undeclaredMode() string {
	if c.Undeclared == "" {
		return UndeclaredDeny
	}
	return c.Undeclared
}

// manages reports whether an interface name matches the patterns.
func (c *Config) manages(name string) bool {
	for _, p := range c.Interfaces {
		if ok, _ := filepath.Match(p, name); ok {
			return true
		}
	}
	return false
}

// checkManaged refuses a guest declaration on an interface none of the
// patterns matches: the agent ignores such a link, so the guest would never
// be attached and would run unenforced while declared.
func (c *Config) checkManaged(iface string) error {
	if c.manages(iface) {
		return nil
	}
	return fmt.Errorf("interface %q matches none of the agent's patterns %q (config key interfaces, flag --interfaces): the agent never attaches to it; use a matching interface or add a pattern and restart the agent", iface, c.Interfaces)
}
