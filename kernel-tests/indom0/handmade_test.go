package indom0

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/kernel-tests/xendom0"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
)

// handConfig writes the xl config an administrator would write for guest
// vm, outside the loader, with the vif hotplug script script, and returns
// its path.
func handConfig(t *testing.T, name string, vm uint32, script string) string {
	t.Helper()
	addr, host := link(vm)
	cfg := fmt.Sprintf(`name = "%s"
type = "pv"
kernel = "%s"
ramdisk = "%s"
extra = "console=hvc0 quiet mlsgate.addr=%s/24 mlsgate.gw=%s xendom0.spoof=%s xendom0.pings=150"
memory = 96
vif = [ 'mac=%s,ip=%s/24,script=%s' ]
on_poweroff = "destroy"
on_crash = "destroy"
`, name, xendom0.GuestKernel, xendom0.GuestRamdisk, addr, host, spoofAddr, loader.GuestMAC(vm), addr, script)
	p := filepath.Join(t.TempDir(), name+".cfg")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// xl runs xl with a bound and returns its output.
func xl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/sbin/xl", args...).CombinedOutput()
	return string(out), err
}

// handDomain creates the domain of cfg with plain `xl create`, as an
// administrator (or xendomains) would, and returns its domid and vif; the
// domain is destroyed when the test ends.
func handDomain(t *testing.T, name, cfg string) (uint32, string) {
	t.Helper()
	t.Cleanup(func() { xl("destroy", name) })
	if out, err := xl("create", cfg); err != nil {
		t.Fatalf("xl create %s: %v\n%s", cfg, err, out)
	}
	out, err := xl("domid", name)
	if err != nil {
		t.Fatalf("xl domid %s: %v\n%s", name, err, out)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(out), 10, 32)
	if err != nil {
		t.Fatalf("xl domid %s: %q", name, out)
	}
	return uint32(id), backend.IfName(uint32(id))
}

