package loader

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// SA rotation, make-before-break (DESIGN.md, configuration phase).
//
// Every SA of a bundle is installed on both ends of the guest's tunnel: on
// its destination it is the inbound state, on its source the outbound
// one. When two outbound states match a template and a flow's context, the
// kernel takes the one added last (xfrm_state_find prefers the newest
// add_time), so adding a state on the sending end is what switches it.
// A rotation gives each SA a successor with a fresh SPI from the host's
// range and a fresh key from crypto/rand, and nothing else changed (the
// same addresses, mode, reqid, context and label; checkSuccessor refuses
// anything else before a state is installed), then:
//
//	declare     the agent records each successor and the predecessor's
//	            context, application and owner (it refuses a successor
//	            that differs: agent/rotation.go)
//	host_in     the host adds the successors it receives (guest → host)
//	guest_both  the guest gets old + new: it adds the successors it
//	            receives, and those it sends, whose receiver (the host)
//	            has them already: the guest has switched
//	host_out    the host adds the successors it sends: the host has
//	            switched
//	old_out     the senders drop their old outbound states (the guest by
//	            a push of new + its old inbound, the host by deleting)
//	grace       the old inbound states stay for Grace, for packets in
//	            flight and for bundles cached on the old states
//	old_in      the receivers drop them (the guest by a push of the new
//	            set, the host by deleting)
//	done        the agent's records and the journal go, the old SPIs are
//	            free again
//
// At every point an outbound state exists only where its receiver holds
// the inbound one, so no packet is dropped for want of a state, and the
// agent never enforces a successor of another label.
//
// Crash safety: the plan (including the new keys: it is a secret file,
// 0600 in the loader's 0700 state directory) and the last completed step
// are journalled atomically before each step runs. Recover, at start,
// finishes a rotation whose guest already holds the new states
// (guest_both done) and rolls back one that had not got that far. Every
// step is idempotent: host adds of a state already there and deletes of
// one already gone succeed, and a push repeats the journalled version with
// the same content, which the update daemon accepts as already applied.

// Rotation steps, in order; the journal records the last one done.
const (
	stepPlanned   = "planned"
	stepDeclared  = "declare"
	stepHostIn    = "host_in"
	stepGuestBoth = "guest_both"
	stepHostOut   = "host_out"
	stepOldOut    = "old_out"
	stepGrace     = "grace"
	stepOldIn     = "old_in"
	stepDone      = "done"
)

// RotationSteps lists the step boundaries in order (for tests and
// fault injection).
var RotationSteps = []string{stepPlanned, stepDeclared, stepHostIn, stepGuestBoth, stepHostOut, stepOldOut, stepGrace, stepOldIn, stepDone}

func stepIndex(s string) int { return slices.Index(RotationSteps, s) }

// RotationAgent is what rotation needs of the host agent (*agent.Agent, or
// AgentClient over its socket).
type RotationAgent interface {
	// DeclareRotations tells the agent every successor of a rotation at
	// once, all or none, and returns once the agent has them in its maps.
	DeclareRotations(pairs []agent.RotationPair) error
	// DropRotations forgets the records of the successors; one without a
	// record is not an error.
	DropRotations(news []agent.SARef) error
}

// RotationXFRM adds and removes the host's states.
type RotationXFRM interface {
	AddState(s xfrm.State) error
	DeleteState(dst netip.Addr, spi uint32, proto xfrm.Proto) error
}

// Rotator rotates guests' SAs.
type Rotator struct {
	Agent RotationAgent
	// XFRM is the host's end; nil on a host that installs no SAs itself.
	XFRM RotationXFRM
	// Push delivers a guest part to the guest's update daemon.
	Push func(ctx context.Context, g *Guest, b *policystore.Bundle) error
	// SPI hands out a free SPI of the host's range; FreeSPIs gives SPIs
	// back.
	SPI      func() (uint32, error)
	FreeSPIs func([]uint32)
	// NextVersion numbers the bundles the rotation pushes.
	NextVersion func(app string) (uint64, error)
	// StateDir is where the journal lives (a private directory).
	StateDir string
	// Grace is how long the old inbound states stay after the switch.
	Grace time.Duration
	// Sleep waits (time.Sleep honouring ctx when nil).
	Sleep func(ctx context.Context, d time.Duration) error
	Now   func() time.Time
	// Inject, when set, is called after each step is journalled; an error
	// stops the rotation there as a crash would (tests).
	Inject func(step string) error
	// Done, when set, learns each finished rotation.
	Done func(RotationResult)
	// Commit, when set, records the bundle now in force on g (the
	// successors) once the rotation is complete and before its journal
	// is removed: a loader that dies in between finds the journal, and
	// Recover commits again. An error keeps the journal.
	Commit func(g *Guest, b *policystore.Bundle) error
	// Lifetime is given to the successors the host installs.
	Lifetime xfrm.Lifetime

	mu sync.Mutex // one rotation at a time per Rotator
}

