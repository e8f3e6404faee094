package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/mapper"
)

func newLoaderCmd() *cobra.Command {
	var (
		stateDir, apps, agentAddr, socket, backendName, mapperPolicy string
		qemuKernel, qemuInitrd, qemuAccel, xenKernel, xenRamdisk     string
		apiPort                                                      uint16
		poolSize, maxLoads                                           int
		spiBase, spiSlots                                            uint32
		noHostXFRM, pauseIdle, hostSemodule                          bool
		limits                                                       = loader.DefaultLimits()
		rotation                                                     = loader.DefaultRotationConfig()
		noRotation                                                   bool
	)
	var socketGroup string
	cmd := &cobra.Command{
		Use:   "loader",
		Short: "run VMLoad: load requests from the host and the guests, the pool, the configuration phase",
		Long: `Run VMLoad (root). It serves POST /v1/load on --socket for the host ('mlsgate
load URL') and, for each guest, on TCP port --api-port of that guest's
host-side address, bound to its interface: never on the wildcard address.
A guest is identified by the listener its request arrives on (and must speak
from its own address), and authorized by the application's transition
rules. Guests' requests are limited (--load-rate, --load-burst,
--max-active-per-guest, --max-active-per-app, --max-fresh-per-guest,
--request-id-max, --replay-per-guest, --replay-total); refusals are counted
in mlsgate_loader_refusals_total{reason}. It keeps a pool of pre-loaded guests (--pool-size idle
guests), boots them with --backend (netns, qemu or xen), pushes each guest's
policy to its update daemon over mutual TLS (on the same port number) and
declares the guest, its servers and its SAs to the host agent (--agent).
An application whose file says pool: {ready: N} gets N guests configured
for it ahead of demand, each with its own keys; a load that finds one only
hands it out. They are replaced after a template, CA or application change
(mlsgate_pool_invalidated_total on /metrics).

The agent's api_port must equal --api-port: the fast path passes TCP on that
port between a guest and the host as control traffic, which is how a guest
without a policy yet is reached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lc, err := loaderConfig.load(cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			lc.logStart(log, cmd)
			if _, err := localapi.SocketPath(agentAddr, "--agent", "/run/mlsgate/agent.sock"); err != nil {
				return err
			}
			// The host's socket before anything starts: a bad path ends the
			// loader at once.
			ul, err := localapi.Listen(socket, socketGroup)
			if err != nil {
				return fmt.Errorf("--socket: %w", err)
			}
			defer ul.Close()
			var be loader.Backend
			exe, _ := os.Executable()
			switch backendName {
			case "netns":
				be = &backend.Netns{Binary: exe, StateDir: filepath.Join(stateDir, "guests")}
			case "qemu":
				if qemuKernel == "" || qemuInitrd == "" {
					return errors.New("--backend qemu needs --qemu-kernel and --qemu-initrd (a guest image whose init starts 'mlsgate updated'; see loader/backend.InitScript)")
				}
				be = &backend.QEMU{Kernel: qemuKernel, Initrd: qemuInitrd, Accel: qemuAccel, StateDir: filepath.Join(stateDir, "qemu")}
			case "xen":
				if xenKernel == "" || xenRamdisk == "" {
					return errors.New("--backend xen needs --xen-kernel and --xen-ramdisk")
				}
				be = &backend.Xen{Kernel: xenKernel, Ramdisk: xenRamdisk, ConfigDir: filepath.Join(stateDir, "xen")}
			default:
				return fmt.Errorf("--backend %q: want netns, qemu or xen", backendName)
			}
			var hx loader.XFRMWriter
			if !noHostXFRM {
				h, err := xfrm.NewHandle()
				if err != nil {
					return fmt.Errorf("XFRM netlink: %w", err)
				}
				defer h.Close()
				hx = h
			}
			rotation.OnResult = func(r loader.RotationResult) {
				lvl := slog.LevelInfo
				if r.Result != "ok" {
					lvl = slog.LevelWarn
				}
				log.Log(cmd.Context(), lvl, "sa rotation", "guest", r.Guest, "vm", r.VM, "result", r.Result, "trigger", r.Trigger,
					"took", r.Took, "old_spis", r.OldSPIs, "new_spis", r.NewSPIs, "error", r.Error)
			}
			v, err := startLoader(cmd.Context(), withRotation(loaderSetup{
				StateDir: stateDir, AppsDir: apps, APIPort: apiPort, PoolSize: poolSize, MaxLoads: maxLoads,
				Backend: be, Agent: loader.NewAgentClient(agentAddr), HostXFRM: hx, SPIBase: spiBase, SPISlots: spiSlots,
				PauseIdle: pauseIdle, Limits: limits, HostSemodule: hostSemodule,
			}, rotation, noRotation))
			if err != nil {
				return err
			}
			defer v.close()
			if mapperPolicy != "" {
				m, err := mapper.New(mapper.Config{})
				if err != nil {
					return err
				}
				if err := m.Load(mapperPolicy); err != nil {
					return err
				}
				v.api.Mapper = m.Handler()
			}
			srv := v.api.Server()
			// The host's socket: its own server, served only to root and
			// the socket group (SO_PEERCRED), never on TCP.
			usrv := v.api.Server()
			ul.OnRefuse = func(p localapi.Peer, r *http.Request, err error) {
				log.Warn("api refused", "uid", p.UID, "gid", p.GID, "pid", p.PID, "method", r.Method, "path", r.URL.Path, "error", err)
			}
			usrv.Handler = logHostLoads(log, usrv.Handler)
			ul.Protect(usrv)
			go usrv.Serve(ul)
			defer usrv.Close()
			// Guests: one listener each, on its host-side address, bound to
			// its interface; never the wildcard address.
			v.listeners.Serve(srv)
			defer srv.Close()
			for _, w := range v.warnings {
				log.Warn(w)
			}
			go v.pool.Run(cmd.Context())
			go v.loader.RunRotations(cmd.Context())
			if hx != nil && !noRotation {
				// Soft byte/packet limits reached on the host's SAs.
				ev, err := xfrm.Subscribe(cmd.Context(), netns.None())
				if err != nil {
					return fmt.Errorf("XFRM events (SA soft limits): %w", err)
				}
				go v.loader.WatchExpires(cmd.Context(), ev)
			}
			log.Info("VMLoad ready", "socket", socket, "socket_group", ul.Group(), "api_port", apiPort, "backend", be.Name(), "pool_size", poolSize)
			if err := localapi.Notify("READY=1"); err != nil {
				log.Error("readiness", "error", err)
			}
			<-cmd.Context().Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", "/var/lib/mlsgate/loader", "the loader's state: policy store, CA, pool")
	f.StringVar(&apps, "apps", defaultAppsDir, "directory of application files")
	f.StringVar(&agentAddr, "agent", "unix:/run/mlsgate/agent.sock", "the host agent's Unix socket (unix:/path)")
	f.StringVar(&socket, "socket", defaultLoaderSocket, "Unix socket for the host's load requests (root and --socket-group only)")
	f.StringVar(&socketGroup, "socket-group", "mlsgate", "group allowed on --socket besides root (a missing group: root only)")
	f.Uint16Var(&apiPort, "api-port", 7443, "TCP port for guests' requests and their update daemons (= the agent's api_port)")
	f.StringVar(&backendName, "backend", "netns", "netns, qemu or xen")
	f.IntVar(&poolSize, "pool-size", 1, "idle guests to keep pre-loaded")
	f.IntVar(&maxLoads, "max-loads", 8, "loads a guest takes at once (in progress) before it is full; it serves its application's loads one after the other without end")
	f.Uint32Var(&spiBase, "spi-base", 0xc0000000, "the host's SPI range (= the agent's spi_base)")
	f.Uint32Var(&spiSlots, "spi-slots", 65536, "size of the host's SPI range (= the agent's spi_slots)")
	f.BoolVar(&noHostXFRM, "no-host-xfrm", false, "do not install the host's end of the tunnels (a host without ESP)")
	f.BoolVar(&pauseIdle, "pause-idle", false, "keep pre-loaded guests paused until handed out (xen)")
	f.BoolVar(&hostSemodule, "semodule", false, "install the host's SELinux modules with semodule: only where the host's running policy was loaded from its semodule store (else they are compiled, not installed)")
	f.StringVar(&mapperPolicy, "mapper-policy", "", "the host's label-mapper policy, served to guests on the API port")
	f.Float64Var(&limits.Rate, "load-rate", limits.Rate, "loads per second each guest may ask for, after its burst")
	f.IntVar(&limits.Burst, "load-burst", limits.Burst, "loads a guest may ask for at once (its token bucket)")
	f.IntVar(&limits.ActivePerGuest, "max-active-per-guest", limits.ActivePerGuest, "loads one guest may have in progress")
	f.IntVar(&limits.ActivePerApp, "max-active-per-app", limits.ActivePerApp, "guest-requested loads of one application in progress")
	f.IntVar(&limits.FreshPerGuest, "max-fresh-per-guest", limits.FreshPerGuest, "guests one guest may have had booted or taken from the idle pool for it that still run")
	f.IntVar(&limits.IDMaxLen, "request-id-max", limits.IDMaxLen, "longest request id a guest may send (guests must send one)")
	f.IntVar(&limits.ReplayPerCaller, "replay-per-guest", limits.ReplayPerCaller, "request ids remembered per guest (10 min); beyond it the guest is refused")
	f.IntVar(&limits.ReplayTotal, "replay-total", limits.ReplayTotal, "request ids remembered for all guests")
	f.DurationVar(&rotation.Lifetime, "sa-lifetime", rotation.Lifetime, "rotate each guest's SAs after this long (0: only by hand, 'mlsgate sa rotate')")
	f.DurationVar(&rotation.Jitter, "sa-jitter", rotation.Jitter, "rotate up to this much before --sa-lifetime, drawn per guest")
	f.DurationVar(&rotation.Grace, "sa-grace", rotation.Grace, "keep old inbound SAs this long after the outbound switch")
	f.Uint64Var(&rotation.SoftPackets, "sa-soft-packets", rotation.SoftPackets, "rotate a guest when one of its SAs carried this many packets (kernel soft limit; at most 2^31, the sequence-number headroom)")
	f.Uint64Var(&rotation.MinSeqHeadroom, "sa-min-seq-headroom", rotation.MinSeqHeadroom, "rotate a guest when one of its host SAs has fewer sequence numbers left than this, read back every check (SAs without ESN: 2^32-1 less the highest used; 0: off)")
	f.Uint64Var(&rotation.SoftBytes, "sa-soft-bytes", rotation.SoftBytes, "rotate a guest when one of its SAs carried this many bytes (kernel soft limit; 0: none)")
	f.BoolVar(&noRotation, "no-sa-rotation", false, "never rotate SAs (keys live as long as the guest)")
	f.StringVar(&qemuKernel, "qemu-kernel", "", "guest kernel for --backend qemu")
	f.StringVar(&qemuInitrd, "qemu-initrd", "", "guest initramfs for --backend qemu")
	f.StringVar(&qemuAccel, "qemu-accel", "", "kvm, tcg or empty (auto)")
	f.StringVar(&xenKernel, "xen-kernel", "", "guest kernel for --backend xen")
	f.StringVar(&xenRamdisk, "xen-ramdisk", "", "guest ramdisk for --backend xen")
	loaderConfig.register(cmd)
	return cmd
}

// logHostLoads logs who asked for each load on the host's socket.
func logHostLoads(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/load" {
			h.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		p, _ := localapi.PeerFrom(r.Context())
		log.Warn("host load", "uid", p.UID, "gid", p.GID, "pid", p.PID, "status", rec.code)
	})
}
