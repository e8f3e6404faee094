package inguest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// The tests of agent/xfrm on a kernel with ESP and SELinux: SAs and policies
// installed through xfrm.Handle keep their contexts, read back exactly, are
// announced by xfrm.Subscribe with their contexts, and carry labeled traffic.

// xfrmReqid marks the SAs these tests make.
const xfrmReqid = 7008

// xfrmKey is an rfc4106(gcm(aes)) key: 16 bytes of AES key, 4 of salt.
var xfrmKey = []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}

func gcmSA(src, dst string, spi uint32, mode xfrm.Mode, ctx string) xfrm.State {
	return xfrm.State{
		Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPI: spi,
		Proto: xfrm.ProtoESP, Mode: mode, Reqid: xfrmReqid, Context: ctx,
		AEAD:         &xfrm.Algo{Name: "rfc4106(gcm(aes))", Key: xfrmKey, ICVBits: 128},
		ReplayWindow: 32,
	}
}

// xfrmSetup opens a handle and a subscription in a new namespace.
func xfrmSetup(t *testing.T, name string) (netns.NsHandle, *xfrm.Handle, <-chan xfrm.Event) {
	t.Helper()
	ns := newNetNS(t, name)
	h, err := xfrm.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	events, err := xfrm.Subscribe(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	return ns, h, events
}

// waitEvent returns the next event of one of kinds, failing after 10 s
// (TCG is slow) or on a Resync, which these small tests must not cause.
func waitEvent(t *testing.T, ch <-chan xfrm.Event, kinds ...xfrm.Kind) xfrm.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event channel closed waiting for %v", kinds)
			}
			if ev.Kind == xfrm.Resync || ev.Kind == xfrm.Failed {
				t.Fatalf("waiting for %v: %s", kinds, ev)
			}
			if slices.Contains(kinds, ev.Kind) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event within 10s", kinds)
		}
	}
}

