package updatedaemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// xfrmKernel is what syncXFRM needs of an *xfrm.Handle; tests give it a
// fake kernel.
type xfrmKernel interface {
	States() ([]xfrm.State, error)
	Policies() ([]xfrm.Policy, error)
	AddState(xfrm.State) error
	DeleteState(dst netip.Addr, spi uint32, proto xfrm.Proto) error
	AddPolicy(xfrm.Policy) error
	UpdatePolicy(xfrm.Policy) error
	DeletePolicy(xfrm.Policy) error
}

// saKey is how the kernel identifies an SA.
type saKey struct {
	dst   netip.Addr
	spi   uint32
	proto xfrm.Proto
}

func stateKey(s xfrm.State) saKey { return saKey{s.Dst, s.SPI, s.Proto} }

// polKey is how the kernel identifies a policy: direction, selector and
// context. Where the kernel drops contexts it compares none, so neither
// does the key.
type polKey struct {
	dir              xfrm.Dir
	src, dst         netip.Prefix
	proto            uint8
	srcPort, dstPort uint16
	ctx              string
}

func policyKey(p xfrm.Policy, contexts bool) polKey {
	k := polKey{dir: p.Dir, src: p.Src, dst: p.Dst, proto: p.Proto, srcPort: p.SrcPort, dstPort: p.DstPort}
	if contexts {
		k.ctx = p.Context
	}
	return k
}

// xfrmStep is one kernel change and the change that takes it back.
type xfrmStep struct {
	desc, undoDesc string
	do, undo       xfrm.Op
}

// xfrmBatcher is a kernel that takes many changes in one request
// (*xfrm.Handle's Apply: one sendmsg, an ack per change).
type xfrmBatcher interface {
	Apply(ops []xfrm.Op) ([]error, error)
}

