package pool

import (
	"fmt"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

// State is where a guest is in its life in the pool.
type State uint8

// The states of a pool entry. The zero value is not a state, so that a
// record that lost its state field is refused rather than read as Idle.
const (
	// Idle: booted from its template, serving no application yet.
	Idle State = iota + 1
	// Ready: bound to one application and range, able to take more loads.
	Ready
	// Full: bound to one application and range, at its load limit.
	Full
	// Booting: a slot whose guest is being started.
	Booting
	// Failed: to be destroyed (a failed first configuration, a boot
	// interrupted by a crash, a removal whose destroy has not succeeded).
	// The refill pass destroys Failed guests and drops their entries.
	Failed
	// Prepared: configured ahead of demand for one application and range
	// (Config.Ready, Config.Prepare) and not yet handed out; Pending while
	// that configuration runs. A hand-out makes it Ready or Full, and it
	// never becomes Prepared again.
	Prepared
)

var stateNames = [...]string{Idle: "idle", Ready: "ready", Full: "full", Booting: "booting", Failed: "failed", Prepared: "prepared"}

// String returns the state's name: "idle", "ready", "full", "booting",
// "failed" or "prepared".
func (s State) String() string {
	if s >= Idle && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// MarshalText writes the state's name.
func (s State) MarshalText() ([]byte, error) {
	if s < Idle || int(s) >= len(stateNames) {
		return nil, fmt.Errorf("pool: state %d has no name", uint8(s))
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n != "" && n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("pool: unknown state %q; want idle, ready, full, booting, failed or prepared", b)
}

// How says where Acquire found the guest it leased.
type How string

// The ways Acquire finds a guest, in the order it tries them.
const (
	// HowReuse: a Ready guest already serving the application at the range.
	HowReuse How = "reuse"
	// HowReady: a Prepared guest, configured for the application and range
	// ahead of demand, handed out whole.
	HowReady How = "ready"
	// HowIdle: an Idle guest of the template, now bound to the application.
	HowIdle How = "idle"
	// HowBoot: a guest booted for this request.
	HowBoot How = "boot"
)

// Entry is one row of the pool's table.
type Entry struct {
	// ID is the pool's own number for the slot, fixed when the slot is
	// made and never reused. A Booting slot has no VM number yet.
	ID uint64 `json:"id"`
	// Guest is the running guest. In a Booting entry it holds only what
	// the Boot function announced (see Announce), if anything.
	Guest loader.Guest `json:"guest"`
	State State        `json:"state"`
	// App and Range are the application the guest serves and the
	// secrecy/integrity range it serves it at; empty and zero while Idle.
	// A Booting entry made by Acquire carries them already.
	App   string       `json:"app,omitempty"`
	Range label.Bounds `json:"range,omitzero"`
	// Template names the image the guest was booted from.
	Template string `json:"template"`
	// Loads counts the loads the guest has taken (confirmed or in
	// progress); at MaxLoads the guest is Full. MaxLoads is copied from
	// the template's configuration when the guest is bound.
	Loads    int `json:"loads,omitempty"`
	MaxLoads int `json:"max_loads,omitempty"`
	// Active counts the leases not yet released; at MaxActive (when set,
	// copied from the template like MaxLoads) the guest is Full until one
	// ends.
	Active    int `json:"active,omitempty"`
	MaxActive int `json:"max_active,omitempty"`
	// Pending is set while the guest's first configuration for its
	// application is in progress: such a guest is not offered for reuse,
	// and if that configuration fails (or the agent dies during it) the
	// guest is destroyed rather than left bound with partial policy.
	Pending bool `json:"pending,omitempty"`
	// Since is when the entry last changed state.
	Since time.Time `json:"since"`
	// Err says why an entry is Failed.
	Err string `json:"err,omitempty"`
	// Fingerprint is what a Prepared guest's configuration was built from
	// (loader.ReadyWant.Fingerprint); it stays with the guest once handed
	// out.
	Fingerprint string `json:"fingerprint,omitempty"`
}

// full reports whether a bound guest is at its load limit: MaxLoads loads
// in its life, or MaxActive loads in progress.
func (e *Entry) full() bool {
	return (e.MaxLoads > 0 && e.Loads >= e.MaxLoads) || (e.MaxActive > 0 && e.Active >= e.MaxActive)
}

// announced reports whether a Booting entry knows which guest it is
// starting, so that a crash mid-boot can be checked and cleaned up.
func (e *Entry) announced() bool {
	return e.Guest.VM != 0 || e.Guest.Name != "" || e.Guest.Handle != ""
}

// Lease is a guest handed out by Acquire. The caller configures the guest
// for its application and then calls Done exactly once.
type Lease struct {
	// Entry is the guest's row as it was when leased.
	Entry Entry
	// How says where the guest came from.
	How     How
	release func(ok bool) error
}

// Done ends the lease. ok reports whether the guest was configured for the
// application. A failed configuration of a freshly bound guest (How idle or
// boot) destroys the guest, since it may hold part of the application's
// policy, and wakes the refill; a failed load on a reused guest only takes
// the load back. Done a second time returns ErrReleased.
func (l Lease) Done(ok bool) error {
	if l.release == nil {
		return fmt.Errorf("pool: Done on a zero Lease; use the Lease that Acquire returned")
	}
	return l.release(ok)
}
