package inguest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/bench"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/selinux"
)

// SA rotation in the guest kernel, where ESP and labeled SAs are real. A
// guest namespace talks to a server beyond the host: the guest's labeled
// tunnel ends at the host (the agent and the fast path on vif7.0), which
// forwards into the server's own labeled tunnel, so the label travels the
// whole way. Sequence-numbered datagrams flow without pause: at s4 (within
// the guest's range) to the server and echoed back, and at s12 (outside
// it), which the fast path must deny every one of. Meanwhile the guest's
// SAs, both labels at once, are rotated 100 times by a loader process
// (loader.Rotator over the agent's socket, the host's XFRM and TLS pushes
// to the real update daemon, a process in the guest's namespace). Every s4
// datagram must arrive at both ends, each under an SA of its own label
// (IP_PASSSEC at the receivers), no s12 datagram may, and the fast path's
// counters must account for every one: allow_labeled for s4,
// deny_label_range for s12, no other denial.
//
// Then crash safety, with processes: at each step boundary of a rotation,
// kill -9 the loader, or the update daemon, or the agent (the loader going
// on without it); restart what was killed and a new loader process
// finishes or rolls the rotation back. Afterwards the flow still works and
// no stale state remains: both ends hold exactly the set in force, no
// journal, no agent rotation record, the daemon's record equal to it.
// Then the kernel's soft packet limit triggers a rotation, and a successor
// installed with another context is refused by the agent while the old SA
// keeps working.
//
//	rg (guest) eth0 10.73.0.7 ── vif7.0 10.73.0.1  rh (host, agent)  srvif 10.74.0.1 ── eth0 10.74.0.5  rs (server)

const (
	rtHost   = "10.73.0.1"
	rtGuest  = "10.73.0.7"
	rtHostS  = "10.74.0.1"
	rtServer = "10.74.0.5"
	// rtSrvReqid marks the host ↔ server tunnel (agReqid the guest's).
	rtSrvReqid = agReqid + 20
)

// rtWorld is the test's view of the processes and namespaces.
type rtWorld struct {
	hh, gh     *xfrm.Handle
	pki        rtPKI
	loaderDir  string
	updatedDir string
	agentSock  string
	daemon     *proc
	ag         *guestAgent
	spiNext    uint32 // the next loader process's SPIs start above it
}

// run gives a loader process SPIs of its own, in the agent's range (the
// fast path finds an SA from a secpath by its SPI's slot: runAgent's 4096
// slots from spiBase).
func (w *rtWorld) run(r loaderRun) loaderRun {
	r.spiBase = w.spiNext
	w.spiNext += uint32(4*r.rotations + 8)
	if r.grace == 0 {
		r.grace = 50 * time.Millisecond
	}
	return r
}

// startUpdated makes an update daemon in this process on the guest
// namespace's XFRM handle: it applies the first bundle into the state
// directory the daemon process then takes over.
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

func espSPIs(t *testing.T, h *xfrm.Handle) []uint32 {
	t.Helper()
	out, err := tunnelSPIs(h)
	if err != nil {
		t.Fatalf("dump SAs: %v", err)
	}
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

// tunnelPolicy adds a policy for UDP from src to dst (the selector)
// through the ESP tunnel tsrc → tdst of reqid.
func tunnelPolicy(t *testing.T, h *xfrm.Handle, dir xfrm.Dir, src, dst, tsrc, tdst string, reqid uint32) {
	t.Helper()
	p := xfrm.Policy{
		Src: netip.PrefixFrom(addr(src), 32), Dst: netip.PrefixFrom(addr(dst), 32), Proto: unix.IPPROTO_UDP,
		Dir: dir, Action: xfrm.ActionAllow, Priority: 1000, Context: agSPD,
		Templates: []xfrm.Template{{Src: addr(tsrc), Dst: addr(tdst), Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: reqid}},
	}
	if err := h.AddPolicy(p); err != nil {
		t.Fatalf("policy %v: %v", p, err)
	}
}

// seqFlow sends sequence-numbered datagrams from the guest at one context
// to the server, which counts them and (echo) sends them back; the
// receivers read each datagram's peer context (IP_PASSSEC: the context of
// the SA it arrived on) and count those of another label.
type seqFlow struct {
	ag         *guestAgent // for diagnostics
	ctx        string
	echo       bool
	mu         sync.Mutex
	sent       int
	atServer   map[uint32]bool
	atClient   map[uint32]bool
	mislabeled []string
	stop       chan struct{}
	done       sync.WaitGroup
	srv, cli   *net.UDPConn
}

// passSec turns IP_PASSSEC on: each datagram comes with its peer context.
// It also gives the socket an 8 MiB receive buffer: under TCG on a loaded
// host the reading goroutine can stall for a second or more (an agent's
// verifier run takes the one vCPU), and datagrams the socket had no room
// for would count as lost in the rotations (UDP RcvbufErrors, logged).
func passSec(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_PASSSEC, 1); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		}
	}); err != nil {
		return err
	}
	return serr
}

