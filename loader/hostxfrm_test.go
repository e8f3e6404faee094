package loader

import (
	"context"
	"errors"
	"testing"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/policystore"
)

// batchXFRM is fakeXFRM taking batches as the kernel does (every change in
// order, going on after a failed one); failOp fails that change (1-based).
type batchXFRM struct {
	*fakeXFRM
	batches []int
	failOp  int
}

func (b *batchXFRM) Apply(ops []xfrm.Op) ([]error, error) {
	b.batches = append(b.batches, len(ops))
	errs := make([]error, len(ops))
	for i, op := range ops {
		if i+1 == b.failOp {
			errs[i] = errors.New("injected failure")
			continue
		}
		switch op.Kind {
		case xfrm.OpAddState:
			errs[i] = b.AddState(op.State)
		case xfrm.OpAddPolicy:
			errs[i] = b.fakeXFRM.AddPolicy(op.Policy)
		default:
			errs[i] = errors.New("unexpected operation " + op.String())
		}
	}
	return errs, nil
}

// TestHostXFRMIsOneBatch: the host's end of a guest's tunnel goes to the
// kernel as one batch; a failed change in it undoes every change made,
// those after it included.
func TestHostXFRMIsOneBatch(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	bx := &batchXFRM{fakeXFRM: r.xfrm}
	r.host.XFRM = bx
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	if len(bx.batches) != 1 || bx.batches[0] != 16 || len(r.xfrm.states) != 10 || len(r.xfrm.policies) != 6 {
		t.Fatalf("batches %v, host holds %d SAs and %d policies; want one batch of 16 (10 SAs, 6 policies)", bx.batches, len(r.xfrm.states), len(r.xfrm.policies))
	}
	g := res.Guest
	if err := r.host.Forget(&g); err != nil || len(r.xfrm.states)+len(r.xfrm.policies) != 0 {
		t.Fatalf("forget: %v; %d SAs and %d policies left", err, len(r.xfrm.states), len(r.xfrm.policies))
	}

	r2 := newRig(t, policystore.SystemPolicy{})
	bx2 := &batchXFRM{fakeXFRM: r2.xfrm, failOp: 12}
	r2.host.XFRM = bx2
	_, err = r2.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	var se *StepError
	if !errors.As(err, &se) || se.Step != "host policy" {
		t.Fatalf("error %v, want a failure in host policy", err)
	}
	if len(r2.xfrm.states)+len(r2.xfrm.policies) != 0 {
		t.Fatalf("after the failed batch the host holds %d SAs and %d policies", len(r2.xfrm.states), len(r2.xfrm.policies))
	}
}
