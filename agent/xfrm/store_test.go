package xfrm

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"
	"time"

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

func TestFromStore(t *testing.T) {
	b := analystBundle(t)
	if len(b.States) == 0 || len(b.Policies) == 0 {
		t.Fatalf("bundle with %d SAs and %d policies", len(b.States), len(b.Policies))
	}
	for _, ss := range b.States {
		s := StateFromStore(ss)
		want := State{
			Src: ss.Src, Dst: ss.Dst, SPI: ss.SPI, Proto: ProtoESP, Mode: ModeTunnel, Reqid: ss.Reqid,
			Context: ss.Context, ReplayWindow: DefaultReplayWindow,
			AEAD: &Algo{Name: policystore.AEADGCM, Key: ss.AEAD.Key, ICVBits: ss.AEAD.ICVBits},
		}
		if ss.Mode != policystore.ModeTunnel {
			want.Mode = ModeTransport
		}
		if !reflect.DeepEqual(s, want) {
			t.Errorf("\n got %v\nwant %v", s, want)
		}
		// The key is a copy: the store's buffer can be wiped.
		orig := bytes.Clone(ss.AEAD.Key)
		clear(ss.AEAD.Key)
		if !bytes.Equal(s.AEAD.Key, orig) {
			t.Errorf("SA spi 0x%x shares its key with the store", s.SPI)
		}
		if _, err := encodeSA(&s); err != nil {
			t.Errorf("store SA does not encode: %v", err)
		}
	}
	for _, sp := range b.Policies {
		p := PolicyFromStore(sp)
		if p.Src != sp.Src || p.Dst != sp.Dst || p.Proto != sp.Proto || p.Context != sp.Context ||
			p.Priority != sp.Priority || p.Dir.String() != sp.Dir || p.Action.String() != sp.Action ||
			len(p.Templates) != len(sp.Templates) {
			t.Errorf("\n got %v\nfrom %+v", p, sp)
			continue
		}
		for i, tm := range sp.Templates {
			got := p.Templates[i]
			if got.Src != tm.Src || got.Dst != tm.Dst || got.Proto != ProtoESP || got.Mode.String() != tm.Mode || got.Reqid != tm.Reqid {
				t.Errorf("template %d: %v from %+v", i, got, tm)
			}
		}
		if _, err := encodePolicy(&p); err != nil {
			t.Errorf("store policy does not encode: %v", err)
		}
	}
}

// TestFromStoreUnknown: values the store never generates convert to ones
// the kernel layer refuses, rather than to a working default.
func TestFromStoreUnknown(t *testing.T) {
	s := StateFromStore(policystore.XFRMState{
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SPI: 0x1000,
		Proto: "ah", Mode: "beet",
	})
	if err := s.Validate(); err == nil {
		t.Errorf("SA with protocol ah and mode beet validated: %v", s)
	}
	for _, mut := range []func(*policystore.XFRMPolicy){
		func(p *policystore.XFRMPolicy) { p.Dir = "sideways" },
		func(p *policystore.XFRMPolicy) { p.Action = "maybe" },
		func(p *policystore.XFRMPolicy) { p.Templates[0].Proto = "ah" },
	} {
		sp := policystore.XFRMPolicy{
			Dir: "out", Action: "allow", Src: netip.MustParsePrefix("10.0.0.1/32"), Dst: netip.MustParsePrefix("10.0.0.2/32"),
			Templates: []policystore.XFRMTemplate{{Proto: "esp", Mode: "transport", Reqid: 1}},
		}
		p := PolicyFromStore(sp)
		if err := p.Validate(); err != nil {
			t.Fatalf("the unmutated policy fails: %v", err)
		}
		mut(&sp)
		p = PolicyFromStore(sp)
		if err := p.Validate(); err == nil {
			t.Errorf("policy from %+v validated", sp)
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
