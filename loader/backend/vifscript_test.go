package backend

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// vifScript is the project's vif hotplug script.
const vifScript = "../../deploy/xen/vif-mlsgate"

// runVifScript runs the hotplug script as libxl would for vif<domid>.0,
// with xenstore-read, xenstore-write, ip, logger and mlsgate replaced by
// stubs that log their command lines to one file; xenstore holds keys, and
// mlsgate exits with mlsgateRC. It returns the log and the script's error.
func runVifScript(t *testing.T, action string, keys map[string]string, mlsgateRC int) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	logf := filepath.Join(dir, "log")
	store := filepath.Join(dir, "store")
	os.Mkdir(store, 0o755)
	for k, v := range keys {
		os.WriteFile(filepath.Join(store, strings.ReplaceAll(k, "/", "_")), []byte(v), 0o644)
	}
	stub := func(name, body string) {
		s := "#!/bin/sh\necho \"" + name + " $*\" >> " + logf + "\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stub("xenstore-read", `f="`+store+`/$(echo "$1" | tr / _)"; [ -f "$f" ] || exit 1; cat "$f"`)
	stub("xenstore-write", "")
	stub("ip", "")
	stub("logger", "")
	stub("mlsgate", "exit "+string(rune('0'+mlsgateRC)))
	script, err := filepath.Abs(vifScript)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script, action)
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "vif=vif12.0", "XENBUS_PATH=backend/vif/12/0",
		"MLSGATE=" + filepath.Join(bin, "mlsgate"), "MLSGATE_AGENT=unix:/tmp/agent.sock"}
	out, err := cmd.CombinedOutput()
	b, _ := os.ReadFile(logf)
	if err != nil {
		return string(b), &CmdError{Cmd: []string{"vif-mlsgate", action}, Output: string(out), Err: err}
	}
	return string(b), nil
}

func TestVifScriptOnline(t *testing.T) {
	log, err := runVifScript(t, "online", map[string]string{
		"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.2/24 fd71:7::2/64",
	}, 0)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	lines := strings.Split(strings.TrimSpace(log), "\n")
	idx := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		t.Errorf("no %q in:\n%s", prefix, log)
		return -1
	}
	set := idx("mlsgate guest set vif12.0")
	up := idx("ip link set dev vif12.0 up")
	connected := idx("xenstore-write backend/vif/12/0/hotplug-status connected")
	if !(set >= 0 && set < up && up < connected) {
		t.Errorf("want the declaration, then the vif up, then connected:\n%s", log)
	}
	want := "mlsgate guest set vif12.0 --agent unix:/tmp/agent.sock --vm 12 --app 0 --range s0/i0 --mac 02:6d:6c:00:00:07 --wait 10s " +
		"--addr4 10.71.7.2 --host-addr4 10.71.7.1 --addr6 fd71:7::2 --host-addr6 fe80::1"
	if set >= 0 && lines[set] != want {
		t.Errorf("declaration\n%s\nwant\n%s", lines[set], want)
	}
	for _, l := range []string{
		"ip addr add 10.71.7.1/32 dev vif12.0", "ip route add 10.71.7.2/32 dev vif12.0 src 10.71.7.1",
		"ip -6 addr add fd71:7:0:0:0:0:0:1/128 dev vif12.0 nodad", "ip -6 route add fd71:7::2/128 dev vif12.0",
	} {
		if idx(l) < up {
			t.Errorf("%q missing or before the vif is up", l)
		}
	}
	if strings.Contains(log, "master") {
		t.Errorf("the vif joined a bridge:\n%s", log)
	}
}

// TestVifScriptAgentDown: when the agent does not take the guest, the vif
// stays down and libxl sees an error, so xl create fails.
func TestVifScriptAgentDown(t *testing.T) {
	log, err := runVifScript(t, "online", map[string]string{
		"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.2/24",
	}, 1)
	if err == nil {
		t.Fatalf("the script succeeded with the agent down:\n%s", log)
	}
	if strings.Contains(log, "vif12.0 up") || strings.Contains(log, "hotplug-status connected") {
		t.Errorf("the vif came up or was reported connected:\n%s", log)
	}
	if !strings.Contains(log, "hotplug-status error") {
		t.Errorf("no hotplug-status error written:\n%s", log)
	}
}

func TestVifScriptRefuses(t *testing.T) {
	for name, keys := range map[string]map[string]string{
		"no ip":             {"backend/vif/12/0/mac": "02:6d:6c:00:00:07"},
		"no prefix":         {"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.2"},
		"no mac":            {"backend/vif/12/0/ip": "10.71.7.2/24"},
		"guest is the host": {"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.1/24"},
		"host route":        {"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.2/32"},
	} {
		t.Run(name, func(t *testing.T) {
			log, err := runVifScript(t, "online", keys, 0)
			if err == nil || strings.Contains(log, "mlsgate guest set") || strings.Contains(log, "vif12.0 up") {
				t.Errorf("the script accepted %v: %v\n%s", keys, err, log)
			}
		})
	}
}

func TestVifScriptOffline(t *testing.T) {
	log, err := runVifScript(t, "offline", nil, 1)
	if err != nil {
		t.Fatalf("offline with the declaration already gone: %v", err)
	}
	if !strings.Contains(log, "mlsgate guest rm vif12.0 --agent unix:/tmp/agent.sock") {
		t.Errorf("offline did not forget the declaration:\n%s", log)
	}
}

// TestVifScriptIPv4NoLinkLocal: an IPv4-only guest's vif gets no
// link-local address of the kernel's own either (addrgenmode none before
// the vif comes up), or dom0 sends router solicitations and MLD reports
// from it into the guest, which the fast path denies as control traffic
// (seen as stray deny_control verdicts in the Xen demo).
func TestVifScriptIPv4NoLinkLocal(t *testing.T) {
	log, err := runVifScript(t, "online", map[string]string{
		"backend/vif/12/0/mac": "02:6d:6c:00:00:07", "backend/vif/12/0/ip": "10.71.7.2/24",
	}, 0)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	gen := strings.Index(log, "ip link set dev vif12.0 addrgenmode none")
	up := strings.Index(log, "ip link set dev vif12.0 up")
	if gen < 0 || up < 0 || gen > up {
		t.Errorf("want addrgenmode none before the vif is up:\n%s", log)
	}
}
