package updatedaemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// Applier is where the daemon changes the guest. The daemon has checked the
// bundle before it calls any method; each method applies one part, and the
// daemon calls them in the order declared here.
type Applier interface {
	// InstallModules compiles the guest's SELinux modules and loads them
	// where SELinux is active, all or none; in the same transaction it
	// removes the modules named in drop (the previous bundle's that this
	// one no longer carries).
	InstallModules(ctx context.Context, mods []selinux.Module, drop []string) (ModulesReport, error)
	// RestoreModules undoes InstallModules after a later step failed:
	// the modules installed lists what it loaded, prev the modules of the
	// bundle in force before (none before the first). All or none: on
	// error the policy holds what it held before the call.
	RestoreModules(ctx context.Context, installed ModulesReport, prev []selinux.Module) error
	// LoadMapperPolicy replaces the guest mapper's policy with policy,
	// atomically: on error the previous policy stays in force. The daemon
	// also calls it with the previous policy to roll back.
	LoadMapperPolicy(name string, policy []byte) (MapperReport, error)
	// SyncXFRM makes the kernel hold to in place of from: SAs and policies
	// of to that are missing are added, those that differ are updated,
	// those only in from are removed. On error it has taken back what it
	// changed, except what the report's NotUndone lists. The daemon also
	// calls it with the sets swapped to roll back.
	SyncXFRM(ctx context.Context, from, to XFRMSet) (XFRMReport, error)
}

// XFRMSet is the XFRM part of a bundle.
type XFRMSet struct {
	States   []xfrm.State  `json:"states,omitempty"`
	Policies []xfrm.Policy `json:"policies,omitempty"`
}

// Empty reports whether the set holds nothing.
func (s XFRMSet) Empty() bool { return len(s.States) == 0 && len(s.Policies) == 0 }

// setOf is the XFRM set of a bundle; nil gives the empty set.
func setOf(b *policystore.Bundle) XFRMSet {
	if b == nil {
		return XFRMSet{}
	}
	return XFRMSet{States: b.States, Policies: b.Policies}
}

// SystemApplier applies bundles to the machine the daemon runs on.
type SystemApplier struct {
	// Mapper is the guest's label mapper, which the daemon serves.
	Mapper *mapper.Mapper
	// XFRM is a handle in the daemon's network namespace; nil refuses
	// every bundle that has SAs or policies, saying why.
	XFRM *xfrm.Handle
	// SELinux compiles and loads modules.
	SELinux selinux.SELinux
	// WorkDir is where modules are compiled (a fresh subdirectory per
	// push, removed afterwards); "" means the system's temporary directory.
	WorkDir string
	// ContextsKept reports whether the kernel keeps XFRM security contexts
	// (only with SELinux active); nil means SELinux.Active. Where they are
	// dropped, the kernel's policies are matched to the bundle's without
	// their contexts.
	ContextsKept func() bool
}

// workDir makes a fresh module work directory; the caller removes it.
func (a *SystemApplier) workDir() (string, error) {
	if a.WorkDir != "" {
		if err := os.MkdirAll(a.WorkDir, 0o700); err != nil {
			return "", fmt.Errorf("module work directory: %w", err)
		}
	}
	work, err := os.MkdirTemp(a.WorkDir, "modules-")
	if err != nil {
		return "", fmt.Errorf("module work directory: %w", err)
	}
	return work, nil
}

// NoteNotCompiled is the modules' note where SELinux is not active.
const NoteNotCompiled = "SELinux is not active in this guest: its modules were neither compiled nor loaded here (nothing would enforce them; the loader checks every bundle's guest modules with checkmodule)"

// InstallModules compiles the modules in a fresh work directory and
// installs them, removing drop, with selinux.SELinux.Update: one semodule
// transaction.
func (a *SystemApplier) InstallModules(ctx context.Context, mods []selinux.Module, drop []string) (ModulesReport, error) {
	if len(mods) == 0 && len(drop) == 0 {
		return ModulesReport{Note: "the bundle has no guest modules"}, nil
	}
	if !a.SELinux.Active() {
		// Nothing here would load or enforce them: compiling them would
		// only check them, which the loader does once per module text
		// (loader.Loader's compliance step), at native speed. Under
		// emulation the compile was most of a push.
		rep := ModulesReport{Note: NoteNotCompiled}
		for _, m := range mods {
			rep.Modules = append(rep.Modules, m.Name)
		}
		return rep, nil
	}
	work, err := a.workDir()
	if err != nil {
		return ModulesReport{}, err
	}
	defer os.RemoveAll(work)
	rep, err := a.SELinux.Update(ctx, mods, drop, work)
	if err != nil {
		return ModulesReport{}, fmt.Errorf("SELinux modules: %w", err)
	}
	return ModulesReport{Modules: rep.Modules, Removed: rep.Removed, Loaded: rep.Loaded, Note: rep.Note}, nil
}

