package loader

import (
	"context"

	"github.com/mlsgate/mlsgate/agent"
)

// GuestAttached reports whether the agent has the fast path attached to the
// declared guest on iface (GET /v1/status): a backend runs a guest only once
// this holds (backend.Xen.Attached).
func (c *AgentClient) GuestAttached(iface string) (bool, error) {
	st, err := c.Status(context.Background())
	if err != nil {
		return false, err
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
