package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/label"
)

// BenchmarkSetGuest1000: 1,000 guests declared one at a time on a fresh
// state directory (as the loader declares them when a host starts its
// VMs), each acknowledged (durable) before the next. cpu-s/op is the
// process's CPU time, less moved by other load than the wall time.
// BenchmarkSetGuest4000 is the same for 4,000: a cost linear in the
// guests makes its cpu-s/op four times as much, a quadratic one sixteen.
func BenchmarkSetGuest1000(b *testing.B) { benchSetGuests(b, 1000) }

func BenchmarkSetGuest4000(b *testing.B) { benchSetGuests(b, 4000) }

func benchSetGuests(b *testing.B, n int) {
	r, err := label.ParseBounds("s0-s15:c0.c1023/i0-i10")
	if err != nil {
		b.Fatal(err)
	}
	var cpu time.Duration
	for b.Loop() {
		cfg := DefaultConfig()
		cfg.StateDir = filepath.Join(b.TempDir(), "state")
		cfg.PinDir = "/sys/fs/bpf/unused-by-fakes"
		cfg.SPISlots = 1024
		k := &fakeKernel{}
		a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: &fakeLinks{}, SAs: &fakeSAs{}})
		if err != nil {
			b.Fatal(err)
		}
		c0 := processCPU()
		for i := range n {
			g := GuestSpec{Interface: fmt.Sprintf("vif%d.0", i+1), VM: uint32(i + 1), App: 1, Range: r, Addr4: netip.AddrFrom4([4]byte{10, byte(100 + i/250), byte(i % 250), 7})}
			if err := a.SetGuest(g); err != nil {
				b.Fatal(err)
			}
		}
		cpu += processCPU() - c0
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