// RestoreModules removes the modules installed loaded that prev lacks and
// reinstalls prev, in one semodule transaction (selinux.SELinux.Replace).
func (a *SystemApplier) RestoreModules(ctx context.Context, installed ModulesReport, prev []selinux.Module) error {
	if !installed.Loaded {
		return nil
	}
	work, err := a.workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	return a.SELinux.Replace(ctx, installed.Modules, prev, work)
}

// LoadMapperPolicy loads the policy into the mapper.
func (a *SystemApplier) LoadMapperPolicy(name string, policy []byte) (MapperReport, error) {
	if a.Mapper == nil {
		return MapperReport{}, errors.New("the daemon runs no label mapper")
	}
	p, err := parseMapperPolicy(name, policy) // validation's parse, as a rule
	if err != nil {
		// LoadBytes parses again, to count the refusal in the
		// mapper's statistics.
		if err := a.Mapper.LoadBytes(name, policy); err != nil {
			return MapperReport{}, err
		}
		return mapperReport(name, a.Mapper.Policy()), nil
	}
	a.Mapper.SetPolicy(p)
	return mapperReport(name, p), nil
}

func mapperReport(name string, p *mapper.Policy) MapperReport {
	return MapperReport{Name: name, Rules: len(p.Maps), Forwards: len(p.Forwards), Default: p.Default.String()}
}

// SyncXFRM diffs the sets against the kernel's SAs and policies and
// applies the difference through the handle.
func (a *SystemApplier) SyncXFRM(ctx context.Context, from, to XFRMSet) (XFRMReport, error) {
	if from.Empty() && to.Empty() {
		return XFRMReport{}, nil
	}
	if a.XFRM == nil {
		return XFRMReport{}, errors.New("the daemon has no XFRM handle (it could not open NETLINK_XFRM at start); run it as root with CAP_NET_ADMIN")
	}
	kept := a.ContextsKept
	if kept == nil {
		kept = a.SELinux.Active
	}
	return syncXFRM(ctx, a.XFRM, kept(), from, to)
}

// warmSPI and warmAddr name the throwaway SA of Warm, in the guest's own
// kernel: the kernel keys SAs by destination and SPI, and no bundle's SA
// ends at a loopback address, so it never meets one of them.
const warmSPI = 0xfffffff0

var warmAddr = netip.MustParseAddr("127.0.0.253")

// Warm readies the kernel for the bundles' SAs before the first push: the
// first SA with a cipher makes the kernel load the cipher's modules and run
// their self-tests, which under emulation was most of an idle guest's first
// push (its XFRM part). It adds, then deletes, one throwaway SA with the
// bundles' cipher (policystore.GCMKeyLen, rfc4106(gcm(aes))). Call it
// before serving; it changes nothing a push sees (a push leaves SAs
// neither of its sets names alone).
func (a *SystemApplier) Warm() (time.Duration, error) {
	if a.XFRM == nil {
		return 0, nil
	}
	t0 := time.Now()
	s := xfrm.State{Src: warmAddr, Dst: warmAddr, SPI: warmSPI, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTransport,
		AEAD: &xfrm.Algo{Name: "rfc4106(gcm(aes))", Key: make([]byte, policystore.GCMKeyLen), ICVBits: 128}}
	_ = a.XFRM.DeleteState(s.Dst, s.SPI, s.Proto) // one a crash left
	if err := a.XFRM.AddState(s); err != nil {
		return time.Since(t0), fmt.Errorf("warm the kernel's ESP cipher: %w%s", err, xfrmHint(err))
	}
	if err := a.XFRM.DeleteState(s.Dst, s.SPI, s.Proto); err != nil {
		return time.Since(t0), fmt.Errorf("remove the throwaway SA of the cipher warm-up: %w", err)
	}
	return time.Since(t0), nil
}
