package bpf

import (
	"errors"
	"fmt"
	"sync/atomic"

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
	Vifs       *ebpf.Map `ebpf:"mlsg_vifs"`
	VifsBig    *ebpf.Map `ebpf:"mlsg_vifs_big"`
	Labels     *ebpf.Map `ebpf:"mlsg_labels"`
	Accepts    *ebpf.Map `ebpf:"mlsg_accepts"`
	SASlots    *ebpf.Map `ebpf:"mlsg_sa_slots"`
	SAs        *ebpf.Map `ebpf:"mlsg_sas"`
	Peers      *ebpf.Map `ebpf:"mlsg_peers"`
	Verdicts   *ebpf.Map `ebpf:"mlsg_verdicts"`
	GuestCtr   *ebpf.Map `ebpf:"mlsg_guest_ctr"`
	EventsLost *ebpf.Map `ebpf:"mlsg_ev_lost"`
	Events     *ebpf.Map `ebpf:"mlsg_events"`
}

// Close closes every map.
func (m *Maps) Close() error {
	var errs []error
	for _, mp := range []*ebpf.Map{m.Vifs, m.VifsBig, m.Labels, m.Accepts, m.SASlots, m.SAs, m.Peers, m.Verdicts, m.GuestCtr, m.EventsLost, m.Events} {
		if mp != nil {
			errs = append(errs, mp.Close())
		}
	}
	return errors.Join(errs...)
}

// ByName lists every map by its name in the objects, for
// CollectionOptions.MapReplacements: programs loaded with it share these maps.
func (m *Maps) ByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{MapVifs: m.Vifs, MapVifsBig: m.VifsBig, MapLabels: m.Labels, MapAccepts: m.Accepts,
		MapSASlots: m.SASlots, MapSAs: m.SAs, MapPeers: m.Peers, MapVerdicts: m.Verdicts, MapGuestCtr: m.GuestCtr, MapEventsLost: m.EventsLost, MapEvents: m.Events}
}

// The maps' names in the objects, in bpffs (<pin dir>/maps/<name>) and in
// bpftool: prefixed, so that they do not collide with other programs' maps.
const (
	MapVifs       = "mlsg_vifs"
	MapVifsBig    = "mlsg_vifs_big"
	MapLabels     = "mlsg_labels"
	MapAccepts    = "mlsg_accepts"
	MapSASlots    = "mlsg_sa_slots"
	MapSAs        = "mlsg_sas"
	MapPeers      = "mlsg_peers"
	MapVerdicts   = "mlsg_verdicts"
	MapGuestCtr   = "mlsg_guest_ctr"
	MapEventsLost = "mlsg_ev_lost"
	MapEvents     = "mlsg_events"
)

// legacyMapNames are the names the maps were pinned under before they
// were prefixed; LoadPinned unpins them (see removeLegacyPins).
var legacyMapNames = []string{"vifs", "vifs_big", "labels", "sa_slots", "sas", "peers", "verdicts", "events_lost", "events"}

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
	m, ok := spec.Maps[MapSASlots]
	if !ok {
		return errors.New("collection has no " + MapSASlots + " map: regenerate with 'make generate'")
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
	// LegacyPinsRemoved: maps pinned under their unprefixed names by an
	// older agent, which LoadPinned unpinned.
	LegacyPinsRemoved []string
	// fresh: LoadPinned created every map, and ReadState has not run yet.
	fresh atomic.Bool
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
