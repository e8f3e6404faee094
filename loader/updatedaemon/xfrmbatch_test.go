package updatedaemon

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// batchKernel is fakeKernel taking batches as the kernel does: every
// change in order, going on after a failed one.
type batchKernel struct {
	*fakeKernel
	batches []int // the size of each batch
}

func (b *batchKernel) Apply(ops []xfrm.Op) ([]error, error) {
	b.batches = append(b.batches, len(ops))
	errs := make([]error, len(ops))
	for i, op := range ops {
		errs[i] = doOp(b.fakeKernel, op)
	}
	return errs, nil
}

// TestSyncXFRMBatches: a kernel that takes batches gets each sync as one
// batch, with the same changes in the same order as one by one; a failure
// undoes every change made, also those after the failed one.
func TestSyncXFRMBatches(t *testing.T) {
	ctx := context.Background()
	v1, v2 := twoSets(t)
	one := newFakeKernel(true)
	bk := &batchKernel{fakeKernel: newFakeKernel(true)}
	for _, k := range []xfrmKernel{one, bk} {
		if _, err := syncXFRM(ctx, k, true, XFRMSet{}, v1); err != nil {
			t.Fatal(err)
		}
	}
	one.ops, bk.ops = nil, nil
	r1, err1 := syncXFRM(ctx, one, true, v1, v2)
	r2, err2 := syncXFRM(ctx, bk, true, v1, v2)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !reflect.DeepEqual(one.ops, bk.ops) || !reflect.DeepEqual(r1, r2) {
		t.Errorf("one by one %q, batched %q", one.ops, bk.ops)
	}
	if want := []int{6, 7}; !reflect.DeepEqual(bk.batches, want) {
		t.Errorf("batches %v, want %v (one per sync)", bk.batches, want)
	}
	bk.holds(t, v2, 0)
	// Nothing changed: no batch at all.
	if _, err := syncXFRM(ctx, bk, true, v2, v2); err != nil || len(bk.batches) != 2 {
		t.Errorf("the same set again: %v, batches %v", err, bk.batches)
	}

	// The first policy change fails: the SA changes before it and the
	// deletions after it (which the kernel made) are all undone.
	bk.fail, bk.skip = "update policy", 0
	bk.ops = nil
	rep, err := syncXFRM(ctx, bk, true, v2, v1)
	if !errors.Is(err, errInjected) || len(rep.NotUndone) != 0 {
		t.Fatalf("error %v, not undone %q", err, rep.NotUndone)
	}
	bk.fail = ""
	bk.holds(t, v2, 0)
	if len(bk.batches) != 4 {
		t.Errorf("batches %v: want the sync's and its undo's", bk.batches)
	}
}