// readLabeled reads one datagram and its peer context.
func readLabeled(c *net.UDPConn, buf, oob []byte) (int, *net.UDPAddr, string, error) {
	n, oobn, _, from, err := c.ReadMsgUDP(buf, oob)
	if err != nil {
		return 0, nil, "", err
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.SCM_SECURITY {
			return n, from, strings.TrimRight(string(m.Data), "\x00"), nil
		}
	}
	return n, from, "", nil
}

func startSeqFlow(t *testing.T, serverNS, guestNS netns.NsHandle, ctx string, port int, every time.Duration, echo bool) *seqFlow {
	f := &seqFlow{ctx: ctx, echo: echo, atServer: map[uint32]bool{}, atClient: map[uint32]bool{}, stop: make(chan struct{})}
	if err := inNetNS(serverNS, func() (err error) {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		if f.srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(rtServer), Port: port}); err != nil {
			return err
		}
		return passSec(f.srv)
	}); err != nil {
		t.Fatal(err)
	}
	if err := inNetNS(guestNS, func() (err error) {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		if f.cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(rtServer), Port: port}); err != nil {
			return err
		}
		return passSec(f.cli)
	}); err != nil {
		t.Fatal(err)
	}
	check := func(where, got string) {
		if got != ctx {
			f.mu.Lock()
			if len(f.mislabeled) < 10 {
				f.mislabeled = append(f.mislabeled, where+": "+got)
			} else {
				f.mislabeled[9] = "…"
			}
			f.mu.Unlock()
		}
	}
	f.done.Add(3)
	go func() { // server: count, check the label, echo (unconnected: one SA lookup per reply)
		defer f.done.Done()
		buf, oob := make([]byte, 64), make([]byte, 512)
		for {
			n, from, peer, err := readLabeled(f.srv, buf, oob)
			if err != nil {
				return
			}
			if n >= 4 {
				check("at the server", peer)
				f.mu.Lock()
				f.atServer[binary.BigEndian.Uint32(buf)] = true
				f.mu.Unlock()
				if f.echo {
					f.srv.WriteToUDP(buf[:n], from)
				}
			}
		}
	}()
	go func() { // client receiver
		defer f.done.Done()
		buf, oob := make([]byte, 64), make([]byte, 512)
		for {
			n, _, peer, err := readLabeled(f.cli, buf, oob)
			if err != nil {
				return
			}
			if n >= 4 {
				check("back at the guest", peer)
				f.mu.Lock()
				f.atClient[binary.BigEndian.Uint32(buf)] = true
				f.mu.Unlock()
			}
		}
	}()
	go func() { // client sender: one datagram every `every`, bounded
		defer f.done.Done()
		var b [16]byte
		copy(b[4:], "mlsgate-rot")
		for i := uint32(0); i < 1<<22; i++ {
			select {
			case <-f.stop:
				return
			case <-time.After(every):
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

// waitEchoes waits until at least n more datagrams came back.
func (f *seqFlow) waitEchoes(t *testing.T, what string, n int) {
	t.Helper()
	_, _, c0 := f.counts()
	for range 1000 {
		if _, _, c := f.counts(); c >= c0+n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s, srv, c := f.counts()
	if f.ag != nil {
		st, err := f.ag.status()
		t.Logf("agent counters: %v (%v)", st.Counters, err)
	}
	rtDiag(t)
	t.Fatalf("%s: the labeled flow stopped: sent %d, at the server %d, echoed %d (%d before)", what, s, srv, c, c0)
}

// rtDiag logs where packets went: each namespace's XFRM error counters
// and its SAs with their packet counts.
func rtDiag(t *testing.T) { rtXFRMStat(t, true) }

// rtXFRMStat logs each namespace's XFRM error counters that are not 0,
// with its SAs when states is set.
func rtXFRMStat(t *testing.T, states bool) {
	for _, ns := range []string{"rg", "rh", "rs"} {
		h, err := netns.GetFromName(ns)
		if err != nil {
			continue
		}
		var stat, snmp []byte
		inNetNS(h, func() error {
			stat, _ = os.ReadFile("/proc/thread-self/net/xfrm_stat")
			snmp, _ = os.ReadFile("/proc/thread-self/net/snmp")
			return nil
		})
		h.Close()
		var nz []string
		for _, l := range strings.Split(string(stat), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] != "0" {
				nz = append(nz, f[0]+" "+f[1])
			}
		}
		// Udp: the header line names the values of the next.
		var udp []string
		var names []string
		for _, l := range strings.Split(string(snmp), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i := 1; i < len(f) && i < len(names); i++ {
				if strings.Contains(names[i], "Errors") && f[i] != "0" {
					udp = append(udp, names[i]+" "+f[i])
				}
			}
		}
		nz = append(nz, udp...)
		if !states {
			t.Logf("%s: xfrm_stat and UDP errors %v", ns, nz)
			continue
		}
		st, _ := ipTry("-n", ns, "-s", "xfrm", "state")
		t.Logf("%s: xfrm_stat %v\n%s", ns, nz, st)
	}
}

func TestGuestSARotation(t *testing.T) {
	requireGuest(t)
	orig := readTrim(t, "/sys/fs/selinux/enforce")
	t.Cleanup(func() { os.WriteFile("/sys/fs/selinux/enforce", []byte(orig), 0) })
	setEnforce(t, false) // the vif programs decide here, not SELinux
	hostNS, guestNS := vethPair(t, "rh", "rg", "vif7.0", "eth0", rtHost, rtGuest)
	serverNS := newNetNS(t, "rs")
	ip(t, "link", "add", "srvif", "netns", "rh", "type", "veth", "peer", "name", "eth0", "netns", "rs")
	ipBatch(t, "rh", []string{"addr", "add", rtHostS + "/24", "dev", "srvif"}, []string{"link", "set", "srvif", "up"})
	ipBatch(t, "rs", []string{"addr", "add", rtServer + "/24", "dev", "eth0"}, []string{"link", "set", "eth0", "up"},
		[]string{"route", "add", "10.73.0.0/24", "via", rtHostS})
	ipBatch(t, "rg", []string{"route", "add", "10.74.0.0/24", "via", rtHost})
	if err := inNetNS(hostNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}
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

	// The agent lets the host reach the update daemon's port in clear.
	ag := startAgent(t, "rh", "AGENT_API_PORT="+strconv.Itoa(rtUpdatedPort))
	ag.put("/v1/guests/vif7.0", agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: mustBounds(t, "s0-s9/i5-i10"), Addr4: addr(rtGuest),
		HostAddr4: addr(rtHost)}) // ARP between the guest and the host is control only with it
	// The server is a peer: the host decrypts the guest's tunnel on
	// vif7.0, and the fast path judges the decrypted datagram there again,
	// by the SA in its secpath, against the server's range.
	ag.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.MustParsePrefix(rtHost + "/32"), App: 1, Range: mustBounds(t, "s0-s15/i0-i15"), Kind: 3},
		{Prefix: netip.MustParsePrefix(rtServer + "/32"), App: 1, Range: mustBounds(t, "s0-s9/i0-i15"), Kind: 1}})
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
	sh, err := xfrm.NewHandleAt(serverNS)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()

	// The bundle in force: a labeled tunnel SA pair at s4 and one at s12
	// between the guest and the host, installed on both ends.
	// The s4 pair has extended sequence numbers, the s12 pair not: the
	// rotations keep each as it is (checkSettled).
	sa := func(src, dst string, spi uint32, lv string) xfrm.State {
		lbl, err := label.ParseLabel(lv + "/i5")
		if err != nil {
			t.Fatal(err)
		}
		key := make([]byte, policystore.GCMKeyLen)
		rand.Read(key)
		return xfrm.State{Src: addr(src), Dst: addr(dst), SPI: spi, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: agReqid, ReplayWindow: xfrm.DefaultReplayWindow,
			Context: agCtx(lv), Label: lbl, AEAD: &xfrm.Algo{Name: policystore.AEADGCM, Key: key, ICVBits: 128}, ESN: lv == "s4"}
	}
	cur := &policystore.Bundle{Application: "analyst", Version: 1, Guest: "vm7", GuestAddr: addr(rtGuest), HostAddr: addr(rtHost),
		States: []xfrm.State{sa(rtGuest, rtHost, spiBase+0x900, "s4"), sa(rtHost, rtGuest, spiBase+0x901, "s4"),
			sa(rtGuest, rtHost, spiBase+0x902, "s12"), sa(rtHost, rtGuest, spiBase+0x903, "s12")}}
	w := &rtWorld{hh: hh, gh: gh, pki: writePKI(t), loaderDir: t.TempDir(), updatedDir: filepath.Join(t.TempDir(), "updated"), agentSock: ag.sock, ag: ag,
		spiNext: spiBase + 0xa00}
	// The first bundle goes in through the daemon's code in this process;
	// the daemon process takes its state directory over.
	if _, err := startUpdated(t, gh, w.updatedDir).Apply(context.Background(), cur); err != nil {
		t.Fatalf("guest: apply the first bundle: %v", err)
	}
	for _, s := range cur.States {
		if err := hh.AddState(s); err != nil {
			t.Fatalf("SA %#x: %v", s.SPI, err)
		}
	}
	if err := writeJSONFile(filepath.Join(w.loaderDir, "inforce.json"), cur); err != nil {
		t.Fatal(err)
	}
	if err := writeJSONFile(filepath.Join(w.loaderDir, "version"), cur.Version); err != nil {
		t.Fatal(err)
	}
	// The server's tunnel to the host, at both labels, never rotated here.
	for i, lv := range []string{"s4", "s12"} {
		for _, d := range []struct{ src, dst string }{{rtHostS, rtServer}, {rtServer, rtHostS}} {
			st := gcmSA(d.src, d.dst, uint32(spiBase+0x980+2*i)+map[bool]uint32{true: 1}[d.src == rtServer], xfrm.ModeTunnel, agCtx(lv))
			st.Reqid = rtSrvReqid
			for _, h := range []*xfrm.Handle{hh, sh} {
				if err := h.AddState(st); err != nil {
					t.Fatalf("server tunnel SA %s %s→%s: %v", lv, d.src, d.dst, err)
				}
			}
		}
	}
	// guest → server: the guest's tunnel to the host, the host forwards
	// into the server's tunnel; and back.
	tunnelPolicy(t, gh, xfrm.DirOut, rtGuest, rtServer, rtGuest, rtHost, agReqid)
	tunnelPolicy(t, gh, xfrm.DirIn, rtServer, rtGuest, rtHost, rtGuest, agReqid)
	tunnelPolicy(t, hh, xfrm.DirFwd, rtGuest, rtServer, rtGuest, rtHost, agReqid)
	tunnelPolicy(t, hh, xfrm.DirOut, rtGuest, rtServer, rtHostS, rtServer, rtSrvReqid)
	tunnelPolicy(t, hh, xfrm.DirFwd, rtServer, rtGuest, rtServer, rtHostS, rtSrvReqid)
	tunnelPolicy(t, hh, xfrm.DirOut, rtServer, rtGuest, rtHost, rtGuest, agReqid)
	tunnelPolicy(t, sh, xfrm.DirOut, rtServer, rtGuest, rtServer, rtHostS, rtSrvReqid)
	tunnelPolicy(t, sh, xfrm.DirIn, rtGuest, rtServer, rtHostS, rtServer, rtSrvReqid)
	ag.waitStatus("SAs synced", func(s agent.Status) bool { return s.SAs.Synced >= 4 && s.SAs.NoGuest >= 4 })
	w.daemon = startDaemonProc(t, w.pki, w.updatedDir)

	before, _ := ag.status()
	flow := startSeqFlow(t, serverNS, guestNS, agCtx("s4"), 9500, 2*time.Millisecond, true)
	flow.ag = ag
	denied := startSeqFlow(t, serverNS, guestNS, agCtx("s12"), 9510, 10*time.Millisecond, false)
	flow.waitEchoes(t, "before rotating", 20)

	// 100 rotations under traffic, by one loader process.
	const rotations = 100
	var lat []time.Duration
	stepLat := map[string][]time.Duration{}
	lp := w.startLoaderProc(t, w.run(loaderRun{rotations: rotations}))
	for {
		l := lp.next(t, 60*time.Second)
		if l == "" {
			break
		}
		var o loaderOut
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("loader said %q", l)
		}
		if o.Error != "" {
			t.Fatalf("loader, %s: %s (%+v)\n%s", o.Kind, o.Error, o.Results, lp.log)
		}
		if o.Kind == "rotate" {
			lat = append(lat, o.Results[0].Took)
			for _, st := range o.Results[0].Steps {
				stepLat[st.Name] = append(stepLat[st.Name], st.Duration)
			}
			if len(lat)%25 == 0 {
				t.Logf("%d rotations, the last took %v", len(lat), o.Results[0].Took.Round(time.Millisecond))
			}
		}
	}
	<-lp.exited
	if len(lat) != rotations || lp.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("loader: %d of %d rotations, exit %v:\n%s", len(lat), rotations, lp.cmd.ProcessState, lp.log)
	}
	w.checkSettled(t, "after 100 rotations")

	// Kill -9 at every step boundary: the loader itself, the update daemon
	// or the agent (and the loader goes on without it, as it would).
	// 'mlsgate bench rotation' measures the 100 rotations alone.
	benchOnly := os.Getenv(rotationBenchEnv) != ""
	var killLat []string
	for _, step := range loader.RotationSteps[:len(loader.RotationSteps)-1] {
		if benchOnly {
			break
		}
		for _, victim := range []string{"loader", "updated", "agent"} {
			t0 := time.Now()
			w.killAt(t, step, victim)
			killLat = append(killLat, fmt.Sprintf("%s/%s %v", step, victim, time.Since(t0).Round(10*time.Millisecond)))
			t.Logf("kill -9 of the %s after %s: settled after %v", victim, step, time.Since(t0).Round(10*time.Millisecond))
			w.checkSettled(t, victim+" killed after "+step)
			flow.waitEchoes(t, victim+" killed after "+step, 5)
		}
	}

	// The kernel's soft packet limit triggers a rotation: a loader gives
	// the host's successors a soft limit of 200 packets, the flow reaches
	// it, the kernel announces a soft expire, and the guest is rotated.
	if !benchOnly {
		ctx, cancel := context.WithCancel(context.Background())
		ev, err := xfrm.Subscribe(ctx, hostNS)
		if err != nil {
			t.Fatal(err)
		}
		r := w.run(loaderRun{rotations: 1})
		r.softPackets = 200
		w.loaderOnce(t, r)
		cur = w.readInForce(t)
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
		res := w.loaderOnce(t, w.run(loaderRun{rotations: 1}))
		t.Logf("soft expire of spi %#x after %v; rotation took %v", expired.SPI, time.Since(t0).Round(time.Millisecond), res.Took.Round(time.Millisecond))
		w.checkSettled(t, "after the soft-limit rotation")
		cur = w.readInForce(t)
	}
	sent, atServer, atClient := flow.finish()
	rtXFRMStat(t, false)
	dSent, dServer, _ := denied.finish()
	after, _ := ag.status()
	delta := func(dir, reason string) int {
		return int(after.Counters[dir][reason]) - int(before.Counters[dir][reason])
	}
	denials := map[string]int{}
	for _, dir := range []string{"ingress", "egress"} {
		for reason := range after.Counters[dir] {
			if strings.HasPrefix(reason, "deny_") && delta(dir, reason) != 0 && (dir+"/"+reason) != "ingress/deny_label_range" {
				denials[dir+"/"+reason] = delta(dir, reason)
			}
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))].Round(100 * time.Microsecond) }
	t.Logf("kill -9 at each step boundary, then recovered (kill → settled, restarts included): %s", strings.Join(killLat, ", "))
	t.Logf("%d rotations (+%d with a kill -9) under traffic guest ↔ server through the host: latency trigger→old states deleted p50 %v p99 %v max %v (grace 50ms); s4 datagrams sent %d, at the server %d (lost %d), echoed back %d (lost %d); s12 sent %d, at the server %d; fast path: ingress allow_labeled +%d, egress allow_labeled +%d, ingress deny_label_range +%d, other denials %v",
		rotations, len(killLat), p(0.5), p(0.99), lat[len(lat)-1], sent, atServer, sent-atServer, atClient, atServer-atClient,
		dSent, dServer, delta("ingress", "allow_labeled"), delta("egress", "allow_labeled"), delta("ingress", "deny_label_range"), denials)
	var steps []loader.Step
	for _, name := range loader.RotationSteps {
		if d := stepLat[name]; len(d) > 0 {
			slices.Sort(d)
			steps = append(steps, loader.Step{Name: name, Duration: d[len(d)/2]})
		}
	}
	t.Logf("median per step: %v", steps)
	if out := os.Getenv(rotationBenchEnv); out != "" {
		b, _ := json.Marshal(bench.RotationResult{StepP50: steps, Rotations: rotations, P50: p(0.5), P99: p(0.99), Max: lat[len(lat)-1], Grace: 50 * time.Millisecond,
			Sent: sent, AtServer: atServer, Echoed: atClient, Mislabeled: len(flow.mislabeled), DeniedSent: dSent, DeniedArrived: dServer,
			AllowIn: delta("ingress", "allow_labeled"), AllowOut: delta("egress", "allow_labeled"), DenyRange: delta("ingress", "deny_label_range"), Denials: denials})
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Errorf("write the bench result: %v", err)
		}
	}
	if sent-atServer != 0 || atServer-atClient != 0 {
		t.Errorf("datagrams lost during the rotations: %d guest→server, %d server→guest", sent-atServer, atServer-atClient)
	}
	if len(flow.mislabeled) != 0 {
		t.Errorf("s4 datagrams that arrived under an SA of another context: %v", flow.mislabeled)
	}
	if dServer != 0 {
		t.Errorf("%d of %d s12 datagrams (outside the guest's range) reached the server", dServer, dSent)
	}
	if len(denials) != 0 {
		t.Errorf("the fast path denied packets during the rotations: %v", denials)
	}
	// Ingress sees each s4 datagram twice: as ESP, and decrypted (secpath).
	if got := delta("ingress", "allow_labeled"); got != 2*sent {
		t.Errorf("ingress allow_labeled +%d, want twice the %d s4 datagrams sent (ESP, then decrypted)", got, sent)
	}
	if got := delta("egress", "allow_labeled"); got != atServer {
		t.Errorf("egress allow_labeled +%d, want the %d echoes", got, atServer)
	}
	if got := delta("ingress", "deny_label_range"); got != dSent {
		t.Errorf("ingress deny_label_range +%d, want the %d s12 datagrams sent", got, dSent)
	}

	if !benchOnly {
		t.Run("relabeling successor refused", func(t *testing.T) { rotationRelabelRefused(t, ag, serverNS, guestNS, hh, gh, cur) })
	}
}

