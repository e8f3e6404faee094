package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/api"
	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/mlsgate/mlsgate/label"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run the host agent: fast path on the guests' vifs, maps in sync",
		Long: `Run the privileged host agent (root). It loads the fast path, pins its maps and
links under --pin-dir, attaches the programs to every interface matching
--interfaces as it appears (a declared guest's gets its policy, any other is
denied everything unless --undeclared pass), keeps the maps equal to the
declared guests, peers and SAs,
and serves /metrics, /healthz and /readyz on --listen (TCP) and its API
(status, guests, peers, SAs, events) on --socket, to root and members of
--socket-group only. Both are bound before anything else: a bad address ends
the agent at once. Under systemd (Type=notify) it reports READY=1 after the
first full reconcile.

Killing the agent leaves the pinned programs enforcing the last state; a new
agent adopts the pins and swaps its programs in atomically. 'mlsgate agent
cleanup' removes the pins (and so the enforcement).

Keys without a flag: integrity (SELinux type: integrity level, for SA
contexts) and default_integrity (i0), in the file or as
MLSGATE_AGENT_DEFAULT_INTEGRITY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, lc, err := loadAgentConfig(cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			lc.logStart(log, cmd)
			// Listeners first: a bad address ends the agent before it
			// touches the pins, not after it runs "ready" without an API.
			lns, err := bindListeners(cfg.Listen, "listen (config key listen, flag --listen)", cfg.Socket, "socket (config key socket, flag --socket)", cfg.SocketGroup)
			if err != nil {
				return err
			}
			defer lns.close()
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
				err := lns.serve(ctx, daemon{log: log, public: a.PublicHandler(), admin: a.AdminHandler(), ready: a.ReadyC(), onRefuse: a.APIRefused})
				if err != nil {
					cancel() // a listener that fails ends the agent
				}
				errc <- err
			}()
			err = a.Run(ctx)
			cancel()
			if serr := <-errc; err == nil {
				err = serr
			}
			log.Info("agent stopped; the pinned fast path keeps enforcing", "pin_dir", cfg.PinDir)
			return err
		},
	}
	d := agent.DefaultConfig()
	f := cmd.Flags()
	agentConfig.register(cmd)
	f.String("state-dir", d.StateDir, "where the desired state is kept")
	f.String("pin-dir", d.PinDir, "bpffs directory for the pinned maps and links")
	f.String("listen", d.Listen, "TCP address for /metrics, /healthz and /readyz only; \"\" for none")
	f.String("socket", d.Socket, "Unix socket for the API (root and --socket-group only); \"\" for none")
	f.String("socket-group", d.SocketGroup, "group allowed on --socket besides root (a missing group: root only)")
	f.String("undeclared", d.Undeclared, "what an interface matching --interfaces without a declared guest gets: deny (reason deny_undeclared) or pass (unfiltered, for a migration)")
	f.StringSlice("interfaces", d.Interfaces, "interface name patterns the agent may manage")
	f.Bool("enforce", d.Enforce, "drop denied packets (false: count and report only)")
	f.Uint32("spi-base", d.SPIBase, "first SPI of the host's range")
	f.Uint32("spi-slots", d.SPISlots, "SPIs in the host's range (dense array)")
	f.Uint16("api-port", d.APIPort, "TCP port on the host guests may reach (the loader's API); 0 none")
	f.Uint32("event-sample", d.EventSample, "send 1 in N denials to the event ring (0: none)")
	f.Float64("event-rate", d.EventRate, "denial log lines per second at most")
	f.Duration("resync-interval", d.ResyncInterval, "full resync of the kernel's SAs this often (0: never)")
	f.Duration("drift-interval", d.DriftInterval, "read links and vifs back and repair drift this often (0: never)")
	cmd.AddCommand(newAgentCleanupCmd())
	return cmd
}

// loadAgentConfig merges the defaults, the file, MLSGATE_AGENT_* and the
// flags into the agent's Config.
func loadAgentConfig(cmd *cobra.Command) (agent.Config, *loadedConfig, error) {
	var cfg agent.Config
	lc, err := agentConfig.load(cmd)
	if err != nil {
		return cfg, nil, err
	}
	// The logging settings are the command's, not the agent package's.
	if err := lc.decodeExact(&cfg, configKey(flagLogLevel), configKey(flagLogFormat)); err != nil {
		return cfg, nil, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, nil, fmt.Errorf("configuration (%s): %w", lc.source, err)
	}
	return cfg, lc, nil
}

// agentConfigOf is the agent's configuration as the agent would read it
// (the file named by cmd's --config, MLSGATE_AGENT_*, no flags), for a
// command that acts on the agent's state without being the agent: pin_dir
// is then set in one place.
func agentConfigOf(cmd *cobra.Command) (agent.Config, error) {
	ac, _, err := newRoot().Find([]string{"agent"})
	if err != nil {
		return agent.Config{}, err
	}
	if fl := cmd.Flags().Lookup(flagConfig); fl != nil && fl.Changed {
		if err := ac.ParseFlags([]string{"--" + flagConfig, fl.Value.String()}); err != nil {
			return agent.Config{}, err
		}
	}
	cfg, _, err := loadAgentConfig(ac)
	return cfg, err
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

const defaultAgentSocket = "unix:/run/mlsgate/agent.sock"

// newAgentClient reaches the agent's socket (unix:/path); a TCP address is
// refused: the agent serves no API on TCP.
func newAgentClient(addr string, timeout time.Duration) (*api.Client, error) {
	path, err := localapi.SocketPath(addr, "--agent", strings.TrimPrefix(defaultAgentSocket, "unix:"))
	if err != nil {
		return nil, err
	}
	c := api.New("unix:"+path, timeout)
	c.Hint = "is 'mlsgate agent' running? see --agent"
	return c, nil
}

func newEventsCmd() *cobra.Command {
	var addr, output, reason, iface string
	var vm uint32
	cmd := &cobra.Command{
		Use:   "events",
		Short: "follow the agent's denial events until interrupted",
		Long: `Follow the denials the fast path samples, from the agent's Unix socket, until
