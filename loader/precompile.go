package loader

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// ModulePrecompiler is a HostSide that can compile host SELinux modules
// ahead of the loads that install them (remembering the result by module
// text), without installing anything.
type ModulePrecompiler interface {
	PrecompileModules(ctx context.Context, mods []selinux.Module) error
}

// precompileAddrs are the ends of the tunnel of the bundle Precompile
// generates to learn an application's modules: a module's text does not
// depend on them (nor on the guest, the version or the SPIs), so any pair
// of one family does; IPv6 serves applications whose servers have no
// IPv4 address.
var precompileAddrs = [][2]netip.Addr{
	{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.1")},
	{netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::1")},
}

// Precompile compiles the SELinux modules of every application in the
// catalog, the guests' (the compliance step's check) and the host's (where
// the host side only compiles them: see ModulePrecompiler), so that an
// application's first load does not pay the compile. Run it in the
// background at start: a load that needs a module being compiled waits
// for that compile instead of starting a second one, and a load that
// comes first compiles as it always did. It returns the applications it
// could not compile, joined; a module that does not compile is refused by
// the loads as before.
func (l *Loader) Precompile(ctx context.Context) error {
	var errs []error
	now := l.now()
	for _, e := range l.catalog.Store.Entries() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if e.App == nil || e.Expired(now) {
			continue
		}
		mods, err := l.modulesOf(e.App)
		if err != nil {
			errs = append(errs, fmt.Errorf("precompile %s: %w", e.App.Name, err))
			continue
		}
		var host []selinux.Module
		for _, m := range mods {
			if m.Target == selinux.TargetGuest {
				if err := l.modules.compile(ctx, m); err != nil {
					errs = append(errs, fmt.Errorf("precompile %s: %w", e.App.Name, err))
				}
			} else {
				host = append(host, m)
			}
		}
		if pc, ok := l.host.(ModulePrecompiler); ok && len(host) > 0 {
			if err := pc.PrecompileModules(ctx, host); err != nil {
				errs = append(errs, fmt.Errorf("precompile %s's host modules: %w", e.App.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// modulesOf renders app's modules as its bundles carry them, through a
// bundle for no guest that uses no SPI of the host's range and no version
// of the store.
func (l *Loader) modulesOf(app *policystore.Application) ([]selinux.Module, error) {
	var err error
	for _, a := range precompileAddrs {
		var spi uint32 = 0x100
		req := policystore.BundleRequest{
			Guest: "precompile", GuestAddr: a[0], HostAddr: a[1],
			MapperUpstream: "http://" + netip.AddrPortFrom(a[1], 7070).String(),
			SPI:            func() (uint32, error) { spi++; return spi, nil },
			Version:        1, Now: l.now(),
			NoCertificatesBecause: "a bundle made only to compile its modules",
		}
		var b *policystore.Bundle
		if b, err = policystore.GenerateBundle(app, req, l.templates); err == nil {
			return b.Modules, nil
		}
	}
	return nil, err
}