// RotationResult is one rotation's outcome, for metrics and events.
type RotationResult struct {
	Guest     string        `json:"guest"`
	VM        uint32        `json:"vm"`
	Result    string        `json:"result"` // ok, rolled_back, failed, refused_relabel
	Error     string        `json:"error,omitempty"`
	Trigger   string        `json:"trigger"`
	Took      time.Duration `json:"took"`
	OldSPIs   []uint32      `json:"old_spis"`
	NewSPIs   []uint32      `json:"new_spis"`
	Version   uint64        `json:"version"`
	Generated time.Time     `json:"generated"`
	// Steps is what each step of this run took, its journal write
	// included (a resumed rotation lists only the steps it ran).
	Steps []Step `json:"steps,omitempty"`
}

// rotationJournal is the persisted plan and progress of one rotation.
type rotationJournal struct {
	Guest   Guest  `json:"guest"`
	Trigger string `json:"trigger"`
	Step    string `json:"step"`
	Started time.Time
	// Old is the guest part of the bundle in force before the rotation;
	// NewStates its successors, index for index.
	Old       *policystore.Bundle `json:"old"`
	NewStates []xfrm.State        `json:"new_states"`
	// Versions of the pushes: both, old-out, new, rollback.
	Versions [4]uint64 `json:"versions"`
}

func journalName(g *Guest) string { return "rotation-" + g.Interface + ".json" }

// ErrRelabel is wrapped by a rotation whose successor would carry another
// label (never installed).
var ErrRelabel = errors.New("rotation would relabel an SA")

// checkSuccessor refuses a successor that differs from its predecessor in
// anything but the SPI and the key.
func checkSuccessor(old, s xfrm.State) error {
	switch {
	case s.Context != old.Context || s.Label != old.Label:
		return fmt.Errorf("%w: spi %#x → %#x changes the context %q (%v) to %q (%v)", ErrRelabel, old.SPI, s.SPI, old.Context, old.Label, s.Context, s.Label)
	case s.Src != old.Src || s.Dst != old.Dst || s.Reqid != old.Reqid || s.Mode != old.Mode || s.Proto != old.Proto:
		return fmt.Errorf("%w: spi %#x → %#x changes the endpoints, reqid, mode or protocol", ErrRelabel, old.SPI, s.SPI)
	case s.SPI == old.SPI:
		return fmt.Errorf("spi %#x → %#x: a successor needs a new SPI", old.SPI, s.SPI)
	case s.AEAD == nil || old.AEAD == nil:
		return fmt.Errorf("spi %#x → %#x: both need a cipher", old.SPI, s.SPI)
	case s.AEAD.Name != old.AEAD.Name || s.AEAD.ICVBits != old.AEAD.ICVBits || len(s.AEAD.Key) != len(old.AEAD.Key):
		return fmt.Errorf("spi %#x → %#x changes the cipher", old.SPI, s.SPI)
	case s.ESN != old.ESN:
		return fmt.Errorf("spi %#x → %#x turns extended sequence numbers %s (both ends must agree, and without them the SA must be rotated before 2^32 packets)", old.SPI, s.SPI, map[bool]string{true: "on", false: "off"}[s.ESN])
	}
	return policystore.CheckState(&s)
}

