package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/mapper"
)

// fakeGuest records the driver calls the probe makes.
type fakeGuest struct{ calls []string }

func (f *fakeGuest) Close() error { return nil }
func (f *fakeGuest) Label(u string) (mapper.Answer, error) {
	f.calls = append(f.calls, "label "+u)
	l, err := label.ParseLabel("s10/i8")
	return mapper.Answer{URL: u, Label: l, Source: "policy"}, err
}
func (f *fakeGuest) Fetch(ctx string, dst netip.AddrPort, method, host, path string, timeout time.Duration) (int, []byte, error) {
	f.calls = append(f.calls, fmt.Sprintf("fetch %s %s %s %s%s %v", ctx, dst, method, host, path, timeout))
	return 200, []byte("ws1 GET / at s10/i8\n"), nil
}
func (f *fakeGuest) Post(ctx string, dst netip.AddrPort, host, body string, timeout time.Duration) (int, int64, error) {
	f.calls = append(f.calls, fmt.Sprintf("post %s %s %s %q", ctx, dst, host, body))
	return 0, 2, errors.New("connect 10.70.3.10:8123: no answer in 2s")
}
func (f *fakeGuest) XFRMStat() (map[string]uint64, error) {
	return map[string]uint64{"XfrmOutPolBlock": 3}, nil
}
func (f *fakeGuest) Policies() ([]xfrm.Policy, error) {
	return []xfrm.Policy{{Src: netip.MustParsePrefix("10.71.1.2/32"), Dst: netip.MustParsePrefix("10.70.1.10/32"), Dir: xfrm.DirOut,
		Context: "system_u:object_r:analyst_spd_t:s4-s10", Templates: []xfrm.Template{{Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: 7,
			Src: netip.MustParseAddr("10.71.1.2"), Dst: netip.MustParseAddr("10.71.1.1")}}}}, nil
}
func (f *fakeGuest) AddPolicy(p xfrm.Policy) error {
	f.calls = append(f.calls, "add "+p.String()+" "+p.Context)
	return nil
}
func (f *fakeGuest) DeletePolicy(p xfrm.Policy) error {
	f.calls = append(f.calls, "delete "+p.String())
	return nil
}
func (f *fakeGuest) SendESP(dst netip.Addr, spi uint32, n int) (int, error) {
	f.calls = append(f.calls, fmt.Sprintf("esp %s %#x %d", dst, spi, n))
	return n, nil
}
func (f *fakeGuest) Socket(ctx string) error {
	f.calls = append(f.calls, "socket "+ctx)
	return errors.New("socket context \"" + ctx + "\": invalid argument")
}
func (f *fakeGuest) Load(api netip.AddrPort, u string) (*loader.Result, error) {
	return nil, errors.New("forbidden: osint may not load analyst")
}

// noisyWriter is a console: the kernel and the init write to it too, and
// an answer of an earlier request may still be in flight.
type noisyWriter struct{ w io.Writer }

func (n noisyWriter) Write(b []byte) (int, error) {
	fmt.Fprintf(n.w, "mlsgate-init: eth0 up\r\n[   12.3] random: crng init done\r\n%s{\"id\":999,\"status\":7}\r\n", probeTag)
	return n.w.Write(b)
}

// TestConsoleProbe drives the probe over a real pty, as dom0 drives it over
// xenconsoled's: every verb comes back with its answer, console noise and
// stale answers are skipped, errors come back as errors (with what the
// guest counted), and no verb outside the driver's exists.
func TestConsoleProbe(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	fg := &fakeGuest{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go serveProbe(ctx, master, noisyWriter{master}, fg)
	c, err := openConsoleGuest("vm1", fmt.Sprintf("/dev/pts/%d", n), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	a, err := c.Label("http://ws1.example/secret")
	if err != nil || a.Label.String() != "s10/i8" {
		t.Errorf("label: %+v, %v", a, err)
	}
	dst := netip.MustParseAddrPort("10.70.1.10:8123")
	st, body, err := c.Fetch("system_u:system_r:analyst_t:s10", dst, "GET", "ws1.example", "/secret", 10*time.Second)
	if err != nil || st != 200 || string(body) != "ws1 GET / at s10/i8\n" {
		t.Errorf("fetch: %d %q %v", st, body, err)
	}
	st, segs, err := c.Post("", dst, "ws1.example", "data at none", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "no answer") || segs != 2 || st != 0 {
		t.Errorf("post: %d, %d segments, %v; want the guest's error and its 2 segments", st, segs, err)
	}
	stat, err := c.XFRMStat()
	if err != nil || stat["XfrmOutPolBlock"] != 3 {
		t.Errorf("xfrm_stat: %v %v", stat, err)
	}
	pols, err := c.Policies()
	if err != nil || len(pols) != 1 || pols[0].Templates[0].Dst != netip.MustParseAddr("10.71.1.1") || pols[0].Context == "" {
		t.Fatalf("policies: %+v %v", pols, err)
	}
	if err := c.AddPolicy(pols[0]); err != nil {
		t.Error(err)
	}
	if err := c.DeletePolicy(pols[0]); err != nil {
		t.Error(err)
	}
	if sent, err := c.SendESP(netip.MustParseAddr("10.71.1.1"), 0x1005, 3); err != nil || sent != 3 {
		t.Errorf("esp: %d %v", sent, err)
	}
	if _, err := c.Load(netip.MustParseAddrPort("10.71.2.1:7443"), "http://ws1.example/"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("load: %v, want the loader's refusal", err)
	}
	want := []string{
		"label http://ws1.example/secret",
		"fetch system_u:system_r:analyst_t:s10 10.70.1.10:8123 GET ws1.example/secret 10s",
		`post  10.70.1.10:8123 ws1.example "data at none"`,
		"add " + pols[0].String() + " " + pols[0].Context,
		"delete " + pols[0].String(),
		"esp 10.71.1.1 0x1005 3",
	}
	if strings.Join(fg.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("the probe called\n%s\nwant\n%s", strings.Join(fg.calls, "\n"), strings.Join(want, "\n"))
	}
	// Nothing but the driver's verbs: a command is refused.
	if _, err := c.call(probeRequest{Verb: "exec", Body: "id"}, 5*time.Second); err == nil || !strings.Contains(err.Error(), "unknown verb") {
		t.Errorf("verb exec: %v, want refused as unknown", err)
	}
}
