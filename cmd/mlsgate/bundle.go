package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
	"github.com/mlsgate/mlsgate/selinux"
	"github.com/spf13/cobra"
)

func newStoreBundleCmd() *cobra.Command {
	var (
		apps, db, templates, caDir, out      string
		guest, guestAddr, hostAddr, upstream string
		clearance                            string
		spiBase                              uint32
		certTTL                              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bundle APPLICATION",
		Short: "generate, check and write an application's policy bundle for one guest",
		Long: `Generate the policy bundle VMLoad pushes for an application (the paper's
section 3.2): SELinux modules for the guest and the host, XFRM policies and SAs
carrying SELinux contexts, the guest's label-mapper policy and, with --ca,
certificates for the servers and the guest from the store's CA. The bundle is
checked for compliance (its flows within the host's clearance and the
application's ranges; its modules' flows down in integrity, PIDSI) and each
module is compiled with checkmodule and semodule_package when they are
installed. Everything is written under --out:

  bundle.json               the whole bundle (SA keys included: keep it private)
  <module>.te/.fc/.if/.pp   each SELinux module and its compiled package
  mapper.policy             the guest's label-mapper policy
  certs/<name>.pem          certificates; certs/<guest>-key.pem the guest's key

Templates are built in; --templates DIR overrides any of them (files named as
in policystore/templates).`,
		Example: "  mlsgate store bundle analyst --apps examples/analyst --out /tmp/analyst-vm7",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if out == "" {
				return errors.New("give --out DIR for the bundle's files")
			}
			ga, err := netip.ParseAddr(guestAddr)
			if err != nil {
				return fmt.Errorf("--guest-addr: %w", err)
			}
			ha, err := netip.ParseAddr(hostAddr)
			if err != nil {
				return fmt.Errorf("--host-addr: %w", err)
			}
			var sys policystore.SystemPolicy
			if clearance != "" {
				if sys.Clearance, err = label.ParseBounds(clearance); err != nil {
					return fmt.Errorf("--clearance: %w", err)
				}
			}
			var tmpl *policystore.Templates
			if templates != "" {
				if tmpl, err = policystore.LoadTemplates(templates); err != nil {
					return err
				}
			}
			next := spiBase
			req := policystore.BundleRequest{
				Guest: guest, GuestAddr: ga, HostAddr: ha, MapperUpstream: upstream,
				SPI: func() (uint32, error) {
					if next == 0 {
						return 0, errors.New("SPI range exhausted: choose another --spi-base")
					}
					next++
					return next - 1, nil
				},
				Now: time.Now(),
			}
			if caDir != "" {
				c, err := ca.Open(caDir, ca.Options{})
				if err != nil {
					return err
				}
				defer c.Close()
				req.Issuer = policystore.CAIssuer(c, certTTL)
			}
			var st *policystore.Store
			if apps != "" {
				// A throwaway store: the files are the whole truth.
				tmp, terr := os.MkdirTemp("", "mlsgate-store-")
				if terr != nil {
					return terr
				}
				defer os.RemoveAll(tmp)
				st, err = policystore.OpenStore(filepath.Join(tmp, "store.db"))
				if err == nil {
					_, err = st.SyncDir(apps)
				}
			} else {
				st, err = policystore.OpenStore(db)
			}
			if err != nil {
				return err
			}
			defer st.Close()
			cat := &policystore.Catalog{Store: st}
			_, b, err := cat.BundleFor(ctx, args[0], req, tmpl, sys)
			if err != nil {
				return err
			}
			// The directory holds the guest's and the servers' private keys
			// and the SA keys: created 0700 (or an empty private one), every
			// file created anew, 0600, through the directory's descriptor.
			dir, err := secretfile.CreateEmpty(out)
			if err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			defer dir.Close()
			certs, err := dir.Sub("certs")
			if err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			defer certs.Close()
			w := cmd.OutOrStdout()
			j, err := json.MarshalIndent(b, "", "  ")
			if err != nil {
				return err
			}
			if err := dir.WriteNew("bundle.json", j); err != nil {
				return err
			}
			if err := dir.WriteNew("mapper.policy", []byte(b.MapperPolicy)); err != nil {
				return err
			}
			for _, c := range b.Certificates {
				if err := certs.WriteNew(c.Name+".pem", c.CertPEM); err != nil {
					return err
				}
				if len(c.KeyPEM) > 0 {
					if err := certs.WriteNew(c.Name+"-key.pem", c.KeyPEM); err != nil {
						return err
					}
				}
			}
			fmt.Fprintf(w, "bundle %s v%d for guest %s (%s, range %s): compliant\n", b.Application, b.Version, b.Guest, b.GuestAddr, b.Range)
			fmt.Fprintf(w, "  %d XFRM policies, %d SAs, labels %v, %d certificates\n", len(b.Policies), len(b.States), b.Labels, len(b.Certificates))
			for _, m := range b.Modules {
				if m.IF != "" {
					if err := dir.WriteNew(m.Name+".if", []byte(m.IF)); err != nil {
						return err
					}
				}
				pp, err := packageModule(ctx, m, dir)
				switch {
				case errors.Is(err, selinux.ErrNoToolchain):
					fmt.Fprintf(w, "  module %s (%s): not compiled: %v\n", m.Name, m.Target, err)
				case err != nil:
					return err
				default:
					fmt.Fprintf(w, "  module %s (%s): compiled by checkmodule into %s\n", m.Name, m.Target, pp)
				}
			}
			for _, n := range b.Notes {
				fmt.Fprintf(w, "  note: %s\n", n)
			}
			fmt.Fprintf(w, "written to %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&apps, "apps", "", "read applications from this directory instead of the store database")
	f.StringVar(&db, "db", defaultStoreDB, "the store database")
	f.StringVar(&templates, "templates", "", "directory of templates overriding the built-in ones")
	f.StringVar(&caDir, "ca", "", "the store's CA directory (created if missing); without it, no certificates")
	f.DurationVar(&certTTL, "cert-ttl", 30*24*time.Hour, "validity of issued certificates")
	f.StringVarP(&out, "out", "o", "", "directory to write the bundle into")
	f.StringVar(&guest, "guest", "vm1", "the guest's name")
	f.StringVar(&guestAddr, "guest-addr", "10.70.0.2", "the guest's address (inner end of its labeled tunnels)")
	f.StringVar(&hostAddr, "host-addr", "10.70.0.1", "the host's address toward the guest")
	f.StringVar(&upstream, "mapper-upstream", "http://10.70.0.1:7070", "the host mapper the guest's mapper forwards misses to")
	f.StringVar(&clearance, "clearance", "", "the host's clearance, e.g. s0-s15/i0-i15 (default: the whole lattice)")
	f.Uint32Var(&spiBase, "spi-base", 0xc0000000, "first SPI to allocate (the fast path's host-allocated range starts at 0xc0000000)")
	return cmd
}

// packageModule writes m's sources into dir, compiles m in a private
// scratch directory (the SELinux tools write their outputs by name, with
// the umask's modes) and copies what they made into dir with dir's rules.
// It returns the package's path in dir. Without the toolchain the sources
// are still written, so an operator can compile them elsewhere.
func packageModule(ctx context.Context, m selinux.Module, dir *secretfile.Dir) (string, error) {
	if err := dir.WriteNew(m.Name+".te", []byte(m.TE)); err != nil {
		return "", err
	}
	if m.FC != "" {
		if err := dir.WriteNew(m.Name+".fc", []byte(m.FC)); err != nil {
			return "", err
		}
	}
	tmp, err := os.MkdirTemp("", "mlsgate-module-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	_, perr := m.Package(ctx, tmp)
	if errors.Is(perr, selinux.ErrNoToolchain) {
		return "", perr
	}
	for _, ext := range []string{".mod", ".pp"} {
		data, err := os.ReadFile(filepath.Join(tmp, m.Name+ext))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if err := dir.WriteNew(m.Name+ext, data); err != nil {
			return "", err
		}
	}
	if perr != nil {
		return "", perr
	}
	return filepath.Join(dir.Path(), m.Name+".pp"), nil
}
