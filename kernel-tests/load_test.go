package kerneltests

import (
	"testing"

	"github.com/mlsgate/mlsgate/bpf"
)

func TestPrivilegedLoad(t *testing.T) {
	requirePrivileged(t)
	enterNetNS(t)
	objs, err := bpf.Load(bpf.DefaultOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	loadTest(t, bpf.DefaultOptions())
}
