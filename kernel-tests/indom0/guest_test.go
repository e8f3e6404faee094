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

// TestXenGuest creates PV guests with `xl create -p` through
// loader/backend.Xen while the static mlsgate agent runs in dom0. Each
// guest's vif is a routed link of its own (vif-mlsgate); the guest is
// declared while paused, and runs only once the agent reports its vif
// attached. The agent passes the guest's pings from its own address (ingress
// allow_default) and drops those from an address it does not own
// (deny_spoofed); xl destroy removes the vif and the agent its map entry. Along the way it measures VM
// start: from xl create to the first allowed packet, and from a paused
// pre-loaded guest through policy push and xl unpause.
func TestXenGuest(t *testing.T) {
	requireDom0(t)
	echoes := countEchoes(t)
	ag := startAgent(t)
	g1Addr, g1Host := link(1)
	g2Addr, g2Host := link(2)
	// Each guest reaches dom0 at its own host-side address.
	all := guestSpec(t, 1, g1Addr).Range
	ag.put("/v1/peers", []agent.PeerSpec{
		{Prefix: netip.PrefixFrom(g1Host, 32), App: 1, Range: all, Kind: 3},
		{Prefix: netip.PrefixFrom(g2Host, 32), App: 1, Range: all, Kind: 3},
	})

	var progMu sync.Mutex
	var created, unpaused time.Time
	x := xenBackend(t, ag, func(s string) {
		progMu.Lock()
		defer progMu.Unlock()
		switch {
		case strings.Contains(s, "xl create -p returned"):
			created = time.Now()
		case strings.Contains(s, "unpaused at"):
			unpaused = time.Now()
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
	console := watchConsole(t, "mlsg-vm1", "xenguest: init", "xenguest: eth0 up")
	t0 := time.Now()
	g1, err := x.Boot(ctx, spec(1, g1Addr, g1Host))
	if err != nil {
		t.Fatalf("boot guest 1: %v", err)
	}
	booted = append(booted, g1)
	vifAt := time.Now()
	if g1.Interface != backend.IfName(g1.VM) || g1.MAC != loader.GuestMAC(1) || g1.HostAddr != g1Host {
		t.Fatalf("Boot returned %+v: want vif<domid>.0, MAC %s, host address %s", g1, loader.GuestMAC(1), g1Host)
	}
	_, attachedAt := ag.waitStatus(g1.Interface+" attached", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, g1.Interface)
		return ok && g.Present && g.Attached
	})
	firstAt := echoes.waitEchoes(t, g1Addr, 1, 2*time.Minute)
	_, first := echoes.get(g1Addr)
	if first.Before(attachedAt) {
		// The status poll runs every 20 ms; only a packet well before it
		// slipped past an unattached vif.
		if attachedAt.Sub(first) > 100*time.Millisecond {
			t.Errorf("the guest's first packet reached dom0 %v before the agent reported %s attached: it was not enforced", attachedAt.Sub(first), g1.Interface)
		}
	}
	progMu.Lock()
	createdAt, unpausedAt1 := created, unpaused
	progMu.Unlock()
	echoes.waitEchoes(t, g1Addr, 15, 2*time.Minute)
	time.Sleep(300 * time.Millisecond)
	// Echoes first, then the counters: a packet is counted before dom0
	// sees it, so the counters read later cover every echo read before.
	allowed, _ := echoes.get(g1Addr)
	spoofed, _ := echoes.get(spoofAddr)
	st, _ := ag.status()
	t.Logf("guest 1 (domid %d, %s): %d echo requests from %s reached dom0, %d from the spoofed %s; ingress counters %v",
		g1.VM, g1.Interface, allowed, g1Addr, spoofed, spoofAddr, st.Counters["ingress"])
	if spoofed != 0 {
		t.Errorf("%d packets from the spoofed source %s reached dom0 through %s", spoofed, spoofAddr, g1.Interface)
	}
	if n := counters(st, "deny_spoofed"); n < 5 {
		t.Errorf("ingress deny_spoofed = %d, want at least 5 (the guest pings from %s five times a second)", n, spoofAddr)
	}
	if n := counters(st, "allow_default"); n < allowed {
		t.Errorf("ingress allow_default = %d, but %d echo requests from the guest arrived: allowed traffic passed uncounted", n, allowed)
	}
	phases(t, "VM start from scratch, xl create -p → first allowed packet", t0, []mark{
		{"xl create -p returned (vif routed, declared)", createdAt},
		{"agent attached, xl unpause returned", unpausedAt1},
		{"vif present (Boot returned)", vifAt},
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
	waitGone(t, g1.Interface)
	goneAt := time.Now()
	// vif-mlsgate's offline forgets the declaration; the map entry goes
	// with the vif either way.
	_, detachedAt := ag.waitStatus(g1.Interface+" removed from the maps", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, g1.Interface)
		return (!ok || !g.Present && !g.Attached) && s.Maps.Vifs == 0
	})
	phases(t, "teardown", d0, []mark{{"xl destroy (Backend.Destroy)", destroyed}, {"vif gone", goneAt}, {"agent: forgotten, vifs 0", detachedAt}})

	// Guest 2: pre-loaded, paused, then handed out with a policy push and
	// xl unpause. It is declared before creation like guest 1, so not one
	// of its packets passes unenforced; the hand-out pushes its application
	// (2) and the host peer of that application.
	g2, err := x.Boot(ctx, spec(2, g2Addr, g2Host))
	if err != nil {
		t.Fatalf("boot guest 2: %v", err)
	}
	booted = append(booted, g2)
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
	spec2 := guestSpecOf(t, g2)
	spec2.App = 2
	ag.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.PrefixFrom(g2Host, 32), App: 2, Range: spec2.Range, Kind: 3}})
	ag.put("/v1/guests/"+g2.Interface, spec2)
	_, pushedAt := ag.waitStatus(g2.Interface+" serves application 2", 30*time.Second, func(s agent.Status) bool {
		g, ok := guestOf(s, g2.Interface)
		return ok && g.Attached && g.App == 2
	})
	if err := x.Unpause(ctx, g2); err != nil {
		t.Fatal(err)
	}
	unpausedAt := time.Now()
	nextAt := echoes.waitEchoes(t, g2Addr, before+1, time.Minute)
	echoes.waitEchoes(t, g2Addr, before+5, time.Minute)
	time.Sleep(300 * time.Millisecond)
	got, _ := echoes.get(g2Addr)
	stAfter, _ := ag.status()
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
	waitGone(t, g2.Interface)
	ag.waitStatus(g2.Interface+" removed from the maps", time.Minute, func(s agent.Status) bool {
		g, ok := guestOf(s, g2.Interface)
		return (!ok || !g.Present) && s.Maps.Vifs == 0
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
