package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/spf13/cobra"
)

// adminCall sends one request to a daemon's admin socket (addr: unix:/path
// or /path; flag and def name the flag and its default for errors) and
// decodes a JSON answer into out.
func adminCall(ctx context.Context, addr, flag, def, method, path string, out any) error {
	sock, err := localapi.SocketPath(addr, flag, def)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://local"+path, nil)
	if err != nil {
		return err
	}
	resp, err := localapi.Client(sock, 30*time.Second).Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w (is the server running? see %s)", sock, err, flag)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = string(b)
		}
		return fmt.Errorf("%s %s on %s: %s: %s", method, path, sock, resp.Status, e.Error)
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}

func newStoreUncacheCmd() *cobra.Command {
	var sock string
	var all bool
	cmd := &cobra.Command{
		Use:     "uncache [NAME]",
		Short:   "drop a cached application (or all, --all) from a running store",
		Example: "  mlsgate store uncache analyst\n  mlsgate store uncache --all",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) {
				return fmt.Errorf("give an application NAME or --all")
			}
			path := "/v1/cache"
			if !all {
				path += "/" + url.PathEscape(args[0])
			}
			var res map[string]any
			if err := adminCall(cmd.Context(), sock, "--socket", defaultStoreSocket, "DELETE", path, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dropped: %v\n", res["dropped"])
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", defaultStoreSocket, "the store's Unix socket")
	cmd.Flags().BoolVar(&all, "all", false, "drop every cached application")
	return cmd
}

func newStoreReloadCmd() *cobra.Command {
	var sock string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "make a running store load its application files again (as SIGHUP does)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := adminCall(cmd.Context(), sock, "--socket", defaultStoreSocket, "POST", "/v1/reload", nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", defaultStoreSocket, "the store's Unix socket")
	return cmd
}

func newMapperAdminCmds() []*cobra.Command {
	var sock string
	reload := &cobra.Command{
		Use:   "reload",
		Short: "make a running mapper load its policy file again (as SIGHUP does)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := adminCall(cmd.Context(), sock, "--socket", defaultMapperSocket, "POST", "/v1/reload", nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	flush := &cobra.Command{
		Use:   "flush",
		Short: "make a running mapper forget its cached answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := adminCall(cmd.Context(), sock, "--socket", defaultMapperSocket, "DELETE", "/v1/cache", nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "cache flushed")
			return nil
		},
	}
	stats := &cobra.Command{
		Use:   "stats",
		Short: "print a running mapper's counters (JSON)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st map[string]any
			if err := adminCall(cmd.Context(), sock, "--socket", defaultMapperSocket, "GET", "/v1/stats", &st); err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		},
	}
	for _, c := range []*cobra.Command{reload, flush, stats} {
		c.Flags().StringVar(&sock, "socket", defaultMapperSocket, "the mapper's Unix socket")
	}
	return []*cobra.Command{reload, flush, stats}
}
