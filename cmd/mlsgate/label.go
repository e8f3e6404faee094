package main

import (
	"fmt"

	"github.com/mlsgate/mlsgate/label"
	"github.com/spf13/cobra"
)

func newLabelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "label KIND TEXT...",
		Short: "check security labels and print their canonical form",
		Long: `Parse security labels as mlsgate reads them and print their canonical form.
The first text that does not parse is named with the reason, and the exit
status is 1.

KIND is one of:
  level    an MLS level:            s3:c1.c5,c9
  range    an MLS range:            s0-s15:c0.c1023
  context  an SELinux context:      system_u:object_r:analyst_t:s0-s5
  label    secrecy and integrity:   s3:c1/i5
  bounds   a secrecy and integrity range, as guests and servers have: s6-s15/i5-i15`,
		Example: "  mlsgate label bounds s6-s15/i5-i10\n  mlsgate label context root:sysadm_r:analyst_t:s4",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			parse := map[string]func(string) (fmt.Stringer, error){
				"level":   func(s string) (fmt.Stringer, error) { return label.ParseLevel(s) },
				"range":   func(s string) (fmt.Stringer, error) { return label.ParseRange(s) },
				"context": func(s string) (fmt.Stringer, error) { return label.ParseContext(s) },
				"label":   func(s string) (fmt.Stringer, error) { return label.ParseLabel(s) },
				"bounds":  func(s string) (fmt.Stringer, error) { return label.ParseBounds(s) },
			}[args[0]]
			if parse == nil {
				return fmt.Errorf("unknown label kind %q: want level, range, context, label or bounds", args[0])
			}
			for _, s := range args[1:] {
				v, err := parse(s)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), v)
			}
			return nil
		},
	}
}
