package kerneltests

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/verdict"
)

// probeIfindex is the device of every BPF_PROG_TEST_RUN packet: the
// namespace's loopback.
const probeIfindex = 1

// tc return codes the fast path uses.
const (
	retAllow = 0xffffffff // TC_ACT_UNSPEC / TCX_NEXT
	retDrop  = 2          // TC_ACT_SHOT / TCX_DROP
)

// prober runs the probe program of fastpath_test.c under a policy.
type prober struct {
	objs  *bpf.TestObjects
	maps  *bpf.Maps
	state *bpf.State
}

func newProber(t testing.TB, opts bpf.Options) *prober {
	objs := loadTest(t, opts)
	return &prober{objs: objs, maps: &objs.Maps}
}

// install plans pol and writes what changed since the last install.
func (p *prober) install(pol *verdict.Policy) error {
	next, err := bpf.Plan(pol)
	if err != nil {
		return err
	}
	if err := p.maps.Apply(p.state, next); err != nil {
		return err
	}
	p.state = next
	return nil
}

// run gives one packet to the probe and returns the tc verdict and reason.
func (p *prober) run(pkt verdict.Packet) (uint32, verdict.Reason, error) {
	in := skbCtx{Ifindex: pkt.Ifindex}
	in.CB[0] = uint32(pkt.Dir)
	if sp := pkt.Secpath; sp != nil {
		in.CB[1], in.CB[2], in.CB[3] = 1, sp.SPI, uint32(sp.Family)
	}
	if pkt.RootSocket {
		in.CB[1] |= 2
	}
	var out skbCtx
	ret, err := p.objs.MlsgProbe.Run(&ebpf.RunOptions{Data: pkt.Frame, Context: in, ContextOut: &out})
	if err != nil {
		return 0, 0, fmt.Errorf("test run: %w", err)
	}
	return ret, verdict.Reason(out.CB[4]), nil
}
