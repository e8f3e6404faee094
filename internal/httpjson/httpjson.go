// Package httpjson writes the JSON answers of the project's HTTP servers
// (agent, loader, policy store, label mapper, update daemon), so that they
// all set the same headers and fail the same way.
package httpjson

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Write answers with v as compact JSON and the status.
func Write(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	write(w, status, data, err)
}

// WriteIndent answers with v as JSON indented by two spaces, for the admin
// APIs that people read with curl.
func WriteIndent(w http.ResponseWriter, status int, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	write(w, status, data, err)
}

// Error answers with {"error": err's text} and the status.
func Error(w http.ResponseWriter, status int, err error) {
	Write(w, status, map[string]string{"error": err.Error()})
}

// write sends data, or a 500 with an error body when v could not be
// encoded (a value the server made, so a bug: say so rather than send
// half an answer). The body ends with a newline, as json.Encoder's does.
func write(w http.ResponseWriter, status int, data []byte, err error) {
	if err != nil {
		status = http.StatusInternalServerError
		data = []byte(`{"error":"cannot encode the answer"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	// The whole answer is known: say its length, so that a handler
	// that flushes it early sends it whole, not chunked and unended.
	h.Set("Content-Length", strconv.Itoa(len(data)+1))
	w.WriteHeader(status)
	w.Write(append(data, '\n')) //nolint:errcheck // the peer hung up; nothing to tell it
}
