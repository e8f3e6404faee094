package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/spf13/cobra"
)

const (
	defaultStoreDB   = "/var/lib/mlsgate/store/policystore.db" // deploy/mlsgate-store.service's StateDirectory
	defaultAppsDir   = "/etc/mlsgate/apps"
	defaultStoreAddr = "127.0.0.1:7441"
)

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "the policy store: applications, URL resolution, the authority cache",
		Long: `The policy store keeps the web applications the host may load (their servers,
secrecy/integrity ranges and label rules, as YAML files: see examples/analyst),
resolves URLs to applications, and caches applications fetched from an
upstream application authority. Its HTTP API makes it an authority for other
hosts too.`,
	}
	cmd.AddCommand(newStoreCheckCmd(), newStoreResolveCmd(), newStoreBundleCmd(), newStoreServeCmd())
	return cmd
}

func newStoreCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check DIR...",
		Short: "validate directories of application files",
		Long: `Validate every *.yaml file of each DIR as the store would load it: all or
nothing, with the file, line and field of the first problem. Exit status 1 on
any problem.`,
		Example: "  mlsgate store check examples/analyst",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			for _, dir := range args {
				apps, err := policystore.LoadDir(dir)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s: %d applications\n", dir, len(apps))
				for _, a := range apps {
					fmt.Fprintf(out, "  %-16s guest %-16s %d servers, %d label rules, loadable from %s\n",
						a.Name, a.Guest, len(a.Servers), len(a.Labels), strings.Join(a.LoadableFrom, ","))
				}
			}
			return nil
		},
	}
}