// TestXenHandMadeDomain: a domain created by hand with `xl create`, outside
// the loader, is declared by vif-mlsgate from xenstore (its domid, address,
// MAC and the host's end of its routed link), in quarantine (application
// 0), and filtered: its plain traffic is dropped. xl destroy runs the
// script's offline, which forgets the declaration. With the agent stopped,
// the script refuses the vif: xl create fails and no vif of it is up.
func TestXenHandMadeDomain(t *testing.T) {
	requireDom0(t)
	echoes := countEchoes(t)
	ag := startAgent(t)
	const vm = 5
	addr, host := link(vm)
	mac := loader.GuestMAC(vm)
	before, _ := ag.status()

	domid, vif := handDomain(t, "hand5", handConfig(t, "hand5", vm, xendom0.VifScript))
	st, _ := ag.waitStatus(vif+" declared and attached", time.Minute, func(s agent.Status) bool {
		return loader.StatusAttached(s, vif)
	})
	g, _ := guestOf(st, vif)
	if g.VM != domid || g.App != 0 || g.Addr4 != addr || g.HostAddr4 != host || g.MAC != mac {
		t.Errorf("vif-mlsgate declared %+v; want domid %d, application 0, address %s, host-side %s, MAC %s", g.GuestSpec, domid, addr, host, mac)
	}
	// A routed link of its own: the host's end on the vif, a host route to
	// the guest through it, no bridge.
	l, err := netlink.LinkByName(vif)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MasterIndex != 0 {
		t.Errorf("%s is a port of ifindex %d: guests must not share a bridge", vif, l.Attrs().MasterIndex)
	}
	addrs, _ := netlink.AddrList(l, unix.AF_INET)
	if len(addrs) != 1 || addrs[0].IPNet.String() != host.String()+"/32" {
		t.Errorf("%s holds %v, want only the host's end %s/32", vif, addrs, host)
	}
	if r, err := netlink.RouteGet(addr.AsSlice()); err != nil || len(r) == 0 || r[0].LinkIndex != l.Attrs().Index {
		t.Errorf("dom0's route to %s: %v (%v), want through %s", addr, r, err, vif)
	}

	// The guest pings from its address and a spoofed one; in quarantine
	// neither reaches dom0.
	for range 600 {
		if guestConsole("hand5", "xenguest: eth0 up") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !guestConsole("hand5", "xenguest: eth0 up") {
		t.Fatal("the hand-made guest never brought eth0 up")
	}
	// Wait, bounded, for 20 denials (two pings five times a second).
	var after agent.Status
	denied := 0
	for range 600 {
		after, _ = ag.status()
		denied = 0
		for r, n := range after.Counters["ingress"] {
			if strings.HasPrefix(r, "deny_") {
				denied += int(n) - counters(before, r)
			}
		}
		if denied >= 20 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	n, _ := echoes.get(addr)
	s, _ := echoes.get(spoofAddr)
	t.Logf("hand-made guest (domid %d, %s): %d + %d echo requests arrived; ingress counters %v", domid, vif, n, s, after.Counters["ingress"])
	if n != 0 || s != 0 {
		t.Errorf("%d echo requests from %s and %d from %s reached dom0 from a guest in quarantine", n, addr, s, spoofAddr)
	}
	if denied < 20 {
		t.Errorf("ingress denials rose by %d in a minute, want at least 20 (two pings five times a second)", denied)
	}

	// xl destroy: the script's offline forgets the declaration.
	if out, err := xl("destroy", "hand5"); err != nil {
		t.Fatalf("xl destroy hand5: %v\n%s", err, out)
	}
	ag.waitStatus(vif+" forgotten", time.Minute, func(s agent.Status) bool {
		_, ok := guestOf(s, vif)
		return !ok
	})

	// The agent stops: the script cannot declare the next hand-made guest
	// and refuses its vif.
	ag.stop()
	cfg := handConfig(t, "hand6", 6, xendom0.VifScript)
	t.Cleanup(func() { xl("destroy", "hand6") })
	out, err := xl("create", cfg)
	if err == nil {
		t.Errorf("xl create succeeded with the agent stopped:\n%s", out)
	}
	if !strings.Contains(out, "vif-mlsgate") && !strings.Contains(out, "hotplug") {
		t.Logf("xl create's output does not name the script:\n%s", out)
	}
	if out, err := xl("domid", "hand6"); err == nil {
		t.Errorf("the domain hand6 exists (domid %s) although its vif was refused", strings.TrimSpace(out))
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "vif") && l.Attrs().Flags&unix.IFF_UP != 0 {
			t.Errorf("%s is up after the agent refused (was stopped)", l.Attrs().Name)
		}
	}
}

// TestXenUndeclaredVif: a vif of the agent's patterns that nobody declared
// (a routing hotplug script that does not talk to the agent) is denied
// everything, reason deny_undeclared.
func TestXenUndeclaredVif(t *testing.T) {
	requireDom0(t)
	echoes := countEchoes(t)
	ag := startAgent(t)
	mode, err := ag.undeclaredMode()
	if err != nil {
		t.Fatal(err)
	}
	if mode != "deny" {
		t.Errorf("agent status: undeclared %q, want deny by default", mode)
	}
	const vm = 7
	addr, host := link(vm)
	script := "/etc/xen/scripts/vif-nodeclare"
	body := fmt.Sprintf(`#!/bin/sh
case "$1" in
online | add)
	ip link set dev "$vif" up && ip addr add %s/32 dev "$vif" && ip route add %s/32 dev "$vif" src %s &&
		xenstore-write "$XENBUS_PATH/hotplug-status" connected || exit 1 ;;
esac
exit 0
`, host, addr, host)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(script) })
	before, _ := ag.status()
	_, vif := handDomain(t, "hand7", handConfig(t, "hand7", vm, filepath.Base(script)))
	for range 600 {
		if guestConsole("hand7", "xenguest: eth0 up") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Its ARP for the gateway is denied too, so the guest sends mostly ARP
	// requests (about one a second), few pings: wait, bounded, for 5.
	var after agent.Status
	d := 0
	for range 600 {
		after, _ = ag.status()
		if d = counters(after, "deny_undeclared") - counters(before, "deny_undeclared"); d >= 5 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	n, _ := echoes.get(addr)
	t.Logf("undeclared %s: deny_undeclared +%d, %d echo requests arrived; ingress counters %v", vif, d, n, after.Counters["ingress"])
	if n != 0 {
		t.Errorf("%d echo requests from the undeclared guest %s reached dom0", n, addr)
	}
	if d < 5 {
		t.Errorf("ingress deny_undeclared rose by %d in a minute, want at least 5", d)
	}
}

// undeclaredMode is the agent's "undeclared" status field ("deny",
// "pass"), "" for an agent that does not report one.
func (a *dom0Agent) undeclaredMode() (string, error) {
	resp, err := a.client.Get("http://agent/v1/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st struct {
		Undeclared string `json:"undeclared"`
	}
	return st.Undeclared, json.Unmarshal(b, &st)
}
