package inguest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/selinux"
)

// SA rotation in the guest kernel, where ESP and labeled SAs are real: a
// guest namespace and the host (with the agent and the fast path on
// vif7.0) exchange sequence-numbered labeled datagrams both ways without
// pause while loader.Rotator rotates the pair of SAs between them 100
// times (the guest's part applied by the real update daemon, in process,
// on the guest namespace's XFRM). Every datagram must arrive at both
// ends, the fast path's counters must account for every one of them as
// allow_labeled and none as a denial. Then: a successor installed with
// another context is refused by the agent and the old SA keeps working;
// and the rotation is killed after each of its steps and finished or
// rolled back by a new rotator, with no state left over.
//
//	rg (guest) eth0 10.73.0.7 ── vif7.0 10.73.0.1  rh (host, agent)

const (
	rtHost  = "10.73.0.1"
	rtGuest = "10.73.0.7"
)

// rtWorld is the test's loader side: the host handle, the guest's
// "update daemon", the agent's client.
type rtWorld struct {
	t        *testing.T
	hh, gh   *xfrm.Handle
	nextSPI  uint32
	version  uint64
	pushMu   sync.Mutex
	rotator  func(inject func(string) error) *loader.Rotator
	stateDir string
	daemon   *updatedaemon.Daemon
}

// push hands a guest part to the guest's update daemon.
func (w *rtWorld) push(ctx context.Context, _ *loader.Guest, b *policystore.Bundle) error {
	w.pushMu.Lock()
	defer w.pushMu.Unlock()
	_, err := w.daemon.Apply(ctx, b)
	return err
}