func newStoreResolveCmd() *cobra.Command {
	var apps, db, authority, output string
	cmd := &cobra.Command{
		Use:   "resolve URL...",
		Short: "print the application, server and range of URLs",
		Long: `Resolve each URL to the application that claims it, the server whose host
matched and the secrecy/integrity range of its data. With --apps the files are
read directly; otherwise the store database is opened (it must not be held by
a running 'mlsgate store serve'), asking --authority on a miss.`,
		Example: "  mlsgate store resolve --apps examples/analyst http://ws1.analyst.example/profile",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resolve, closeFn, err := openResolver(apps, db, authority)
			if err != nil {
				return err
			}
			defer closeFn()
			type row struct {
				URL     string `json:"url"`
				App     string `json:"app,omitempty"`
				Server  string `json:"server,omitempty"`
				Range   string `json:"range,omitempty"`
				Pattern string `json:"pattern,omitempty"`
				Error   string `json:"error,omitempty"`
			}
			var rows []row
			failed := 0
			for _, u := range args {
				r, err := resolve(cmd.Context(), u)
				if err != nil {
					rows = append(rows, row{URL: u, Error: err.Error()})
					failed++
					continue
				}
				rw := row{URL: u, App: r.App.Name, Range: r.Range.String(), Pattern: r.Pattern}
				if r.Server != nil {
					rw.Server = r.Server.Name
				}
				rows = append(rows, rw)
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return err
				}
			case "table":
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "URL\tAPPLICATION\tSERVER\tRANGE")
				for _, r := range rows {
					if r.Error != "" {
						fmt.Fprintf(tw, "%s\t-\t-\t%s\n", r.URL, r.Error)
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.URL, r.App, orDash(r.Server), r.Range)
				}
				tw.Flush()
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d URLs did not resolve", failed, len(args))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&apps, "apps", "", "read applications from this directory instead of the store database")
	cmd.Flags().StringVar(&db, "db", defaultStoreDB, "the store database")
	cmd.Flags().StringVar(&authority, "authority", "", "application authority to ask on a miss (base URL)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type resolveFunc func(context.Context, string) (policystore.Resolution, error)

func openResolver(apps, db, authority string) (resolveFunc, func(), error) {
	if apps != "" {
		list, err := policystore.LoadDir(apps)
		if err != nil {
			return nil, nil, err
		}
		ix, err := policystore.NewIndex(list)
		if err != nil {
			return nil, nil, err
		}
		return func(_ context.Context, u string) (policystore.Resolution, error) { return ix.Resolve(u) }, func() {}, nil
	}
	st, err := policystore.OpenStore(db)
	if err != nil {
		return nil, nil, err
	}
	cat := &policystore.Catalog{Store: st}
	if authority != "" {
		cat.Authority = &policystore.AuthorityClient{BaseURL: authority}
	}
	return cat.Resolve, func() { st.Close() }, nil
}

func newStoreServeCmd() *cobra.Command {
	var (
		apps, db, listen, socket, authority string
		ttl, cacheTTL, staleGrace           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the policy store's HTTP API (also an application authority)",
		Long: `Serve the policy store's API on TCP and/or a Unix socket:

  GET    /v1/apps             all applications with source and expiry
  GET    /v1/apps/{name}      one application (JSON)
  GET    /v1/resolve?url=URL  the application a URL belongs to
  DELETE /v1/cache/{name}     drop a cached application (DELETE /v1/cache: all)
  GET    /healthz

At start and on SIGHUP the --apps directory is loaded as the complete set of
local applications. A directory with any bad file is refused whole, with the
file and line, and the store keeps serving what it had.`,
		Example: "  mlsgate store serve --apps examples/analyst --db /tmp/ps.db --listen 127.0.0.1:7441",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" && socket == "" {
				return errors.New("nothing to serve on: give --listen ADDR and/or --socket PATH")
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			st, err := policystore.OpenStore(db)
			if err != nil {
				return err
			}
			defer st.Close()
			sync := func() {
				if apps == "" {
					return
				}
				list, err := st.SyncDir(apps)
				if err != nil {
					log.Error("application files refused; still serving the previous set", "dir", apps, "error", err)
					return
				}
				log.Info("applications loaded", "dir", apps, "count", len(list))
			}
			sync()
			cat := &policystore.Catalog{Store: st, TTL: cacheTTL, StaleGrace: staleGrace}
			if authority != "" {
				cat.Authority = &policystore.AuthorityClient{BaseURL: authority}
			}
			return serveHTTP(cmd.Context(), log, policystore.Handler(cat, ttl), listen, socket, sync)
		},
	}
	f := cmd.Flags()
	f.StringVar(&apps, "apps", defaultAppsDir, "directory of application files (*.yaml); \"\" for none")
	f.StringVar(&db, "db", defaultStoreDB, "the store database (created if missing)")
	f.StringVar(&listen, "listen", defaultStoreAddr, "TCP address to serve on; \"\" for none")
	f.StringVar(&socket, "socket", "", "Unix socket to serve on")
	f.StringVar(&authority, "authority", "", "upstream application authority (base URL) to ask on a miss")
	f.DurationVar(&ttl, "ttl", 10*time.Minute, "how long clients may cache the answers")
	f.DurationVar(&cacheTTL, "cache-ttl", 10*time.Minute, "how long to cache the authority's answers when it says nothing")
	f.DurationVar(&staleGrace, "stale-grace", 0, "serve an expired cached application this long while the authority is unreachable")
	return cmd
}

// serveHTTP serves h on a TCP address and/or a Unix socket until ctx ends;
// reload runs on SIGHUP.
func serveHTTP(ctx context.Context, log *slog.Logger, h http.Handler, listen, socket string, reload func()) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w (is another server running? choose another --listen)", listen, err)
		}
		lns = append(lns, ln)
	}
	if socket != "" {
		if err := removeStaleSocket(socket); err != nil {
			closeAll()
			return err
		}
		ln, err := net.Listen("unix", socket)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen on %s: %w", socket, err)
		}
		if err := os.Chmod(socket, 0o660); err != nil {
			closeAll()
			return err
		}
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		log.Info("serving", "address", ln.Addr().String())
		go func() { errc <- srv.Serve(ln) }()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			if reload != nil {
				reload()
			}
		case err := <-errc:
			srv.Close()
			return err
		case <-ctx.Done():
			shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if socket != "" {
				defer os.Remove(socket)
			}
			return srv.Shutdown(shutCtx)
		}
	}
}

// removeStaleSocket removes a socket file nobody listens on; a live one is
// an error, so that two servers never fight over a path.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; remove it or choose another --socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is served by another process; stop it or choose another --socket", path)
	}
	return os.Remove(path)
}
