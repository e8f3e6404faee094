package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlsgate/mlsgate/bench"
)

func newBenchCmd() *cobra.Command {
	var out, apps string
	var quick bool
	var soak time.Duration
	cmd := &cobra.Command{
		Use:   "bench <" + strings.Join(bench.Benchmarks, " | ") + " | all>...",
		Short: "measure mlsgate against its baselines and write a report (root)",
		Long: `Measure mlsgate against baselines taken in the same run and write a results
folder: report.md (tables with ratios), results.json (every measurement) and
SVG plots.

  fastpath  ns per packet under BPF_PROG_TEST_RUN against an empty program:
            IPv4 and IPv6 ESP, plain and secpath packets at 10, 10,000 and
            1,000,000 SAs
  traffic   real ESP packets between two namespaces over vif7.0: packets/s and
            request/response latency with no filter, mlsgate, nftables rules
            and an nftables set (10, 1,000, 10,000 SAs)
  agent     the agent's initial sync, one SA change (p50/p99, plotted) at
            1,000 vifs and 1k to 100k SAs, and its memory at 100,000 SAs;
            --soak DURATION adds a churn soak at 100,000 SAs (SAs added,
            rotated and deleted at 30/s) reporting RSS and Go heap over time
  xfrm      SA install rate through agent/xfrm and SA→map sync latency
            (p50/p99) in Debian's kernel under QEMU: 1,000 SAs back to back,
            then one every 3 ms (--quick: 200 back to back, and only when
            the guest image is already cached)
  rotation  SA rotation in Debian's kernel under QEMU: latency from trigger
            to old states deleted (p50/p99) over 100 rotations, and the
            datagrams lost (must be 0) between a guest and a server beyond
            the host meanwhile (not in --quick; make test runs it)
  mapper    label-mapper lookups at 10,000 rules, in process and over its
            HTTP API on 127.0.0.1 (one client goroutine, then 4)
  bundle    policy-store bundle generation for the analyst application
  vmstart   the paper's Table 1 with the netns, QEMU and Xen backends (Xen:
            in the dom0 image under QEMU, with pre-loaded guests paused and
            the ready pool's hand-out an xl unpause; not with --quick)

--quick runs everything at small sizes (a smoke test; its numbers are not to
be quoted). Everything but mapper and bundle needs root.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			cfg := bench.RunConfig{What: args, Quick: quick, AppsDir: apps, AgentSoak: soak,
				Progress: func(f string, a ...any) {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s "+f+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
				}}
			if bin, ok := staticSelf(); ok {
				cfg.Binary = bin
			}
			if out == "" {
				out = bench.DefaultResultsDir(".", time.Now())
			}
			r, runErr := bench.Run(cmd.Context(), cfg)
			if r == nil {
				return runErr
			}
			if err := bench.WriteReport(out, r); err != nil {
				return err
			}
			fmt.Fprintln(w, bench.FormatReport(r))
			abs, _ := filepath.Abs(out)
			fmt.Fprintf(w, "results: %s (%s, %s, %s)\n", abs, bench.ReportMarkdown, bench.ReportJSON, bench.PlotPerPacket)
			return runErr
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "results folder (default bench/results/<date>)")
	cmd.Flags().StringVar(&apps, "apps", "examples/analyst", "application files for the bundle and VM-start benchmarks")
	cmd.Flags().BoolVar(&quick, "quick", false, "every benchmark at small sizes; asserts nothing about speed")
	cmd.Flags().DurationVar(&soak, "soak", 0, "agent: churn this long at 100,000 SAs after the timed changes, sampling RSS and Go heap (e.g. 10m)")
	return cmd
}

// staticSelf is this executable when it is statically linked, so that the
// VM-start guests can run it; otherwise the harness builds one.
func staticSelf() (string, bool) {
	exe, err := os.Executable()
	if err != nil {
		return "", false
	}
	f, err := elf.Open(exe)
	if err != nil {
		return "", false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", false
		}
	}
	return exe, true
}