// startUpdated makes the guest's update daemon on the guest namespace's
// XFRM handle.
func startUpdated(t *testing.T, gh *xfrm.Handle, stateDir string) *updatedaemon.Daemon {
	t.Helper()
	c, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	iss, err := c.Issue(ca.Request{Kind: ca.Guest, CommonName: "vm7", IPs: []net.IP{net.ParseIP(rtGuest)}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	v, err := updatedaemon.NewVerifier(updatedaemon.VerifierConfig{CAPEM: c.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := updatedaemon.ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := updatedaemon.New(updatedaemon.Config{TLS: tc, Identity: updatedaemon.Identity{Name: "vm7", Addrs: []netip.Addr{addr(rtGuest)}}, StateDir: stateDir,
		Applier: &updatedaemon.SystemApplier{Mapper: m, XFRM: gh, SELinux: selinux.SELinux{}, WorkDir: filepath.Join(t.TempDir(), "work")}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func espStates(t *testing.T, h *xfrm.Handle) []xfrm.State {
	st, err := h.States()
	if err != nil {
		t.Fatalf("dump SAs: %v", err)
	}
	var out []xfrm.State
	for _, s := range st {
		if s.Proto == xfrm.ProtoESP && (s.Src == addr(rtHost) || s.Src == addr(rtGuest)) {
			out = append(out, s)
		}
	}
	return out
}

func espSPIs(t *testing.T, h *xfrm.Handle) []uint32 {
	var out []uint32
	for _, s := range espStates(t, h) {
		out = append(out, s.SPI)
	}
	slices.Sort(out)
	return out
}

func bundleSPIs(b *policystore.Bundle) []uint32 {
	var out []uint32
	for _, s := range b.States {
		out = append(out, s.SPI)
	}
	slices.Sort(out)
	return out
}

// seqFlow sends sequence-numbered datagrams from the guest at one context
// to the host's echo server and counts what arrives at each end.
type seqFlow struct {
	mu       sync.Mutex
	sent     int
	atServer map[uint32]bool
	atClient map[uint32]bool
	stop     chan struct{}
	done     sync.WaitGroup
	srv, cli *net.UDPConn
}

func startSeqFlow(t *testing.T, hostNS, guestNS netns.NsHandle, ctx string, port int) *seqFlow {
	f := &seqFlow{atServer: map[uint32]bool{}, atClient: map[uint32]bool{}, stop: make(chan struct{})}
	if err := inNetNS(hostNS, func() (err error) {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		f.srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(rtHost), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := inNetNS(guestNS, func() (err error) {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		f.cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(rtHost), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.done.Add(3)
	go func() { // server: count, echo (unconnected: one SA lookup per reply)
		defer f.done.Done()
		buf := make([]byte, 64)
		for {
			n, from, err := f.srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n >= 4 {
				f.mu.Lock()
				f.atServer[binary.BigEndian.Uint32(buf)] = true
				f.mu.Unlock()
				f.srv.WriteToUDP(buf[:n], from)
			}
		}
	}()
	go func() { // client receiver
		defer f.done.Done()
		buf := make([]byte, 64)
		for {
			n, err := f.cli.Read(buf)
			if err != nil {
				return
			}
			if n >= 4 {
				f.mu.Lock()
				f.atClient[binary.BigEndian.Uint32(buf)] = true
				f.mu.Unlock()
			}
		}
	}()
	go func() { // client sender: one datagram every 2 ms, bounded
		defer f.done.Done()
		var b [16]byte
		copy(b[4:], "mlsgate-rot")
		for i := uint32(0); i < 1<<22; i++ {
			select {
			case <-f.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			binary.BigEndian.PutUint32(b[:], i)
			if _, err := f.cli.Write(b[:]); err == nil {
				f.mu.Lock()
				f.sent++
				f.mu.Unlock()
			}
		}
	}()
	return f
}

// finish stops sending, lets the last datagrams land, and reports sent,
// arrived at the server, arrived back at the client.
func (f *seqFlow) finish() (sent, server, client int) {
	close(f.stop)
	time.Sleep(500 * time.Millisecond)
	f.srv.Close()
	f.cli.Close()
	f.done.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, len(f.atServer), len(f.atClient)
}

func (f *seqFlow) counts() (int, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, len(f.atServer), len(f.atClient)
}

func TestGuestSARotation(t *testing.T) {
	requireGuest(t)
	orig := readTrim(t, "/sys/fs/selinux/enforce")
	t.Cleanup(func() { os.WriteFile("/sys/fs/selinux/enforce", []byte(orig), 0) })
	setEnforce(t, false) // the vif programs decide here, not SELinux
	hostNS, guestNS := vethPair(t, "rh", "rg", "vif7.0", "eth0", rtHost, rtGuest)
	// The flow is IPv4; the link declares no MAC or IPv6 link-local, so
	// the kernel's own IPv6 autoconfiguration (MLD reports, router
	// solicitations) would be denied as link control of an undeclared
	// link and spoil the zero-denial count. Turn IPv6 off on the link
	// before the agent attaches.
	for _, s := range []struct {
		ns  netns.NsHandle
		dev string
	}{{hostNS, "vif7.0"}, {guestNS, "eth0"}} {
		if err := inNetNS(s.ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/"+s.dev+"/disable_ipv6", []byte("1"), 0)
		}); err != nil {
			t.Fatal(err)
		}
	}

	ag := startAgent(t, "rh")
	ag.put("/v1/guests/vif7.0", agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: mustBounds(t, "s0-s9/i5-i10"), Addr4: addr(rtGuest),
		HostAddr4: addr(rtHost)}) // ARP between the guest and the host is control only with it
	ag.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.MustParsePrefix(rtHost + "/32"), App: 1, Range: mustBounds(t, "s0-s15/i0-i15"), Kind: 3}})
	ag.waitStatus("vif7.0 attached", func(s agent.Status) bool { return len(s.Guests) == 1 && s.Guests[0].Attached })

	hh, err := xfrm.NewHandleAt(hostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	gh, err := xfrm.NewHandleAt(guestNS)
	if err != nil {
		t.Fatal(err)
	}
	defer gh.Close()

	// The bundle in force: one labeled SA pair at s4, installed on both
	// ends, and the SPD entries that use it.
	lbl, err := label.ParseLabel("s4/i5")
	if err != nil {
		t.Fatal(err)
	}
	sa := func(src, dst string, spi uint32) xfrm.State {
		key := make([]byte, policystore.GCMKeyLen)
		rand.Read(key)
		return xfrm.State{Src: addr(src), Dst: addr(dst), SPI: spi, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTransport, Reqid: agReqid, ReplayWindow: xfrm.DefaultReplayWindow,
			Context: agCtx("s4"), Label: lbl, AEAD: &xfrm.Algo{Name: policystore.AEADGCM, Key: key, ICVBits: 128}}
	}
	cur := &policystore.Bundle{Application: "analyst", Version: 1, Guest: "vm7", GuestAddr: addr(rtGuest), HostAddr: addr(rtHost),
		States: []xfrm.State{sa(rtGuest, rtHost, spiBase+0x900), sa(rtHost, rtGuest, spiBase+0x901)}}
	// The guest's end is the real update daemon (in process, without its
	// TLS listener): version checks, adds before deletes, idempotent
	// repeats of a version.
	updatedDir := filepath.Join(t.TempDir(), "updated")
	d := startUpdated(t, gh, updatedDir)
	if _, err := d.Apply(context.Background(), cur); err != nil {
		t.Fatalf("guest: apply the first bundle: %v", err)
	}
	for _, s := range cur.States {
		if err := hh.AddState(s); err != nil {
			t.Fatalf("SA %#x: %v", s.SPI, err)
		}
	}
	labeledPolicies(t, gh, rtGuest, rtHost)
	labeledPolicies(t, hh, rtHost, rtGuest)
	ag.waitStatus("SA pair synced", func(s agent.Status) bool { return s.SAs.Synced >= 2 })

	w := &rtWorld{t: t, hh: hh, gh: gh, nextSPI: spiBase + 0xa00, version: 1, stateDir: t.TempDir(), daemon: d}
	ac := loader.NewAgentClient("unix:" + ag.sock)
	w.rotator = func(inject func(string) error) *loader.Rotator {
		return &loader.Rotator{
			Agent: ac, XFRM: hh, Push: w.push, StateDir: w.stateDir, Grace: 50 * time.Millisecond,
			SPI:         func() (uint32, error) { w.nextSPI++; return w.nextSPI, nil },
			NextVersion: func(string) (uint64, error) { w.version++; return w.version, nil },
			Inject:      inject,
		}
	}
	g := &loader.Guest{Name: "vm7", VM: 7, Interface: "vif7.0", Addr: addr(rtGuest), HostAddr: addr(rtHost)}

	before, _ := ag.status()
	flow := startSeqFlow(t, hostNS, guestNS, agCtx("s4"), 9500)
	// Traffic flows before the first rotation.
	for range 500 {
		if _, _, c := flow.counts(); c >= 20 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, c := flow.counts(); c < 20 {
		s, srv, _ := flow.counts()
		t.Fatalf("no labeled flow before rotating: sent %d, at the server %d, echoed %d", s, srv, c)
	}

	// 100 rotations under traffic.
	const rotations = 100
	var lat []time.Duration
	r := w.rotator(nil)
	for i := range rotations {
		t0 := time.Now()
		nb, res, err := r.Rotate(context.Background(), g, cur, "test")
		if err != nil {
			t.Fatalf("rotation %d: %v (%+v)", i, err, res)
		}
		lat = append(lat, time.Since(t0))
		if got, want := espSPIs(t, hh), bundleSPIs(nb); !slices.Equal(got, want) {
			t.Fatalf("rotation %d: host holds %x, want %x", i, got, want)
		}
		if got, want := espSPIs(t, gh), bundleSPIs(nb); !slices.Equal(got, want) {
			t.Fatalf("rotation %d: guest holds %x, want %x", i, got, want)
		}
		cur = nb
	}

	// Kill the rotation after each step (no rollback runs, as with kill
	// -9 of the loader); the update daemon is killed with it (a new one
	// restores its recorded state), and after two of the steps the agent
	// too (kill -9; a new one on the same state and pins); then a new
	// rotator finishes or rolls back the rotation.
	errKilled := errors.New("killed")
	killAgentAfter := map[string]bool{"declare": true, "host_out": true}
	var killLat []time.Duration
	for _, step := range loader.RotationSteps[:len(loader.RotationSteps)-1] {
		kr := w.rotator(func(s string) error {
			if s == step {
				return errKilled
			}
			return nil
		})
		t0 := time.Now()
		if _, _, err := kr.Rotate(context.Background(), g, cur, "test"); !errors.Is(err, errKilled) && err == nil {
			t.Fatalf("rotation killed after %s: no error", step)
		}
		w.pushMu.Lock()
		w.daemon = startUpdated(t, gh, updatedDir)
		if _, err := w.daemon.Restore(context.Background()); err != nil {
			w.pushMu.Unlock()
			t.Fatalf("restarted update daemon after %s: restore: %v", step, err)
		}
		w.pushMu.Unlock()
		if killAgentAfter[step] {
			restartAgent(t, ag)
		}
		got, _, err := w.rotator(nil).Recover(context.Background())
		if err != nil {
			t.Fatalf("recover after a kill after %s: %v", step, err)
		}
		nb := got[g.Interface]
		if nb == nil {
			t.Fatalf("recover after %s: no bundle for the guest", step)
		}
		killLat = append(killLat, time.Since(t0).Round(time.Millisecond))
		if hs, gs, want := espSPIs(t, hh), espSPIs(t, gh), bundleSPIs(nb); !slices.Equal(hs, want) || !slices.Equal(gs, want) {
			t.Fatalf("killed after %s: host %x guest %x, want %x only (stale state)", step, hs, gs, want)
		}
		cur = nb
	}
	// The kernel's soft packet limit triggers a rotation: the host's SAs
	// get a soft limit of 200 packets, the flow reaches it, the kernel
	// announces a soft expire, and the guest is rotated.
	{
		ctx, cancel := context.WithCancel(context.Background())
		ev, err := xfrm.Subscribe(ctx, hostNS)
		if err != nil {
			t.Fatal(err)
		}
		lr := w.rotator(nil)
		lr.Lifetime = xfrm.Lifetime{SoftPackets: 200}
		nb, _, err := lr.Rotate(context.Background(), g, cur, "test")
		if err != nil {
			t.Fatalf("rotate with a soft limit: %v", err)
		}
		cur = nb
		t0 := time.Now()
		var expired *xfrm.State
		timeout := time.After(60 * time.Second)
	wait:
		for {
			select {
			case e := <-ev:
				if e.Kind == xfrm.ExpireSA && !e.Hard && e.State != nil && slices.Contains(bundleSPIs(cur), e.State.SPI) {
					expired = e.State
					break wait
				}
			case <-timeout:
				break wait
			}
		}
		cancel()
		if expired == nil {
			t.Fatalf("no soft expire within 60 s for the SAs %x with a 200-packet soft limit", bundleSPIs(cur))
		}
		nb, res, err := lr.Rotate(context.Background(), g, cur, "soft_limit")
		if err != nil {
			t.Fatalf("rotation on the soft expire: %v", err)
		}
		t.Logf("soft expire of spi %#x after %v; rotation took %v", expired.SPI, time.Since(t0).Round(time.Millisecond), res.Took.Round(time.Millisecond))
		cur = nb
	}
	sent, atServer, atClient := flow.finish()
	after, _ := ag.status()
	delta := func(dir, reason string) int {
		return int(after.Counters[dir][reason]) - int(before.Counters[dir][reason])
	}
	denials := map[string]int{}
	for _, dir := range []string{"ingress", "egress"} {
		for reason := range after.Counters[dir] {
			if len(reason) > 5 && reason[:5] == "deny_" && delta(dir, reason) != 0 {
				denials[dir+"/"+reason] = delta(dir, reason)
			}
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))].Round(100 * time.Microsecond) }
	t.Logf("rotations killed after each step and recovered (trigger→settled, agent restarts included): %v", killLat)
	t.Logf("%d rotations (+%d killed and recovered) under traffic: latency trigger→old states deleted p50 %v p99 %v max %v (grace 50ms); datagrams sent %d, at the server %d (lost %d), echoed back %d (lost %d); fast path: ingress allow_labeled +%d, egress allow_labeled +%d, denials %v",
		rotations, len(loader.RotationSteps)-1, p(0.5), p(0.99), lat[len(lat)-1], sent, atServer, sent-atServer, atClient, atServer-atClient,
		delta("ingress", "allow_labeled"), delta("egress", "allow_labeled"), denials)
	if sent-atServer != 0 || atServer-atClient != 0 {
		t.Errorf("datagrams lost during the rotations: %d guest→host, %d host→guest", sent-atServer, atServer-atClient)
	}
	if len(denials) != 0 {
		t.Errorf("the fast path denied packets during the rotations: %v", denials)
	}
	if got := delta("ingress", "allow_labeled"); got != sent {
		t.Errorf("ingress allow_labeled +%d, want the %d datagrams sent", got, sent)
	}
	if got := delta("egress", "allow_labeled"); got != atServer {
		t.Errorf("egress allow_labeled +%d, want the %d echoes", got, atServer)
	}
	if st, _ := ag.status(); len(st.Rotations) != 0 {
		t.Errorf("agent rotation records left: %+v", st.Rotations)
	}

	t.Run("relabeling successor refused", func(t *testing.T) { rotationRelabelRefused(t, ag, ac, hostNS, guestNS, hh, gh, cur) })
}

// restartAgent kills the agent (SIGKILL) and starts it again on the same
// state directory and pins: the maps keep enforcing meanwhile.
func restartAgent(t *testing.T, g *guestAgent) {
	t.Helper()
	old := g.cmd
	old.Process.Kill()
	for range 500 { // until the socket stops answering
		if _, err := g.status(); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.Remove(g.sock)
	cmd := exec.Command(old.Path, old.Args[1:]...)
	cmd.Env, cmd.Stdout, cmd.Stderr = old.Env, old.Stdout, old.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.cmd = cmd
	go cmd.Wait()
	start := time.Now()
	for range 1200 {
		if st, err := g.status(); err == nil && st.Ready {
			t.Logf("agent killed and restarted, ready after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("restarted agent not ready after 60 s:\n%s", g.log)
}

// rotationRelabelRefused: a successor declared for the guest's outbound
// SA but installed at s6 is refused by the agent; datagrams sent on it
// are denied by the fast path (deny_unknown_sa) and the s4 SA keeps
// carrying the s4 flow.
func rotationRelabelRefused(t *testing.T, ag *guestAgent, ac *loader.AgentClient, hostNS, guestNS netns.NsHandle, hh, gh *xfrm.Handle, cur *policystore.Bundle) {
	var out xfrm.State
	for _, s := range cur.States {
		if s.Src == addr(rtGuest) {
			out = s
		}
	}
	newRef := agent.SARef{SPI: spiBase + 0xf00, Daddr: addr(rtHost)}
	if err := ac.DeclareRotation(agent.SARef{SPI: out.SPI, Daddr: out.Dst}, newRef); err != nil {
		t.Fatalf("declare: %v", err)
	}
	bad := out
	bad.SPI, bad.Context = newRef.SPI, agCtx("s6")
	for _, h := range []*xfrm.Handle{hh, gh} {
		if err := h.AddState(bad); err != nil {
			t.Fatalf("relabeled successor: %v", err)
		}
	}
	st := ag.waitStatus("relabeled successor refused", func(s agent.Status) bool { return s.SAs.RefusedRelabel >= 1 })
	s6 := udpServe(t, hostNS, agCtx("s6"), rtHost, 9501)
	s4 := udpServe(t, hostNS, agCtx("s4"), rtHost, 9502)
	sendFrom(t, guestNS, agCtx("s6"), rtHost, 9501, 5)
	sendFrom(t, guestNS, agCtx("s4"), rtHost, 9502, 5)
	time.Sleep(300 * time.Millisecond)
	after, _ := ag.status()
	unknown := int(after.Counters["ingress"]["deny_unknown_sa"]) - int(st.Counters["ingress"]["deny_unknown_sa"])
	t.Logf("relabeled successor: s6 datagrams arrived %d of 5 (deny_unknown_sa +%d); s4 on the old SA arrived %d of 5", s6(), unknown, s4())
	if s6() != 0 || unknown != 5 {
		t.Errorf("datagrams on the relabeled successor: %d arrived, deny_unknown_sa +%d; want 0 and +5", s6(), unknown)
	}
	if s4() != 5 {
		t.Errorf("the old SA stopped working: %d of 5 s4 datagrams arrived", s4())
	}
	// Clean up: the SA first, then the record (refused while installed).
	if err := ac.DropRotation(newRef); err == nil {
		t.Error("the record of an installed, refused successor was dropped")
	}
	for _, h := range []*xfrm.Handle{hh, gh} {
		h.DeleteState(bad.Dst, bad.SPI, xfrm.ProtoESP)
	}
	var derr error
	for range 200 {
		if derr = ac.DropRotation(newRef); derr == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if derr != nil {
		t.Errorf("drop the record once the SA is gone: %v", derr)
	}
}
