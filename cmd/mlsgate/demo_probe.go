package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/mapper"
)

// The demo probe drives a Xen guest for the demo. It runs inside demo
// guest images only (backend.InitOptions.DemoProbe starts it) and answers
// on the domain's PV console (hvc0), which only dom0's console daemon
// reaches: it adds no network listener, and the guest's network, its
// update daemon and every other guest cannot talk to it. Each request is a
// line of JSON naming one of the guestDriver verbs (the same bounded,
// demo-specific actions the network-namespace demo performs by entering
// the guest's namespace); there is no verb that runs a command or touches
// a file. Each answer is one line, probeTag then JSON, so dom0 can pick it
// out of whatever else the console carries (the init's and the kernel's
// messages).

// probeTag starts every answer line of the demo probe.
const probeTag = "mlsgate-probe: "

// probeRequest is one console request. ID is echoed in the answer.
type probeRequest struct {
	ID        uint64        `json:"id"`
	Verb      string        `json:"verb"` // ping, label, fetch, post, xfrm_stat, policies, add_policy, delete_policy, esp, socket, load
	URL       string        `json:"url,omitempty"`
	Ctx       string        `json:"ctx,omitempty"`
	Dst       string        `json:"dst,omitempty"` // addr:port, or addr for esp
	Method    string        `json:"method,omitempty"`
	Host      string        `json:"host,omitempty"`
	Path      string        `json:"path,omitempty"`
	Body      string        `json:"body,omitempty"`
	TimeoutMS int64         `json:"timeout_ms,omitempty"`
	Policy    *xfrm.Policy  `json:"policy,omitempty"`
	SPI       uint32        `json:"spi,omitempty"`
	N         int           `json:"n,omitempty"`
	Result    *probeOutcome `json:"-"`
}

// probeOutcome is one answer.
type probeOutcome struct {
	ID       uint64            `json:"id"`
	Err      string            `json:"err,omitempty"`
	Status   int               `json:"status,omitempty"`
	Body     []byte            `json:"body,omitempty"`
	Segs     int64             `json:"segs,omitempty"`
	Sent     int               `json:"sent,omitempty"`
	Stat     map[string]uint64 `json:"stat,omitempty"`
	Policies []xfrm.Policy     `json:"policies,omitempty"`
	Answer   *mapper.Answer    `json:"answer,omitempty"`
	Load     *loader.Result    `json:"load,omitempty"`
}

// probeMaxLine bounds a request line.
const probeMaxLine = 64 << 10

// maxProbeTimeout bounds every request's own timeout.
const maxProbeTimeout = 2 * time.Minute