// syncXFRM makes the kernel hold to in place of from. It reads the
// kernel's SAs and policies first and plans against them, so a guest whose
// kernel lost the previous set (a reboot) gets it back whole:
//
//   - An SA of to that the kernel lacks is added; one the kernel has with
//     other material (addresses, mode, reqid, context, cipher or key) is
//     replaced, deleted and added again, because the kernel's
//     XFRM_MSG_UPDSA keeps the key, cipher and context of a live SA and
//     would report success without changing them.
//   - A policy of to that the kernel lacks is added; one that differs in
//     action, priority or templates is updated (XFRM_MSG_UPDPOLICY replaces
//     all of them).
//   - SAs and policies of from that to lacks are removed, policies before
//     SAs, so no policy is left requiring a missing SA for longer than
//     needed. Entries the kernel holds that neither set names are left
//     alone. What the kernel already holds as planned is not touched.
//
// A kernel that takes batches (xfrmBatcher) gets every change in one
// batch, applied in order; the kernel goes on after a failed change, so
// on a failure every change that was made is undone, in reverse order.
// Otherwise the changes are made one by one and stop at the first failure,
// and those before it are undone. Undos that fail are listed in the
// report's NotUndone.
func syncXFRM(ctx context.Context, k xfrmKernel, contexts bool, from, to XFRMSet) (XFRMReport, error) {
	var rep XFRMReport
	kstates, err := k.States()
	if err != nil {
		return rep, fmt.Errorf("read the kernel's SAs: %w", err)
	}
	kpols, err := k.Policies()
	if err != nil {
		return rep, fmt.Errorf("read the kernel's XFRM policies: %w", err)
	}
	curS := make(map[saKey]xfrm.State, len(kstates))
	for _, s := range kstates {
		curS[stateKey(s)] = s
	}
	curP := make(map[polKey]xfrm.Policy, len(kpols))
	for _, p := range kpols {
		p.Index = 0
		curP[policyKey(p, contexts)] = p
	}

	var saSteps, polSteps, polDels, saDels []xfrmStep
	wantS := map[saKey]bool{}
	for _, ps := range to.States {
		s := ps
		key := stateKey(s)
		wantS[key] = true
		old, ok := curS[key]
		switch {
		case !ok:
			saSteps = append(saSteps, addStateStep(s))
			rep.StatesAdded = append(rep.StatesAdded, s.String())
		case sameState(old, s, contexts):
			rep.StatesUnchanged++
		default:
			saSteps = append(saSteps, deleteStateStep(old), addStateStep(s))
			rep.StatesUpdated = append(rep.StatesUpdated, s.String())
		}
	}
	for _, ps := range from.States {
		key := stateKey(ps)
		if wantS[key] {
			continue
		}
		if old, ok := curS[key]; ok {
			saDels = append(saDels, deleteStateStep(old))
			rep.StatesRemoved = append(rep.StatesRemoved, old.String())
		}
	}
	wantP := map[polKey]bool{}
	for _, pp := range to.Policies {
		p := pp
		key := policyKey(p, contexts)
		wantP[key] = true
		old, ok := curP[key]
		switch {
		case !ok:
			polSteps = append(polSteps, xfrmStep{
				desc: "add policy " + p.String(), do: xfrm.Op{Kind: xfrm.OpAddPolicy, Policy: p},
				undoDesc: "delete policy " + p.String(), undo: xfrm.Op{Kind: xfrm.OpDeletePolicy, Policy: p},
			})
			rep.PoliciesAdded = append(rep.PoliciesAdded, p.String())
		case samePolicy(old, p):
			rep.PoliciesUnchanged++
		default:
			polSteps = append(polSteps, xfrmStep{
				desc: "update policy " + p.String(), do: xfrm.Op{Kind: xfrm.OpUpdatePolicy, Policy: p},
				undoDesc: "restore policy " + old.String(), undo: xfrm.Op{Kind: xfrm.OpUpdatePolicy, Policy: old},
			})
			rep.PoliciesUpdated = append(rep.PoliciesUpdated, p.String())
		}
	}
	for _, pp := range from.Policies {
		key := policyKey(pp, contexts)
		if wantP[key] {
			continue
		}
		if old, ok := curP[key]; ok {
			polDels = append(polDels, xfrmStep{
				desc: "delete policy " + old.String(), do: xfrm.Op{Kind: xfrm.OpDeletePolicy, Policy: old},
				undoDesc: "re-add policy " + old.String(), undo: xfrm.Op{Kind: xfrm.OpAddPolicy, Policy: old},
			})
			rep.PoliciesRemoved = append(rep.PoliciesRemoved, old.String())
		}
	}

	steps := append(append(append(saSteps, polSteps...), polDels...), saDels...)
	if len(steps) == 0 {
		return rep, nil
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("%s: %w", steps[0].desc, err)
	}
	if b, ok := k.(xfrmBatcher); ok {
		return syncBatch(b, steps, rep)
	}
	for i, st := range steps {
		err := ctx.Err()
		if err == nil {
			err = doOp(k, st.do)
		}
		if err != nil {
			rep.NotUndone = undoSteps(k, steps[:i])
			return rep, fmt.Errorf("%s: %w%s", st.desc, err, xfrmHint(err))
		}
	}
	return rep, nil
}

// syncBatch makes the changes of steps as one batch and, if one failed,
// undoes the others that were made (as one batch too).
func syncBatch(b xfrmBatcher, steps []xfrmStep, rep XFRMReport) (XFRMReport, error) {
	ops := make([]xfrm.Op, len(steps))
	for i, st := range steps {
		ops[i] = st.do
	}
	errs, berr := b.Apply(ops)
	first := -1
	for i, e := range errs {
		if e != nil {
			first = i
			break
		}
	}
	if first < 0 && berr == nil {
		return rep, nil
	}
	// Undo what was done, newest first.
	var undo []xfrmStep
	for i := len(steps) - 1; i >= 0; i-- {
		if errs[i] == nil { // done (a change without an answer counts as not done)
			undo = append(undo, steps[i])
		}
	}
	if len(undo) > 0 {
		uops := make([]xfrm.Op, len(undo))
		for i, st := range undo {
			uops[i] = st.undo
		}
		uerrs, _ := b.Apply(uops) // a failed batch marks its changes' errors
		for i, e := range uerrs {
			if e != nil {
				rep.NotUndone = append(rep.NotUndone, fmt.Sprintf("%s: %v", undo[i].undoDesc, e))
			}
		}
	}
	if first < 0 {
		return rep, fmt.Errorf("apply %d XFRM changes: %w", len(steps), berr)
	}
	err := errs[first]
	return rep, fmt.Errorf("%s: %w%s", steps[first].desc, err, xfrmHint(err))
}