// TestGuestXFRMStates adds ESP SAs with contexts through xfrm.Handle and
// checks them every way back: a get, a dump, the events, and ip-xfrm(8) as
// an independent reader; then deletes them. It reads an SA written by ip as
// well.
func TestGuestXFRMStates(t *testing.T) {
	requireGuest(t)
	_, h, events := xfrmSetup(t, "xst")
	states := []xfrm.State{
		gcmSA("10.88.2.1", "10.88.2.2", 0x5001, xfrm.ModeTransport, "system_u:system_r:analyst_t:s6"),
		gcmSA("10.88.2.2", "10.88.2.1", 0x5002, xfrm.ModeTransport, "system_u:system_r:analyst_t:s6"),
		gcmSA("10.88.2.1", "10.88.2.2", 0x5003, xfrm.ModeTunnel, "system_u:system_r:osint_t:s2:c1,c7.c9"),
		gcmSA("fd00:88::1", "fd00:88::2", 0x5004, xfrm.ModeTunnel, "system_u:system_r:analyst_t:s0-s15:c0.c1023"),
	}
	states[1].ReplayWindow = 1024 // beyond the header's byte: XFRMA_REPLAY_ESN_VAL
	states[2].Lifetime = xfrm.Lifetime{SoftBytes: 1 << 30, HardBytes: 1 << 31, SoftAddSeconds: 3000, HardAddSeconds: 3600}
	for _, s := range states {
		if err := h.AddState(s); err != nil {
			t.Fatal(err)
		}
		ev := waitEvent(t, events, xfrm.NewSA)
		if !reflect.DeepEqual(*ev.State, s) {
			t.Errorf("new-SA event\n got %v\nwant %v", ev.State, s)
		}
		got, err := h.GetState(s.Dst, s.SPI, s.Proto)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("get\n got %v\nwant %v", got, s)
		}
		out := ip(t, "-n", "xst", "xfrm", "state", "get", "src", s.Src.String(), "dst", s.Dst.String(),
			"proto", "esp", "spi", fmt.Sprintf("0x%x", s.SPI))
		if !strings.Contains(out, "security context "+s.Context+"\n") && !strings.Contains(out, "security context "+s.Context+" ") {
			t.Errorf("ip reads SA 0x%x without context %s:\n%s", s.SPI, s.Context, out)
		}
	}
	if err := h.AddState(states[0]); !errors.Is(err, unix.EEXIST) {
		t.Errorf("adding an SA twice: %v, want EEXIST", err)
	}

	dump, err := h.States()
	if err != nil {
		t.Fatal(err)
	}
	if len(dump) != len(states) {
		t.Fatalf("dumped %d SAs, added %d", len(dump), len(states))
	}
	for _, s := range states {
		if !slices.ContainsFunc(dump, func(d xfrm.State) bool { return reflect.DeepEqual(d, s) }) {
			t.Errorf("not dumped as added: %v\ndump: %v", s, dump)
		}
	}

	// Update: a live SA takes new limits.
	up := states[0]
	up.Lifetime.HardAddSeconds = 7200
	if err := h.UpdateState(up); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvent(t, events, xfrm.UpdSA); ev.State.Lifetime.HardAddSeconds != 7200 || ev.State.Context != up.Context {
		t.Errorf("update event %s, lifetime %+v", ev, ev.State.Lifetime)
	}

	for _, s := range states {
		if err := h.DeleteState(s.Dst, s.SPI, s.Proto); err != nil {
			t.Fatal(err)
		}
		ev := waitEvent(t, events, xfrm.DelSA)
		if ev.State.SPI != s.SPI || ev.State.Dst != s.Dst || ev.State.Context != s.Context {
			t.Errorf("delete event %s, want SA 0x%x with context %s", ev, s.SPI, s.Context)
		}
	}
	if dump, err := h.States(); err != nil || len(dump) != 0 {
		t.Errorf("after deletion: %v, %v", dump, err)
	}

	// An SA written by ip reads back with its context and key.
	ip(t, "-n", "xst", "xfrm", "state", "add", "src", "10.88.2.1", "dst", "10.88.2.2", "proto", "esp",
		"spi", "0x5009", "reqid", "7008", "mode", "transport", "replay-window", "32",
		"aead", "rfc4106(gcm(aes))", gcmKey, "128", "ctx", "system_u:system_r:analyst_t:s3")
	want := gcmSA("10.88.2.1", "10.88.2.2", 0x5009, xfrm.ModeTransport, "system_u:system_r:analyst_t:s3")
	ev := waitEvent(t, events, xfrm.NewSA)
	if !reflect.DeepEqual(*ev.State, want) {
		t.Errorf("SA added by ip, event\n got %v\nwant %v", ev.State, want)
	}
	if got, err := h.GetState(want.Dst, want.SPI, want.Proto); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("SA added by ip\n got %v (%v)\nwant %v", got, err, want)
	}
	if err := h.FlushStates(xfrm.ProtoESP); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvent(t, events, xfrm.FlushSA); ev.Proto != xfrm.ProtoESP {
		t.Errorf("flush event %s", ev)
	}
}

// TestGuestXFRMInvalidContext: contexts the loaded policy does not know are
// refused, and the error says so.
func TestGuestXFRMInvalidContext(t *testing.T) {
	requireGuest(t)
	_, h, _ := xfrmSetup(t, "xbad")
	for _, ctx := range []string{"system_u:system_r:nosuch_t:s4", "system_u:system_r:analyst_t:s16", "not a context"} {
		err := h.AddState(gcmSA("10.88.3.1", "10.88.3.2", 0x5100, xfrm.ModeTransport, ctx))
		if !errors.Is(err, xfrm.ErrInvalidContext) || !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), ctx) {
			t.Errorf("SA with context %q: %v, want ErrInvalidContext naming the context", ctx, err)
		} else {
			t.Logf("as a caller sees it: %v", err)
		}
		err = h.AddPolicy(xfrm.Policy{
			Src: netip.MustParsePrefix("10.88.3.1/32"), Dst: netip.MustParsePrefix("10.88.3.2/32"),
			Dir: xfrm.DirOut, Context: ctx,
		})
		if !errors.Is(err, xfrm.ErrInvalidContext) {
			t.Errorf("policy with context %q: %v, want ErrInvalidContext", ctx, err)
		}
	}
	if dump, err := h.States(); err != nil || len(dump) != 0 {
		t.Errorf("after refusals: %v, %v", dump, err)
	}
}

