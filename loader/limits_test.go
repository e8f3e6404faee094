package loader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/mlsgate/mlsgate/policystore"
)

// loopbackGuest moves the fake pool's guest of app onto loopback
// addresses (guest 127.0.n.2, host 127.0.n.1), so that a test can speak
// from it without privileges.
func (p *fakePool) loopbackGuest(app string, n byte) *Guest {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.guests[app]
	old := g.Addr
	g.Addr, g.HostAddr = netip.AddrFrom4([4]byte{127, 0, n, 2}), netip.AddrFrom4([4]byte{127, 0, n, 1})
	p.apps[g.Addr], p.pending[g.Addr] = p.apps[old], p.pending[old]
	delete(p.apps, old)
	delete(p.pending, old)
	return g
}

// guestClient speaks from the guest's address.
func guestClient(g *Guest) *http.Client {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: g.Addr.AsSlice()}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// refusals reads mlsgate_loader_refusals_total{reason} from the loader's
// registry (0 when it is not there).
func refusals(t *testing.T, l *Loader, reason string) float64 {
	t.Helper()
	mfs, err := l.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mlsgate_loader_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelValue(m, "reason") == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// TestGuestLoadFloodIsRefused: a guest that floods POST /v1/load is
// refused after its burst, each refusal counted; a guest must give a
// request id, of bounded length.
func TestGuestLoadFloodIsRefused(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	if _, err := r.l.Load(context.Background(), Caller{Host: true}, "http://feed.osint.example/today"); err != nil {
		t.Fatal(err)
	}
	g := r.pool.loopbackGuest("osint", 9)
	// The clock stands still: the bucket refills by time, not by how fast
	// this test runs.
	t0 := time.Now()
	r.l.now = func() time.Time { return t0 }
	api := &API{Loader: r.l, Pool: r.pool}
	base := serveGuestForTest(t, api, g)
	c := guestClient(g)
	post := func(body string) int {
		resp, err := c.Post(base+"/v1/load", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
			b, _ := io.ReadAll(resp.Body)
			t.Logf("%.40s: %d %s", body, resp.StatusCode, b)
		}
		return resp.StatusCode
	}
	if code := post(`{"url":"http://feed.osint.example/today"}`); code != http.StatusBadRequest {
		t.Errorf("guest load without a request id: %d, want 400", code)
	}
	if code := post(fmt.Sprintf(`{"url":"http://feed.osint.example/today","id":%q}`, strings.Repeat("x", 65))); code != http.StatusBadRequest {
		t.Errorf("guest load with a 65-byte request id: %d, want 400", code)
	}
	const flood = 100
	ok, limited := 0, 0
	for i := range flood {
		switch code := post(fmt.Sprintf(`{"url":"http://feed.osint.example/today","id":"f%d"}`, i)); code {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("load %d: %d", i, code)
		}
	}
	if ok == flood || limited == 0 {
		t.Fatalf("a flood of %d loads from one guest: %d served, %d refused; want refusals after the burst", flood, ok, limited)
	}
	if ok > DefaultLimits().Burst {
		t.Errorf("%d loads served in a burst, more than the limit %d", ok, DefaultLimits().Burst)
	}
	if got := refusals(t, r.l, "rate_limited"); got != float64(limited) {
		t.Errorf("mlsgate_loader_refusals_total{reason=rate_limited} = %v, want %d", got, limited)
	}
	// The bucket refills with time: one more second, one more load.
	t0 = t0.Add(time.Second)
	if code := post(`{"url":"http://feed.osint.example/today","id":"after"}`); code != http.StatusOK {
		t.Errorf("a load a second after the flood: %d, want 200", code)
	}
	// A replayed id is refused and counted.
	t0 = t0.Add(time.Minute)
	if code := post(`{"url":"http://feed.osint.example/today","id":"after"}`); code != http.StatusConflict {
		t.Errorf("a replayed id: %d, want 409", code)
	}
	if refusals(t, r.l, "replayed") != 1 {
		t.Errorf("replay not counted")
	}
}

// TestGuestCannotBootWithoutLimit: 100 loads of one application asked by
// one guest boot at most the cap of fresh guests per caller, however
// many loads a pool guest takes in its life.
func TestGuestCannotBootWithoutLimit(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	r.pool.maxLoads = 8
	a, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	caller := Caller{Addr: a.Guest.Addr, VM: a.Guest.VM, App: "analyst"}
	before := r.pool.boots
	refused := 0
	for i := range 100 {
		if _, err := r.l.Load(context.Background(), caller, "http://feed.osint.example/today"); err != nil {
			if !strings.Contains(err.Error(), "fresh guests") {
				t.Fatalf("load %d: %v", i, err)
			}
			refused++
		}
	}
	booted := r.pool.boots - before
	if booted > DefaultLimits().FreshPerGuest {
		t.Fatalf("100 loads from vm%d booted %d guests; the cap is %d", a.Guest.VM, booted, DefaultLimits().FreshPerGuest)
	}
	if refused == 0 || refusals(t, r.l, "fresh_guest_cap") != float64(refused) {
		t.Fatalf("%d loads refused, counted %v", refused, refusals(t, r.l, "fresh_guest_cap"))
	}
}

// TestActiveLoadLimits: a guest may have ActivePerGuest loads in
// progress, and guests together ActivePerApp loads of one application;
// each refusal is counted, and finished loads free their slots.
func TestActiveLoadLimits(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	lim := r.l.cfg.Limits
	g1 := Caller{VM: 7, Addr: netip.MustParseAddr("10.71.7.2"), App: "analyst"}
	var releases []func()
	for range lim.ActivePerGuest {
		rel, _, err := r.l.admit(g1, "osint")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, rel)
	}
	if _, _, err := r.l.admit(g1, "osint"); !errors.Is(err, ErrLimited) || refusals(t, r.l, "active_per_guest") != 1 {
		t.Fatalf("load %d of one guest at once: %v", lim.ActivePerGuest+1, err)
	}
	for i := lim.ActivePerGuest; i < lim.ActivePerApp; i++ {
		rel, _, err := r.l.admit(Caller{VM: uint32(20 + i), Addr: netip.AddrFrom4([4]byte{10, 71, byte(20 + i), 2})}, "osint")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, rel)
	}
	other := Caller{VM: 40, Addr: netip.MustParseAddr("10.71.40.2")}
	if _, _, err := r.l.admit(other, "osint"); !errors.Is(err, ErrLimited) || refusals(t, r.l, "active_per_app") != 1 {
		t.Fatalf("load %d of one application at once: %v", lim.ActivePerApp+1, err)
	}
	for _, rel := range releases {
		rel()
		rel() // twice is harmless
	}
	if _, _, err := r.l.admit(other, "osint"); err != nil {
		t.Fatalf("after the loads ended: %v", err)
	}
}
