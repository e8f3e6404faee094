package assemble

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

// plainBackend boots nothing and records what it was asked.
type plainBackend struct {
	mu    sync.Mutex
	calls []string
}

func (b *plainBackend) Name() string { return "fake" }
func (b *plainBackend) log(s string) {
	b.mu.Lock()
	b.calls = append(b.calls, s)
	b.mu.Unlock()
}
func (b *plainBackend) Boot(_ context.Context, s loader.BootSpec) (*loader.Guest, error) {
	b.log(fmt.Sprintf("boot %s", s.Name))
	return &loader.Guest{VM: s.VM, Name: s.Name, Backend: "fake", Interface: fmt.Sprintf("vif%d.0", s.VM), Addr: s.Addr, HostAddr: s.HostAddr,
		UpdatedAddr: fmt.Sprintf("%s:%d", s.Addr, s.UpdatedPort), Template: s.Template}, nil
}
func (b *plainBackend) Destroy(_ context.Context, g *loader.Guest) error {
	b.log("destroy " + g.Name)
	return nil
}
func (b *plainBackend) history() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.calls, ",")
}

// pausingBackend is a backend that can pause guests, as Xen's can.
type pausingBackend struct{ plainBackend }

func (b *pausingBackend) Pause(_ context.Context, g *loader.Guest) error {
	b.log("pause " + g.Name)
	return nil
}
func (b *pausingBackend) Unpause(_ context.Context, g *loader.Guest) error {
	b.log("unpause " + g.Name)
	return nil
}

type nullAgent struct{}

func (nullAgent) SetGuest(agent.GuestSpec) error    { return nil }
func (nullAgent) RemoveGuest(string) (bool, error)  { return true, nil }
func (nullAgent) SetPeers(p []agent.PeerSpec) error { return nil }

func setup(t *testing.T, b loader.Backend, pause bool) Setup {
	return Setup{StateDir: t.TempDir(), AppsDir: "../../examples/analyst", APIPort: 7443, PoolSize: 1, MaxLoads: 4,
		Backend: b, Agent: nullAgent{}, SPIBase: 0xc0000000, SPISlots: 1024, PauseIdle: pause, GuestListen: loopbackListen}
}

// TestPausedPool: pre-loaded guests are paused after their boot and
// unpaused when handed out; a reused guest is not touched again.
func TestPausedPool(t *testing.T) {
	b := &pausingBackend{}
	r, err := Start(context.Background(), setup(t, b, true))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := b.history(); got != "boot vm2,pause vm2" {
		t.Fatalf("after refill: %s", got)
	}
	rng, _ := label.ParseBounds("s0-s15/i5-i10")
	l, err := r.API.Pool.Acquire(context.Background(), "analyst", rng, "default")
	if err != nil {
		t.Fatal(err)
	}
	if l.How() != "idle" || l.Guest().Name != "vm2" || b.history() != "boot vm2,pause vm2,unpause vm2" {
		t.Fatalf("hand-out: %s of %s, calls %s", l.How(), l.Guest().Name, b.history())
	}
	l.Done(true)
	l2, err := r.API.Pool.Acquire(context.Background(), "analyst", rng, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Done(true)
	if l2.How() != "reuse" || strings.Count(b.history(), "unpause") != 1 {
		t.Fatalf("reuse: %s, calls %s", l2.How(), b.history())
	}
}

func TestPauseIdleNeedsAPausingBackend(t *testing.T) {
	if _, err := Start(context.Background(), setup(t, &plainBackend{}, true)); err == nil || !strings.Contains(err.Error(), "cannot pause") {
		t.Fatalf("PauseIdle on a backend without Pause: %v", err)
	}
}

// loopbackListen stands in for the guests' listeners: the fake backends
// make no links.
func loopbackListen(loader.Guest, uint16) (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:0")
}

// linkingBackend knows each guest's link before it boots it (as Netns and
// QEMU do); bootMAC, when set, is what Boot really gives the guest.
type linkingBackend struct {
	plainBackend
	bootMAC string
}

func (b *linkingBackend) Link(vm uint32) (string, netip.Addr) {
	return loader.GuestMAC(vm), netip.MustParseAddr("fe80::1")
}

func (b *linkingBackend) Boot(ctx context.Context, s loader.BootSpec) (*loader.Guest, error) {
	g, err := b.plainBackend.Boot(ctx, s)
	if err == nil {
		g.MAC, g.HostLL = b.Link(s.VM)
		if b.bootMAC != "" {
			g.MAC = b.bootMAC
		}
	}
	return g, err
}

// loggingAgent writes each declaration into the backend's call log.
type loggingAgent struct {
	nullAgent
	b *plainBackend
}

func (a loggingAgent) SetGuest(g agent.GuestSpec) error {
	a.b.log(fmt.Sprintf("declare %s mac=%s host4=%s host6=%s", g.Interface, g.MAC, g.HostAddr4, g.HostAddr6))
	return nil
}

// TestQuarantineDeclaresTheLink: a guest is declared with its whole link
// (MAC, host-side addresses) before it boots, so its first frame is
// checked; when the backend gives it another MAC, the declaration follows.
func TestQuarantineDeclaresTheLink(t *testing.T) {
	for _, c := range []struct {
		bootMAC, want string
	}{
		{"", "declare vif2.0 mac=02:6d:6c:00:00:02 host4=10.71.2.1 host6=fe80::1,boot vm2"},
		{"02:aa:00:00:00:02", "declare vif2.0 mac=02:6d:6c:00:00:02 host4=10.71.2.1 host6=fe80::1,boot vm2," +
			"declare vif2.0 mac=02:aa:00:00:00:02 host4=10.71.2.1 host6=fe80::1"},
	} {
		b := &linkingBackend{bootMAC: c.bootMAC}
		s := setup(t, b, false)
		s.Agent = loggingAgent{b: &b.plainBackend}
		r, err := Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Pool.Refill(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := b.history(); got != c.want {
			t.Errorf("boot MAC %q: calls\n%s\nwant\n%s", c.bootMAC, got, c.want)
		}
		r.Close()
	}
}
