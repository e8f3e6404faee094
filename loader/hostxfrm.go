package loader

import (
	"fmt"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// applyBatch installs the host's end of a guest's tunnel as one batch:
// its SAs, then its policies. It returns how to undo each change made
// (the kernel goes on after a failed change, so those after it too), and
// the first failure, worded as Apply words a single request's.
func (h *Host) applyBatch(bw xfrm.BatchWriter, states []xfrm.State, pols []xfrm.Policy) ([]func() error, error) {
	ops := make([]xfrm.Op, 0, len(states)+len(pols))
	for _, s := range states {
		s.Lifetime = h.Lifetime
		ops = append(ops, xfrm.Op{Kind: xfrm.OpAddState, State: s})
	}
	for _, p := range pols {
		ops = append(ops, xfrm.Op{Kind: xfrm.OpAddPolicy, Policy: p})
	}
	errs, berr := bw.Apply(ops)
	var undo []func() error
	var first error
	for i, op := range ops {
		if errs[i] != nil {
			if first == nil {
				switch op.Kind {
				case xfrm.OpAddState:
					first = fmt.Errorf("host SA spi %#x: %w", op.State.SPI, errs[i])
				default:
					first = fmt.Errorf("host policy %v: %w", op.Policy, errs[i])
				}
			}
			continue
		}
		switch op.Kind {
		case xfrm.OpAddState:
			s := op.State
			undo = append(undo, func() error { return ignoreGone(h.XFRM.DeleteState(s.Dst, s.SPI, s.Proto)) })
		case xfrm.OpAddPolicy:
			p := op.Policy
			undo = append(undo, func() error { return ignoreGone(h.XFRM.DeletePolicy(p)) })
		}
	}
	if first == nil && berr != nil {
		first = fmt.Errorf("host XFRM: %w", berr)
	}
	return undo, first
}