// Plan makes the successors of b's states: new SPIs, fresh keys, nothing
// else changed.
func (r *Rotator) plan(b *policystore.Bundle) ([]xfrm.State, error) {
	var out []xfrm.State
	var spis []uint32
	fail := func(err error) ([]xfrm.State, error) {
		if r.FreeSPIs != nil {
			r.FreeSPIs(spis)
		}
		return nil, err
	}
	for _, s := range b.States {
		spi, err := r.SPI()
		if err != nil {
			return fail(fmt.Errorf("allocate the successor of spi %#x: %w", s.SPI, err))
		}
		spis = append(spis, spi)
		if s.AEAD == nil {
			return fail(fmt.Errorf("spi %#x has no cipher to rotate the key of", s.SPI))
		}
		n := s
		n.SPI = spi
		// A copy of the cipher: the predecessor keeps its own key.
		aead := *s.AEAD
		aead.Key = make([]byte, len(s.AEAD.Key))
		n.AEAD = &aead
		if _, err := rand.Read(n.AEAD.Key); err != nil {
			return fail(fmt.Errorf("draw a key: %w", err))
		}
		out = append(out, n)
	}
	return out, nil
}

// Rotate rotates every SA of g's bundle b (the bundle in force, with its
// keys) and returns the bundle now in force. On an error before the
// guest holds the new states, everything is rolled back; after, the
// journal stays and Recover (or the next Rotate of g) finishes it.
func (r *Rotator) Rotate(ctx context.Context, g *Guest, b *policystore.Bundle, trigger string) (*policystore.Bundle, RotationResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.now()
	res := RotationResult{Guest: g.Name, VM: g.VM, Trigger: trigger}
	// A rotation of g that failed after the guest switched (its journal
	// stayed) is finished first, or rolled back, and this one starts from
	// what is in force after it: starting from b would overwrite that
	// journal and leave its states behind.
	js, err := r.pending()
	if err != nil {
		res.Result, res.Error = "failed", err.Error()
		return b, res, fmt.Errorf("rotate %s: %w", g.Name, err)
	}
	for _, pj := range js {
		if pj.Guest.Interface != g.Interface {
			continue
		}
		nb, pres, err := r.recoverOne(ctx, pj)
		if err != nil {
			res.Result, res.Error = "failed", err.Error()
			return b, res, fmt.Errorf("rotate %s: an earlier rotation is unfinished: %w (%s)", g.Name, err, pres.Result)
		}
		b = nb
	}
	if b == nil || len(b.States) == 0 {
		return b, res, fmt.Errorf("rotate %s: no bundle with SAs in force; load an application first", g.Name)
	}
	j := &rotationJournal{Guest: *g, Trigger: trigger, Started: start.UTC(), Old: b.GuestPart()}
	if j.NewStates, err = r.plan(b); err != nil {
		res.Result, res.Error = "failed", err.Error()
		return b, res, fmt.Errorf("rotate %s: %w", g.Name, err)
	}
	for i := range j.NewStates {
		if err := checkSuccessor(b.States[i], j.NewStates[i]); err != nil {
			r.free(j.NewStates)
			res.Result, res.Error = "refused_relabel", err.Error()
			return b, res, fmt.Errorf("rotate %s: %w", g.Name, err)
		}
	}
	for i := range j.Versions {
		if j.Versions[i], err = r.NextVersion(b.Application); err != nil {
			r.free(j.NewStates)
			res.Result, res.Error = "failed", err.Error()
			return b, res, fmt.Errorf("rotate %s: number the bundles: %w", g.Name, err)
		}
	}
	return r.run(ctx, j, res)
}

func (r *Rotator) free(states []xfrm.State) {
	if r.FreeSPIs == nil {
		return
	}
	spis := make([]uint32, len(states))
	for i, s := range states {
		spis[i] = s.SPI
	}
	r.FreeSPIs(spis)
}

