package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes one man page per command of the tree ('make man').
// Hidden: it is a build step, not an operator's command.
func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "write the man pages of every command (section 1) into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeManPages(cmd.Root(), args[0], os.Getenv)
		},
	}
}

// writeManPages renders root's tree into dir. The date is
// $SOURCE_DATE_EPOCH, else the commit time of the build, so that the same
// tree gives the same pages.
func writeManPages(root *cobra.Command, dir string, getenv func(string) string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	in := buildinfo.Read()
	hdr := &doc.GenManHeader{Title: "MLSGATE", Section: "1", Source: "mlsgate " + in.Version, Manual: "mlsgate manual"}
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s)
		}
		t := time.Unix(sec, 0).UTC()
		hdr.Date = &t
	} else if t, err := time.Parse(time.RFC3339, in.Time); err == nil {
		hdr.Date = &t
	}
	root.DisableAutoGenTag = true
	if err := doc.GenManTree(root, hdr, dir); err != nil {
		return fmt.Errorf("man pages in %s: %w", dir, err)
	}
	return nil
}