interrupted: time, interface, VM, direction, reason, protocol, addresses and
ports, and the SA's label in text form. --reason, --interface and --vm keep
only the matching events.`,
		Example: "  mlsgate events --reason deny_spoofed\n  mlsgate events --interface vif7.0 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "compact" && output != "json" {
				return fmt.Errorf("--output %q: want compact or json", output)
			}
			c, err := newAgentClient(addr, 0)
			if err != nil {
				return err
			}
			q := url.Values{}
			if reason != "" {
				q.Set("reason", reason)
			}
			if iface != "" {
				q.Set("interface", iface)
			}
			if vm != 0 {
				q.Set("vm", strconv.FormatUint(uint64(vm), 10))
			}
			path := "/v1/events"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			events, err := c.Stream(cmd.Context(), path)
			if err != nil {
				return err
			}
			defer events.Close()
			f := agent.EventFilter{Reason: reason, Interface: iface, VM: vm}
			err = followEvents(events, cmd.OutOrStdout(), output, f)
			if cmd.Context().Err() != nil {
				return nil // interrupted
			}
			if err == nil {
				err = errors.New("the agent ended the event stream (did it stop?)")
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "agent", defaultAgentSocket, "the agent's Unix socket (unix:/path); TCP serves no API")
	f.StringVarP(&output, "output", "o", "compact", "compact (one line per event) or json (JSON lines)")
	f.StringVar(&reason, "reason", "", "only this reason (e.g. deny_spoofed)")
	f.StringVar(&iface, "interface", "", "only this interface (e.g. vif7.0)")
	f.Uint32Var(&vm, "vm", 0, "only this VM id")
	return cmd
}

// followEvents copies events from the stream, filtered (again: an older
// agent ignores the query), as compact lines or JSON lines.
func followEvents(in io.Reader, w io.Writer, output string, f agent.EventFilter) error {
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(w)
	for {
		var e agent.Event
		if err := dec.Decode(&e); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("event stream: %w", err)
		}
		if !f.Match(e) {
			continue
		}
		if output == "json" {
			if err := enc.Encode(e); err != nil {
				return err
			}
			continue
		}
		if _, err := fmt.Fprintln(w, compactEvent(e)); err != nil {
			return err
		}
	}
}

// compactEvent is one line: when, where, why, what.
func compactEvent(e agent.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s vm%d %s %s %s", e.Time.Format("15:04:05.000"), orDash(e.Interface), e.VM, e.Direction, e.Reason, orDash(e.Protocol))
	addr := func(a netip.Addr, port uint16) string {
		if port == 0 {
			return a.String()
		}
		return netip.AddrPortFrom(a, port).String()
	}
	fmt.Fprintf(&b, " %s -> %s", addr(e.Src, e.Sport), addr(e.Dst, e.Dport))
	if e.ICMPType != 0 {
		fmt.Fprintf(&b, " type %d", e.ICMPType)
	}
	if e.SPI != 0 {
		fmt.Fprintf(&b, " spi %#x", e.SPI)
	}
	if e.Label != "" {
		fmt.Fprintf(&b, " label %s", e.Label)
	}
	return b.String()
}

func newGuestCmd() *cobra.Command {
	var addr, rng, addr4, addr6, hostAddr4, hostAddr6, mac string
	var vm, app uint32
	var unlabeled, audit bool
	var wait attachWait
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
			c, err := newAgentClient(addr, 10*time.Second)
			if err != nil {
				return err
			}
			if _, err := c.Do(cmd.Context(), "PUT", "/v1/guests/"+args[0], g, nil); err != nil {
				return err
			}
			return wait.run(cmd.Context(), c.Status, args[0])
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
	wait.flags(set.Flags())
	rm := &cobra.Command{
		Use:  "rm INTERFACE",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAgentClient(addr, 10*time.Second)
			if err != nil {
				return err
			}
			_, err = c.Do(cmd.Context(), "DELETE", "/v1/guests/"+args[0], nil, nil)
			return err
		},
		Short: "forget the guest on an interface (detaches the programs)",
	}
	cmd.PersistentFlags().StringVar(&addr, "agent", defaultAgentSocket, "the agent's Unix socket (unix:/path); TCP serves no API")
	cmd.AddCommand(set, rm)
	return cmd
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}
