package kerneltests

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/bpf"
)

// requirePrivileged is the one gate of every privileged test.
func requirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF programs and network namespaces): run 'sudo make test-kernel'")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatalf("remove memlock limit: %v", err)
	}
}

// enterNetNS moves the calling test goroutine into a new network namespace
// with its loopback up. The goroutine stays locked to its thread, which the
// runtime discards when the test ends, so the namespace goes with it.
func enterNetNS(t testing.TB) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("loopback up: %v", err)
	}
	return ns
}

// skbCtx is struct __sk_buff (192 bytes) as BPF_PROG_TEST_RUN takes and
// returns it: everything before mark must be zero on the way in; ifindex
// names an interface of the namespace (0 or 1: loopback); cb carries the
// probe's inputs and its reason. The kernel refuses a shorter context out.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Rest                                                                        [192 - 68]byte
}

// loadTest loads the test programs, skipping when the kernel cannot.
func loadTest(t testing.TB, opts bpf.Options) *bpf.TestObjects {
	t.Helper()
	objs, err := bpf.LoadTest(opts, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel cannot load the fast path: %v", err)
	}
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return objs
}
