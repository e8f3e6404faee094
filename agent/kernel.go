package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/cilium/ebpf/rlimit"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/verdict"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel is the fast path loaded with pins: the production MapWriter,
// Attacher and CounterReader.
type Kernel struct {
	Objs   *bpf.Objects
	PinDir string
	lock   *bpf.PinLock
}

// LoadKernel loads (or adopts) the pinned fast path for cfg.
func LoadKernel(cfg Config) (*Kernel, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w (run as root or with CAP_SYS_RESOURCE)", err)
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	// One agent per pin directory, held until Close (or death).
	lock, err := bpf.LockPinDir(cfg.PinDir, true)
	if err != nil {
		return nil, err
	}
	objs, err := bpf.LoadPinned(cfg.bpfOptions(), cfg.PinDir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &Kernel{Objs: objs, PinDir: cfg.PinDir, lock: lock}, nil
}

// Close closes the agent's file descriptors and gives up the pin
// directory; the pins keep everything.
func (k *Kernel) Close() error { return errors.Join(k.Objs.Close(), k.lock.Close()) }

func (k *Kernel) ReadState() (*bpf.State, error)    { return k.Objs.ReadState() }
func (k *Kernel) Apply(prev, next *bpf.State) error { return k.Objs.Maps.Apply(prev, next) }
func (k *Kernel) Detach(ifindex int) error          { return bpf.DetachPinned(k.PinDir, ifindex) }
func (k *Kernel) Pinned() ([]int, error)            { return bpf.PinnedIfindexes(k.PinDir) }
func (k *Kernel) Counters() (c [2][verdict.NumReasons]bpf.Counter, err error) {
	return k.Objs.Maps.Counters()
}
func (k *Kernel) GuestCounters(slot uint16) ([2][verdict.NumReasons]bpf.Counter, error) {
	return k.Objs.Maps.GuestCounters(slot)
}
func (k *Kernel) Attach(ifindex int) (string, error) {
	return bpf.AttachPinned(k.PinDir, ifindex, k.Objs.MlsgIngress, k.Objs.MlsgEgress)
}

// NetlinkLinks watches interfaces through rtnetlink in the agent's
// network namespace.
type NetlinkLinks struct{}

// Watch implements LinkWatcher.
func (NetlinkLinks) Watch(ctx context.Context, event func(LinkEvent), synced func()) error {
	ch := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribe to link events: %w", err)
	}
	// The list after subscribing: nothing that appears in between is missed.
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		event(LinkEvent{Name: l.Attrs().Name, Index: l.Attrs().Index})
	}
	synced()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("link events: %w (the agent restarts its watch on restart)", err)
		case u, ok := <-ch:
			if !ok {
				return errors.New("link event channel closed")
			}
			event(LinkEvent{Name: u.Attrs().Name, Index: u.Attrs().Index, Deleted: u.Header.Type == unix.RTM_DELLINK})
		}
	}
}

// NoSAs reports an empty SA set once: for hosts where the agent is told
// about SAs (static SAs in the desired state) rather than reading them.
type NoSAs struct{}

// Watch implements SAWatcher.
func (NoSAs) Watch(ctx context.Context, update func([]KernelSA)) error {
	update(nil)
	<-ctx.Done()
	return nil
}

// Start loads the kernel side and builds an agent on it; sas nil means the
// kernel's own SAs (XFRMWatcher).
func Start(cfg Config, log *slog.Logger, sas SAWatcher) (*Agent, *Kernel, error) {
	k, err := LoadKernel(cfg)
	if err != nil {
		return nil, nil, err
	}
	if len(k.Objs.LegacyPinsRemoved) > 0 {
		log.Info("unpinned the maps of an older agent; its programs keep them until the links get this agent's programs",
			"maps", k.Objs.LegacyPinsRemoved)
	}
	if sas == nil {
		sas = XFRMWatcher{}
	}
	a, err := New(cfg, log, Options{Maps: k, Attacher: k, Links: NetlinkLinks{}, SAs: sas})
	if err != nil {
		k.Close()
		return nil, nil, err
	}
	a.metrics.counters = k
	a.metrics.guestCounters = k
	a.metrics.ringLost = k.EventsLost
	return a, k, nil
}

// EventsLost sums the kernel's per-CPU count of denials that found the
// events ring full.
func (k *Kernel) EventsLost() (uint64, error) {
	var per []uint64
	if err := k.Objs.Maps.EventsLost.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read events_lost: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// ensureBPFFS checks that dir is (or will be created) on a bpffs mount,
// mounting one on /sys/fs/bpf when that is where dir lives and nothing is
// mounted there yet (as a fresh mount namespace or an early boot has it).
func ensureBPFFS(dir string) error {
	probe := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(probe, &st)
		if err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			if probe == "/sys/fs/bpf" {
				if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
					return fmt.Errorf("mount bpffs on /sys/fs/bpf: %w", err)
				}
				return nil
			}
			return fmt.Errorf("pin directory %s is not on a bpffs mount (filesystem magic %#x): mount one with 'mount -t bpf bpf /sys/fs/bpf' or choose a pin_dir under one", dir, st.Type)
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("pin directory %s: %w", dir, err)
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return fmt.Errorf("pin directory %s: no existing parent", dir)
		}
		probe = parent
	}
}
