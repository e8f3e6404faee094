package loader

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/mlsgate/mlsgate/agent"
)

// GuestAttached reports whether the agent has the fast path attached to the
// declared guest on iface (GET /v1/status): a backend runs a guest only once
// this holds (backend.Xen.Attached).
func (c *AgentClient) GuestAttached(iface string) (bool, error) {
	resp, err := c.http.Get(c.base + "/v1/status")
	if err != nil {
		return false, fmt.Errorf("agent: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("agent: GET /v1/status: %s", resp.Status)
	}
	var st agent.Status
	if err := json.Unmarshal(b, &st); err != nil {
		return false, fmt.Errorf("agent: GET /v1/status: %w", err)
	}
	return StatusAttached(st, iface), nil
}

// StatusAttached reports whether st shows a declared guest on iface, present
// and with its programs attached.
func StatusAttached(st agent.Status, iface string) bool {
	for _, g := range st.Guests {
		if g.Interface == iface {
			return g.Present && g.Attached
		}
	}
	return false
}
