package updatedaemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/internal/httpjson"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// MaxBundleBytes bounds the body of POST /v1/bundle. Generated bundles are
// far smaller; the bound keeps a broken loader from filling the guest's
// memory.
const MaxBundleBytes = 8 << 20

// DefaultPort is the daemon's TCP port unless configured otherwise. The
// host's fast path lets the host reach it in clear on the port it is
// configured with (agent api_port), so both must agree.
const DefaultPort = 9472

// DefaultApplyTimeout bounds one push's application unless
// Config.ApplyTimeout says otherwise. Loading SELinux modules with
// semodule takes seconds to tens of seconds.
const DefaultApplyTimeout = 5 * time.Minute

// Identity is who the daemon is: the guest name and the addresses a bundle
// must name to be applied here.
type Identity struct {
	Name  string
	Addrs []netip.Addr
}

func (id Identity) String() string {
	addrs := make([]string, len(id.Addrs))
	for i, a := range id.Addrs {
		addrs[i] = a.String()
	}
	return id.Name + " at " + strings.Join(addrs, ", ")
}

// IdentityFromCert derives the identity from the daemon's own certificate:
// the name is the common name up to its first dot (the policy store names a
// guest's certificate "<guest>.<application>", and a pool guest's boot
// certificate may carry the bare guest name), the addresses are the
// certificate's IP addresses.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	name, _, _ := strings.Cut(c.Subject.CommonName, ".")
	if name == "" {
		return Identity{}, fmt.Errorf("certificate %q gives no guest name (its common name is empty); give the guest's name (--guest)", c.Subject.CommonName)
	}
	id := Identity{Name: name}
	for _, ip := range c.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			id.Addrs = append(id.Addrs, a.Unmap())
		}
	}
	if len(id.Addrs) == 0 {
		return Identity{}, fmt.Errorf("certificate %q names no IP address, so the daemon cannot tell which bundles are its own; issue it with the guest's address, or give it (--guest-addr)", c.Subject.CommonName)
	}
	return id, nil
}

// Config configures a Daemon.
type Config struct {
	// TLS is the server configuration, made by ServerTLS.
	TLS *tls.Config
	// Identity is the guest this daemon accepts bundles for.
	Identity Identity
	// StateDir holds StateFile; created 0700 if missing.
	StateDir string
	// Applier changes the guest.
	Applier Applier
	// ApplyTimeout bounds applying one bundle (default
	// DefaultApplyTimeout). Applying does not stop when the loader hangs
	// up: the loader asks for the status or pushes again.
	ApplyTimeout time.Duration
	// Now is the clock of reports; nil means time.Now.
	Now func() time.Time
	// ErrorLog receives the HTTP server's own errors, among them every
	// refused TLS handshake with its reason; nil discards them.
	ErrorLog *log.Logger
	// InstallCRL, if set, receives the CRL a pushed bundle carries
	// (Verifier.InstallCRL), before the bundle is applied; a CRL it refuses
	// refuses the bundle.
	InstallCRL func(pem []byte) error
	// OnPush, if set, is called after every push that reached the handler,
	// with the peer's address and the outcome; rep is nil for a push refused
	// before applying began.
	OnPush func(remote string, rep *Report, err error)
}

// Daemon is the update daemon. Pushes are applied one at a time; the
// status answers while one is being applied.
type Daemon struct {
	cfg Config

	applyMu sync.Mutex // serialises Apply and Restore
	stateMu sync.Mutex // guards state; never held while applying
	state   *persisted

	srvOnce sync.Once
	srv     *http.Server
}

