package indom0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
)

// TestXenImpersonation: guest B takes guest A's address and announces it
// with gratuitous ARP and ARP requests from it (issue 11, attack 4). On a
// bridge shared by the guests this moved dom0's neighbour entry for A to B's
// MAC, so dom0's traffic for A (the loader's answers included) went to B. On
// routed vifs the entry dom0 uses to reach A must keep A's MAC, no entry for
// A may carry B's MAC, and no connection from A's address may reach the
// loader's port on A's host-side address while only B uses that address.
func TestXenImpersonation(t *testing.T) {
	requireDom0(t)
	echoes := countEchoes(t)
	ag := startAgent(t)
	aAddr, aHost := link(1)
	bAddr, bHost := link(2)
	peers := []agent.PeerSpec{{Prefix: netip.PrefixFrom(aHost, 32), App: 1, Range: guestSpec(t, 1, aAddr).Range, Kind: 3}}
	if bHost != aHost {
		peers = append(peers, agent.PeerSpec{Prefix: netip.PrefixFrom(bHost, 32), App: 1, Range: peers[0].Range, Kind: 3})
	}
	ag.put("/v1/peers", peers)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var booted []*loader.Guest
	xa := xenBackend(t, ag, nil)
	t.Cleanup(func() {
		for _, g := range booted {
			xa.Destroy(context.Background(), g)
		}
	})

	ga, err := xa.Boot(ctx, spec(1, aAddr, aHost))
	if err != nil {
		t.Fatalf("boot guest A: %v", err)
	}
	booted = append(booted, ga)
	echoes.waitEchoes(t, aAddr, 3, 2*time.Minute)
	macA := guestMAC(ga, 1)
	if n := neighOf(t, aAddr); n == nil || n.HardwareAddr.String() != macA {
		t.Fatalf("dom0's neighbour entry for guest A (%s) is %v, want A's MAC %s before the attack", aAddr, n, macA)
	}

	// The loader's API port on A's host-side address.
	accepted := acceptFrom(t, aHost, 7444, aAddr)

	xb := xenBackend(t, ag, nil)
	xb.ExtraCmdline = fmt.Sprintf("console=hvc0 quiet xendom0.pings=150 xendom0.claim=%s xendom0.claimhost=%s xendom0.claims=10", aAddr, aHost)
	gb, err := xb.Boot(ctx, spec(2, bAddr, bHost))
	if err != nil {
		t.Fatalf("boot guest B: %v", err)
	}
	booted = append(booted, gb)
	macB := guestMAC(gb, 2)

	// Sample dom0's neighbour table while B claims A's address.
	var moved []string
	claimed, done := false, false
	for range 900 { // 90 s
		claimed = claimed || guestConsole(gb.Name, "xenguest: claiming")
		done = guestConsole(gb.Name, "xenguest: claim done")
		list, err := netlink.NeighList(0, unix.AF_INET)
		if err != nil {
			t.Fatalf("list dom0's neighbours: %v", err)
		}
		for _, n := range list {
			if n.IP.Equal(aAddr.AsSlice()) && n.HardwareAddr.String() == macB {
				moved = append(moved, fmt.Sprintf("%s on ifindex %d", n.HardwareAddr, n.LinkIndex))
			}
		}
		if n := neighOf(t, aAddr); n != nil && n.HardwareAddr.String() != macA && n.State&(unix.NUD_REACHABLE|unix.NUD_STALE|unix.NUD_DELAY|unix.NUD_PROBE|unix.NUD_PERMANENT) != 0 {
			moved = append(moved, fmt.Sprintf("route to A resolves to %s", n.HardwareAddr))
		}
		if done {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !claimed || !done {
		t.Fatalf("guest B never finished its claim (claiming seen: %v, done: %v); its console is %s", claimed, done, consoleDir+"/guest-"+gb.Name+".log")
	}
	st, _ := ag.status()
	t.Logf("during B's claim of %s: ingress counters %v", aAddr, st.Counters["ingress"])
	if len(moved) > 0 {
		t.Errorf("guest B (%s) took guest A's address %s in dom0's neighbour table (%d samples), e.g. %s: dom0's traffic for A goes to B",
			macB, aAddr, len(moved), strings.Join(moved[:min(3, len(moved))], "; "))
	}
	if n := accepted(); n != 0 {
		t.Errorf("%d connections from A's address %s reached %s:7444 while only B used that address", n, aAddr, aHost)
	}
}

// neighOf is dom0's neighbour entry for a on the interface its route
// leaves by, or nil when there is none yet. (No t.Helper: it runs in a
// sampling loop, where Helper's caller walk panicked once under TCG.)
func neighOf(t *testing.T, a netip.Addr) *netlink.Neigh {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil || len(routes) == 0 {
		t.Fatalf("dom0's route to %s: %v", a, err)
	}
	list, err := netlink.NeighList(routes[0].LinkIndex, unix.AF_INET)
	if err != nil {
		t.Fatalf("neighbours on ifindex %d: %v", routes[0].LinkIndex, err)
	}
	for _, n := range list {
		if n.IP.Equal(a.AsSlice()) && len(n.HardwareAddr) == 6 {
			return &n
		}
	}
	return nil
}

// guestMAC is g's MAC as the backend configures it for the spec of vm.
func guestMAC(g *loader.Guest, vm uint32) string {
	if g.MAC != "" {
		return g.MAC
	}
	return backend.MAC(vm).String()
}

// acceptFrom listens on host:port and counts the connections accepted from
// from; the returned function reads the count.
func acceptFrom(t *testing.T, host netip.Addr, port uint16, from netip.Addr) func() int {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(host, port).String())
	if err != nil {
		t.Fatalf("listen on %s:%d: %v", host, port, err)
	}
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil && ap.Addr().Unmap() == from {
				mu.Lock()
				n++
				mu.Unlock()
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}
