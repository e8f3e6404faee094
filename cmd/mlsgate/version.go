package main

import (
	"encoding/json"
	"fmt"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/spf13/cobra"
)

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "print the version, VCS revision and Go version of this binary",
		Long: `Print what the Go toolchain recorded in this binary: the module version, the
VCS revision, its commit time, whether the tree was modified, and the Go
version. A binary built without VCS data (go build -buildvcs=false, or outside
a checkout) says "unknown". Every daemon logs the same at start and exports it
as mlsgate_build_info.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := buildinfo.Read()
			switch output {
			case "text":
				_, err := fmt.Fprintln(cmd.OutOrStdout(), in.String())
				return err
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(in)
			}
			return fmt.Errorf("--output %q: want text or json", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
