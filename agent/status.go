package agent

import "fmt"

// notAttached says why a declared guest's programs are not on its
// interface ("" when they are), from the agent's view under a.mu.
func (a *Agent) notAttached(gs GuestStatus) string {
	switch {
	case gs.Attached:
		return ""
	case !a.cfg.manages(gs.Interface):
		return fmt.Sprintf("interface matches none of the patterns %q: the agent never attaches to it", a.cfg.Interfaces)
	case !gs.Present:
		return "interface not present: the guest's VM is not running, or its interface has another name"
	case a.lastErr != nil:
		return "the last reconcile failed (see error); it is retried"
	case !a.ready.Load():
		return "the agent has not finished its first reconcile"
	}
	return "pending: the next reconcile attaches it"
}