func (r *Rotator) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// run executes the journal from the step after j.Step, rolling back when
// a step before guest_both fails.
func (r *Rotator) run(ctx context.Context, j *rotationJournal, res RotationResult) (*policystore.Bundle, RotationResult, error) {
	g := &j.Guest
	for _, s := range j.Old.States {
		res.OldSPIs = append(res.OldSPIs, s.SPI)
	}
	for _, s := range j.NewStates {
		res.NewSPIs = append(res.NewSPIs, s.SPI)
	}
	finish := func(result string, err error) (*policystore.Bundle, RotationResult, error) {
		res.Took = r.now().Sub(j.Started)
		res.Result = result
		if err != nil {
			res.Error = err.Error()
		}
		if r.Done != nil {
			r.Done(res)
		}
		if result == "ok" {
			nb := r.bundle(j, 2, j.NewStates)
			res.Version, res.Generated = nb.Version, nb.Generated
			return nb, res, nil
		}
		if err != nil {
			return nil, res, fmt.Errorf("rotate %s: %w", g.Name, err)
		}
		return j.Old, res, nil
	}
	// A resumed rotation may find its own successors installed already; a
	// fresh one must not find any state under a new SPI.
	resumed := j.Step != ""
	steps := []struct {
		name string
		do   func() error
	}{
		{stepDeclared, func() error { return r.declare(j) }},
		{stepHostIn, func() error { return r.hostAdd(j, j.Old.HostAddr, resumed) }},
		{stepGuestBoth, func() error {
			return r.Push(ctx, g, r.bundle(j, 0, append(slices.Clone(j.Old.States), j.NewStates...)))
		}},
		{stepHostOut, func() error { return r.hostAdd(j, j.Old.GuestAddr, resumed) }},
		{stepOldOut, func() error {
			keep := slices.Clone(j.NewStates)
			for _, s := range j.Old.States {
				if s.Dst == j.Old.GuestAddr {
					keep = append(keep, s) // the guest's old inbound
				}
			}
			if err := r.Push(ctx, g, r.bundle(j, 1, keep)); err != nil {
				return err
			}
			return r.hostDelete(j.Old.States, j.Old.GuestAddr)
		}},
		{stepGrace, func() error { return r.sleep(ctx, r.Grace) }},
		{stepOldIn, func() error {
			if err := r.Push(ctx, g, r.bundle(j, 2, j.NewStates)); err != nil {
				return err
			}
			return r.hostDelete(j.Old.States, j.Old.HostAddr)
		}},
		{stepDone, func() error { return r.undeclare(j) }},
	}
	if j.Step == "" {
		j.Step = stepPlanned
		if err := r.save(j); err != nil {
			r.free(j.NewStates)
			return finish("failed", fmt.Errorf("journal: %w", err))
		}
		if err := r.inject(stepPlanned); err != nil {
			return finish("failed", err)
		}
	}
	for _, st := range steps {
		if stepIndex(st.name) <= stepIndex(j.Step) {
			continue
		}
		t0 := r.now()
		// The step's time is its work and its journal write (below).
		timed := func() { res.Steps = append(res.Steps, Step{Name: st.name, Duration: r.now().Sub(t0)}) }
		if err := st.do(); err != nil {
			timed()
			err = fmt.Errorf("step %s: %w", st.name, err)
			if stepIndex(j.Step) < stepIndex(stepGuestBoth) {
				if rbErr := r.rollback(ctx, j); rbErr != nil {
					return finish("failed", fmt.Errorf("%w; rollback incomplete (the journal stays, Recover retries): %v", err, rbErr))
				}
				return finish("rolled_back", err)
			}
			return finish("failed", fmt.Errorf("%w (the guest holds the new SAs; the journal stays and Recover finishes the rotation)", err))
		}
		j.Step = st.name
		if st.name == stepDone {
			if r.Commit != nil {
				if err := r.Commit(g, r.bundle(j, 2, j.NewStates)); err != nil {
					return finish("failed", fmt.Errorf("record the bundle in force (the journal stays, Recover retries): %w", err))
				}
			}
			if err := r.remove(j); err != nil {
				return finish("failed", fmt.Errorf("remove the journal: %w", err))
			}
			r.freeOld(j)
			timed()
			return finish("ok", nil)
		}
		err := r.save(j)
		timed()
		if err != nil {
			return finish("failed", fmt.Errorf("journal: %w", err))
		}
		if err := r.inject(st.name); err != nil {
			return finish("failed", err)
		}
	}
	return finish("ok", nil)
}

func (r *Rotator) freeOld(j *rotationJournal) {
	if r.FreeSPIs == nil {
		return
	}
	var spis []uint32
	for _, s := range j.Old.States {
		spis = append(spis, s.SPI)
	}
	r.FreeSPIs(spis)
}

func (r *Rotator) inject(step string) error {
	if r.Inject == nil {
		return nil
	}
	return r.Inject(step)
}