// New checks the configuration and reads the state directory. It changes
// nothing in the guest: call Restore to put the recorded bundle's mapper
// policy and XFRM set back after a restart.
func New(cfg Config) (*Daemon, error) {
	switch {
	case cfg.TLS == nil:
		return nil, errors.New("updated: no TLS configuration; make one with ServerTLS")
	case cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert || cfg.TLS.ClientCAs == nil:
		return nil, errors.New("updated: the TLS configuration does not require a client certificate from the CA; make it with ServerTLS")
	case cfg.TLS.MinVersion < tls.VersionTLS13:
		return nil, errors.New("updated: the TLS configuration allows versions below TLS 1.3; make it with ServerTLS")
	case !cfg.TLS.SessionTicketsDisabled && cfg.TLS.UnwrapSession == nil:
		return nil, errors.New("updated: the TLS configuration resumes sessions without binding them to the daemon's certificate; make it with ServerTLS")
	case cfg.Applier == nil:
		return nil, errors.New("updated: no Applier")
	case cfg.Identity.Name == "" || len(cfg.Identity.Addrs) == 0:
		return nil, errors.New("updated: the identity needs a guest name and at least one address (see IdentityFromCert)")
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = DefaultApplyTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := prepareStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if st != nil && st.Guest != cfg.Identity.Name {
		return nil, fmt.Errorf("state directory %s records guest %q, this daemon is %q: give each guest its own state directory, or move %s away", cfg.StateDir, st.Guest, cfg.Identity.Name, StateFile)
	}
	return &Daemon{cfg: cfg, state: st}, nil
}

// Status returns the identity and what was applied last.
func (d *Daemon) Status() Status {
	s := Status{Guest: d.cfg.Identity.Name, Addrs: d.cfg.Identity.Addrs}
	if st := d.current(); st != nil {
		s.Applied = &Applied{Application: st.Application, Version: st.Version, Digest: st.Digest, AppliedAt: st.AppliedAt, Report: st.Report}
	}
	return s
}

// Restore puts the recorded bundle's label-mapper policy back into the
// mapper (a new process starts with an empty one) and its XFRM set into the
// kernel where entries are missing or differ (after a guest reboot). SELinux
// modules stay installed across restarts and are not touched. Without a
// recorded bundle it does nothing and returns nil, nil.
func (d *Daemon) Restore(ctx context.Context) (*Report, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	st := d.current()
	if st == nil {
		return nil, nil
	}
	rep := &Report{Guest: st.Guest, Application: st.Application, Version: st.Version, Digest: st.Digest, AppliedAt: st.AppliedAt}
	start := time.Now()
	m, err := d.cfg.Applier.LoadMapperPolicy(mapperName(st.Bundle), []byte(st.Bundle.MapperPolicy))
	if err != nil {
		return rep, fmt.Errorf("restore the label-mapper policy of %s v%d: %w", st.Application, st.Version, err)
	}
	rep.Mapper = m
	set := setOf(st.Bundle)
	x, err := d.cfg.Applier.SyncXFRM(ctx, set, set)
	rep.XFRM = x
	rep.Took = time.Since(start)
	if err != nil {
		return rep, fmt.Errorf("restore the XFRM set of %s v%d: %w", st.Application, st.Version, err)
	}
	return rep, nil
}

// Apply applies the guest part of a bundle: it checks the bundle, then
// installs its SELinux modules, loads its mapper policy, syncs its XFRM set
// and records it, rolling back on failure (see the package documentation).
// Refusals and failures are *Error values.
func (d *Daemon) Apply(ctx context.Context, b *policystore.Bundle) (*Report, error) {
	return d.applyTimed(ctx, b, nil)
}

// applyTimed is Apply with the parts already timed (receiving the body)
// to put first in the report.
func (d *Daemon) applyTimed(ctx context.Context, b *policystore.Bundle, parts []Part) (*Report, error) {
	t0 := d.cfg.Now()
	if b == nil {
		return nil, &Error{Code: CodeBadBundle, Reason: "no bundle"}
	}
	if err := checkHeader(b); err != nil {
		return nil, err
	}
	digest, err := Digest(b)
	if err != nil {
		return nil, &Error{Code: CodeBadBundle, Reason: err.Error(), Err: err}
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if err := d.checkIdentity(b); err != nil {
		return nil, err
	}
	if len(b.CRL) > 0 && d.cfg.InstallCRL != nil {
		if err := d.cfg.InstallCRL(b.CRL); err != nil {
			return nil, &Error{Code: CodeBadBundle, Reason: "the bundle's CRL: " + err.Error(), Err: err}
		}
	}
	prev := d.current()
	if prev != nil {
		if b.Application != prev.Application {
			return nil, &Error{Code: CodeOtherApplication, Reason: fmt.Sprintf("guest %s serves application %s (v%d); a guest keeps the application it was loaded for: load %s in another guest", d.cfg.Identity.Name, prev.Application, prev.Version, b.Application)}
		}
		switch {
		case b.Version < prev.Version:
			return nil, &Error{Code: CodeStale, Reason: fmt.Sprintf("stale bundle v%d < applied v%d of %s; push the newest bundle", b.Version, prev.Version, b.Application)}
		case b.Version == prev.Version && digest == prev.Digest:
			rep := Report{}
			if prev.Report != nil {
				rep = *prev.Report
			}
			rep.AlreadyApplied = true
			return &rep, nil
		case b.Version == prev.Version:
			return nil, &Error{Code: CodeConflict, Reason: fmt.Sprintf("bundle v%d of %s was applied with digest %s, this one has %s; a version is never reused, so generate a new bundle (the policy store's NextVersion)", b.Version, b.Application, prev.Digest, digest)}
		}
	}
	if err := checkContent(b); err != nil {
		return nil, err
	}
	parts = append(parts, Part{Name: "validation", Duration: d.cfg.Now().Sub(t0)})
	return d.apply(ctx, b, digest, prev, parts)
}

// apply runs the steps of a checked bundle.
func (d *Daemon) apply(ctx context.Context, b *policystore.Bundle, digest string, prev *persisted, parts []Part) (*Report, error) {
	start := d.cfg.Now()
	rep := &Report{Guest: b.Guest, Application: b.Application, Version: b.Version, Digest: digest, Parts: parts}
	mark := start
	part := func(name string) {
		now := d.cfg.Now()
		rep.Parts = append(rep.Parts, Part{Name: name, Duration: now.Sub(mark)})
		mark = now
	}
	ap := d.cfg.Applier
	// Rollback runs to the end even when the push's deadline has passed.
	bg := context.WithoutCancel(ctx)

	fail := func(step string, err error) (*Report, error) {
		rep.Failed = step + ": " + err.Error()
		rep.Took = d.cfg.Now().Sub(start)
		return rep, &Error{Code: CodeApplyFailed, Reason: fmt.Sprintf("applying %s v%d failed at %s", b.Application, b.Version, rep.Failed), Report: rep, Err: err}
	}

	var prevMods []selinux.Module
	if prev != nil && prev.Bundle != nil {
		prevMods = prev.Bundle.Modules
	}
	// The bundle is the application's whole guest policy: modules of the
	// previous bundle it no longer carries leave with this transaction.
	carried := map[string]bool{}
	for _, m := range b.Modules {
		carried[m.Name] = true
	}
	var drop []string
	for _, m := range prevMods {
		if !carried[m.Name] {
			drop = append(drop, m.Name)
		}
	}
	// Unchanged parts are not applied again (a rotation's pushes change
	// only SAs): the same modules stay installed, the same mapper policy
	// stays loaded.
	var (
		mods ModulesReport
		err  error
	)
	if prev != nil && prev.Bundle != nil && sameModules(prev.Bundle.Modules, b.Modules) {
		for _, m := range b.Modules {
			mods.Modules = append(mods.Modules, m.Name)
		}
		mods.Note = fmt.Sprintf("unchanged since v%d: not installed again", prev.Version)
		if prev.Report != nil && prev.Report.Modules.Loaded {
			mods.Note = fmt.Sprintf("unchanged since v%d, which installed them: not installed again", prev.Version)
		}
		// Loaded stays false: nothing of this push to take back.
	} else {
		mods, err = ap.InstallModules(ctx, b.Modules, drop)
	}
	part("SELinux modules")
	if err != nil {
		return fail("SELinux modules", err)
	}
	rep.Modules = mods
	// modulesStay puts the modules in force before back: the push's own
	// are removed, the previous bundle's earlier versions reinstalled.
	modulesStay := func() {
		if !mods.Loaded {
			return
		}
		if err := ap.RestoreModules(bg, mods, prevMods); err != nil {
			rep.NotRolledBack = append(rep.NotRolledBack, fmt.Sprintf("SELinux modules %s stay installed: %v", strings.Join(mods.Modules, ", "), err))
			return
		}
		kept := map[string]bool{}
		for _, m := range prevMods {
			kept[m.Name] = true
		}
		var removed, restored []string
		for _, n := range mods.Modules {
			if !kept[n] {
				removed = append(removed, n)
			}
		}
		for _, m := range prevMods {
			restored = append(restored, m.Name)
		}
		if len(removed) > 0 {
			rep.RolledBack = append(rep.RolledBack, "SELinux modules: "+strings.Join(removed, ", ")+" removed")
		}
		if len(restored) > 0 {
			rep.RolledBack = append(rep.RolledBack, fmt.Sprintf("SELinux modules: %s of v%d restored", strings.Join(restored, ", "), prev.Version))
		}
	}

	prevName, prevPolicy := "none", ""
	var prevBundle *policystore.Bundle
	if prev != nil {
		prevBundle = prev.Bundle
		prevName, prevPolicy = mapperName(prevBundle), prevBundle.MapperPolicy
	}
	var m MapperReport
	mapperSame := prev != nil && prev.Report != nil && prevPolicy == b.MapperPolicy && prev.Report.Mapper.Name != ""
	if mapperSame {
		m = prev.Report.Mapper // in force under its name, unchanged
	} else {
		m, err = ap.LoadMapperPolicy(mapperName(b), []byte(b.MapperPolicy))
	}
	part("mapper policy")
	if err != nil {
		modulesStay()
		return fail("label-mapper policy", err)
	}
	rep.Mapper = m
	restoreMapper := func() {
		if mapperSame {
			return // never replaced
		}
		if _, err := ap.LoadMapperPolicy(prevName, []byte(prevPolicy)); err != nil {
			rep.NotRolledBack = append(rep.NotRolledBack, fmt.Sprintf("label-mapper policy: %s stays loaded, %s could not be restored: %v", m.Name, prevName, err))
			return
		}
		rep.RolledBack = append(rep.RolledBack, "label-mapper policy: "+prevName+" restored")
	}

	x, err := ap.SyncXFRM(ctx, setOf(prevBundle), setOf(b))
	part("XFRM apply")
	rep.XFRM = x
	if err != nil {
		switch {
		case len(x.NotUndone) > 0:
			for _, u := range x.NotUndone {
				rep.NotRolledBack = append(rep.NotRolledBack, "XFRM: "+u)
			}
		case x.Changes() > 0:
			rep.RolledBack = append(rep.RolledBack, "XFRM: the changes made before the failure were undone")
		}
		restoreMapper()
		modulesStay()
		return fail("XFRM", err)
	}

	if n := len(b.Certificates); n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the bundle's %d certificates are not installed by the update daemon, which keeps presenting its own (--cert)", n))
	}
	rep.AppliedAt = d.cfg.Now()
	rep.Took = rep.AppliedAt.Sub(start)
	st := &persisted{
		Format: stateFormat, Guest: b.Guest, Application: b.Application, Version: b.Version,
		Digest: digest, AppliedAt: rep.AppliedAt, Report: rep, Bundle: withoutCertKeys(b),
	}
	err = saveState(d.cfg.StateDir, st)
	part("state write")
	if err != nil {
		if x.Changes() > 0 {
			back, berr := ap.SyncXFRM(bg, setOf(b), setOf(prevBundle))
			if berr != nil {
				rep.NotRolledBack = append(rep.NotRolledBack, "XFRM: "+berr.Error())
				for _, u := range back.NotUndone {
					rep.NotRolledBack = append(rep.NotRolledBack, "XFRM: "+u)
				}
			} else {
				rep.RolledBack = append(rep.RolledBack, "XFRM: the previous SAs and policies restored")
			}
		}
		restoreMapper()
		modulesStay()
		return fail("recording the applied version", err)
	}
	d.stateMu.Lock()
	d.state = st
	d.stateMu.Unlock()
	return rep, nil
}

// sameModules reports whether two bundles carry the same modules, in the
// same order.
func sameModules(a, b []selinux.Module) bool {
	return slices.Equal(a, b)
}

// current is the recorded state; nil before the first bundle.
func (d *Daemon) current() *persisted {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	return d.state
}

// mapperName names a bundle's mapper policy in the mapper's rule references.
func mapperName(b *policystore.Bundle) string {
	return fmt.Sprintf("%s-v%d.policy", b.Application, b.Version)
}

// checkHeader checks what identifies a bundle.
func checkHeader(b *policystore.Bundle) error {
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeBadBundle, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case b.Application == "":
		return bad("the bundle names no application; push a bundle the policy store generated")
	case b.Version == 0:
		return bad("bundle of %s has version 0; the policy store numbers bundles from 1 (Store.NextVersion)", b.Application)
	case b.Guest == "" || !b.GuestAddr.IsValid():
		return bad("bundle v%d of %s names no guest or guest address; generate it for this guest", b.Version, b.Application)
	}
	return nil
}

