package main

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/bpf"
)

func newBPFCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "inspect the pinned fast path"}
	var pinDir string
	dump := &cobra.Command{
		Use:   "dump [map...]",
		Short: "print the pinned maps with labels, reasons and guests decoded",
		Long: `Print what the agent's pinned maps hold: vifs with their guest (VM, interface,
range as labels, flags), labels, each label's accepted peer ranges, SAs with
their owner and label, peers with their range, the verdict counters by
direction and reason, each guest's counters, and the events lost. Name maps
to print only those (` + fmt.Sprint(bpf.DumpMaps) + `).

It opens the maps read-only and loads no program; it needs CAP_BPF (root).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := bpf.OpenPinned(pinDir)
			if err != nil {
				return fmt.Errorf("bpf dump: %w", err)
			}
			defer m.Close()
			d, err := m.ReadDump()
			if err != nil {
				return fmt.Errorf("bpf dump: %w", err)
			}
			return d.Write(cmd.OutOrStdout(), args, func(ifindex uint32) string {
				if i, err := net.InterfaceByIndex(int(ifindex)); err == nil {
					return i.Name
				}
				return ""
			})
		},
	}
	dump.Flags().StringVar(&pinDir, "pin-dir", agent.DefaultConfig().PinDir, "the agent's bpffs pin directory")
	cmd.AddCommand(dump)
	return cmd
}