// rotationBenchEnv names the file (in the guest) where the test writes
// its measurements for 'mlsgate bench rotation' (a bench.RotationResult;
// the bench adds the kernel and the machine), which then runs the 100
// rotations alone.
const rotationBenchEnv = "MLSGATE_ROTATION_BENCH"

// loaderOnce runs a loader process to its end and returns its last
// rotation's result.
func (w *rtWorld) loaderOnce(t *testing.T, r loaderRun) loader.RotationResult {
	t.Helper()
	lp := w.startLoaderProc(t, r)
	var last loader.RotationResult
	for {
		l := lp.next(t, 60*time.Second)
		if l == "" {
			break
		}
		var o loaderOut
		if err := json.Unmarshal([]byte(l), &o); err != nil || o.Error != "" {
			t.Fatalf("loader said %q:\n%s", l, lp.log)
		}
		if len(o.Results) > 0 {
			last = o.Results[len(o.Results)-1]
		}
	}
	<-lp.exited
	if lp.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("loader exited %v:\n%s", lp.cmd.ProcessState, lp.log)
	}
	return last
}

// killAt rotates once with a paused loader process and, right after step,
// kills victim with SIGKILL: the loader (nothing of the rotation runs
// after), or the update daemon or the agent (the loader goes on, meets
// the dead peer, rolls back or keeps its journal). What was killed is
// started again, and a new loader process finishes or rolls back what
// is journalled.
func (w *rtWorld) killAt(t *testing.T, step, victim string) {
	t.Helper()
	lp := w.startLoaderProc(t, w.run(loaderRun{rotations: 1, pause: true}))
	killed := false
	for {
		l := lp.next(t, 60*time.Second)
		if l == "" {
			break
		}
		name, ok := strings.CutPrefix(l, "step ")
		if !ok {
			continue // the results: the rotation may fail, that is the point
		}
		if name == step && !killed {
			killed = true
			switch victim {
			case "loader":
				lp.kill9()
				continue
			case "updated":
				w.daemon.kill9()
			case "agent":
				w.ag.cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		io.WriteString(lp.stdin, "go\n")
	}
	<-lp.exited
	if !killed {
		t.Fatalf("loader never stopped after %s:\n%s", step, lp.log)
	}
	switch victim {
	case "updated":
		w.daemon = startDaemonProc(t, w.pki, w.updatedDir)
	case "agent":
		restartAgent(t, w.ag)
	}
	w.loaderOnce(t, w.run(loaderRun{}))
}

// checkSettled checks that nothing of a rotation is left over: both ends
// hold exactly the set in force, the daemon recorded it, no journal, no
// agent record.
func (w *rtWorld) checkSettled(t *testing.T, when string) {
	t.Helper()
	want := bundleSPIs(w.readInForce(t))
	if hs, gs := espSPIs(t, w.hh), espSPIs(t, w.gh); !slices.Equal(hs, want) || !slices.Equal(gs, want) {
		t.Fatalf("%s: host holds %x, guest %x, want %x only (stale state)", when, hs, gs, want)
	}
	for _, h := range []*xfrm.Handle{w.hh, w.gh} {
		st, err := h.States()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if slices.Contains(want, s.SPI) && s.ESN != (s.Context == agCtx("s4")) {
				t.Fatalf("%s: %v: ESN %v, want it on the s4 SAs only", when, s, s.ESN)
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(w.updatedDir, updatedaemon.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Bundle *policystore.Bundle `json:"bundle"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Bundle == nil {
		t.Fatalf("%s: the daemon's state: %v", when, err)
	}
	if got := bundleSPIs(rec.Bundle); !slices.Equal(got, want) {
		t.Fatalf("%s: the update daemon recorded SPIs %x, want %x", when, got, want)
	}
	if js, _ := filepath.Glob(filepath.Join(w.loaderDir, "rotation", "rotation-*.json")); len(js) != 0 {
		t.Fatalf("%s: journal left: %v", when, js)
	}
	st := w.ag.waitStatus(when+": agent status", func(agent.Status) bool { return true })
	if len(st.Rotations) != 0 {
		t.Fatalf("%s: agent rotation records left: %+v", when, st.Rotations)
	}
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
// s4 SA but installed at s6 is refused by the agent; datagrams sent on it
// toward the server are denied by the fast path (deny_unknown_sa) and the
// s4 SA keeps carrying the s4 flow.
func rotationRelabelRefused(t *testing.T, ag *guestAgent, serverNS, guestNS netns.NsHandle, hh, gh *xfrm.Handle, cur *policystore.Bundle) {
	ac := loader.NewAgentClient("unix:" + ag.sock)
	var out xfrm.State
	for _, s := range cur.States {
		if s.Src == addr(rtGuest) && s.Context == agCtx("s4") {
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
	s6 := udpServe(t, serverNS, agCtx("s6"), rtServer, 9501)
	s4 := udpServe(t, serverNS, agCtx("s4"), rtServer, 9502)
	sendFrom(t, guestNS, agCtx("s6"), rtServer, 9501, 5)
	sendFrom(t, guestNS, agCtx("s4"), rtServer, 9502, 5)
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