// TestGuestXFRMPolicies: policies keep their contexts here, two policies
// differing only in context are two entries, and delete picks by context.
func TestGuestXFRMPolicies(t *testing.T) {
	requireGuest(t)
	_, h, events := xfrmSetup(t, "xpol")
	base := xfrm.Policy{
		Src: netip.MustParsePrefix("10.88.4.1/32"), Dst: netip.MustParsePrefix("10.88.4.2/32"),
		Dir: xfrm.DirOut, Priority: 1000,
		Templates: []xfrm.Template{{Src: netip.MustParseAddr("10.88.4.1"), Dst: netip.MustParseAddr("10.88.4.2"),
			Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: xfrmReqid}},
	}
	hi, lo := base, base
	hi.Context = "system_u:object_r:analyst_spd_t:s6-s15"
	lo.Context = "system_u:object_r:analyst_spd_t:s0-s5"
	want := append([]xfrm.Policy{hi, lo}, xfrm.CatchAllBlock(netip.MustParseAddr("10.88.4.1"), 2000)...)
	for _, p := range want {
		if err := h.AddPolicy(p); err != nil {
			t.Fatal(err)
		}
		waitEvent(t, events, xfrm.NewPolicy)
	}
	got, err := h.Policies()
	if err != nil {
		t.Fatal(err)
	}
	same := func(a, b xfrm.Policy) bool { a.Index, b.Index = 0, 0; return reflect.DeepEqual(a, b) }
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g xfrm.Policy) bool { return same(g, w) }) {
			t.Errorf("not dumped as added: %v\ndump: %v", w, got)
		}
	}
	if err := h.DeletePolicy(lo); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, xfrm.DelPolicy)
	got, err = h.Policies()
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(got, func(g xfrm.Policy) bool { return g.Context == lo.Context }) ||
		!slices.ContainsFunc(got, func(g xfrm.Policy) bool { return g.Context == hi.Context }) {
		t.Errorf("delete by context removed the wrong entry: %v", got)
	}
}

// TestGuestXFRMExpire: an SA with short time limits is announced soft- then
// hard-expired, and is gone after the hard limit.
func TestGuestXFRMExpire(t *testing.T) {
	requireGuest(t)
	_, h, events := xfrmSetup(t, "xexp")
	s := gcmSA("10.88.5.1", "10.88.5.2", 0x5200, xfrm.ModeTransport, "system_u:system_r:analyst_t:s6")
	s.Lifetime = xfrm.Lifetime{SoftAddSeconds: 1, HardAddSeconds: 2}
	start := time.Now()
	if err := h.AddState(s); err != nil {
		t.Fatal(err)
	}
	soft := waitEvent(t, events, xfrm.ExpireSA)
	if soft.Hard || soft.State.SPI != s.SPI || soft.State.Dst != s.Dst {
		t.Errorf("first expiry %s, want soft for SA 0x%x", soft, s.SPI)
	}
	hard := waitEvent(t, events, xfrm.ExpireSA)
	if !hard.Hard || hard.State.SPI != s.SPI {
		t.Errorf("second expiry %s, want hard for SA 0x%x", hard, s.SPI)
	}
	t.Logf("soft and hard expiry after %.1fs", time.Since(start).Seconds())
	if _, err := h.GetState(s.Dst, s.SPI, s.Proto); !errors.Is(err, unix.ESRCH) {
		t.Errorf("hard-expired SA still there: %v", err)
	}
}

