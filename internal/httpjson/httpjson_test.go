package httpjson

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	for _, c := range []struct {
		write  func(http.ResponseWriter)
		status int
		body   string
	}{
		{func(w http.ResponseWriter) { Write(w, 201, map[string]int{"a": 1}) }, 201, "{\"a\":1}\n"},
		{func(w http.ResponseWriter) { WriteIndent(w, 200, map[string]int{"a": 1}) }, 200, "{\n  \"a\": 1\n}\n"},
		{func(w http.ResponseWriter) { Write(w, 200, func() {}) }, 500, "{\"error\":\"cannot encode the answer\"}\n"},
		{func(w http.ResponseWriter) { Error(w, 404, http.ErrNoCookie) }, 404, "{\"error\":\"http: named cookie not present\"}\n"},
	} {
		rec := httptest.NewRecorder()
		c.write(rec)
		if rec.Code != c.status || rec.Body.String() != c.body || rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("got %d %q %v, want %d %q", rec.Code, rec.Body, rec.Header(), c.status, c.body)
		}
	}
}
