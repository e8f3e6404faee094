package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/mlsgate/mlsgate/internal/httpjson"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

const (
	defaultStoreDB     = "/var/lib/mlsgate/store/policystore.db" // deploy/mlsgate-store.service's StateDirectory
	defaultAppsDir     = "/etc/mlsgate/apps"
	defaultStoreAddr   = "127.0.0.1:7441"
	defaultStoreSocket = "/run/mlsgate/store.sock"
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
	cmd.AddCommand(newStoreCheckCmd(), newStoreResolveCmd(), newStoreBundleCmd(), newStoreServeCmd(), newStoreUncacheCmd(), newStoreReloadCmd())
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
		apps, db, listen, socket, group, authority string
		ttl, cacheTTL, staleGrace                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the policy store's HTTP API (also an application authority)",
		Long: `Serve the policy store's API on its Unix socket (--socket), to root and
members of --socket-group only:

  GET    /v1/apps             all applications with source and expiry
  GET    /v1/apps/{name}      one application (JSON)
  GET    /v1/resolve?url=URL  the application a URL belongs to
  DELETE /v1/cache/{name}     drop a cached application (DELETE /v1/cache: all)
  POST   /v1/reload           load --apps again (as SIGHUP does)
  GET    /healthz, /metrics

TCP (--listen) serves only /healthz and /metrics. Every change (cache drops,
reloads) is logged with the caller's uid and pid and counted
(mlsgate_api_changes_total).

At start, on SIGHUP and on POST /v1/reload the --apps directory is loaded as
the complete set of local applications. A directory with any bad file is
refused whole, with the file and line, and the store keeps serving what it had.`,
		Example: "  mlsgate store serve --apps examples/analyst --db /tmp/ps.db --socket /tmp/ps.sock --listen \"\"",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lc, err := storeConfig.load(cmd)
			if err != nil {
				return err
			}
			if listen == "" && socket == "" {
				return errors.New("nothing to serve on: give --socket PATH and/or --listen ADDR")
			}
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			lc.logStart(log, cmd)
			lns, err := bindListeners(listen, "--listen", socket, "--socket", group)
			if err != nil {
				return err
			}
			defer lns.close()
			st, err := policystore.OpenStore(db)
			if err != nil {
				return err
			}
			defer st.Close()
			reg := prometheus.NewRegistry()
			reg.MustRegister(buildinfo.Collector())
			changes := newChangeCounter(reg, "reload", "cache_drop", "cache_drop_all")
			refused := newRefusedCounter(reg)
			var syncMu sync.Mutex
			syncApps := func(r *http.Request, via string) error {
				if apps == "" {
					return errors.New("no --apps directory to load")
				}
				syncMu.Lock()
				defer syncMu.Unlock()
				list, err := st.SyncDir(apps)
				count := func(result string) {
					if via != "start" {
						changes.WithLabelValues("reload", result).Inc()
					}
				}
				if err != nil {
					count("refused")
					logChange(log, r, via, "reload", "refused", "dir", apps, "error", err)
					return fmt.Errorf("application files refused; still serving the previous set: %w", err)
				}
				count("applied")
				names := make([]string, 0, len(list))
				for _, a := range list {
					names = append(names, a.Name)
				}
				logChange(log, r, via, "reload", "applied", "dir", apps, "applications", names)
				return nil
			}
			if apps != "" {
				if err := syncApps(nil, "start"); err != nil {
					log.Error("application files", "error", err)
				}
			}
			cat := &policystore.Catalog{Store: st, TTL: cacheTTL, StaleGrace: staleGrace}
			if authority != "" {
				cat.Authority = &policystore.AuthorityClient{BaseURL: authority}
			}
			api := policystore.Handler(cat, ttl)
			admin := http.NewServeMux()
			admin.Handle("GET /metrics", metricsHandler(reg))
			admin.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
				if err := syncApps(r, "api"); err != nil {
					httpjson.Error(w, http.StatusUnprocessableEntity, err)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			})
			admin.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodDelete {
					api.ServeHTTP(w, r)
					return
				}
				change := "cache_drop_all"
				name := strings.TrimPrefix(r.URL.Path, "/v1/cache/")
				if name != r.URL.Path {
					change = "cache_drop"
				}
				rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
				api.ServeHTTP(rec, r)
				result := "applied"
				if rec.code >= 300 {
					result = "refused"
				}
				changes.WithLabelValues(change, result).Inc()
				logChange(log, r, "api", change, result, "path", r.URL.Path, "status", rec.code)
			}))
			public := http.NewServeMux()
			public.Handle("GET /metrics", metricsHandler(reg))
			public.Handle("GET /healthz", api)
			return lns.serve(cmd.Context(), daemon{log: log, public: public, admin: admin, onRefuse: refusedLogger(log, refused),
				reload: func() {
					if err := syncApps(nil, "SIGHUP"); err != nil {
						log.Error("reload", "error", err)
					}
				}})
		},
	}
	f := cmd.Flags()
	f.StringVar(&apps, "apps", defaultAppsDir, "directory of application files (*.yaml); \"\" for none")
	f.StringVar(&db, "db", defaultStoreDB, "the store database (created if missing)")
	f.StringVar(&socket, "socket", defaultStoreSocket, "Unix socket for the API (root and --socket-group only); \"\" for none")
	f.StringVar(&group, "socket-group", "mlsgate", "group allowed on --socket besides root (a missing group: root only)")
	f.StringVar(&listen, "listen", defaultStoreAddr, "TCP address for /healthz and /metrics only; \"\" for none")
	f.StringVar(&authority, "authority", "", "upstream application authority (base URL) to ask on a miss")
	f.DurationVar(&ttl, "ttl", 10*time.Minute, "how long clients may cache the answers")
	f.DurationVar(&cacheTTL, "cache-ttl", 10*time.Minute, "how long to cache the authority's answers when it says nothing")
	f.DurationVar(&staleGrace, "stale-grace", 0, "serve an expired cached application this long while the authority is unreachable")
	storeConfig.register(cmd)
	return cmd
}
