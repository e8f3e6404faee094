package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// listeners are a daemon's TCP address (metrics and health only) and its
// Unix socket (the admin API, checked with SO_PEERCRED), bound before the
// daemon does anything else so that a bad address ends it at once.
type listeners struct {
	tcp  net.Listener
	unix *localapi.Listener
}

// bindListeners binds listen (TCP, "" none) and socket (Unix, "" none);
// listenKey and socketKey name where each came from, for the error.
func bindListeners(listen, listenKey, socket, socketKey, group string) (*listeners, error) {
	l := &listeners{}
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			hint := `want host:port, e.g. 127.0.0.1:9471, or "" for none`
			if errors.Is(err, syscall.EADDRINUSE) {
				hint = `another process holds it: stop it, or choose another address, or "" for none`
			}
			return nil, fmt.Errorf("%s %q: %w (%s)", listenKey, listen, err, hint)
		}
		l.tcp = ln
	}
	if socket != "" {
		ln, err := localapi.Listen(socket, group)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("%s %q: %w", socketKey, socket, err)
		}
		l.unix = ln
	}
	return l, nil
}

func (l *listeners) close() {
	if l.tcp != nil {
		l.tcp.Close()
	}
	if l.unix != nil {
		l.unix.Close()
	}
}

// daemon is what a server subcommand serves on its listeners.
type daemon struct {
	log *slog.Logger
	// public is served on TCP: metrics and health, nothing that changes or
	// reveals policy.
	public http.Handler
	// admin is served on the Unix socket to root and the socket group.
	admin http.Handler
	// reload runs on SIGHUP.
	reload func()
	// ready, when set, delays READY=1 to the service manager until it is
	// closed.
	ready <-chan struct{}
	// onRefuse is told about refused callers.
	onRefuse func(localapi.Peer, *http.Request, error)
}

// newServer serves h; its requests end with ctx (so that an event stream
// does not hold up a shutdown).
func newServer(ctx context.Context, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second, // /v1/events lifts it for itself
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serve runs d on l until ctx ends or a listener fails; it tells the
// service manager READY=1 once it serves (and d.ready, if set, is closed).
func (l *listeners) serve(ctx context.Context, d daemon) error {
	type served struct {
		addr string
		err  error
	}
	var srvs []*http.Server
	errc := make(chan served, 2)
	if l.tcp != nil {
		srv := newServer(ctx, d.public, d.log)
		srvs = append(srvs, srv)
		go func() { errc <- served{l.tcp.Addr().String(), srv.Serve(l.tcp)} }()
		d.log.Info("serving metrics and health", "address", l.tcp.Addr().String())
	}
	if l.unix != nil {
		srv := newServer(ctx, d.admin, d.log)
		l.unix.OnRefuse = d.onRefuse
		l.unix.Protect(srv)
		srvs = append(srvs, srv)
		go func() { errc <- served{l.unix.Path(), srv.Serve(l.unix)} }()
		group := l.unix.Group()
		if group == "" {
			group = "(none: root only)"
		}
		d.log.Info("serving the admin API", "socket", l.unix.Path(), "group", group)
	}
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range srvs {
			s.Shutdown(sctx)
		}
		l.close()
	}
	readyC := d.ready
	if readyC == nil {
		c := make(chan struct{})
		close(c)
		readyC = c
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-readyC:
			readyC = nil
			if err := localapi.Notify("READY=1"); err != nil {
				d.log.Error("readiness", "error", err)
			}
		case <-hup:
			if d.reload != nil {
				d.reload()
			}
		case s := <-errc:
			shutdown()
			if errors.Is(s.err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("serve on %s: %w", s.addr, s.err)
		case <-ctx.Done():
			localapi.Notify("STOPPING=1")
			shutdown()
			return nil
		}
	}
}

// changeCounter counts a daemon's admin changes, as the agent does:
// mlsgate_api_changes_total{change,result}.
func newChangeCounter(reg *prometheus.Registry, changes ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mlsgate", Name: "api_changes_total",
		Help: "Changes made through the admin API or SIGHUP, by kind and result (applied, refused).",
	}, []string{"change", "result"})
	for _, ch := range changes {
		c.WithLabelValues(ch, "applied")
		c.WithLabelValues(ch, "refused")
	}
	reg.MustRegister(c)
	return c
}

func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// logChange logs an admin change with the caller the socket saw (r nil:
// not through the API; via says how: "start", "SIGHUP").
func logChange(log *slog.Logger, r *http.Request, via, change, result string, args ...any) {
	args = append([]any{"change", change, "result", result, "via", via}, args...)
	if r != nil {
		if p, ok := localapi.PeerFrom(r.Context()); ok {
			args = append(args, "uid", p.UID, "gid", p.GID, "pid", p.PID)
		}
	}
	log.Warn("policy change", args...)
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func refusedLogger(log *slog.Logger, refused prometheus.Counter) func(localapi.Peer, *http.Request, error) {
	return func(p localapi.Peer, r *http.Request, err error) {
		refused.Inc()
		log.Warn("api refused", "uid", p.UID, "gid", p.GID, "pid", p.PID, "method", r.Method, "path", r.URL.Path, "error", err)
	}
}

func newRefusedCounter(reg *prometheus.Registry) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mlsgate", Name: "api_refused_total",
		Help: "Admin API requests refused because the caller is neither root nor in the socket group."})
	reg.MustRegister(c)
	return c
}