// doOp makes one change through the kernel's single requests.
func doOp(k xfrmKernel, op xfrm.Op) error {
	switch op.Kind {
	case xfrm.OpAddState:
		return k.AddState(op.State)
	case xfrm.OpDeleteState:
		return k.DeleteState(op.State.Dst, op.State.SPI, op.State.Proto)
	case xfrm.OpAddPolicy:
		return k.AddPolicy(op.Policy)
	case xfrm.OpUpdatePolicy:
		return k.UpdatePolicy(op.Policy)
	case xfrm.OpDeletePolicy:
		return k.DeletePolicy(op.Policy)
	}
	return fmt.Errorf("unknown XFRM operation %d", op.Kind)
}

func addStateStep(s xfrm.State) xfrmStep {
	return xfrmStep{
		desc: "add SA " + s.String(), do: xfrm.Op{Kind: xfrm.OpAddState, State: s},
		undoDesc: "delete SA " + s.String(), undo: xfrm.Op{Kind: xfrm.OpDeleteState, State: s},
	}
}

func deleteStateStep(old xfrm.State) xfrmStep {
	return xfrmStep{
		desc: "delete SA " + old.String(), do: xfrm.Op{Kind: xfrm.OpDeleteState, State: old},
		undoDesc: "re-add SA " + old.String(), undo: xfrm.Op{Kind: xfrm.OpAddState, State: old},
	}
}

// undoSteps takes back steps in reverse order and lists those it could not.
func undoSteps(k xfrmKernel, steps []xfrmStep) []string {
	var failed []string
	for i := len(steps) - 1; i >= 0; i-- {
		if err := doOp(k, steps[i].undo); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", steps[i].undoDesc, err))
		}
	}
	return failed
}

// xfrmHint adds the fix for kernel errors whose message alone does not
// say what to do.
func xfrmHint(err error) string {
	switch {
	case errors.Is(err, xfrm.ErrNoESP):
		return " (the guest kernel needs CONFIG_INET_ESP / CONFIG_INET6_ESP for the bundle's SAs)"
	case errors.Is(err, xfrm.ErrNoAlgorithm):
		return " (the guest kernel needs the SA's cipher in its crypto API, e.g. CONFIG_CRYPTO_GCM)"
	case errors.Is(err, xfrm.ErrInvalidContext):
		return " (load the bundle's SELinux modules, which declare the context's type, before its SAs)"
	}
	return ""
}

// sameState reports whether the kernel's SA old already is s. Contexts are
// compared only where the kernel keeps them.
func sameState(old, s xfrm.State, contexts bool) bool {
	if old.Src != s.Src || old.Mode != s.Mode || old.Reqid != s.Reqid || old.ESN != s.ESN {
		return false
	}
	if old.Context != s.Context && (contexts || old.Context != "") {
		return false
	}
	return sameAlgo(old.AEAD, s.AEAD) && sameAlgo(old.Auth, s.Auth) && sameAlgo(old.Crypt, s.Crypt)
}

func sameAlgo(a, b *xfrm.Algo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && bytes.Equal(a.Key, b.Key) && a.ICVBits == b.ICVBits && a.TruncBits == b.TruncBits
}

// samePolicy reports whether the kernel's policy old, found under p's key,
// already is p.
func samePolicy(old, p xfrm.Policy) bool {
	if old.Action != p.Action || old.Priority != p.Priority || len(old.Templates) != len(p.Templates) {
		return false
	}
	for i, t := range p.Templates {
		if old.Templates[i] != t {
			return false
		}
	}
	return true
}
