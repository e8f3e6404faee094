package updatedaemon

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMalformedAndOversizedBodies: the loader itself, authenticated, gets a
// 4xx with a reason for a body that is not one bundle.
func TestMalformedAndOversizedBodies(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: p.ca.ClientTLS(p.loader, "")}}
	defer hc.CloseIdleConnections()
	good, err := json.Marshal(analystBundle(t, nil, 1, 0x4000))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, ctype string
		body                []byte
		status              int
		code                Code
		reason              string
	}{
		{"oversized", "POST", "application/json", bytes.Repeat([]byte(" "), MaxBundleBytes+1), 413, CodeTooLarge, "larger than 8388608 bytes"},
		{"not JSON", "POST", "application/json", []byte("version: 1"), 400, CodeBadBundle, "not a bundle"},
		{"unknown field", "POST", "application/json", []byte(`{"application":"analyst","version":1,"shell":"rm -rf /"}`), 400, CodeBadBundle, `unknown field "shell"`},
		{"wrong type", "POST", "application/json", []byte(`{"version":"one"}`), 400, CodeBadBundle, "not a bundle"},
		{"two bundles", "POST", "application/json", append(append([]byte{}, good...), good...), 400, CodeBadBundle, "data follows the bundle"},
		{"empty", "POST", "application/json", nil, 400, CodeBadBundle, "not a bundle"},
		{"not JSON content", "POST", "text/plain", good, 415, CodeBadBundle, "send the bundle as application/json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctxT(t), c.method, "https://"+h.addr+"/v1/bundle", bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", c.ctype)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb errorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != c.status || eb.Code != c.code || !strings.Contains(eb.Error, c.reason) {
				t.Errorf("%d %s %q, want %d %s naming %q", resp.StatusCode, eb.Code, eb.Error, c.status, c.code, c.reason)
			}
		})
	}
	resp, err := hc.Get("https://" + h.addr + "/v1/bundle")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/bundle: %d, want 405", resp.StatusCode)
	}
	if got := h.fake.Calls(); len(got) != 0 {
		t.Errorf("bad bodies reached the applier: %q", got)
	}

	// The Client does not send what the daemon would refuse for its size.
	big := analystBundle(t, nil, 1, 0x4000)
	big.MapperPolicy += "# " + strings.Repeat("x", MaxBundleBytes) + "\n"
	_, err = h.client.Push(ctxT(t), h.addr, big)
	wantCode(t, err, ErrTooLarge)
}

// TestClientBoundedWaits: a guest that accepts and never answers, and an
// address nobody listens on, fail in bounded time with errors naming the
// address.
func TestClientBoundedWaits(t *testing.T) {
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	cl := &Client{TLS: p.ca.ClientTLS(p.loader, ""), Timeout: 300 * time.Millisecond}
	defer cl.CloseIdleConnections()
	start := time.Now()
	_, err = cl.Push(ctxT(t), ln.Addr().String(), analystBundle(t, nil, 1, 0x4000))
	wantCode(t, err, ErrTimeout)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the push took %s with a 300 ms timeout", took)
	}
	if !strings.Contains(err.Error(), ln.Addr().String()) || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Errorf("timeout error %q", err)
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	_, err = cl.Status(ctxT(t), addr)
	wantCode(t, err, ErrUnreachable)
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("unreachable error %q", err)
	}

	_, err = cl.Status(ctxT(t), "10.70.0.7")
	wantCode(t, err, ErrUnreachable)

	if _, err := (&Client{}).Status(ctxT(t), addr); err == nil || !strings.Contains(err.Error(), "no TLS configuration") {
		t.Errorf("client without TLS: %v", err)
	}
}