func (d *Daemon) checkIdentity(b *policystore.Bundle) error {
	id := d.cfg.Identity
	if b.Guest == id.Name && slices.Contains(id.Addrs, b.GuestAddr.Unmap()) {
		return nil
	}
	return &Error{Code: CodeWrongGuest, Reason: fmt.Sprintf("bundle v%d of %s is for guest %s at %s, this daemon is %s; push it to that guest", b.Version, b.Application, b.Guest, b.GuestAddr, id)}
}

// checkContent validates everything the steps will apply, so that a bad
// part fails the bundle before any part is applied. SELinux modules are
// checked by compiling them, which is their installation's first step.
func checkContent(b *policystore.Bundle) error {
	bad := func(err error) error {
		return &Error{Code: CodeBadBundle, Reason: fmt.Sprintf("bundle v%d of %s: %v", b.Version, b.Application, err), Err: err}
	}
	if len(b.ServerKeys) > 0 {
		return bad(errors.New("it carries the servers' private keys, which must never reach a guest; push Bundle.GuestPart()"))
	}
	for _, m := range b.Modules {
		if m.Target != selinux.TargetGuest {
			return bad(fmt.Errorf("module %s targets %q; a guest loads only guest modules: push Bundle.GuestPart()", m.Name, m.Target))
		}
	}
	for _, c := range b.Certificates {
		if c.Kind != policystore.CertGuest && len(c.KeyPEM) > 0 {
			return bad(fmt.Errorf("certificate %s carries a %s private key, which must never reach a guest; push Bundle.GuestPart()", c.Name, c.Kind))
		}
	}
	if _, err := parseMapperPolicy(mapperName(b), []byte(b.MapperPolicy)); err != nil {
		return bad(fmt.Errorf("label-mapper policy: %w", err))
	}
	seenS := map[saKey]int{}
	for i := range b.States {
		s := &b.States[i]
		if err := policystore.CheckState(s); err != nil {
			return bad(fmt.Errorf("states[%d]: %w", i, err))
		}
		x := *s
		if err := x.Validate(); err != nil {
			return bad(fmt.Errorf("states[%d] (%s): %w", i, x, err))
		}
		if j, dup := seenS[stateKey(x)]; dup {
			return bad(fmt.Errorf("states[%d] and states[%d] share destination %s and SPI %#x; the kernel holds one SA per destination and SPI", j, i, x.Dst, x.SPI))
		}
		seenS[stateKey(x)] = i
	}
	seenP := map[polKey]int{}
	for i := range b.Policies {
		p := &b.Policies[i]
		if err := policystore.CheckPolicy(p); err != nil {
			return bad(fmt.Errorf("policies[%d]: %w", i, err))
		}
		x := *p
		if err := x.Validate(); err != nil {
			return bad(fmt.Errorf("policies[%d] (%s): %w", i, x, err))
		}
		if j, dup := seenP[policyKey(x, true)]; dup {
			return bad(fmt.Errorf("policies[%d] and policies[%d] have the same direction, selector and context; the kernel holds one of them", j, i))
		}
		seenP[policyKey(x, true)] = i
	}
	return nil
}

