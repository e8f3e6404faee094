package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/mlsgate/mlsgate/internal/httpjson"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

const (
	defaultMapperAddr   = "127.0.0.1:7070"
	defaultMapperSocket = "/run/mlsgate/mapper.sock"
)

func newMapperCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mapper",
		Short: "the label mapper: URL → security label",
		Long: `The label mapper maps URLs to security labels (the paper's section 3.1): its
labeling policy (URL regex → label) first, then the upstream mappers its
miss-handler policy names (answers outside the rule's bounds are rejected),
then a default label (s0/i0). One runs on the host and one in every guest; the
policy store generates the guests' policies. 'go doc ./mapper' describes the
policy file format.`,
	}
	cmd.AddCommand(newMapperCheckCmd(), newMapperLookupCmd(), newMapperServeCmd())
	cmd.AddCommand(newMapperAdminCmds()...)
	return cmd
}

func newMapperCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "check FILE...",
		Short:   "validate label-mapper policy files",
		Long:    "Parse each policy file as the mapper would and name the file, line and token of the first problem.",
		Example: "  mlsgate mapper check /etc/mlsgate/mapper.policy",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range args {
				data, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				p, err := mapper.ParsePolicy(f, data)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %d map rules, %d forward rules, default %s\n", f, len(p.Maps), len(p.Forwards), p.Default)
			}
			return nil
		},
	}
}

