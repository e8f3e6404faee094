package policystore

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/mlsgate/mlsgate/ipsec"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore/compliance"
)

// ErrNotCompliant marks a bundle that permits a flow the system policy
// does not; errors.Is also matches compliance.ErrNotCompliant.
var ErrNotCompliant = compliance.ErrNotCompliant

// SystemPolicy is the host's own policy that every bundle must comply
// with: the MLS lattice plus the host's clearance, which bounds every
// guest and server range a bundle may use.
type SystemPolicy struct {
	// Clearance is the range of labels the host handles at all; the zero
	// value means the whole lattice (s0-s15:c0.c1023/i0-i15).
	Clearance label.Bounds
}

func (p SystemPolicy) clearance() label.Bounds {
	if p.Clearance == (label.Bounds{}) {
		var hi label.Label
		hi.Secrecy.Sens = label.MaxSensitivity
		for c := 0; c <= label.MaxCategory; c++ {
			hi.Secrecy.Cats.Add(c)
		}
		hi.Integrity = label.MaxIntegrity
		return label.Bounds{High: hi}
	}
	return p.Clearance
}

// ComplianceError lists every way a bundle fails the checks.
type ComplianceError struct {
	Application string
	Problems    []error
}

func (e *ComplianceError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = "  " + p.Error()
	}
	return fmt.Sprintf("bundle for %q is not compliant (%d problems):\n%s", e.Application, len(e.Problems), strings.Join(msgs, "\n"))
}

// Is makes a ComplianceError match ErrNotCompliant.
func (e *ComplianceError) Is(target error) bool { return target == ErrNotCompliant }

// CheckBundle runs the paper's two compliance checks (section 4) on a
// bundle generated for app, and a labeling check:
//
//  1. VM compliance: every flow the bundle's network policy permits is one
//     the system policy permits. The system is the MLS lattice with the
//     guest bounded by the application's guest range and each server by
//     its range, both within the host's clearance. Each SA is a flow at its
//     label between the guest and the server its reqid serves, in the SA's
//     direction; each labeled XFRM policy is a same-label flow over its
//     context's secrecy range (SPD contexts carry no integrity: the SAs do,
//     and are checked one by one). An unlabeled allow policy toward
//     anything but the host is a clear channel and fails. The host itself
//     is the reference monitor and not an entity of the check.
//  2. Application compliance (PIDSI): each SELinux module, read under the
//     guest's MLS constraints (compliance.FlowsMLS), only moves information
//     down in integrity, with each type at the integrity the application
//     assigns it and the guest's secrecy range.
//  3. Labeling: every label the mapper policy gives a server's URLs lies
//     in that server's range, and upstream answers are limited to the guest
//     range.
//
// It returns nil or a *ComplianceError naming every offending rule.
func CheckBundle(app *Application, b *Bundle, sys SystemPolicy) error {
	var probs []error
	add := func(err error) { probs = append(probs, err) }
	clear := sys.clearance()

	entities := map[string]label.Bounds{}
	bound := func(name string, r label.Bounds) {
		in, ok := r.Intersect(clear)
		if !ok || in != r {
			add(fmt.Errorf("%s range %s is not within the host's clearance %s", name, r, clear))
		}
		if ok {
			entities[name] = in
		}
	}
	bound("guest", app.Guest)
	for _, s := range app.Servers {
		bound(s.Name, s.Range)
	}

	rel, errs := bundleRelation(app, b)
	probs = append(probs, errs...)
	for _, v := range compliance.Check(compliance.System{Entities: entities}, rel) {
		add(v)
	}

	labels := map[string]label.Bounds{}
	integ := app.IntegrityPolicy()
	for _, m := range b.Modules {
		mod, err := compliance.ParseTE(m.Name+".te", []byte(m.TE))
		if err != nil {
			add(err)
			continue
		}
		for _, t := range append(append([]string{}, mod.Types...), mod.Required...) {
			lo, hi := app.Guest.Low, app.Guest.High
			lo.Integrity, hi.Integrity = integ.Of(t), integ.Of(t)
			labels[t] = label.Bounds{Low: lo, High: hi}
		}
		for _, v := range compliance.CheckPIDSIMLS(compliance.System{AllowUnknown: true}, mod, labels) {
			add(v)
		}
	}

	probs = append(probs, checkMapperLabels(app, b)...)
	if len(probs) > 0 {
		return &ComplianceError{Application: app.Name, Problems: probs}
	}
	return nil
}

