package xfrm

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/ipsec"
	"github.com/mlsgate/mlsgate/policystore"
)

// analystBundle is the policy store's bundle for the example analyst
// application, with keys from a counter.
func analystBundle(t *testing.T) *policystore.Bundle {
	t.Helper()
	app, err := policystore.LoadFile("../../examples/analyst/analyst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spi := uint32(0x4000)
	b, err := policystore.GenerateBundle(app, policystore.BundleRequest{
		Guest:          "vm7",
		GuestAddr:      netip.MustParseAddr("10.70.0.7"),
		HostAddr:       netip.MustParseAddr("10.70.0.1"),
		MapperUpstream: "http://10.70.0.1:7070",
		SPI:            func() (uint32, error) { spi++; return spi, nil },
		Version:        1,
		Now:            time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStoreValuesEncode: the store's SAs and policies are this package's
// values as they are, with the replay window the store gives every SA; the
// codec encodes them without a conversion.
func TestStoreValuesEncode(t *testing.T) {
	b := analystBundle(t)
	if len(b.States) == 0 || len(b.Policies) == 0 {
		t.Fatalf("bundle with %d SAs and %d policies", len(b.States), len(b.Policies))
	}
	for _, s := range b.States {
		if s.Proto != ProtoESP || s.ReplayWindow != ipsec.DefaultReplayWindow || s.AEAD == nil || s.AEAD.Name != policystore.AEADGCM {
			t.Errorf("store SA %v: want ESP, replay window %d and %s", s, ipsec.DefaultReplayWindow, policystore.AEADGCM)
		}
		if _, err := encodeSA(&s); err != nil {
			t.Errorf("store SA does not encode: %v", err)
		}
	}
	for _, p := range b.Policies {
		for i, tm := range p.Templates {
			if tm.Proto != ProtoESP || tm.Reqid == 0 {
				t.Errorf("policy %v template %d: %v", p, i, tm)
			}
		}
		if _, err := encodePolicy(&p); err != nil {
			t.Errorf("store policy does not encode: %v", err)
		}
	}
}

func TestCatchAllBlock(t *testing.T) {
	for _, c := range []struct{ guest, host, any string }{
		{"10.70.0.7", "10.70.0.7/32", "0.0.0.0/0"},
		{"fd00::7", "fd00::7/128", "::/0"},
	} {
		ps := CatchAllBlock(netip.MustParseAddr(c.guest), 5000)
		host, anyAddr := netip.MustParsePrefix(c.host), netip.MustParsePrefix(c.any)
		type key struct {
			src, dst netip.Prefix
			dir      Dir
		}
		want := map[key]bool{{host, anyAddr, DirOut}: true, {anyAddr, host, DirIn}: true, {host, anyAddr, DirFwd}: true, {anyAddr, host, DirFwd}: true}
		if len(ps) != len(want) {
			t.Fatalf("%s: %d policies", c.guest, len(ps))
		}
		for _, p := range ps {
			k := key{p.Src, p.Dst, p.Dir}
			if !want[k] || p.Action != ActionBlock || p.Priority != 5000 || p.Context != "" || len(p.Templates) != 0 {
				t.Errorf("%s: unexpected %v", c.guest, p)
			}
			delete(want, k)
			if err := p.Validate(); err != nil {
				t.Errorf("%s: %v", c.guest, err)
			}
		}
	}
}
