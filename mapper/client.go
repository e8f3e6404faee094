package mapper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// MaxBodyBytes bounds request and response bodies between mappers.
const MaxBodyBytes = 64 << 10

// ErrUpstream is matched by every error the Client returns for an upstream
// that answered with an error or garbage (not for transport errors).
var ErrUpstream = errors.New("upstream mapper error")

// UpstreamError is an error reply from another mapper.
type UpstreamError struct {
	Upstream string
	Status   int    // HTTP status
	Message  string // the upstream's "error" text, or what was wrong with its reply
}

// Error prints the upstream, the status and its message.
func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream %s: status %d: %s", e.Upstream, e.Status, e.Message)
}

// Is makes errors.Is(err, ErrUpstream) true.
func (e *UpstreamError) Is(target error) bool { return target == ErrUpstream }

// Client asks other mappers over HTTP/JSON, on TCP ("http://host:port") or
// on a Unix socket ("unix:/path/to.sock"). Each upstream gets its own
// connection pool. The request's context bounds each call; give it a
// deadline. A Client is safe for concurrent use.
type Client struct {
	mu  sync.Mutex
	ups map[string]*upstreamConn
}

type upstreamConn struct {
	base string // URL prefix the API paths are appended to
	http *http.Client
}

// NewClient returns a Client. It never uses HTTP proxies from the
// environment: mappers talk to each other directly.
func NewClient() *Client {
	return &Client{ups: map[string]*upstreamConn{}}
}

func (c *Client) conn(upstream string) (*upstreamConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if uc, ok := c.ups[upstream]; ok {
		return uc, nil
	}
	canon, err := ParseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 nil,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		DialContext:           dialer.DialContext,
	}
	uc := &upstreamConn{base: canon}
	if path, ok := strings.CutPrefix(canon, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		}
		uc.base = "http://unix"
	}
	uc.http = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // a mapper does not redirect
	}}
	c.ups[upstream] = uc
	return uc, nil
}

// Resolve sends req to the mapper at upstream (POST /v1/lookup) and returns
// its answer.
func (c *Client) Resolve(ctx context.Context, upstream string, req Request) (Answer, error) {
	uc, err := c.conn(upstream)
	if err != nil {
		return Answer{}, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Answer{}, fmt.Errorf("encode lookup for %s: %w", upstream, err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, uc.base+"/v1/lookup", bytes.NewReader(body))
	if err != nil {
		return Answer{}, fmt.Errorf("lookup at %s: %w", upstream, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := uc.http.Do(hr)
	if err != nil {
		return Answer{}, fmt.Errorf("lookup at %s: %w", upstream, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if err != nil {
		return Answer{}, fmt.Errorf("lookup at %s: read reply: %w", upstream, err)
	}
	if len(data) > MaxBodyBytes {
		return Answer{}, &UpstreamError{Upstream: upstream, Status: resp.StatusCode, Message: fmt.Sprintf("reply is over %d bytes", MaxBodyBytes)}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return Answer{}, &UpstreamError{Upstream: upstream, Status: resp.StatusCode, Message: cut(msg)}
	}
	var a Answer
	if err := json.Unmarshal(data, &a); err != nil {
		return Answer{}, &UpstreamError{Upstream: upstream, Status: resp.StatusCode, Message: "reply is not an answer: " + err.Error()}
	}
	var has struct {
		Label json.RawMessage `json:"label"`
	}
	if json.Unmarshal(data, &has) != nil || len(has.Label) == 0 || a.Source == "" {
		return Answer{}, &UpstreamError{Upstream: upstream, Status: resp.StatusCode, Message: "reply lacks a label or a source"}
	}
	if err := a.Label.Validate(); err != nil {
		return Answer{}, &UpstreamError{Upstream: upstream, Status: resp.StatusCode, Message: "reply label: " + err.Error()}
	}
	return a, nil
}

// Lookup asks the mapper at upstream to label rawURL, as a local client.
func (c *Client) Lookup(ctx context.Context, upstream, rawURL string) (Answer, error) {
	return c.Resolve(ctx, upstream, Request{URL: rawURL})
}

// CloseIdleConnections closes idle connections to every upstream.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, uc := range c.ups {
		uc.http.CloseIdleConnections()
	}
}
