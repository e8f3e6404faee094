package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/mlsgate/mlsgate/agent/verdict"
)

// Options are the load-time settings of the fast path.
type Options struct {
	// SPIBase and SPISlots: the host allocates inbound SPIs from
	// [SPIBase, SPIBase+SPISlots); their SAs live in a dense array.
	SPIBase, SPISlots uint32
	APIPort           uint16 // the agent's TCP port on the host; 0 = none
	Enforce           bool   // false: audit mode, nothing is dropped
	EventSample       uint32 // send 1 in N denials to the events ring; 0 = none
}

// DefaultOptions enforce, sample every denial, and keep 65,536 SA slots.
func DefaultOptions() Options {
	return Options{SPIBase: 0xc0000000, SPISlots: 65536, Enforce: true, EventSample: 1}
}

// Config is the volatile const the programs read.
func (o Options) Config() FastpathConfig {
	c := FastpathConfig{SpiBase: o.SPIBase, SpiSlots: o.SPISlots, EventSample: o.EventSample, ApiPort: o.APIPort}
	if o.Enforce {
		c.Enforce = 1
	}
	return c
}

// Maps are the fast path's maps, whichever object they were loaded from.
type Maps struct {
	Vifs, Labels, SASlots, SAs, Peers, Verdicts, EventsLost, Events *ebpf.Map
}

// Configure sets the load-time options into a fastpath or fastpath-test
// collection spec: the config constant and the size of sa_slots.
func Configure(spec *ebpf.CollectionSpec, o Options) error {
	if uint64(o.SPIBase)+uint64(o.SPISlots) > 1<<32 {
		return fmt.Errorf("spi range %#x+%d passes 0xffffffff: lower the base or the slot count", o.SPIBase, o.SPISlots)
	}
	v, ok := spec.Variables["cfg"]
	if !ok {
		return errors.New("collection has no cfg variable: regenerate with 'make generate'")
	}
	if err := v.Set(o.Config()); err != nil {
		return fmt.Errorf("set cfg: %w", err)
	}
	m, ok := spec.Maps["sa_slots"]
	if !ok {
		return errors.New("collection has no sa_slots map: regenerate with 'make generate'")
	}
	// An array cannot have zero entries; with SPISlots 0 the programs never
	// look at it.
	m.MaxEntries = max(o.SPISlots, 1)
	return nil
}

// Objects are the loaded programs of fastpath.c and its maps.
type Objects struct {
	FastpathObjects
	Options Options
}

// Maps returns the map set of the loaded objects.
func (o *Objects) Maps() *Maps {
	m := &o.FastpathMaps
	return &Maps{Vifs: m.Vifs, Labels: m.Labels, SASlots: m.SaSlots, SAs: m.Sas, Peers: m.Peers,
		Verdicts: m.Verdicts, EventsLost: m.EventsLost, Events: m.Events}
}

// Load loads the vif programs with opts. The verifier's log is in the error.
func Load(opts Options, co *ebpf.CollectionOptions) (*Objects, error) {
	spec, err := LoadFastpath()
	if err != nil {
		return nil, fmt.Errorf("parse fastpath object: %w", err)
	}
	if err := Configure(spec, opts); err != nil {
		return nil, err
	}
	o := &Objects{Options: opts}
	if err := spec.LoadAndAssign(&o.FastpathObjects, co); err != nil {
		return nil, fmt.Errorf("load fastpath: %w", verifierError(err))
	}
	return o, nil
}

// TestObjects are the test and benchmark programs of fastpath_test.c.
type TestObjects struct {
	FastpathTestObjects
	Options Options
}

// Maps returns the map set of the loaded test objects.
func (o *TestObjects) Maps() *Maps {
	m := &o.FastpathTestMaps
	return &Maps{Vifs: m.Vifs, Labels: m.Labels, SASlots: m.SaSlots, SAs: m.Sas, Peers: m.Peers,
		Verdicts: m.Verdicts, EventsLost: m.EventsLost, Events: m.Events}
}

// LoadTest loads the probe, empty and parse_only programs with opts.
func LoadTest(opts Options, co *ebpf.CollectionOptions) (*TestObjects, error) {
	spec, err := LoadFastpathTest()
	if err != nil {
		return nil, fmt.Errorf("parse fastpath test object: %w", err)
	}
	if err := Configure(spec, opts); err != nil {
		return nil, err
	}
	o := &TestObjects{Options: opts}
	if err := spec.LoadAndAssign(&o.FastpathTestObjects, co); err != nil {
		return nil, fmt.Errorf("load fastpath test: %w", verifierError(err))
	}
	return o, nil
}

// verifierError keeps the whole verifier log in the message: the tail alone
// rarely says which instruction was refused.
func verifierError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%+v", ve)
	}
	return err
}

// Counter is a verdict counter summed over CPUs.
type Counter struct{ Packets, Bytes uint64 }

// Counters reads the per-CPU verdict counters and sums them, by direction
// and reason.
func (m *Maps) Counters() (out [2][verdict.NumReasons]Counter, err error) {
	var per []FastpathCounter
	for d := range 2 {
		for r := range int(verdict.NumReasons) {
			key := uint32(d*int(verdict.NumReasons) + r)
			if err := m.Verdicts.Lookup(key, &per); err != nil {
				return out, fmt.Errorf("read verdicts[%d]: %w", key, err)
			}
			for _, c := range per {
				out[d][r].Packets += c.Packets
				out[d][r].Bytes += c.Bytes
			}
		}
	}
	return out, nil
}

// ResetCounters zeroes every verdict counter.
func (m *Maps) ResetCounters() error {
	zero := make([]FastpathCounter, ebpf.MustPossibleCPU())
	for k := range uint32(2 * verdict.NumReasons) {
		if err := m.Verdicts.Put(k, zero); err != nil {
			return fmt.Errorf("reset verdicts[%d]: %w", k, err)
		}
	}
	return nil
}
