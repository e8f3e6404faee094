package assemble

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/policystore"
)

type okPusher struct{}

func (okPusher) Push(context.Context, *loader.Guest, *policystore.Bundle) error { return nil }

// TestGuestBootsAreCappedWithTheRealPool: the case on the real
// pool (MaxLoads 8, counted over a guest's life): 100 loads of one
// application asked by one guest booted 13 guests. With the cap on fresh
// guests per guest, it boots at most that many, the rest reuse or are
// refused and counted.
func TestGuestBootsAreCappedWithTheRealPool(t *testing.T) {
	lim := loader.DefaultLimits()
	// MaxLoads 8 in a guest's life (the pool's old only bound): the cap
	// stops the boots, and the rest of the loads are refused.
	booted, served := bootsFor100Loads(t, pool.TemplateConfig{MaxLoads: 8})
	if booted > lim.FreshPerGuest || served != 8*lim.FreshPerGuest {
		t.Fatalf("MaxLoads 8: booted %d, served %d; want at most %d boots and %d served", booted, served, lim.FreshPerGuest, 8*lim.FreshPerGuest)
	}
	// The wire's setting (8 loads at once, none over a life): one guest
	// serves them all.
	booted, served = bootsFor100Loads(t, pool.TemplateConfig{MaxActive: 8})
	if booted != 1 || served != 100 {
		t.Fatalf("MaxActive 8: booted %d, served %d; want 1 boot serving all 100", booted, served)
	}
}

// bootsFor100Loads runs 100 loads of osint asked by an analyst guest on a
// real pool of template tc, and returns the guests booted for them and the
// loads served.
func bootsFor100Loads(t *testing.T, tc pool.TemplateConfig) (booted, served int) {
	var boots atomic.Int32
	next := uint32(1)
	p, err := pool.Open(filepath.Join(t.TempDir(), "pool.db"), pool.Config{
		Templates: map[string]pool.TemplateConfig{"default": tc},
		Boot: func(ctx context.Context, template string) (*loader.Guest, error) {
			boots.Add(1)
			next++
			addr, host := GuestAddrs(next)
			g := loader.Guest{VM: next, Name: fmt.Sprintf("vm%d", next), Interface: fmt.Sprintf("vif%d.0", next), Addr: addr, HostAddr: host}
			return &g, pool.Announce(ctx, g)
		},
		Destroy: func(context.Context, *loader.Guest) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st, err := policystore.OpenStore(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.SyncDir("../../examples/analyst"); err != nil {
		t.Fatal(err)
	}
	l, err := loader.New(loader.Config{Template: "default", SPIBase: 0xc0000000, SPISlots: 65536},
		&policystore.Catalog{Store: st}, nil, &poolAdapter{p: p}, okPusher{}, &loader.Host{Agent: nullAgent{}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Load(context.Background(), loader.Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	caller := loader.Caller{Addr: a.Guest.Addr, VM: a.Guest.VM, Interface: a.Guest.Interface, App: "analyst"}
	before := boots.Load()
	refused := 0
	for i := range 100 {
		_, err := l.Load(context.Background(), caller, "http://feed.osint.example/today")
		switch {
		case err == nil:
			served++
		case errors.Is(err, loader.ErrLimited):
			refused++
		default:
			t.Fatalf("load %d: %v", i, err)
		}
	}
	booted = int(boots.Load() - before)
	t.Logf("%+v: 100 loads from vm%d: %d served, %d refused, %d guests booted (fresh-guest cap %d)", tc, a.Guest.VM, served, refused, booted, loader.DefaultLimits().FreshPerGuest)
	if refused != 100-served {
		t.Fatalf("%d served and %d refused of 100", served, refused)
	}
	return booted, served
}
