// Package deploy holds the systemd units and the example configuration;
// its tests check the units.
package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// units are the daemons' units, with the capabilities each may keep.
var units = map[string]string{
	"mlsgate-agent.service":  "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_RESOURCE",
	"mlsgate-loader.service": "CAP_NET_ADMIN CAP_SYS_ADMIN CAP_IPC_LOCK CAP_SYS_RESOURCE CAP_KILL",
	"mlsgate-store.service":  "",
	"mlsgate-mapper.service": "",
}

// directives reads a unit's Key=value lines (the last one of each key
// wins, as for the settings checked here).
func directives(t *testing.T, name string) map[string]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: line %q is not Key=value", name, line)
			continue
		}
		d[k] = v
	}
	return d
}

// TestUnitsHardening checks the settings every daemon's unit must carry.
func TestUnitsHardening(t *testing.T) {
	for name, caps := range units {
		t.Run(name, func(t *testing.T) {
			d := directives(t, name)
			want := map[string]string{
				"Type": "notify", "NotifyAccess": "main", "UMask": "0077", "NoNewPrivileges": "yes",
				"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
				"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
				"ProtectControlGroups": "yes", "SystemCallArchitectures": "native",
				"RuntimeDirectory": "mlsgate", "RuntimeDirectoryMode": "0750", "RuntimeDirectoryPreserve": "yes",
				"Group": "mlsgate", "CapabilityBoundingSet": caps, "AmbientCapabilities": "",
			}
			for k, v := range want {
				if got, ok := d[k]; !ok || got != v {
					t.Errorf("%s=%q, want %q", k, got, v)
				}
			}
			for _, k := range []string{"StartLimitIntervalSec", "StartLimitBurst", "RestrictAddressFamilies", "SystemCallFilter", "ExecStart"} {
				if d[k] == "" {
					t.Errorf("%s missing", k)
				}
			}
			if !strings.HasPrefix(d["ExecStart"], "/usr/local/bin/mlsgate ") {
				t.Errorf("ExecStart=%s: want /usr/local/bin/mlsgate", d["ExecStart"])
			}
		})
	}
}

// TestUnitsVerify runs systemd-analyze verify on every unit, in a root
// made for it (the host's system units, the units, and a stand-in for the
// binary, since verify checks that ExecStart is executable): it must print
// nothing (an unknown or misspelt key is only a warning) and succeed.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	sys := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(sys, "sysinit.target")); err != nil {
		t.Skipf("no systemd units in %s to verify against", sys)
	}
	root := t.TempDir()
	for _, d := range []string{"usr/local/bin", "etc/systemd/system", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", sys, filepath.Join(root, "usr/lib/systemd")+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", sys, err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/mlsgate"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name := range units {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name := range units {
		out, err := exec.Command("systemd-analyze", "verify", "--root="+root, name).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestUnitsSecurity measures each unit with systemd-analyze security
// (offline: nothing is installed) and holds every one, the agent first, at
// an exposure of 5.0 or less.
func TestUnitsSecurity(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	for name := range units {
		out, err := exec.Command("systemd-analyze", "security", "--offline=yes", "--no-pager", name).CombinedOutput()
		m := exposureRE.FindSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %v, no overall exposure in:\n%s", name, err, out)
			continue
		}
		x, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("%s: exposure %.1f", name, x)
		if x > 5.0 {
			t.Errorf("%s: exposure %.1f, want 5.0 or less:\n%s", name, x, out)
		}
	}
}
