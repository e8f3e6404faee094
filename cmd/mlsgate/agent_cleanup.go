package main

import (
	"fmt"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/spf13/cobra"
)

func newAgentCleanupCmd() *cobra.Command {
	var pinDir string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "remove the pinned fast path: detach from every vif and drop the maps",
		Long: `Remove what the agent pinned: the links (which detaches the programs from every
vif, so the guests' traffic is no longer filtered) and the maps.

It takes the pin directory's lock first, so it refuses while an agent runs on
it (stop the agent first); it refuses a directory that is not on a bpffs (it
never removes anything elsewhere), and a directory that does not exist is an
error: nothing was pinned there.

Without --pin-dir it cleans the agent's configured pin_dir: from
MLSGATE_AGENT_PIN_DIR or the agent's file (--config, default
/etc/mlsgate/agent.yaml), as the agent reads it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("pin-dir") {
				cfg, err := agentConfigOf(cmd)
				if err != nil {
					return fmt.Errorf("agent cleanup: the agent's pin_dir: %w (or give --pin-dir)", err)
				}
				pinDir = cfg.PinDir
			}
			lock, err := bpf.LockPinDir(pinDir, false)
			if err != nil {
				return fmt.Errorf("agent cleanup: %w", err)
			}
			defer lock.Close()
			if err := bpf.RemovePins(pinDir); err != nil {
				return fmt.Errorf("agent cleanup: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed the pins under %s; managed vifs are no longer filtered\n", pinDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinDir, "pin-dir", agent.DefaultConfig().PinDir, "the agent's bpffs pin directory (default: the agent's configured pin_dir)")
	cmd.Flags().String(flagConfig, agentConfig.defaultFile(), "the agent's configuration file, read for pin_dir without --pin-dir; \"\" for none")
	return cmd
}
