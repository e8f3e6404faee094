// Command mlsgate is the one binary of mlsgate. Its subcommands check labels,
// run and query the policy store and the label mapper; the agent, the loader
// and the benchmark harness add theirs as they arrive.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runContext(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mlsgate:", err)
		os.Exit(1)
	}
}

// run is main without the process: tests call it.
func run(args []string, out io.Writer) error {
	return runContext(context.Background(), args, out, io.Discard)
}

func runContext(ctx context.Context, args []string, out, errOut io.Writer) error {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errOut)
	return root.ExecuteContext(ctx)
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "mlsgate",
		Short: "MLS enforcement for the guests of a VM host",
		Long: `mlsgate labels the traffic of every guest of a VM host (Xen dom0, KVM) with the
label of its IPsec SA and enforces the MLS inter-VM policy in the kernel, after
the architecture of Rueda, Sreenivasan and Jaeger, "Flexible Security
Configuration for Virtual Machines" (CSAW'08).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Read().String(),
		// Every subcommand refuses unknown logging values, daemon or not.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			_, _, err := logOptions(cmd.Flags(), os.Getenv)
			return err
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	addLogFlags(root)
	root.AddCommand(newVersionCmd(), newManCmd(), newLabelCmd(), newStoreCmd(), newMapperCmd(), newAgentCmd(), newStatusCmd(), newEventsCmd(), newGuestCmd(), newUpdatedCmd(), newLoadCmd(), newLoaderCmd(), newSACmd(), newBPFCmd(), newDemoCmd(), newBenchCmd(), newImageCmd())
	return root
}