// TestGuestXFRMThousandSAs adds, dumps and deletes 1,000 labeled SAs and
// prints the time of each step; the subscription must see every one, or
// say it lost some.
func TestGuestXFRMThousandSAs(t *testing.T) {
	requireGuest(t)
	_, h, events := xfrmSetup(t, "xmany")
	const n = 1000
	var seen, resyncs atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			switch ev.Kind {
			case xfrm.NewSA:
				if seen.Add(1) == n {
					return
				}
			case xfrm.Resync:
				resyncs.Add(1)
			}
		}
	}()
	want := make(map[uint32]string, n)
	start := time.Now()
	for i := range n {
		ctx := fmt.Sprintf("system_u:system_r:analyst_t:s%d:c%d", i%16, i%1024)
		s := gcmSA("10.88.6.1", "10.88.6.2", uint32(0x10000+i), xfrm.ModeTunnel, ctx)
		if err := h.AddState(s); err != nil {
			t.Fatal(err)
		}
		want[s.SPI] = ctx
	}
	added := time.Since(start)
	start = time.Now()
	dump, err := h.States()
	if err != nil {
		t.Fatal(err)
	}
	dumped := time.Since(start)
	if len(dump) != n {
		t.Fatalf("dumped %d SAs, added %d", len(dump), n)
	}
	for _, s := range dump {
		if want[s.SPI] != s.Context || !reflect.DeepEqual(s.AEAD.Key, xfrmKey) {
			t.Fatalf("SA 0x%x dumped with context %q, added with %q", s.SPI, s.Context, want[s.SPI])
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	if seen.Load() != n && resyncs.Load() == 0 {
		t.Errorf("subscription saw %d of %d new SAs and reported no loss", seen.Load(), n)
	}
	start = time.Now()
	deleted, err := h.DeleteStatesByReqid(xfrmReqid)
	if err != nil || deleted != n {
		t.Fatalf("deleted %d of %d: %v", deleted, n, err)
	}
	t.Logf("%d SAs with contexts: added in %v (%v each), dumped in %v, deleted in %v; events seen %d, resyncs %d",
		n, added.Round(time.Millisecond), (added / n).Round(time.Microsecond), dumped.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), seen.Load(), resyncs.Load())
}

// TestGuestXFRMTraffic installs through xfrm.Handle what
// TestGuestLabeledIPsec installs with ip: ESP SAs labeled analyst_t:s4, an
// SPD entry of range s0-s5 for UDP, and the catch-all blocks. A socket of
// the SA's context gets its echo; others do not.
func TestGuestXFRMTraffic(t *testing.T) {
	requireGuest(t)
	ans, bns := vethPair(t, "xta", "xtb", "xva", "xvb", lblA, lblB)
	const saCtx = "system_u:system_r:analyst_t:s4"
	for _, ns := range []netns.NsHandle{ans, bns} {
		h, err := xfrm.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		for _, d := range []struct {
			src, dst string
			spi      uint32
		}{{lblA, lblB, 0x5301}, {lblB, lblA, 0x5302}} {
			if err := h.AddState(gcmSA(d.src, d.dst, d.spi, xfrm.ModeTransport, saCtx)); err != nil {
				t.Fatal(err)
			}
		}
		local, remote := lblA, lblB
		if ns == bns {
			local, remote = lblB, lblA
		}
		for _, d := range []struct {
			dir      xfrm.Dir
			src, dst string
		}{{xfrm.DirOut, local, remote}, {xfrm.DirIn, remote, local}} {
			p := xfrm.Policy{
				Src: netip.MustParsePrefix(d.src + "/32"), Dst: netip.MustParsePrefix(d.dst + "/32"),
				Proto: unix.IPPROTO_UDP, Dir: d.dir, Priority: 1000, Context: lblSPD,
				Templates: []xfrm.Template{{Proto: xfrm.ProtoESP, Mode: xfrm.ModeTransport, Reqid: xfrmReqid}},
			}
			if err := h.AddPolicy(p); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range xfrm.CatchAllBlock(netip.MustParseAddr(local), 2000) {
			if err := h.AddPolicy(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop := echoServer(t, bns, saCtx, 9404)
	defer stop()
	if err := echo(ans, saCtx, lblB, 9404); err != nil {
		t.Errorf("socket of the SA's context %s: %v", saCtx, err)
	}
	for _, ctx := range []string{"system_u:system_r:analyst_t:s3", "system_u:system_r:outsider_t:s4"} {
		if err := echo(ans, ctx, lblB, 9404); err == nil {
			t.Errorf("socket of context %s got an echo through SAs of %s", ctx, saCtx)
		}
	}
}
