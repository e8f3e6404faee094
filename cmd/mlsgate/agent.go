package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

const defaultAgentConfig = "/etc/mlsgate/agent.yaml"

func newAgentCmd() *cobra.Command {
	var cfgFile string
	v := viper.New()
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run the host agent: fast path on the guests' vifs, maps in sync",
		Long: `Run the privileged host agent (root). It loads the fast path, pins its maps and
links under --pin-dir, attaches the programs to every declared guest's
interface as it appears (names matching --interfaces; an undeclared interface
is never touched), keeps the maps equal to the declared guests, peers and SAs,
and serves /metrics, /healthz, /readyz and its API on --listen and --socket.

Killing the agent leaves the pinned programs enforcing the last state; a new
agent adopts the pins and swaps its programs in atomically. 'mlsgate agent
cleanup' removes the pins (and so the enforcement).

Configuration: --config (default /etc/mlsgate/agent.yaml, optional), then
MLSGATE_* environment variables (MLSGATE_PIN_DIR, MLSGATE_ENFORCE, ...), then
flags. deploy/agent.yaml documents every key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadAgentConfig(v, cfgFile, cmd)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
			a, k, err := agent.Start(cfg, log, nil)
			if err != nil {
				return err
			}
			defer k.Close()
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			go func() {
				if err := a.ReadEvents(ctx, k.Objs.Events); err != nil {
					log.Error("denial events", "error", err)
				}
			}()
			errc := make(chan error, 1)
			go func() {
				errc <- serveHTTP(ctx, log, a.Handler(), cfg.Listen, cfg.Socket, nil)
			}()
			err = a.Run(ctx)
			cancel()
			if serr := <-errc; err == nil && serr != nil && !errors.Is(serr, http.ErrServerClosed) {
				err = serr
			}
			log.Info("agent stopped; the pinned fast path keeps enforcing", "pin_dir", cfg.PinDir)
			return err
		},
	}
	d := agent.DefaultConfig()
	f := cmd.Flags()
	f.StringVar(&cfgFile, "config", defaultAgentConfig, "configuration file (YAML); a missing default file is fine")
	f.String("state-dir", d.StateDir, "where the desired state is kept")
	f.String("pin-dir", d.PinDir, "bpffs directory for the pinned maps and links")
	f.String("listen", d.Listen, "TCP address for metrics and the API; \"\" for none")
	f.String("socket", d.Socket, "Unix socket for the API; \"\" for none")
	f.StringSlice("interfaces", d.Interfaces, "interface name patterns the agent may manage")
	f.Bool("enforce", d.Enforce, "drop denied packets (false: count and report only)")
	f.Uint32("spi-base", d.SPIBase, "first SPI of the host's range")
	f.Uint32("spi-slots", d.SPISlots, "SPIs in the host's range (dense array)")
	f.Uint16("api-port", d.APIPort, "TCP port on the host guests may reach (the loader's API); 0 none")
	f.Uint32("event-sample", d.EventSample, "send 1 in N denials to the event ring (0: none)")
	f.Float64("event-rate", d.EventRate, "denial log lines per second at most")
	f.Duration("resync-interval", d.ResyncInterval, "full resync of the kernel's SAs this often (0: never)")
	cmd.AddCommand(newAgentCleanupCmd())
	return cmd
}

// loadAgentConfig merges defaults, the file, MLSGATE_* and flags.
func loadAgentConfig(v *viper.Viper, file string, cmd *cobra.Command) (agent.Config, error) {
	d := agent.DefaultConfig()
	for k, val := range map[string]any{
		"state_dir": d.StateDir, "pin_dir": d.PinDir, "listen": d.Listen, "socket": d.Socket, "interfaces": d.Interfaces,
		"enforce": d.Enforce, "spi_base": d.SPIBase, "spi_slots": d.SPISlots, "api_port": d.APIPort,
		"event_sample": d.EventSample, "event_rate": d.EventRate, "resync_interval": d.ResyncInterval,
		"default_integrity": "i0",
	} {
		v.SetDefault(k, val)
	}
	v.SetEnvPrefix("MLSGATE")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if fl.Name != "config" && fl.Name != "help" {
			_ = v.BindPFlag(strings.ReplaceAll(fl.Name, "-", "_"), fl)
		}
	})
	if file != "" {
		v.SetConfigFile(file)
		if err := v.ReadInConfig(); err != nil {
			var nf viper.ConfigFileNotFoundError
			missing := errors.As(err, &nf) || errors.Is(err, os.ErrNotExist)
			if !missing || cmd.Flags().Changed("config") {
				return agent.Config{}, fmt.Errorf("config %s: %w", file, err)
			}
		}
	}
	var cfg agent.Config
	hook := mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc(), mapstructure.StringToSliceHookFunc(","), textHook)
	if err := v.UnmarshalExact(&cfg, viper.DecodeHook(hook)); err != nil {
		return cfg, fmt.Errorf("configuration: %w (see deploy/agent.yaml for the keys)", err)
	}
	return cfg, cfg.Validate()
}

// textHook decodes strings into types with UnmarshalText (integrity levels).
func textHook(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok || from.Kind() != reflect.String {
		return data, nil
	}
	if to == reflect.TypeOf(label.Integrity(0)) {
		return label.ParseIntegrity(s)
	}
	return data, nil
}

func newAgentCleanupCmd() *cobra.Command {
	var pinDir string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "remove the pinned fast path: detach from every vif and drop the maps",
		Long: `Remove what the agent pinned: the links (which detaches the programs from every
vif, so the guests' traffic is no longer filtered) and the maps. Stop the agent
first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bpf.RemovePins(pinDir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed the pins under %s; managed vifs are no longer filtered\n", pinDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinDir, "pin-dir", agent.DefaultConfig().PinDir, "the agent's bpffs pin directory")
	return cmd
}

// agentClient talks to a running agent over TCP or a Unix socket.
type agentClient struct {
	base string
	http *http.Client
}

func newAgentClient(addr string, timeout time.Duration) *agentClient {
	c := &agentClient{base: addr, http: &http.Client{Timeout: timeout}}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		c.base = "http://agent"
		c.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	} else if !strings.Contains(addr, "://") {
		c.base = "http://" + addr
	}
	return c
}

func (c *agentClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w (is 'mlsgate agent' running? see --agent)", c.base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("agent: %s: %s", resp.Status, e.Error)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func newStatusCmd() *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the agent's guests, SAs, map fill and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st agent.Status
			if err := newAgentClient(addr, 5*time.Second).do(cmd.Context(), "GET", "/v1/status", nil, &st); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(w, "ready: %v\n", st.Ready)
			if st.Error != "" {
				fmt.Fprintf(w, "last error: %s\n", st.Error)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INTERFACE\tVM\tAPP\tRANGE\tPRESENT\tATTACHED")
			for _, g := range st.Guests {
				att := "no"
				if g.Attached {
					att = g.Mode
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%v\t%s\n", g.Interface, g.VM, g.App, g.Range, g.Present, att)
			}
			tw.Flush()
			fmt.Fprintf(w, "SAs: %d synced, %d static, %d unlabeled, %d with a bad context, %d of no guest; peers: %d\n",
				st.SAs.Synced, st.SAs.Static, st.SAs.Unlabeled, st.SAs.BadContext, st.SAs.NoGuest, st.Peers)
			fmt.Fprintf(w, "map entries: vifs %d, labels %d, sa_slots %d, sas %d, peers %d\n", st.Maps.Vifs, st.Maps.Labels, st.Maps.Slots, st.Maps.SAs, st.Maps.Peers)
			for _, dir := range []string{"ingress", "egress"} {
				if len(st.Counters[dir]) == 0 {
					continue
				}
				var parts []string
				for r, n := range st.Counters[dir] {
					parts = append(parts, fmt.Sprintf("%s=%d", r, n))
				}
				fmt.Fprintf(w, "%s packets: %s\n", dir, strings.Join(sorted(parts), " "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "agent", "127.0.0.1:9471", "the agent's address (host:port or unix:/path)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func newEventsCmd() *cobra.Command {
	var addr string
	return &cobra.Command{
		Use:   "events",
		Short: "follow the agent's denial events (JSON lines) until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := newAgentClient(addr, 0)
			req, err := http.NewRequestWithContext(cmd.Context(), "GET", c.base+"/v1/events", nil)
			if err != nil {
				return err
			}
			resp, err := c.http.Do(req)
			if err != nil {
				return fmt.Errorf("agent at %s: %w", addr, err)
			}
			defer resp.Body.Close()
			_, err = io.Copy(cmd.OutOrStdout(), resp.Body)
			if cmd.Context().Err() != nil {
				return nil
			}
			return err
		},
	}
}

func newGuestCmd() *cobra.Command {
	var addr, rng, addr4, addr6, hostAddr4, hostAddr6, mac string
	var vm, app uint32
	var unlabeled, audit bool
	cmd := &cobra.Command{Use: "guest", Short: "declare or forget guests on the agent (the loader does this for its guests)"}
	set := &cobra.Command{
		Use:     "set INTERFACE",
		Short:   "declare the guest on a host-side interface",
		Example: "  mlsgate guest set vif7.0 --vm 7 --app 1 --range s0-s15/i5-i10 --addr4 10.70.0.7 --host-addr4 10.70.0.1 --mac 02:6d:6c:00:00:07",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g := agent.GuestSpec{Interface: args[0], VM: vm, App: app, AllowUnlabeled: unlabeled, Audit: audit, MAC: mac}
			var err error
			if g.Range, err = label.ParseBounds(rng); err != nil {
				return fmt.Errorf("--range: %w", err)
			}
			for _, p := range []struct {
				s   string
				dst *netip.Addr
			}{{addr4, &g.Addr4}, {addr6, &g.Addr6}, {hostAddr4, &g.HostAddr4}, {hostAddr6, &g.HostAddr6}} {
				if p.s != "" {
					if *p.dst, err = netip.ParseAddr(p.s); err != nil {
						return err
					}
				}
			}
			return newAgentClient(addr, 10*time.Second).do(cmd.Context(), "PUT", "/v1/guests/"+args[0], g, nil)
		},
	}
	set.Flags().Uint32Var(&vm, "vm", 0, "the guest's VM id (domid)")
	set.Flags().Uint32Var(&app, "app", 0, "the application id")
	set.Flags().StringVar(&rng, "range", "", "secrecy/integrity range, e.g. s0-s15/i5-i10")
	set.Flags().StringVar(&addr4, "addr4", "", "the guest's IPv4 address")
	set.Flags().StringVar(&addr6, "addr6", "", "the guest's IPv6 address")
	set.Flags().StringVar(&hostAddr4, "host-addr4", "", "the host's IPv4 address on the guest's link: the only one ARP, DHCP, IKE and the API port may reach")
	set.Flags().StringVar(&hostAddr6, "host-addr6", "", "the host-side interface's IPv6 link-local address (ND, MLD, DHCPv6)")
	set.Flags().StringVar(&mac, "mac", "", "the guest's Ethernet address: the source of every frame it may send")
	set.Flags().BoolVar(&unlabeled, "allow-unlabeled", false, "let plain traffic through at the default label")
	set.Flags().BoolVar(&audit, "audit", false, "count and report this guest's denials without dropping")
	rm := &cobra.Command{
		Use:  "rm INTERFACE",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return newAgentClient(addr, 10*time.Second).do(cmd.Context(), "DELETE", "/v1/guests/"+args[0], nil, nil)
		},
		Short: "forget the guest on an interface (detaches the programs)",
	}
	cmd.PersistentFlags().StringVar(&addr, "agent", "127.0.0.1:9471", "the agent's address (host:port or unix:/path)")
	cmd.AddCommand(set, rm)
	return cmd
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}
