// Package api is the client of the agent's admin API, used by the command
// line, the loader and the tests: one place that knows how to reach the
// agent (a Unix socket, or TCP where a caller allows it), send JSON, and
// turn an error answer ({"error": ...}) into a Go error that names the
// request.
//
// The request and response types are still the agent's own (agent.Status,
// agent.GuestSpec, ...); they move here when the agent's model is split
// from its daemon.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/localapi"
)

// maxAnswer bounds an answer read into memory (a status with many guests
// and SAs stays far below it).
const maxAnswer = 64 << 20

// Client talks to one agent.
type Client struct {
	base string
	http *http.Client
	// Hint is added to a failure to reach the agent, to tell the user
	// what to check (the command line names its --agent flag).
	Hint string
}

// New reaches the agent at addr: "unix:/path" or an absolute path for its
// admin socket, or host:port for a TCP listener (tests and the in-guest
// agents of the kernel tests). timeout bounds each request; 0 means none
// (streams).
func New(addr string, timeout time.Duration) *Client {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok || filepath.IsAbs(addr) {
		if !ok {
			path = addr
		}
		return &Client{base: "http://agent", http: localapi.Client(path, timeout)}
	}
	return &Client{base: "http://" + addr, http: &http.Client{Timeout: timeout}}
}

// Do sends in (as JSON, when not nil) with method to path and decodes the
// answer into out (when not nil). It returns the HTTP status, also with an
// error answer (status ≥ 300), whose error names the request and quotes
// the agent's message.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, c.unreachable(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, fmt.Errorf("agent: %s %s: %s: %s", method, path, resp.Status, e.Error)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("agent: %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Stream opens a GET of path whose answer the caller reads as it comes
// (the event stream) and must close.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		return nil, fmt.Errorf("agent: GET %s: %s: %s", path, resp.Status, e.Error)
	}
	return resp.Body, nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	_, err := c.Do(ctx, "GET", "/v1/status", nil, &st)
	return st, err
}

func (c *Client) unreachable(err error) error {
	if c.Hint != "" {
		return fmt.Errorf("agent: %w (%s)", err, c.Hint)
	}
	return fmt.Errorf("agent: %w", err)
}
