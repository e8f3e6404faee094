package inguest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// The labeled tunnel between namespaces "la" (10.90.0.1) and "lb"
// (10.90.0.2): ESP transport SAs at two levels of analyst_t, an SPD entry of
// range s0-s5 for UDP, and a catch-all block policy below it, as the
// policy store's bundles install them.
const (
	lblA   = "10.90.0.1"
	lblB   = "10.90.0.2"
	lblSPD = "system_u:object_r:analyst_spd_t:s0-s5"
)

// lblSA is one pair of SAs (a→b, b→a) and the echo port served at its
// context in lb.
type lblSA struct {
	ctx          string
	spiAB, spiBA string
	port         int
}

var lblSAs = []lblSA{
	{"system_u:system_r:analyst_t:s4", "0x3001", "0x3002", 9304},
	// s9 has SAs too, but lies outside the SPD range.
	{"system_u:system_r:analyst_t:s9", "0x3003", "0x3004", 9309},
}

// TestGuestLabeledIPsec sends UDP between two namespaces through ESP SAs
// that carry security contexts, from sockets of several contexts, in
// enforcing and in permissive mode. Only a socket whose context equals an
// SA's, and lies within the SPD entry's range (enforced in enforcing mode),
// gets its echo back.
func TestGuestLabeledIPsec(t *testing.T) {
	requireGuest(t)
	ans, bns := vethPair(t, "la", "lb", "va", "vb", lblA, lblB)
	for _, p := range []struct{ ns, local, remote string }{{"la", lblA, lblB}, {"lb", lblB, lblA}} {
		var cmds [][]string
		for _, sa := range lblSAs {
			for _, d := range []struct{ src, dst, spi string }{{lblA, lblB, sa.spiAB}, {lblB, lblA, sa.spiBA}} {
				cmds = append(cmds, []string{"xfrm", "state", "add", "src", d.src, "dst", d.dst, "proto", "esp",
					"spi", d.spi, "reqid", testReqid, "mode", "transport",
					"aead", "rfc4106(gcm(aes))", gcmKey, "128", "ctx", sa.ctx})
			}
		}
		for _, d := range []struct{ dir, src, dst string }{{"out", p.local, p.remote}, {"in", p.remote, p.local}} {
			cmds = append(cmds, []string{"xfrm", "policy", "add", "src", d.src + "/32", "dst", d.dst + "/32",
				"proto", "17", // udp: the guest has no /etc/protocols
				"dir", d.dir, "ctx", lblSPD, "priority", "1000",
				"tmpl", "src", d.src, "dst", d.dst, "proto", "esp", "reqid", testReqid, "mode", "transport"},
				// Without this, in enforcing mode a socket the labeled entry
				// does not match (no polmatch) would send in clear.
				[]string{"xfrm", "policy", "add", "src", d.src + "/32", "dst", d.dst + "/32",
					"dir", d.dir, "action", "block", "priority", "2000"})
		}
		ipBatch(t, p.ns, cmds...)
	}
	for _, sa := range lblSAs {
		stop := echoServer(t, bns, sa.ctx, sa.port)
		defer stop()
	}

	// Both modes in one boot: the mode is the kernel's, switched here and
	// put back when the test ends.
	orig := readTrim(t, "/sys/fs/selinux/enforce")
	t.Cleanup(func() { os.WriteFile("/sys/fs/selinux/enforce", []byte(orig), 0) })
	for _, enforcing := range []bool{true, false} {
		name := map[bool]string{true: "enforcing", false: "permissive"}[enforcing]
		t.Run(name, func(t *testing.T) {
			setEnforce(t, enforcing)
			labeledCases(t, ans, enforcing)
		})
	}
}

