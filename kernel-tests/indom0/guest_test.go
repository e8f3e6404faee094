package indom0

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
)

// TestXenGuest creates PV guests with `xl create` through loader/backend.Xen
// while the static mlsgate agent runs in dom0. The agent learns each guest
// before its domain exists (Xen hands out domids in order, so a fresh dom0's
// first guest is domid 1), attaches to vif<domid>.0 when netback makes it,
// passes the guest's pings from its own address (ingress allow_default) and
// drops those from an address it does not own (deny_spoofed); xl destroy
// removes the vif and the agent its map entry. Along the way it measures VM
// start: from xl create to the first allowed packet, and from a paused
// pre-loaded guest through policy push and xl unpause.
func TestXenGuest(t *testing.T) {
	requireDom0(t)
	echoes := countEchoes(t)
	ag := startAgent(t)
	g1Addr, g1Host := link(1)
	g2Addr, g2Host := link(2)
	ag.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.PrefixFrom(g1Host, 32), App: 1, Range: guestSpec(t, 1, g1Addr).Range, Kind: 3}})

	var progMu sync.Mutex
	var created time.Time
	x := xenBackend(t, ag, func(s string) {
		if strings.Contains(s, "xl create returned") {
			progMu.Lock()
			created = time.Now()
			progMu.Unlock()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var booted []*loader.Guest
	t.Cleanup(func() {
		for _, g := range booted {
			x.Destroy(context.Background(), g)
		}
	})

	// Guest 1, from scratch.
	ag.put("/v1/guests/"+backend.IfName(1), guestSpec(t, 1, g1Addr))
	console := watchConsole(t, "mlsg-vm1", "xenguest: init", "xenguest: eth0 up")
	t0 := time.Now()
	g1, err := x.Boot(ctx, spec(1, g1Addr, g1Host))
	if err != nil {
		t.Fatalf("boot guest 1: %v", err)
	}
	booted = append(booted, g1)
	vifAt := time.Now()
	if g1.VM != 1 || g1.Interface != "vif1.0" {
		t.Fatalf("the first guest of a fresh dom0 is domid %d (%s); the test declared vif1.0 before creating it", g1.VM, g1.Interface)
	}
	_, attachedAt := ag.waitStatus("vif1.0 attached", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, "vif1.0")
		return ok && g.Present && g.Attached
	})
	firstAt := echoes.waitEchoes(t, g1Addr, 1, 2*time.Minute)
	_, first := echoes.get(g1Addr)
	if first.Before(attachedAt) {
		// The status poll runs every 20 ms; only a packet well before it
		// slipped past an unattached vif.
		if attachedAt.Sub(first) > 100*time.Millisecond {
			t.Errorf("the guest's first packet reached dom0 %v before the agent reported vif1.0 attached: it was not enforced", attachedAt.Sub(first))
		}
	}
	progMu.Lock()
	createdAt := created
	progMu.Unlock()
	echoes.waitEchoes(t, g1Addr, 15, 2*time.Minute)
	time.Sleep(300 * time.Millisecond)
	st, _ := ag.status()
	allowed, _ := echoes.get(g1Addr)
	spoofed, _ := echoes.get(spoofAddr)
	t.Logf("guest 1 (domid %d, %s): %d echo requests from %s reached dom0, %d from the spoofed %s; ingress counters %v",
		g1.VM, g1.Interface, allowed, g1Addr, spoofed, spoofAddr, st.Counters["ingress"])
	if spoofed != 0 {
		t.Errorf("%d packets from the spoofed source %s reached dom0 through vif1.0", spoofed, spoofAddr)
	}
	if n := counters(st, "deny_spoofed"); n < 5 {
		t.Errorf("ingress deny_spoofed = %d, want at least 5 (the guest pings from %s five times a second)", n, spoofAddr)
	}
	if n := counters(st, "allow_default"); n < allowed {
		t.Errorf("ingress allow_default = %d, but %d echo requests from the guest arrived: allowed traffic passed uncounted", n, allowed)
	}
	phases(t, "VM start from scratch, xl create → first allowed packet", t0, []mark{
		{"xl create returned", createdAt},
		{"vif1.0 present (Boot returned)", vifAt},
		{"agent: vif1.0 attached", attachedAt},
		{"guest init running (console)", console.at("xenguest: init")},
		{"guest eth0 up (console)", console.at("xenguest: eth0 up")},
		{"first allowed packet at dom0", firstAt},
	})

	// Destroy: the vif goes, and the agent's entry with it.
	d0 := time.Now()
	if err := x.Destroy(ctx, g1); err != nil {
		t.Fatalf("destroy guest 1: %v", err)
	}
	booted = booted[:0]
	destroyed := time.Now()
	waitGone(t, "vif1.0")
	goneAt := time.Now()
	_, detachedAt := ag.waitStatus("vif1.0 removed from the maps", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, "vif1.0")
		return ok && !g.Present && !g.Attached && s.Maps.Vifs == 0
	})
	phases(t, "teardown", d0, []mark{{"xl destroy (Backend.Destroy)", destroyed}, {"vif1.0 gone", goneAt}, {"agent: not present, vifs 0", detachedAt}})

	// Guest 2: pre-loaded, paused, then handed out with a policy push and
	// xl unpause. It is declared before creation like guest 1, so not one
	// of its packets passes unenforced; the hand-out pushes its application
	// (2) and the host peer of that application.
	ag.put("/v1/guests/"+backend.IfName(2), guestSpec(t, 2, g2Addr))
	g2, err := x.Boot(ctx, spec(2, g2Addr, g2Host))
	if err != nil {
		t.Fatalf("boot guest 2: %v", err)
	}
	booted = append(booted, g2)
	if g2.VM != 2 {
		t.Fatalf("the second guest is domid %d, the test declared vif2.0", g2.VM)
	}
	echoes.waitEchoes(t, g2Addr, 1, 2*time.Minute)
	p0 := time.Now()
	if err := x.Pause(ctx, g2); err != nil {
		t.Fatal(err)
	}
	pauseTook := time.Since(p0)
	time.Sleep(time.Second) // what was in flight lands
	before, _ := echoes.get(g2Addr)
	time.Sleep(time.Second)
	if n, _ := echoes.get(g2Addr); n != before {
		t.Errorf("%d packets from the paused guest 2 arrived", n-before)
	}
	stBefore, _ := ag.status()
	h0 := time.Now()
	spec2 := guestSpec(t, 2, g2Addr)
	spec2.App = 2
	ag.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.PrefixFrom(g2Host, 32), App: 2, Range: spec2.Range, Kind: 3}})
	ag.put("/v1/guests/"+backend.IfName(2), spec2)
	_, pushedAt := ag.waitStatus("vif2.0 serves application 2", 30*time.Second, func(s agent.Status) bool {
		g, ok := guestOf(s, "vif2.0")
		return ok && g.Attached && g.App == 2
	})
	if err := x.Unpause(ctx, g2); err != nil {
		t.Fatal(err)
	}
	unpausedAt := time.Now()
	nextAt := echoes.waitEchoes(t, g2Addr, before+1, time.Minute)
	echoes.waitEchoes(t, g2Addr, before+5, time.Minute)
	time.Sleep(300 * time.Millisecond)
	stAfter, _ := ag.status()
	got, _ := echoes.get(g2Addr)
	if d := counters(stAfter, "allow_default") - counters(stBefore, "allow_default"); d < got-before {
		t.Errorf("after unpause %d echo requests arrived but ingress allow_default grew by %d", got-before, d)
	}
	if n, _ := echoes.get(spoofAddr); n != 0 {
		t.Errorf("%d spoofed packets reached dom0", n)
	}
	t.Logf("xl pause took %v", pauseTook.Round(time.Millisecond))
	phases(t, "VM start from a paused pre-loaded guest, hand-out → first allowed packet", h0, []mark{
		{"policy push (PUT guest, agent applied)", pushedAt},
		{"xl unpause (Backend.Unpause)", unpausedAt},
		{"first allowed packet at dom0", nextAt},
	})
	if err := x.Destroy(ctx, g2); err != nil {
		t.Fatalf("destroy guest 2: %v", err)
	}
	booted = booted[:0]
	waitGone(t, "vif2.0")
	ag.waitStatus("vif2.0 removed from the maps", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, "vif2.0")
		return ok && !g.Present && s.Maps.Vifs == 0
	})
}

// waitGone waits, bounded, until the interface is gone from dom0.
func waitGone(t *testing.T, iface string) {
	t.Helper()
	for range 1500 {
		if _, err := os.Stat("/sys/class/net/" + iface); os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s still exists 30 s after xl destroy", iface)
}

// consoleWatch records when markers first appear on a guest's console.
type consoleWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func (c *consoleWatch) at(m string) time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.seen[m] }

// watchConsole polls the console log of the domain name (xenconsoled's)
// every 20 ms until every marker showed or the test ends.
func watchConsole(t *testing.T, name string, markers ...string) *consoleWatch {
	c := &consoleWatch{seen: map[string]time.Time{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 15000 {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			c.mu.Lock()
			for _, m := range markers {
				if c.seen[m].IsZero() && guestConsole(name, m) {
					c.seen[m] = time.Now()
				}
			}
			n := len(c.seen)
			c.mu.Unlock()
			if n == len(markers) {
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return c
}
