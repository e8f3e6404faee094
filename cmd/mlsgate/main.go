// Command mlsgate is the one binary of mlsgate. Subcommands arrive with their
// issues (agent, load, status, events, bench, demo, updated); today it checks
// labels, which every policy file is written in.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mlsgate/mlsgate/label"
)

const usage = `usage: mlsgate label KIND TEXT...

Parse security labels as mlsgate reads them and print their canonical form.
Exit status 1 names the first text that does not parse and why.

KIND is one of:
  level    an MLS level:            s3:c1.c5,c9
  range    an MLS range:            s0-s15:c0.c1023
  context  an SELinux context:      system_u:object_r:analyst_t:s0-s5
  label    secrecy and integrity:   s3:c1/i5
  bounds   a secrecy and integrity range, as guests and servers have: s6-s15/i5-i15
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mlsgate:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	if args[0] != "label" {
		return fmt.Errorf("unknown command %q; run 'mlsgate --help'", args[0])
	}
	if len(args) < 3 {
		return errors.New("label needs a KIND and at least one TEXT; run 'mlsgate --help'")
	}
	parse := map[string]func(string) (fmt.Stringer, error){
		"level":   func(s string) (fmt.Stringer, error) { return label.ParseLevel(s) },
		"range":   func(s string) (fmt.Stringer, error) { return label.ParseRange(s) },
		"context": func(s string) (fmt.Stringer, error) { return label.ParseContext(s) },
		"label":   func(s string) (fmt.Stringer, error) { return label.ParseLabel(s) },
		"bounds":  func(s string) (fmt.Stringer, error) { return label.ParseBounds(s) },
	}[args[1]]
	if parse == nil {
		return fmt.Errorf("unknown label kind %q: want level, range, context, label or bounds", args[1])
	}
	for _, s := range args[2:] {
		v, err := parse(s)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, v)
	}
	return nil
}
