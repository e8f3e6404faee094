package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// lockedBuffer collects the command's log from its goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestUpdatedCommand runs 'mlsgate updated' on loopback with certificates
// from a real CA, pushes a bundle with the loader's certificate, reads the
// label the daemon's own mapper now gives, and stops it as SIGTERM would.
func TestUpdatedCommand(t *testing.T) {
	dir := t.TempDir()
	c, err := ca.Open(filepath.Join(dir, "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	guest, err := c.Issue(ca.Request{Kind: ca.Guest, CommonName: "vm7", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	loader, err := c.Issue(ca.Request{Kind: ca.Client, CommonName: updatedaemon.DefaultLoaderName, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := c.CRL()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"guest.pem": guest.CertPEM, "guest-key.pem": guest.KeyPEM, "ca.pem": c.CertPEM(), "crl.pem": crl}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stderr := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runContext(ctx, []string{"updated", "--config", "",
			"--listen", "127.0.0.1:0", "--mapper-listen", "127.0.0.1:0",
			"--cert", filepath.Join(dir, "guest.pem"), "--key", filepath.Join(dir, "guest-key.pem"),
			"--ca", filepath.Join(dir, "ca.pem"), "--crl", filepath.Join(dir, "crl.pem"),
			"--guest-addr", "10.70.0.7", "--state-dir", filepath.Join(dir, "state"), "--log-format", "json",
		}, &bytes.Buffer{}, stderr)
	}()
	var listening struct{ Addr, MapperAddr, Guest string }
	deadline := time.Now().Add(10 * time.Second)
	for listening.Addr == "" {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not say where it listens:\n%s", stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("the daemon stopped: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		for _, line := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(line, `"msg":"update daemon listening"`) {
				var l struct {
					Addr       string `json:"addr"`
					MapperAddr string `json:"mapper_addr"`
					Guest      string `json:"guest"`
				}
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				listening.Addr, listening.MapperAddr, listening.Guest = l.Addr, l.MapperAddr, l.Guest
			}
		}
	}
	if listening.Guest != "vm7 at 10.70.0.7" {
		t.Errorf("identity %q: want the certificate's name and --guest-addr", listening.Guest)
	}
	// The first line names the binary and the effective settings.
	first, _, _ := strings.Cut(stderr.String(), "\n")
	var start struct {
		Msg      string         `json:"msg"`
		Revision string         `json:"revision"`
		Go       string         `json:"go_version"`
		Config   map[string]any `json:"config"`
	}
	if err := json.Unmarshal([]byte(first), &start); err != nil || start.Msg != "starting" || start.Revision == "" || start.Go == "" ||
		start.Config["loader_name"] != "mlsgate-loader" || start.Config["log_format"] != "json" || start.Config["config"] != `none (--config "")` {
		t.Errorf("first log line %q (%v): want msg starting with the revision, Go version and settings", first, err)
	}

	b := &policystore.Bundle{
		Application: "analyst", Version: 1, Guest: "vm7", GuestAddr: netip.MustParseAddr("10.70.0.7"),
		MapperPolicy: "map https://ws1\\.analyst\\.example/profile(/.*)? s10/i8\n",
	}
	cl := &updatedaemon.Client{TLS: c.ClientTLS(loader, ""), Timeout: 10 * time.Second}
	defer cl.CloseIdleConnections()
	rep, err := cl.Push(ctx, listening.Addr, b)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr.String())
	}
	if rep.Version != 1 || rep.Mapper.Rules != 1 {
		t.Errorf("report %+v", rep)
	}
	resp, err := http.Get("http://" + listening.MapperAddr + "/v1/label?url=" + url.QueryEscape("https://ws1.analyst.example/profile/42"))
	if err != nil {
		t.Fatal(err)
	}
	var a mapper.Answer
	err = json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if err != nil || a.Label.String() != "s10/i8" || a.Source != mapper.SourceRule {
		t.Errorf("the guest mapper answers %+v, %v; want s10/i8 from the pushed rule", a, err)
	}
	// The daemon answers the push before it logs it (the log may be a slow
	// console): wait, bounded, for the line.
	logged := false
	for i := 0; i < 500 && !logged; i++ {
		if logged = strings.Contains(stderr.String(), `"msg":"bundle applied"`); !logged {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !logged {
		t.Errorf("the push was not logged within 5 s:\n%s", stderr.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the daemon did not stop")
	}
	if !strings.Contains(stderr.String(), `"msg":"update daemon stopped"`) {
		t.Errorf("no stop message:\n%s", stderr.String())
	}
}

func TestUpdatedCommandNeedsItsFiles(t *testing.T) {
	err := run([]string{"updated", "--cert", "x.pem"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--ca") {
		t.Errorf("without --key and --ca: %v", err)
	}
	dir := t.TempDir()
	err = run([]string{"updated", "--cert", filepath.Join(dir, "missing.pem"), "--key", filepath.Join(dir, "k.pem"), "--ca", filepath.Join(dir, "ca.pem")}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("missing certificate: %v", err)
	}
}