func newDemoProbeCmd() *cobra.Command {
	var console string
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "answer the demo's requests on this Xen guest's PV console (demo guest images only)",
		Long: `Serve the demo's guest actions (its browser, its label mapper queries and what a
compromised guest does to its own XFRM) on the guest's Xen PV console, one JSON
line per request and per answer. Only dom0 reaches that console; the probe opens
no socket for requests. The demo's Xen guest images start it; no other image does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.OpenFile(console, os.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				return fmt.Errorf("demo probe: console %s: %w", console, err)
			}
			defer f.Close()
			if err := makeRaw(f); err != nil {
				return fmt.Errorf("demo probe: console %s: %w", console, err)
			}
			ns, err := netns.Get()
			if err != nil {
				return err
			}
			defer ns.Close()
			return serveProbe(cmd.Context(), f, f, nsGuest{ns})
		},
	}
	cmd.Flags().StringVar(&console, "console", "/dev/hvc0", "the PV console device")
	return cmd
}

// makeRaw puts the terminal f in raw mode: no echo (an echoed request
// would come back to dom0 as console input), no line editing, no CR/LF
// translation.
func makeRaw(f *os.File) error {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("not a terminal: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// serveProbe answers the requests read from r on w, one at a time, with g,
// until r ends or ctx does. A line that is not a request (console noise) is
// ignored.
func serveProbe(ctx context.Context, r io.Reader, w io.Writer, g guestDriver) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), probeMaxLine)
	fmt.Fprintf(w, "\n%s{\"id\":0,\"status\":1}\n", probeTag)
	for sc.Scan() && ctx.Err() == nil {
		line := bytes.TrimSpace(sc.Bytes())
		if i := bytes.IndexByte(line, '{'); i > 0 {
			line = line[i:] // noise before the request on the same line
		}
		var req probeRequest
		if len(line) == 0 || json.Unmarshal(line, &req) != nil || req.Verb == "" {
			continue
		}
		out := answerProbe(g, req)
		b, err := json.Marshal(out)
		if err != nil {
			b, _ = json.Marshal(probeOutcome{ID: req.ID, Err: err.Error()})
		}
		if _, err := fmt.Fprintf(w, "\n%s%s\n", probeTag, b); err != nil {
			return err
		}
	}
	return sc.Err()
}

// answerProbe performs one request with g.
func answerProbe(g guestDriver, req probeRequest) probeOutcome {
	out := probeOutcome{ID: req.ID}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 || timeout > maxProbeTimeout {
		timeout = maxProbeTimeout
	}
	var err error
	addrPort := func() (netip.AddrPort, error) {
		ap, err := netip.ParseAddrPort(req.Dst)
		if err != nil {
			return ap, fmt.Errorf("dst %q: %w", req.Dst, err)
		}
		return ap, nil
	}
	switch req.Verb {
	case "ping":
		out.Status = 1
	case "label":
		var a mapper.Answer
		if a, err = g.Label(req.URL); err == nil {
			out.Answer = &a
		}
	case "fetch":
		var dst netip.AddrPort
		if dst, err = addrPort(); err == nil {
			out.Status, out.Body, err = g.Fetch(req.Ctx, dst, req.Method, req.Host, req.Path, timeout)
		}
	case "post":
		var dst netip.AddrPort
		if dst, err = addrPort(); err == nil {
			out.Status, out.Segs, err = g.Post(req.Ctx, dst, req.Host, req.Body, timeout)
		}
	case "xfrm_stat":
		out.Stat, err = g.XFRMStat()
	case "policies":
		out.Policies, err = g.Policies()
	case "add_policy", "delete_policy":
		switch {
		case req.Policy == nil:
			err = errors.New("no policy")
		case req.Verb == "add_policy":
			err = g.AddPolicy(*req.Policy)
		default:
			err = g.DeletePolicy(*req.Policy)
		}
	case "esp":
		var dst netip.Addr
		if dst, err = netip.ParseAddr(req.Dst); err == nil {
			n := min(max(req.N, 0), 100)
			out.Sent, err = g.SendESP(dst, req.SPI, n)
		}
	case "socket":
		err = g.Socket(req.Ctx)
	case "load":
		var api netip.AddrPort
		if api, err = addrPort(); err == nil {
			out.Load, err = g.Load(api, req.URL)
		}
	default:
		err = fmt.Errorf("unknown verb %q", req.Verb)
	}
	if err != nil {
		out.Err = err.Error()
	}
	return out
}

// consoleGuest drives a Xen guest's demo probe over the domain's PV
// console, through the pty xenconsoled gives it in dom0
// (/local/domain/<domid>/console/tty).
type consoleGuest struct {
	name string
	f    *os.File
	mu   sync.Mutex
	rd   *bufio.Reader
	next uint64
}

var _ guestDriver = (*consoleGuest)(nil)

// xenConsoleGuest opens domain domid's console pty and waits, bounded by
// wait, until its demo probe answers.
func xenConsoleGuest(name string, domid uint32, wait time.Duration) (*consoleGuest, error) {
	key := fmt.Sprintf("/local/domain/%d/console/tty", domid)
	var tty string
	deadline := time.Now().Add(wait)
	for {
		out, err := exec.Command("xenstore-read", key).Output()
		if tty = strings.TrimSpace(string(out)); err == nil && tty != "" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no console pty in xenstore %s within %v (is xenconsoled running?)", name, key, wait)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return openConsoleGuest(name, tty, time.Until(deadline))
}

// openConsoleGuest opens the console pty tty and waits, bounded by wait,
// until the demo probe at its other end answers.
func openConsoleGuest(name, tty string, wait time.Duration) (*consoleGuest, error) {
	deadline := time.Now().Add(wait)
	f, err := os.OpenFile(tty, os.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: console %s: %w", name, tty, err)
	}
	if err := makeRaw(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: console %s: %w", name, tty, err)
	}
	c := &consoleGuest{name: name, f: f, rd: bufio.NewReaderSize(f, probeMaxLine)}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			f.Close()
			return nil, fmt.Errorf("%s: the demo probe did not answer on console %s within %v (does the guest image start it? see its console log)", name, tty, wait)
		}
		if _, err := c.call(probeRequest{Verb: "ping"}, min(left, 3*time.Second)); err == nil {
			return c, nil
		}
	}
}

func (c *consoleGuest) Close() error { return c.f.Close() }

// call sends req and waits, bounded by limit, for its answer.
func (c *consoleGuest) call(req probeRequest, limit time.Duration) (probeOutcome, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next++
	req.ID = c.next
	b, err := json.Marshal(req)
	if err != nil {
		return probeOutcome{}, err
	}
	deadline := time.Now().Add(limit)
	c.f.SetDeadline(deadline)
	if _, err := c.f.Write(append(append([]byte("\n"), b...), '\n')); err != nil {
		return probeOutcome{}, fmt.Errorf("%s: write to the console: %w", c.name, err)
	}
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return probeOutcome{}, fmt.Errorf("%s: the demo probe did not answer %s within %v: %w", c.name, req.Verb, limit, err)
		}
		i := strings.Index(line, probeTag)
		if i < 0 {
			continue
		}
		var out probeOutcome
		if json.Unmarshal([]byte(strings.TrimSpace(line[i+len(probeTag):])), &out) != nil || out.ID != req.ID {
			continue // a stale answer, or one the console garbled
		}
		if out.Err != "" {
			return out, errors.New(out.Err)
		}
		return out, nil
	}
}

// callFor bounds a request by its own timeout plus the console's way there
// and back (seconds under TCG).
func callFor(timeout time.Duration) time.Duration { return timeout + 20*time.Second }

func (c *consoleGuest) Label(rawURL string) (mapper.Answer, error) {
	out, err := c.call(probeRequest{Verb: "label", URL: rawURL}, callFor(10*time.Second))
	if err != nil {
		return mapper.Answer{}, err
	}
	if out.Answer == nil {
		return mapper.Answer{}, fmt.Errorf("%s: the probe's label answer is empty", c.name)
	}
	return *out.Answer, nil
}

func (c *consoleGuest) Fetch(ctx string, dst netip.AddrPort, method, host, path string, timeout time.Duration) (int, []byte, error) {
	out, err := c.call(probeRequest{Verb: "fetch", Ctx: ctx, Dst: dst.String(), Method: method, Host: host, Path: path,
		TimeoutMS: timeout.Milliseconds()}, callFor(timeout))
	return out.Status, out.Body, err
}

func (c *consoleGuest) Post(ctx string, dst netip.AddrPort, host, body string, timeout time.Duration) (int, int64, error) {
	out, err := c.call(probeRequest{Verb: "post", Ctx: ctx, Dst: dst.String(), Host: host, Body: body,
		TimeoutMS: timeout.Milliseconds()}, callFor(timeout))
	if err != nil && out.ID == 0 {
		return 0, -1, err // the console failed: nothing is known of the socket
	}
	return out.Status, out.Segs, err
}

func (c *consoleGuest) XFRMStat() (map[string]uint64, error) {
	out, err := c.call(probeRequest{Verb: "xfrm_stat"}, callFor(0))
	return out.Stat, err
}

func (c *consoleGuest) Policies() ([]xfrm.Policy, error) {
	out, err := c.call(probeRequest{Verb: "policies"}, callFor(0))
	return out.Policies, err
}

func (c *consoleGuest) AddPolicy(p xfrm.Policy) error {
	_, err := c.call(probeRequest{Verb: "add_policy", Policy: &p}, callFor(0))
	return err
}

func (c *consoleGuest) DeletePolicy(p xfrm.Policy) error {
	_, err := c.call(probeRequest{Verb: "delete_policy", Policy: &p}, callFor(0))
	return err
}

func (c *consoleGuest) SendESP(dst netip.Addr, spi uint32, n int) (int, error) {
	out, err := c.call(probeRequest{Verb: "esp", Dst: dst.String(), SPI: spi, N: n}, callFor(0))
	return out.Sent, err
}

func (c *consoleGuest) Load(api netip.AddrPort, rawURL string) (*loader.Result, error) {
	out, err := c.call(probeRequest{Verb: "load", Dst: api.String(), URL: rawURL}, callFor(2*time.Minute))
	if err != nil {
		return nil, err
	}
	if out.Load == nil {
		return nil, fmt.Errorf("%s: the probe's load answer is empty", c.name)
	}
	return out.Load, nil
}

func (c *consoleGuest) Socket(ctx string) error {
	_, err := c.call(probeRequest{Verb: "socket", Ctx: ctx}, callFor(0))
	return err
}