// bundleRelation turns the bundle's XFRM policies and SAs into flows.
func bundleRelation(app *Application, b *Bundle) (compliance.Relation, []error) {
	var rel compliance.Relation
	var errs []error
	serverOf := func(p netip.Prefix) (Server, bool) {
		for _, s := range app.Servers {
			for _, a := range s.Addresses {
				if p.Contains(a) {
					return s, true
				}
			}
		}
		return Server{}, false
	}
	// Reqids name servers: learn them from the labeled policies.
	reqServer := map[uint32]string{}
	for i, p := range b.Policies {
		src := fmt.Sprintf("xfrm policy #%d (%s %s→%s)", i, p.Dir, p.Src, p.Dst)
		if p.Action != ipsec.ActionAllow {
			continue
		}
		guestSide, peerSide := p.Src, p.Dst
		if p.Dir != ipsec.DirOut {
			guestSide, peerSide = p.Dst, p.Src
		}
		if !guestSide.Contains(b.GuestAddr) {
			errs = append(errs, fmt.Errorf("%s: does not belong to the guest %s", src, b.GuestAddr))
			continue
		}
		if peerSide.Contains(b.HostAddr) && peerSide.Bits() == peerSide.Addr().BitLen() {
			continue // the host: the reference monitor itself
		}
		srv, ok := serverOf(peerSide)
		if p.Context == "" {
			if !isLinkLocalControl(peerSide) {
				errs = append(errs, fmt.Errorf("%s: allows traffic to %s in clear, without a label", src, peerSide))
			}
			continue
		}
		if !ok {
			errs = append(errs, fmt.Errorf("%s: labeled policy toward %s, which is none of %q's servers", src, peerSide, app.Name))
			continue
		}
		for _, t := range p.Templates {
			if prev, dup := reqServer[t.Reqid]; dup && prev != srv.Name {
				errs = append(errs, fmt.Errorf("%s: reqid %d serves both %s and %s", src, t.Reqid, prev, srv.Name))
			}
			reqServer[t.Reqid] = srv.Name
		}
		ctx, err := label.ParseContext(p.Context)
		if err != nil || !ctx.HasRange {
			errs = append(errs, fmt.Errorf("%s: context %q has no MLS range: %v", src, p.Context, err))
			continue
		}
		// Integrity: what guest and server share (SPD contexts carry none).
		lo, hi := label.Label{Secrecy: ctx.Range.Low}, label.Label{Secrecy: ctx.Range.High}
		if in, ok := app.Guest.Intersect(srv.Range); ok {
			lo.Integrity, hi.Integrity = in.Low.Integrity, in.High.Integrity
		}
		r := compliance.Rule{From: "guest", To: srv.Name, SameLabel: true, FromLabels: label.Bounds{Low: lo, High: hi}, Source: src}
		r.ToLabels = r.FromLabels
		if p.Dir != ipsec.DirOut {
			r.From, r.To = r.To, r.From
		}
		rel = append(rel, r)
	}
	for _, s := range b.States {
		src := fmt.Sprintf("xfrm state spi 0x%08x reqid %d (%s→%s)", s.SPI, s.Reqid, s.Src, s.Dst)
		name, ok := reqServer[s.Reqid]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: no labeled policy uses reqid %d, so the SA's server is unknown", src, s.Reqid))
			continue
		}
		one := label.Bounds{Low: s.Label, High: s.Label}
		r := compliance.Rule{From: "guest", To: name, FromLabels: one, ToLabels: one, SameLabel: true, Source: src}
		switch {
		case s.Src == b.GuestAddr && s.Dst == b.HostAddr:
		case s.Src == b.HostAddr && s.Dst == b.GuestAddr:
			r.From, r.To = r.To, r.From
		default:
			errs = append(errs, fmt.Errorf("%s: an SA of the guest's bundle must run between the guest %s and the host %s", src, b.GuestAddr, b.HostAddr))
			continue
		}
		rel = append(rel, r)
	}
	return rel, errs
}

// isLinkLocalControl is the neighbour discovery and link-local traffic a
// guest needs on its link, which carries no application data.
func isLinkLocalControl(p netip.Prefix) bool {
	return p.Addr().Is6() && (p.Addr().IsLinkLocalUnicast() || p.Addr().IsLinkLocalMulticast() || p.Addr().IsInterfaceLocalMulticast())
}

// checkMapperLabels holds the guest's mapper policy to the servers'
// ranges: a server cannot hold data outside its range, so a rule that
// labels its URLs outside it is wrong.
func checkMapperLabels(app *Application, b *Bundle) []error {
	pol, err := mapper.ParsePolicy("mapper.policy", []byte(b.MapperPolicy))
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, r := range pol.Maps {
		prog, err := mapper.CompileAnchored(r.Regex)
		if err != nil {
			errs = append(errs, fmt.Errorf("mapper.policy:%d: %v", r.Line, err))
			continue
		}
		l := r.Target.Label
		for _, s := range app.Servers {
			for _, h := range s.Hosts {
				if mapper.TargetsHost(prog, h) && !s.Range.Contains(l) {
					errs = append(errs, fmt.Errorf("mapper.policy:%d: labels URLs of %s (server %s) %s, outside the server's range %s", r.Line, h, s.Name, l, s.Range))
				}
			}
		}
	}
	for _, f := range pol.Forwards {
		if f.Bounds.Low.Dominates(app.Guest.Low) && app.Guest.High.Dominates(f.Bounds.High) {
			continue
		}
		errs = append(errs, fmt.Errorf("mapper.policy:%d: accepts answers from %s in %s, beyond the guest range %s", f.Line, f.Upstream, f.Bounds, app.Guest))
	}
	return errs
}
