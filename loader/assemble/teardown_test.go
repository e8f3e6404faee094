package assemble

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/loader"
)

// recordingAgent keeps what the loader declared, as the agent would.
type recordingAgent struct {
	mu      sync.Mutex
	guests  map[string]agent.GuestSpec
	removed []string
}

func (a *recordingAgent) SetGuest(g agent.GuestSpec) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.guests == nil {
		a.guests = map[string]agent.GuestSpec{}
	}
	a.guests[g.Interface] = g
	return nil
}

func (a *recordingAgent) RemoveGuest(iface string) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removed = append(a.removed, iface)
	_, ok := a.guests[iface]
	delete(a.guests, iface)
	return ok, nil
}

func (a *recordingAgent) SetPeers([]agent.PeerSpec) error { return nil }

func (a *recordingAgent) declared(iface string) (agent.GuestSpec, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g, ok := a.guests[iface]
	return g, ok
}

// stuckBackend is a backend whose Destroy fails until unstuck: the guest
// may still be running.
type stuckBackend struct {
	plainBackend
	mu    sync.Mutex
	stuck bool
}

func (b *stuckBackend) Destroy(ctx context.Context, g *loader.Guest) error {
	b.mu.Lock()
	stuck := b.stuck
	b.mu.Unlock()
	b.log("destroy " + g.Name)
	if stuck {
		return errors.New("xl destroy: domain is stuck")
	}
	return nil
}

func (b *stuckBackend) set(stuck bool) {
	b.mu.Lock()
	b.stuck = stuck
	b.mu.Unlock()
}

// TestDestroyFailureKeepsGuestFiltered: a guest whose backend destroy
// fails may still run, so it stays declared to the agent, with no
// application and an empty range (deny all data), until a retried destroy
// succeeds; the failure is counted.
func TestDestroyFailureKeepsGuestFiltered(t *testing.T) {
	b := &stuckBackend{stuck: true}
	ag := &recordingAgent{}
	s := setup(t, b, false)
	s.Agent = ag
	r, err := Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := ag.declared("vif2.0"); !ok {
		t.Fatal("vm2 was not declared to the agent at boot")
	}
	if _, ok := r.Listeners.Addr("vif2.0"); !ok {
		t.Fatal("vm2 has no API listener after its boot")
	}
	if err := r.Pool.Remove(context.Background(), 2); err == nil {
		t.Fatal("Remove succeeded although the backend's destroy failed")
	}
	spec, ok := ag.declared("vif2.0")
	if !ok {
		t.Fatalf("vm2's destroy failed but it was removed from the agent (removed %v): its vif is unfiltered while it may run", ag.removed)
	}
	if spec.App != 0 || !spec.Range.High.Secrecy.Cats.IsEmpty() || spec.Range.High.Secrecy.Sens != 0 {
		t.Fatalf("vm2 after a failed destroy is declared %+v; want app 0 with an empty range (deny all data)", spec)
	}
	if r.Listeners.Len() != 0 {
		t.Fatal("VMLoad still listens for vm2, whose destroy failed")
	}
	if got := testutil.ToFloat64(r.Loader.TeardownFailures()); got != 1 {
		t.Fatalf("teardown failures counted %v, want 1", got)
	}
	if held := r.Loader.Held(); len(held) != 1 || held[0].Name != "vm2" || held[0].Failures != 1 {
		t.Fatalf("status shows held guests %+v, want vm2 with 1 failure", held)
	}
	// A refill before the backoff ends does not hammer the backend; the
	// guest stays held.
	_ = r.Pool.Refill(context.Background())
	if _, ok := ag.declared("vif2.0"); !ok {
		t.Fatal("vm2 was forgotten by a refill while its destroy keeps failing")
	}

	// The retry succeeds once the backend can destroy the guest: only
	// then is it forgotten.
	b.set(false)
	if err := r.Pool.Remove(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	if _, ok := ag.declared("vif2.0"); ok {
		t.Fatal("vm2 was destroyed but is still declared")
	}
	if held := r.Loader.Held(); len(held) != 0 {
		t.Fatalf("status still holds %+v after the destroy succeeded", held)
	}
	if got := strings.Count(b.history(), "destroy vm2"); got != 2 {
		t.Fatalf("destroy calls %s; want 2 (the failed one and the retry)", b.history())
	}
}