// KeepAliveIdle is how long the daemon keeps an authenticated connection
// open with no request on it. The loader keeps one open to each pool guest
// from its boot on (Client.Connect), so that taking an idle guest over
// pays no TCP connect and no TLS handshake (the largest part of a push
// under emulation); the Client closes its idle connections a minute
// earlier, so that it never sends on one the daemon is closing.
const KeepAliveIdle = 15 * time.Minute

// Serve answers HTTPS on ln, a plain TCP listener, until Shutdown; it
// returns nil then. It may be called for several listeners.
func (d *Daemon) Serve(ln net.Listener) error {
	err := d.server().ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops every Serve call and waits for pushes in progress until
// ctx ends.
func (d *Daemon) Shutdown(ctx context.Context) error {
	return d.server().Shutdown(ctx)
}

func (d *Daemon) server() *http.Server {
	d.srvOnce.Do(func() {
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/bundle", d.handleBundle)
		mux.HandleFunc("GET /v1/status", d.handleStatus)
		d.srv = &http.Server{
			Handler:           requireClientCert(mux),
			TLSConfig:         d.cfg.TLS,
			TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			WriteTimeout:      d.cfg.ApplyTimeout + 60*time.Second,
			IdleTimeout:       KeepAliveIdle,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          d.cfg.ErrorLog,
		}
		if d.srv.ErrorLog == nil {
			d.srv.ErrorLog = log.New(io.Discard, "", 0)
		}
	})
	return d.srv
}

// requireClientCert refuses requests that did not come over TLS with a
// verified client certificate. The handshake already refuses them; this
// keeps the handlers safe if they are ever served another way.
func requireClientCert(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeJSON(w, http.StatusForbidden, errorBody{Error: "the update daemon answers only the loader, over mutually authenticated TLS", Code: CodeTLS})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (d *Daemon) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, d.Status())
}

