package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlsgate/mlsgate/loader"
)

// withRotation turns SA rotation on in the loader's setup unless off.
func withRotation(s loaderSetup, rc loader.RotationConfig, off bool) loaderSetup {
	if !off {
		s.Rotation = &rc
	}
	return s
}

func newSACmd() *cobra.Command {
	var sock, output string
	cmd := &cobra.Command{
		Use:   "sa",
		Short: "the guests' SAs: status and rotation (through the loader's socket)",
	}
	cmd.PersistentFlags().StringVar(&sock, "socket", defaultLoaderSocket, "the loader's Unix socket")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "table or json")
	client := func() *http.Client {
		return &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	}
	var guests []string
	var all bool
	rotate := &cobra.Command{
		Use:   "rotate (--guest NAME|VM|INTERFACE ... | --all)",
		Short: "rotate guests' SAs now, make-before-break, keeping every label",
		Long: `Give each SA of the named guests (or of every guest serving an application)
a successor with a new SPI and a fresh key and the same context, label and
owner: the agent checks that, and refuses a successor that differs. Inbound
states are installed on both ends first, then the outbound ones; the old
inbound states stay for the loader's --sa-grace, then go. Prints, per
guest, the result and the time from the request to the old states deleted.`,
		Example: "  mlsgate sa rotate --guest vm7\n  mlsgate sa rotate --all",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all == (len(guests) > 0) {
				return fmt.Errorf("give --guest (one or more) or --all, not both or neither")
			}
			body, _ := json.Marshal(loader.RotateRequest{Guests: guests, All: all})
			resp, err := client().Post("http://loader/v1/sa/rotate", "application/json", strings.NewReader(string(body)))
			if err != nil {
				return fmt.Errorf("loader at %s: %w (is 'mlsgate loader' running?)", sock, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			var out struct {
				Rotations []loader.RotationResult `json:"rotations"`
				Error     string                  `json:"error"`
			}
			if err := json.Unmarshal(b, &out); err != nil {
				return fmt.Errorf("loader answered %s: %s", resp.Status, b)
			}
			if output == "json" {
				cmd.OutOrStdout().Write(b)
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "GUEST\tRESULT\tTOOK\tOLD SPIS\tNEW SPIS\tERROR\tSTEPS")
				for _, r := range out.Rotations {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%s\n", r.Guest, r.Result, r.Took.Round(time.Millisecond), spiList(r.OldSPIs), spiList(r.NewSPIs), orDash(r.Error), rotationSteps(r.Steps))
				}
				tw.Flush()
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("rotation: %s", out.Error)
			}
			return nil
		},
	}
	rotate.Flags().StringSliceVar(&guests, "guest", nil, "guest to rotate (name, VM number or interface); repeat for more")
	rotate.Flags().BoolVar(&all, "all", false, "rotate every guest serving an application")
	status := &cobra.Command{
		Use:   "status",
		Short: "each guest's SAs with their age and generation, and the last rotations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := client().Get("http://loader/v1/sa")
			if err != nil {
				return fmt.Errorf("loader at %s: %w (is 'mlsgate loader' running?)", sock, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("loader answered %s: %s", resp.Status, b)
			}
			if output == "json" {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			var st struct {
				Guests    []loader.SAStatus       `json:"guests"`
				Rotations []loader.RotationResult `json:"rotations"`
			}
			if err := json.Unmarshal(b, &st); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GUEST\tAPP\tGENERATION\tAGE\tDUE\tSPI\tSRC\tDST\tCONTEXT")
			for _, g := range st.Guests {
				due := "-"
				if !g.Due.IsZero() {
					due = g.Due.Format(time.RFC3339)
				}
				for _, s := range g.SAs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\t%#x\t%s\t%s\t%s\n", g.Guest, g.Application, g.Generation, (time.Duration(g.AgeSeconds) * time.Second).Round(time.Second), due, s.SPI, s.Src, s.Dst, s.Context)
				}
			}
			tw.Flush()
			return nil
		},
	}
	cmd.AddCommand(rotate, status)
	return cmd
}

func spiList(s []uint32) string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = fmt.Sprintf("%#x", x)
	}
	return strings.Join(out, ",")
}
