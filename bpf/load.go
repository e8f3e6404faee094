package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/mlsgate/mlsgate/verdict"
)

// Options are the load-time settings of the fast path.
type Options struct {
	// SPIBase and SPISlots: the host allocates inbound SPIs from
	// [SPIBase, SPIBase+SPISlots); their SAs live in a dense array.
	SPIBase, SPISlots uint32
	APIPort           uint16 // the host's API port and the guests' update daemon port; 0 = none
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

// Maps are the fast path's maps, whichever object they were loaded from:
// both objects declare the same maps, so one set of tags serves both.
type Maps struct {
	Vifs       *ebpf.Map `ebpf:"vifs"`
	VifsBig    *ebpf.Map `ebpf:"vifs_big"`
	Labels     *ebpf.Map `ebpf:"labels"`
	Accepts    *ebpf.Map `ebpf:"accepts"`
	SASlots    *ebpf.Map `ebpf:"sa_slots"`
	SAs        *ebpf.Map `ebpf:"sas"`
	Peers      *ebpf.Map `ebpf:"peers"`
	Verdicts   *ebpf.Map `ebpf:"verdicts"`
	EventsLost *ebpf.Map `ebpf:"events_lost"`
	Events     *ebpf.Map `ebpf:"events"`
}

// Close closes every map.
func (m *Maps) Close() error {
	var errs []error
	for _, mp := range []*ebpf.Map{m.Vifs, m.VifsBig, m.Labels, m.Accepts, m.SASlots, m.SAs, m.Peers, m.Verdicts, m.EventsLost, m.Events} {
		if mp != nil {
			errs = append(errs, mp.Close())
		}
	}
	return errors.Join(errs...)
}

// ByName lists every map by its name in the objects, for
// CollectionOptions.MapReplacements: programs loaded with it share these maps.
func (m *Maps) ByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{"vifs": m.Vifs, "vifs_big": m.VifsBig, "labels": m.Labels, "accepts": m.Accepts, "sa_slots": m.SASlots,
		"sas": m.SAs, "peers": m.Peers, "verdicts": m.Verdicts, "events_lost": m.EventsLost, "events": m.Events}
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
	FastpathPrograms
	Maps
	Options Options
}

// Close closes the programs and maps; links and pins keep what they hold.
func (o *Objects) Close() error { return errors.Join(o.FastpathPrograms.Close(), o.Maps.Close()) }

// Load loads the vif programs with opts. The verifier's log is in the error.
func Load(opts Options, co *ebpf.CollectionOptions) (*Objects, error) {
	o := &Objects{Options: opts}
	if err := load("fastpath", LoadFastpath, opts, co, o); err != nil {
		return nil, err
	}
	return o, nil
}

// TestObjects are the test and benchmark programs of fastpath_test.c.
type TestObjects struct {
	FastpathTestPrograms
	Maps
	Options Options
}

// Close closes the programs and maps.
func (o *TestObjects) Close() error {
	return errors.Join(o.FastpathTestPrograms.Close(), o.Maps.Close())
}

// LoadTest loads the probe, empty and parse_only programs with opts.
func LoadTest(opts Options, co *ebpf.CollectionOptions) (*TestObjects, error) {
	o := &TestObjects{Options: opts}
	if err := load("fastpath test", LoadFastpathTest, opts, co, o); err != nil {
		return nil, err
	}
	return o, nil
}

func load(name string, spec func() (*ebpf.CollectionSpec, error), opts Options, co *ebpf.CollectionOptions, to any) error {
	s, err := spec()
	if err != nil {
		return fmt.Errorf("parse %s object: %w", name, err)
	}
	if err := Configure(s, opts); err != nil {
		return err
	}
	if err := s.LoadAndAssign(to, co); err != nil {
		return fmt.Errorf("load %s: %w", name, verifierError(err))
	}
	return nil
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