func (r *Rotator) sleep(ctx context.Context, d time.Duration) error {
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bundle is the guest part carrying states, numbered Versions[i].
func (r *Rotator) bundle(j *rotationJournal, i int, states []xfrm.State) *policystore.Bundle {
	b := *j.Old
	b.States = states
	b.Version = j.Versions[i]
	b.Generated = j.Started
	return &b
}

func ref(s xfrm.State) agent.SARef { return agent.SARef{SPI: s.SPI, Daddr: s.Dst} }

// declare tells the agent every successor in one request, which returns
// once a reconcile has them in the maps.
func (r *Rotator) declare(j *rotationJournal) error {
	pairs := make([]agent.RotationPair, len(j.NewStates))
	for i, s := range j.NewStates {
		pairs[i] = agent.RotationPair{Old: ref(j.Old.States[i]), New: ref(s)}
	}
	if err := r.Agent.DeclareRotations(pairs); err != nil {
		return fmt.Errorf("declare %d successors (%v → %v, ...) to the agent: %w", len(pairs), pairs[0].Old, pairs[0].New, err)
	}
	return nil
}

func (r *Rotator) undeclare(j *rotationJournal) error {
	news := make([]agent.SARef, len(j.NewStates))
	for i, s := range j.NewStates {
		news[i] = ref(s)
	}
	return r.Agent.DropRotations(news)
}

// eachState runs fn for every state concurrently (a bundle holds a few
// dozen at most) and joins the errors in order.
func eachState(states []xfrm.State, fn func(int, xfrm.State) error) error {
	errs := make([]error, len(states))
	var wg sync.WaitGroup
	for i, s := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, s)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ErrNoRotationRecord is what a RotationAgent returns for a record that
// is already gone (a repeated step).
var ErrNoRotationRecord = errors.New("no rotation record")

// hostAdd adds the successors whose destination is dst. An SA already
// under the SPI is an error, unless the rotation is resumed after a crash
// (the step may have run before the journal recorded it).
func (r *Rotator) hostAdd(j *rotationJournal, dst netip.Addr, resumed bool) error {
	if r.XFRM == nil {
		return nil
	}
	for _, s := range j.NewStates {
		if s.Dst != dst {
			continue
		}
		x := s
		x.Lifetime = r.Lifetime
		if err := r.XFRM.AddState(x); err != nil && !(resumed && errors.Is(err, fs.ErrExist)) {
			return fmt.Errorf("host SA spi %#x: %w", s.SPI, err)
		}
	}
	return nil
}

// hostDelete deletes the states of set whose destination is dst.
func (r *Rotator) hostDelete(set []xfrm.State, dst netip.Addr) error {
	if r.XFRM == nil {
		return nil
	}
	var errs []error
	for _, s := range set {
		if s.Dst == dst {
			errs = append(errs, ignoreGone(r.XFRM.DeleteState(s.Dst, s.SPI, 50)))
		}
	}
	return errors.Join(errs...)
}

// rollback takes a rotation that never reached guest_both back: the guest
// gets its old set again (it may have applied old + new before the crash),
// the host's successors go, the agent forgets them.
func (r *Rotator) rollback(ctx context.Context, j *rotationJournal) error {
	var errs []error
	if stepIndex(j.Step) >= stepIndex(stepHostIn) {
		// A push of old + new may have reached the guest; give it the old
		// set back, under a version it has not seen.
		if err := r.Push(ctx, &j.Guest, r.bundle(j, 3, j.Old.States)); err != nil {
			return fmt.Errorf("push the old set back: %w", err)
		}
	}
	errs = append(errs, r.hostDelete(j.NewStates, j.Old.HostAddr), r.hostDelete(j.NewStates, j.Old.GuestAddr))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := r.undeclare(j); err != nil {
		return err
	}
	if err := r.remove(j); err != nil {
		return err
	}
	r.free(j.NewStates)
	return nil
}

func (r *Rotator) dir() (*secretfile.Dir, error) {
	if r.StateDir == "" {
		return nil, errors.New("rotator: no state directory for the journal")
	}
	return secretfile.Open(r.StateDir)
}

func (r *Rotator) save(j *rotationJournal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	d, err := r.dir()
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Replace(journalName(&j.Guest), b, secretfile.FileMode)
}

func (r *Rotator) remove(j *rotationJournal) error {
	d, err := r.dir()
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Remove(journalName(&j.Guest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// inForce is the SA set in force on a guest, kept (a secret file: it
// holds the keys) so that a restarted loader goes on rotating it.
type inForce struct {
	Guest      Guest               `json:"guest"`
	Bundle     *policystore.Bundle `json:"bundle"`
	Since      time.Time           `json:"since"`
	Generation uint64              `json:"generation"`
}

func inForceName(iface string) string { return "inforce-" + iface + ".json" }

func (r *Rotator) saveInForce(f inForce) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	d, err := r.dir()
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Replace(inForceName(f.Guest.Interface), b, secretfile.FileMode)
}

func (r *Rotator) removeInForce(iface string) error {
	d, err := r.dir()
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Remove(inForceName(iface)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (r *Rotator) loadInForce() ([]inForce, error) {
	d, err := r.dir()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ents, err := d.ReadDir()
	if err != nil {
		return nil, err
	}
	var out []inForce
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "inforce-") || !strings.HasSuffix(n, ".json") {
			continue
		}
		b, err := d.ReadFile(n)
		if err != nil {
			return nil, err
		}
		var f inForce
		if err := json.Unmarshal(b, &f); err != nil || f.Bundle == nil || f.Guest.Interface == "" {
			return nil, fmt.Errorf("%s: unreadable (%v); delete it, and reload the guest's application to rotate it again", n, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// Pending lists the guests with a journalled rotation.
func (r *Rotator) pending() ([]*rotationJournal, error) {
	d, err := r.dir()
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ents, err := d.ReadDir()
	if err != nil {
		return nil, err
	}
	var out []*rotationJournal
	for _, e := range ents {
		n := e.Name()
		if len(n) < len("rotation-.json") || n[:len("rotation-")] != "rotation-" || n[len(n)-5:] != ".json" {
			continue
		}
		b, err := d.ReadFile(n)
		if err != nil {
			return nil, err
		}
		var j rotationJournal
		if err := json.Unmarshal(b, &j); err != nil {
			return nil, fmt.Errorf("%s: %w (the rotation's states are listed in it; remove them by hand and delete the file)", n, err)
		}
		if stepIndex(j.Step) < 0 || j.Old == nil || len(j.NewStates) != len(j.Old.States) {
			return nil, fmt.Errorf("%s: step %q or states inconsistent; remove the rotation's states by hand and delete the file", n, j.Step)
		}
		out = append(out, &j)
	}
	return out, nil
}

// recoverOne finishes or rolls back one journalled rotation and returns
// the bundle in force after it.
func (r *Rotator) recoverOne(ctx context.Context, j *rotationJournal) (*policystore.Bundle, RotationResult, error) {
	res := RotationResult{Guest: j.Guest.Name, VM: j.Guest.VM, Trigger: "recover"}
	if stepIndex(j.Step) >= stepIndex(stepGuestBoth) {
		return r.run(ctx, j, res)
	}
	err := r.rollback(ctx, j)
	res.Result = "rolled_back"
	if err != nil {
		res.Result, res.Error = "failed", err.Error()
		err = fmt.Errorf("roll back the rotation of %s: %w", j.Guest.Name, err)
	}
	res.Took = r.now().Sub(j.Started)
	if r.Done != nil {
		r.Done(res)
	}
	if err != nil {
		return nil, res, err
	}
	return j.Old, res, nil
}

// Abandon drops the journalled rotation of a guest that is gone: its
// host states, old and new, are deleted, the agent's records dropped, the
// journal removed. Without a journal it does nothing.
func (r *Rotator) Abandon(iface string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	js, err := r.pending()
	if err != nil {
		return err
	}
	for _, j := range js {
		if j.Guest.Interface != iface {
			continue
		}
		all := append(slices.Clone(j.Old.States), j.NewStates...)
		errs := []error{r.hostDelete(all, j.Old.HostAddr), r.hostDelete(all, j.Old.GuestAddr), r.undeclare(j)}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if err := r.remove(j); err != nil {
			return err
		}
		r.free(j.NewStates)
		r.freeOld(j)
	}
	return nil
}

// Recover completes or rolls back the rotations a crash interrupted: one
// whose guest holds the new states (guest_both done) is finished, any
// other rolled back. It returns the bundles now in force, by interface.
func (r *Rotator) Recover(ctx context.Context) (map[string]*policystore.Bundle, []RotationResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	js, err := r.pending()
	if err != nil {
		return nil, nil, err
	}
	out := map[string]*policystore.Bundle{}
	var results []RotationResult
	var errs []error
	for _, j := range js {
		b, res, err := r.recoverOne(ctx, j)
		results = append(results, res)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[j.Guest.Interface] = b
	}
	return out, results, errors.Join(errs...)
}