func (d *Daemon) handleBundle(w http.ResponseWriter, r *http.Request) {
	rep, err := d.receive(w, r)
	// The loader has its answer before OnPush runs: OnPush logs, and a
	// guest's log may be a console that takes tens of milliseconds a
	// line under emulation.
	if d.cfg.OnPush != nil {
		defer d.cfg.OnPush(r.RemoteAddr, rep, err)
		defer http.NewResponseController(w).Flush() //nolint:errcheck // a failed flush is the loader's broken connection
	}
	if err == nil {
		writeJSON(w, http.StatusOK, rep)
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeApplyFailed, Reason: err.Error()}
	}
	status := e.Status
	if status == 0 {
		status = e.Code.httpStatus()
	}
	writeJSON(w, status, errorBody{Error: e.Reason, Code: e.Code, Report: e.Report})
}

// receive reads, decodes and applies one pushed bundle.
func (d *Daemon) receive(w http.ResponseWriter, r *http.Request) (*Report, error) {
	start := d.cfg.Now()
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, &Error{Code: CodeBadBundle, Status: http.StatusUnsupportedMediaType, Reason: fmt.Sprintf("content type %q: send the bundle as application/json", ct)}
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBundleBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &Error{Code: CodeTooLarge, Reason: fmt.Sprintf("the bundle is larger than %d bytes (MaxBundleBytes); the policy store generates far smaller ones, so check what the loader sends", MaxBundleBytes)}
		}
		return nil, &Error{Code: CodeBadBundle, Reason: "read the bundle: " + err.Error()}
	}
	var b policystore.Bundle
	t0 := d.cfg.Now()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, &Error{Code: CodeBadBundle, Reason: fmt.Sprintf("the body is not a bundle: %v; send the JSON of policystore.Bundle.GuestPart() (a field this daemon does not know means the guest's mlsgate is older than the loader's)", err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &Error{Code: CodeBadBundle, Reason: "data follows the bundle; send exactly one JSON object"}
	}
	decoded := d.cfg.Now()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), d.cfg.ApplyTimeout)
	defer cancel()
	return d.applyTimed(ctx, &b, []Part{{Name: "receive", Duration: t0.Sub(start)}, {Name: "decode", Duration: decoded.Sub(t0)}})
}

// writeJSON answers as every server does, and forbids caching: answers
// carry the guest's policy state.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Cache-Control", "no-store")
	httpjson.WriteIndent(w, status, v)
}
