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
	"github.com/mlsgate/mlsgate/loader/assemble"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// loaderSetup is everything VMLoad runs with (assemble.Setup).
type loaderSetup = assemble.Setup

// vmload is a running loader with its parts.
type vmload struct {
	loader *loader.Loader
	pool   *pool.Pool
	api    *loader.API
	host   *loader.Host
	// listeners serve the API to each guest on its own link.
	listeners *loader.GuestListeners
	warnings  []string
	ca        *ca.CA
	store     *policystore.Store
	close     func()
}

// guestNet holds every guest address of the plan.
var guestNet = assemble.GuestNet

// startLoader starts VMLoad through assemble.Start, which the benchmarks use
// too, so that what they measure is what the command runs.
func startLoader(ctx context.Context, s loaderSetup) (*vmload, error) {
	r, err := assemble.Start(ctx, s)
	if err != nil {
		return nil, err
	}
	return &vmload{loader: r.Loader, pool: r.Pool, api: r.API, host: r.Host, listeners: r.Listeners, warnings: r.Warnings, ca: r.CA, store: r.Store, close: r.Close}, nil
}

const defaultLoaderSocket = "/run/mlsgate/loader.sock"

func newLoadCmd() *cobra.Command {
	var sock, output string
	cmd := &cobra.Command{
		Use:   "load URL",
		Short: "ask VMLoad for a guest that serves URL's application",
		Long: `Ask the loader (on its Unix socket, as the host) to configure a guest for the
application URL belongs to: a guest already serving it, an idle pre-loaded
guest, or a new one. Prints the guest and the time of each configuration step.`,
		Example: "  mlsgate load http://ws1.analyst.example/profile",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}}}
			body, _ := json.Marshal(loader.LoadRequest{URL: args[0]})
			resp, err := c.Post("http://loader/v1/load", "application/json", strings.NewReader(string(body)))
			if err != nil {
				return fmt.Errorf("loader at %s: %w (is 'mlsgate loader' running?)", sock, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				var le loader.LoadError
				json.Unmarshal(b, &le)
				return fmt.Errorf("load refused (%s): %s", le.Reason, le.Error)
			}
			if output == "json" {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			var res loader.Result
			if err := json.Unmarshal(b, &res); err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), &res)
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", defaultLoaderSocket, "the loader's Unix socket")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func printResult(w io.Writer, r *loader.Result) {
	fmt.Fprintf(w, "%s → application %s (server %s, range %s) on guest %s (%s, %s) from %s, bundle v%d, in %v\n",
		r.URL, r.App, orDash(r.Server), r.Range, r.Guest.Name, r.Guest.Interface, r.Guest.Addr, r.How, r.Version, r.Total.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range r.Steps {
		fmt.Fprintf(tw, "  %s\t%v\n", s.Name, s.Duration.Round(100*time.Microsecond))
	}
	tw.Flush()
}
