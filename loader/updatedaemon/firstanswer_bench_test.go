package updatedaemon

import (
	"crypto/tls"
	"flag"
	"sort"
	"testing"
	"time"
)

var firstAnswer = flag.Bool("firstanswer", false, "time the first answer (new connection, mutual TLS, status) by key exchange")

// TestFirstAnswerTimes times what the bench calls a guest's first answer
// on loopback: a new connection, the mutual-TLS handshake and the status
// request, for the key exchanges TLS offers, each with a full handshake and
// resuming the session of the connection before. It only reports (median
// of 21); run it with -firstanswer.
func TestFirstAnswerTimes(t *testing.T) {
	if !*firstAnswer {
		t.Skip("a measurement: run with -firstanswer")
	}
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	type kex struct {
		name   string
		curves []tls.CurveID
	}
	var cases []struct {
		kex
		resume bool
	}
	for _, k := range []kex{{"default (X25519MLKEM768)", nil}, {"X25519", []tls.CurveID{tls.X25519}}, {"P-256", []tls.CurveID{tls.CurveP256}}} {
		cases = append(cases, struct {
			kex
			resume bool
		}{k, false}, struct {
			kex
			resume bool
		}{k, true})
	}
	for _, c := range cases {
		cfg := p.ca.ClientTLS(p.loader, "")
		cfg.CurvePreferences = c.curves
		how := "full handshake"
		if c.resume {
			how = "resumed"
		} else {
			cfg.ClientSessionCache = noSessions{}
		}
		cl := &Client{TLS: cfg}
		var ds, hs []time.Duration
		for range 21 {
			cl.CloseIdleConnections()
			t0 := time.Now()
			if err := cl.Connect(t.Context(), h.addr); err != nil {
				t.Fatal(err)
			}
			t1 := time.Now()
			if _, err := cl.Status(t.Context(), h.addr); err != nil {
				t.Fatal(err)
			}
			ds, hs = append(ds, time.Since(t0)), append(hs, t1.Sub(t0))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		sort.Slice(hs, func(i, j int) bool { return hs[i] < hs[j] })
		t.Logf("%s, %s: median %v, of which connect and handshake %v", c.name, how, ds[len(ds)/2], hs[len(hs)/2])
	}
}

// noSessions is a client session cache that keeps nothing: every
// handshake is a full one.
type noSessions struct{}

func (noSessions) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (noSessions) Put(string, *tls.ClientSessionState)        {}