func newMapperLookupCmd() *cobra.Command {
	var policy, server, output string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "lookup URL...",
		Short: "print the labels of URLs",
		Long: `Ask a running mapper (--server, an http:// base URL or unix:/path) or a policy
file evaluated here (--policy; its forward rules are followed) for the label of
each URL, with the rule or upstream that decided it.`,
		Example: "  mlsgate mapper lookup --policy guest.policy http://ws1.analyst.example/profile\n  mlsgate mapper lookup --server unix:/run/mlsgate/mapper.sock http://ws3.analyst.example/",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if policy != "" && server != "" {
				return fmt.Errorf("give one of --policy FILE and --server ADDRESS, not both")
			}
			if policy == "" && server == "" {
				server = "unix:" + defaultMapperSocket
			}
			lookup := func(u string) (mapper.Answer, error) {
				ctx := cmd.Context()
				return mapper.NewClient().Lookup(ctx, server, u)
			}
			if policy != "" {
				m, err := mapper.New(mapper.Config{ForwardTimeout: timeout})
				if err != nil {
					return err
				}
				if err := m.Load(policy); err != nil {
					return err
				}
				lookup = func(u string) (mapper.Answer, error) { return m.Lookup(cmd.Context(), u) }
			}
			var answers []mapper.Answer
			failed := 0
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			if output == "table" {
				fmt.Fprintln(tw, "URL\tLABEL\tCONTEXT\tSOURCE\tRULE")
			}
			for _, u := range args {
				a, err := lookup(u)
				if err != nil {
					failed++
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", u, err)
					continue
				}
				answers = append(answers, a)
				ctx := "-"
				if a.Context != nil {
					ctx = a.Context.String()
				}
				rule := a.Rule
				if a.Upstream != "" {
					rule += " via " + a.Upstream
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.URL, a.Label, ctx, a.Source, orDash(rule))
			}
			switch output {
			case "table":
				tw.Flush()
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(answers); err != nil {
					return err
				}
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d lookups failed", failed, len(args))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&policy, "policy", "", "evaluate this policy file here")
	cmd.Flags().StringVar(&server, "server", "", "ask this mapper (http://host:port or unix:/path; default unix:"+defaultMapperSocket+" without --policy)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "per-upstream timeout when following forward rules")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func newMapperServeCmd() *cobra.Command {
	var (
		policy, listen, socket, group, id string
		cacheSize                         int
		cacheTTL, defaultTTL, fwd         time.Duration
		hops                              int
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run a label mapper",
		Long: `Serve the label mapper. Lookups are its public service, on TCP (--listen)
and on the Unix socket (--socket):

  GET  /v1/label?url=URL   the URL's label (JSON: label, context, source, rule)
  POST /v1/lookup          {"url": ..., "hops": n, "via": [...]}, between mappers
  GET  /healthz, /metrics

Its administration is on the Unix socket only, to root and members of
--socket-group:

  GET    /v1/stats         counters
  POST   /v1/reload        load --policy again (as SIGHUP does)
  DELETE /v1/cache         forget every cached answer

Every reload and cache flush is logged with the caller's uid and pid and
counted (mlsgate_api_changes_total). A bad policy file is refused with its
line and the mapper keeps the policy it had.`,
		Example: "  mlsgate mapper serve --policy host.policy --listen 127.0.0.1:7070 --socket /run/mlsgate/mapper.sock",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lc, err := mapperConfig.load(cmd)
			if err != nil {
				return err
			}
			if listen == "" && socket == "" {
				return fmt.Errorf("nothing to serve on: give --listen ADDR and/or --socket PATH")
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
			m, err := mapper.New(mapper.Config{ID: id, CacheSize: cacheSize, CacheTTL: cacheTTL, DefaultTTL: defaultTTL, ForwardTimeout: fwd, HopLimit: hops})
			if err != nil {
				return err
			}
			if policy != "" {
				// At start a bad policy is an error, not a mapper that
				// answers the default to everything.
				if err := m.Load(policy); err != nil {
					return err
				}
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(buildinfo.Collector())
			changes := newChangeCounter(reg, "reload", "cache_flush")
			refused := newRefusedCounter(reg)
			load := func(r *http.Request, via string) error {
				if policy == "" {
					return errors.New("no --policy file to load")
				}
				old := m.Policy()
				if err := m.Load(policy); err != nil {
					changes.WithLabelValues("reload", "refused").Inc()
					logChange(log, r, via, "reload", "refused", "file", policy, "error", err)
					return fmt.Errorf("mapper policy refused; keeping the previous one: %w", err)
				}
				p := m.Policy()
				changes.WithLabelValues("reload", "applied").Inc()
				logChange(log, r, via, "reload", "applied", "file", policy,
					"old", fmt.Sprintf("%d map rules, %d forward rules, default %s", len(old.Maps), len(old.Forwards), old.Default),
					"new", fmt.Sprintf("%d map rules, %d forward rules, default %s", len(p.Maps), len(p.Forwards), p.Default))
				return nil
			}
			api := m.Handler()
			admin := http.NewServeMux()
			admin.Handle("GET /metrics", metricsHandler(reg))
			admin.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
				if err := load(r, "api"); err != nil {
					httpjson.Error(w, http.StatusUnprocessableEntity, err)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			})
			admin.HandleFunc("DELETE /v1/cache", func(w http.ResponseWriter, r *http.Request) {
				n := m.Stats().CacheEntries
				m.Flush()
				changes.WithLabelValues("cache_flush", "applied").Inc()
				logChange(log, r, "api", "cache_flush", "applied", "entries", n)
				w.WriteHeader(http.StatusNoContent)
			})
			admin.Handle("/", api)
			public := http.NewServeMux()
			public.Handle("GET /metrics", metricsHandler(reg))
			for _, p := range []string{"/v1/label", "/v1/lookup", "/healthz"} {
				public.Handle(p, api)
			}
			return lns.serve(cmd.Context(), daemon{log: log, public: public, admin: admin, onRefuse: refusedLogger(log, refused),
				reload: func() {
					if err := load(nil, "SIGHUP"); err != nil {
						log.Error("reload", "error", err)
					}
				}})
		},
	}
	f := cmd.Flags()
	f.StringVar(&policy, "policy", "", "policy file (without one every URL gets the default, unless forwarded)")
	f.StringVar(&listen, "listen", defaultMapperAddr, "TCP address for lookups, /healthz and /metrics; \"\" for none")
	f.StringVar(&socket, "socket", defaultMapperSocket, "Unix socket for lookups and administration (root and --socket-group only); \"\" for none")
	f.StringVar(&group, "socket-group", "mlsgate", "group allowed on --socket besides root (a missing group: root only)")
	f.StringVar(&id, "id", "", "this mapper's ID in Via lists (default random)")
	f.IntVar(&cacheSize, "cache-size", 0, "cache entries (0: default, negative: no cache)")
	f.DurationVar(&cacheTTL, "cache-ttl", 0, "cache lifetime of rule and upstream answers (0: default)")
	f.DurationVar(&defaultTTL, "default-ttl", 0, "cache lifetime of default answers (0: default)")
	f.DurationVar(&fwd, "forward-timeout", 0, "timeout per upstream request (0: default 2s)")
	f.IntVar(&hops, "hop-limit", 0, "refuse requests that passed this many mappers (0: default 8)")
	mapperConfig.register(cmd)
	return cmd
}
