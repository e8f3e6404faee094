package mapper

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestServerRequests(t *testing.T) {
	m := newTestMapper(t, Config{ID: "srv"}, "map https://a\\.org/.* system_u:object_r:a_t:s3:c1 i2\n")
	h := m.Handler()
	big := `{"url":"https://a.org/` + strings.Repeat("x", MaxBodyBytes) + `"}`
	cases := []struct {
		name, method, target, body string
		status                     int
		errPart                    string // in {"error"}; "" for a 200 answer
	}{
		{"label ok", "GET", "/v1/label?url=" + url.QueryEscape("https://A.org/p"), "", 200, ""},
		{"lookup ok", "POST", "/v1/lookup", `{"url":"https://a.org/p","hops":1,"via":["x"]}`, 200, ""},
		{"health", "GET", "/healthz", "", 200, ""},
		{"stats", "GET", "/v1/stats", "", 200, ""},
		{"label no url", "GET", "/v1/label", "", 400, "exactly one url"},
		{"label two urls", "GET", "/v1/label?url=https://a.org/&url=https://b.org/", "", 400, "exactly one url"},
		{"label bad escape", "GET", "/v1/label?url=%zz", "", 400, "bad query string"},
		{"label bad url", "GET", "/v1/label?url=ftp://a.org/", "", 400, "only http and https"},
		{"label long url", "GET", "/v1/label?url=https://a.org/" + strings.Repeat("y", MaxURLBytes), "", 400, "limit is 8192"},
		{"label wrong method", "POST", "/v1/label?url=https://a.org/", "", 405, "use GET"},
		{"lookup wrong method", "GET", "/v1/lookup", "", 405, "use POST"},
		{"lookup not json", "POST", "/v1/lookup", `url=https://a.org/`, 400, "not a lookup"},
		{"lookup truncated", "POST", "/v1/lookup", `{"url":"https://a.org/"`, 400, "not a lookup"},
		{"lookup wrong types", "POST", "/v1/lookup", `{"url":"https://a.org/","hops":"2"}`, 400, "not a lookup"},
		{"lookup empty body", "POST", "/v1/lookup", ``, 400, "not a lookup"},
		{"lookup no url", "POST", "/v1/lookup", `{"hops":0}`, 400, `no "url"`},
		{"lookup two objects", "POST", "/v1/lookup", `{"url":"https://a.org/"}{"url":"x"}`, 400, "data after"},
		{"lookup oversized", "POST", "/v1/lookup", big, 413, "over 64 KiB"},
		{"lookup loop", "POST", "/v1/lookup", `{"url":"https://a.org/","hops":1,"via":["srv"]}`, 508, "already passed through srv"},
		{"lookup hop limit", "POST", "/v1/lookup", `{"url":"https://a.org/","hops":99}`, 508, "limit is 8"},
		{"lookup negative hops", "POST", "/v1/lookup", `{"url":"https://a.org/","hops":-1}`, 400, "hops must be"},
		{"unknown path", "GET", "/v2/label", "", 404, "no such endpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.target, strings.NewReader(c.body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d; body %s", rec.Code, c.status, cut(rec.Body.String()))
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var body map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, cut(rec.Body.String()))
			}
			if c.errPart == "" {
				if _, isErr := body["error"]; isErr {
					t.Fatalf("unexpected error %v", body["error"])
				}
				return
			}
			msg, _ := body["error"].(string)
			if !strings.Contains(msg, c.errPart) {
				t.Errorf("error %q does not mention %q", msg, c.errPart)
			}
		})
	}
}

func TestServerAnswerJSON(t *testing.T) {
	m := newTestMapper(t, Config{ID: "srv"}, "map https://a\\.org/.* system_u:object_r:a_t:s3:c1 i2\n")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/label?url="+url.QueryEscape("HTTPS://a.org:443/p?q=1#frag"), nil))
	var got map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"url": "https://a.org/p?q=1", "label": "s3:c1/i2", "context": "system_u:object_r:a_t:s3:c1",
		"source": "rule", "origin": "rule", "rule": "test.policy:1",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, ok := got["upstream"]; ok {
		t.Errorf("upstream present in a rule answer: %v", got)
	}
}

// TestServerStalledClients: clients that send half a request and stall must
// not hold the server: others are served meanwhile, and the read timeouts
// close the stalled connections later.
func TestServerStalledClients(t *testing.T) {
	m := newTestMapper(t, Config{ID: "srv"}, "map .* s1\n")
	base := serve(t, m)
	addr := strings.TrimPrefix(base, "http://")
	for i := 0; i < 20; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /v1/lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"url\":")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(base+"/v1/lookup", "application/json", bytes.NewReader([]byte(`{"url":"https://a.org/"}`)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	a, err := NewClient().Lookup(t.Context(), base, "https://b.org/")
	if err != nil || a.Label != mustLabel(t, "s1") {
		t.Fatalf("client lookup: %+v %v", a, err)
	}
}

func TestClientRejectsBadReplies(t *testing.T) {
	for _, c := range []struct {
		name, body string
		status     int
		errPart    string
	}{
		{"not json", "hello", 200, "not an answer"},
		{"no label", `{"url":"https://a.org/","source":"rule"}`, 200, "lacks a label"},
		{"bad label", `{"url":"https://a.org/","label":"s99","source":"rule"}`, 200, "not an answer"},
		{"error status", `{"error":"boom"}`, 500, "boom"},
		{"huge", `{"url":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, 200, "over 65536 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(c.status)
				io.WriteString(w, c.body)
			}))
			defer srv.Close()
			_, err := NewClient().Lookup(t.Context(), srv.URL, "https://a.org/")
			if err == nil || !strings.Contains(err.Error(), c.errPart) {
				t.Fatalf("got %v, want an error mentioning %q", err, c.errPart)
			}
		})
	}
}

// TestForwardRejectsInconsistentContext: an upstream whose context claims
// another level than its label is not believed.
func TestForwardRejectsInconsistentContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"url":"https://a.org/","label":"s1/i0","context":"u:r:t_t:s9","source":"rule","origin":"rule"}`)
	}))
	defer srv.Close()
	m := newTestMapper(t, Config{ID: "m"}, "forward .* "+srv.URL+" s0-s15/i0-i15\n")
	if a := lookup(t, m, "https://a.org/"); a.Source != SourceDefault {
		t.Fatalf("answer: %+v", a)
	}
	if m.Stats().UpstreamErrors != 1 {
		t.Errorf("stats: %+v", m.Stats())
	}
}