// labeledCases sends from sockets of several contexts in ns la to the echo
// servers in lb.
func labeledCases(t *testing.T, ans netns.NsHandle, enforcing bool) {
	cases := []struct {
		name, ctx string
		port      int
		want      bool
	}{
		// First, so that ARP is done when the others wait for nothing.
		{"same context", "system_u:system_r:analyst_t:s4", 9304, true},
		{"lower level, no SA", "system_u:system_r:analyst_t:s3", 9304, false},
		{"other type", "system_u:system_r:osint_t:s4", 9304, false},
		{"outsider without association rights", "system_u:system_r:outsider_t:s4", 9304, false},
		// The MLS constraint on polmatch keeps s9 out of the s0-s5 entry:
		// enforced only in enforcing mode, where the catch-all blocks it.
		{"SA outside the SPD range", "system_u:system_r:analyst_t:s9", 9309, !enforcing},
	}
	before := saPackets(t, "lb", lblA, lblB, "0x3001")
	for _, tc := range cases {
		tries, wait := 1, 500*time.Millisecond
		if tc.want {
			tries, wait = 3, time.Second
		}
		err := echoWithin(ans, tc.ctx, lblB, tc.port, tries, wait)
		if tc.want && err != nil {
			t.Errorf("%s (%s): %v, want an echo", tc.name, tc.ctx, err)
		}
		if !tc.want && err == nil {
			t.Errorf("%s (%s): got an echo, want none", tc.name, tc.ctx)
		}
		if err != nil {
			t.Logf("%s (%s): %v", tc.name, tc.ctx, err)
		}
	}
	if after := saPackets(t, "lb", lblA, lblB, "0x3001"); after <= before {
		t.Errorf("SA 0x3001 (s4) in lb counted %d packets before and %d after: the echo did not travel in ESP", before, after)
	}
}

// setEnforce switches SELinux to enforcing or permissive mode.
func setEnforce(t *testing.T, enforcing bool) {
	t.Helper()
	v := map[bool]string{true: "1", false: "0"}[enforcing]
	if err := os.WriteFile("/sys/fs/selinux/enforce", []byte(v), 0); err != nil {
		t.Fatalf("set SELinux enforce=%s: %v", v, err)
	}
	if got := readTrim(t, "/sys/fs/selinux/enforce"); got != v {
		t.Fatalf("SELinux enforce is %s after writing %s", got, v)
	}
}

// echoServer answers UDP datagrams on lblB:port in ns from a socket of
// context ctx, until the returned stop is called.
func echoServer(t *testing.T, ns netns.NsHandle, ctx string, port int) (stop func()) {
	t.Helper()
	var conn *net.UDPConn
	err := inNetNS(ns, func() error {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(lblB), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("echo server at %s:%d, context %s: %v", lblB, port, ctx, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return // closed by stop
			}
			conn.WriteToUDP(buf[:n], from)
		}
	}()
	return func() { conn.Close(); <-done }
}

// echo sends a datagram from a socket of context ctx in ns to addr:port and
// waits for the echo, trying three times a second (the first may wait for
// ARP).
func echo(ns netns.NsHandle, ctx, addr string, port int) error {
	return echoWithin(ns, ctx, addr, port, 3, time.Second)
}

// echoWithin is echo with tries attempts of wait each.
func echoWithin(ns netns.NsHandle, ctx, addr string, port, tries int, wait time.Duration) error {
	var conn *net.UDPConn
	err := inNetNS(ns, func() error {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		var err error
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 64)
	var last error = errNoReply
	for try := 0; try < tries; try++ {
		msg := "echo " + strconv.Itoa(try)
		if _, err := conn.Write([]byte(msg)); err != nil {
			last = fmt.Errorf("send: %w", err)
			time.Sleep(wait)
			continue
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) == msg {
			return nil
		}
		if err != nil && !errors.Is(err, errNoReply) {
			last = fmt.Errorf("%w (%v)", errNoReply, err)
		}
	}
	return last
}

var packetsRE = regexp.MustCompile(`(\d+)\(packets\)`)

// saPackets is the packet count of an SA in ns.
func saPackets(t *testing.T, ns, src, dst, spi string) int {
	t.Helper()
	out := ip(t, "-n", ns, "-s", "xfrm", "state", "get", "src", src, "dst", dst, "proto", "esp", "spi", spi)
	m := packetsRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count for SA %s in ns %s:\n%s", spi, ns, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
