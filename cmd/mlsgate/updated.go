package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
	"github.com/spf13/cobra"
)

// updatedOptions are the flags of 'mlsgate updated'.
type updatedOptions struct {
	listen, mapperListen   string
	cert, key, ca, crl     string
	loaderName, stateDir   string
	guest                  string
	guestAddrs             []string
	applyTimeout, shutdown time.Duration
	semodule               bool
}

func newUpdatedCmd() *cobra.Command {
	var o updatedOptions
	cmd := &cobra.Command{
		Use:   "updated",
		Short: "run the in-guest update daemon: policy bundles from the loader only",
		Long: `Run the update daemon inside a guest (the paper's update-d). It accepts policy
bundles from the host's loader only: HTTPS with TLS 1.3, presenting the guest's
certificate (--cert, --key, a Guest certificate of the policy store's CA) and
requiring a client certificate that chains to --ca, carries clientAuth, is named
--loader-name and is not on the --crl list. Any other client fails the handshake.

  POST /v1/bundle   the guest part of a bundle (JSON) → what was applied
  GET  /v1/status   the version applied, when, and what it changed

A bundle is checked whole, then applied: its SELinux modules (loaded with
semodule where SELinux is active, else only compiled), its label-mapper policy
(into the mapper this command serves on --mapper-listen) and its XFRM SAs and
policies (in this process's network namespace, replacing the previous
bundle's). The version and digest are recorded in --state-dir before the
answer; an older version, or the same version with other content, is refused.
A failure rolls back the earlier steps where it can and says what it could not.

The guest's name and addresses, which a bundle must name, come from the
certificate (common name up to its first dot, IP addresses) unless --guest and
--guest-addr say otherwise. Logs go to stderr (--log-format, --log-level);
SIGTERM stops the daemon.`,
		Example: "  mlsgate updated --cert /etc/mlsgate/guest.pem --key /etc/mlsgate/guest-key.pem --ca /etc/mlsgate/ca.pem --crl /etc/mlsgate/crl.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lc, err := updatedConfig.load(cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			lc.logStart(log, cmd)
			return runUpdated(cmd.Context(), o, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", fmt.Sprintf("0.0.0.0:%d", updatedaemon.DefaultPort), "address:port to serve the loader on (the host's fast path must allow this port: agent api_port)")
	f.StringVar(&o.cert, "cert", "", "the guest's certificate (PEM, a Guest certificate of the policy store's CA)")
	f.StringVar(&o.key, "key", "", "its private key (PEM)")
	f.StringVar(&o.ca, "ca", "", "the policy store's CA certificate (ca.pem)")
	f.StringVar(&o.crl, "crl", "", "the CA's revocation list (PEM); read again whenever the file changes")
	f.StringVar(&o.loaderName, "loader-name", updatedaemon.DefaultLoaderName, "common name the loader's client certificate must carry")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/mlsgate/updated", "where the applied version and bundle are recorded")
	f.BoolVar(&o.semodule, "semodule", false, "install bundles' SELinux modules with semodule: only where the running policy was loaded from this guest's semodule store (the init does so with loader/backend.InitOptions.SELinux); else they are compiled, not installed")
	f.StringVar(&o.mapperListen, "mapper-listen", defaultMapperAddr, "address:port of the guest's label mapper; \"\" for none")
	f.StringVar(&o.guest, "guest", "", "the guest's name (default: from the certificate)")
	f.StringSliceVar(&o.guestAddrs, "guest-addr", nil, "the guest's addresses (default: the certificate's IP addresses)")
	f.DurationVar(&o.applyTimeout, "apply-timeout", updatedaemon.DefaultApplyTimeout, "longest time one bundle may take to apply")
	f.DurationVar(&o.shutdown, "shutdown-timeout", 10*time.Second, "how long a push in progress may finish at SIGTERM")
	updatedConfig.register(cmd)
	return cmd
}

func runUpdated(ctx context.Context, o updatedOptions, log *slog.Logger) error {
	if o.cert == "" || o.key == "" || o.ca == "" {
		return errors.New("give --cert and --key (the guest's certificate and key) and --ca (the policy store's ca.pem)")
	}
	cert, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return fmt.Errorf("--cert %s, --key %s: %w", o.cert, o.key, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("--cert %s: %w", o.cert, err)
		}
	}
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	v, err := updatedaemon.NewVerifier(updatedaemon.VerifierConfig{CAPEM: caPEM, CRLFile: o.crl, LoaderName: o.loaderName})
	if err != nil {
		return fmt.Errorf("--ca %s / --crl %s: %w", o.ca, o.crl, err)
	}
	tc, err := updatedaemon.ServerTLS(cert, v)
	if err != nil {
		return fmt.Errorf("--cert %s: %w", o.cert, err)
	}
	id, err := updatedIdentity(o, cert.Leaf)
	if err != nil {
		return err
	}

	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	m, err := mapper.New(mapper.Config{ID: id.Name, ErrorLog: errLog})
	if err != nil {
		return err
	}
	ap := &updatedaemon.SystemApplier{Mapper: m, WorkDir: filepath.Join(o.stateDir, "work"), SELinux: selinux.SELinux{Semodule: o.semodule}}
	if h, err := xfrm.NewHandle(); err != nil {
		log.Warn("no XFRM handle: bundles with SAs or policies will be refused", "error", err)
	} else {
		defer h.Close()
		ap.XFRM = h
	}
	d, err := updatedaemon.New(updatedaemon.Config{
		TLS: tc, Identity: id, StateDir: o.stateDir, Applier: ap, InstallCRL: v.InstallCRL,
		ApplyTimeout: o.applyTimeout, ErrorLog: errLog,
		OnPush: func(remote string, rep *updatedaemon.Report, err error) { logPush(log, remote, rep, err) },
	})
	if err != nil {
		return err
	}
	if rep, err := d.Restore(ctx); err != nil {
		log.Error("the recorded bundle could not be restored; the loader's next push replaces it", "error", err)
	} else if rep != nil {
		log.Info("recorded bundle restored", "application", rep.Application, "version", rep.Version,
			"mapper_rules", rep.Mapper.Rules, "xfrm_changes", rep.XFRM.Changes())
	}

	// Ready the kernel's cipher before the first push (off its path).
	if took, err := ap.Warm(); err != nil {
		log.Warn("cipher warm-up", "error", err, "took", took)
	} else {
		log.Info("cipher warm-up", "took", took)
	}
	// And the push's own code paths (decode, checks, mapper policy
	// parse, state encoding): their first run is slow under emulation.
	if took, err := updatedaemon.WarmPush(); err != nil {
		log.Warn("push warm-up", "error", err, "took", took)
	} else {
		log.Info("push warm-up", "took", took)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- d.Serve(ln) }()
	mapperAddr := ""
	if o.mapperListen != "" {
		mln, err := net.Listen("tcp", o.mapperListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--mapper-listen: %w", err)
		}
		mapperAddr = mln.Addr().String()
		go func() { errc <- m.Serve(mln) }()
	}
	if o.crl == "" {
		log.Warn("no --crl: a revoked loader certificate is accepted, and CRLs pushed with bundles are refused; the loader's backends always pass --crl")
	}
	log.Info("update daemon listening", "addr", ln.Addr().String(), "mapper_addr", mapperAddr,
		"guest", id.String(), "loader_name", v.LoaderName(), "crl", o.crl, "state_dir", o.stateDir)

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("a server stopped", "error", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
	defer cancel()
	if serr := d.Shutdown(sctx); serr != nil {
		log.Warn("update daemon shutdown", "error", serr)
	}
	if serr := m.Shutdown(sctx); serr != nil {
		log.Warn("mapper shutdown", "error", serr)
	}
	log.Info("update daemon stopped")
	return err
}

// updatedIdentity is the guest the daemon takes bundles for: from the
// certificate, with --guest and --guest-addr taking precedence.
func updatedIdentity(o updatedOptions, leaf *x509.Certificate) (updatedaemon.Identity, error) {
	var id updatedaemon.Identity
	if o.guest == "" || len(o.guestAddrs) == 0 {
		var err error
		if id, err = updatedaemon.IdentityFromCert(leaf); err != nil {
			return id, err
		}
	}
	if o.guest != "" {
		id.Name = o.guest
	}
	if len(o.guestAddrs) > 0 {
		id.Addrs = nil
		for _, s := range o.guestAddrs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return id, fmt.Errorf("--guest-addr %q: %w", s, err)
			}
			id.Addrs = append(id.Addrs, a.Unmap())
		}
	}
	return id, nil
}

// logPush logs one push with what it did.
func logPush(log *slog.Logger, remote string, rep *updatedaemon.Report, err error) {
	if err != nil {
		attrs := []any{"remote", remote, "error", err}
		if rep != nil {
			attrs = append(attrs, "application", rep.Application, "version", rep.Version,
				"rolled_back", rep.RolledBack, "not_rolled_back", rep.NotRolledBack)
		}
		log.Warn("bundle refused or failed", attrs...)
		return
	}
	if rep.AlreadyApplied {
		log.Info("bundle already applied", "remote", remote, "application", rep.Application, "version", rep.Version)
		return
	}
	log.Info("bundle applied", "remote", remote, "application", rep.Application, "version", rep.Version,
		"digest", rep.Digest, "took", rep.Took.String(),
		"modules", rep.Modules.Modules, "modules_loaded", rep.Modules.Loaded, "modules_note", rep.Modules.Note,
		"mapper_rules", rep.Mapper.Rules,
		"sas_added", len(rep.XFRM.StatesAdded), "sas_updated", len(rep.XFRM.StatesUpdated), "sas_removed", len(rep.XFRM.StatesRemoved),
		"policies_added", len(rep.XFRM.PoliciesAdded), "policies_updated", len(rep.XFRM.PoliciesUpdated), "policies_removed", len(rep.XFRM.PoliciesRemoved))
}
