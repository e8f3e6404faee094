package main

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/verdict"
)

// The demo's flows come from the loaded applications, never from
// constants: which pages the browser reads and at which label, which data
// a compromised guest tries to move where, and which enforcer must stop
// each attempt. A flow stopped by another enforcer than the one its
// applications call for fails the demo, because it no longer tests what it
// claims (a reroute the guest's own XFRM drops never reaches the fast
// path's peer check).

// page is a URL of one of an application's servers and the label the
// application gives it.
type page struct {
	URL    string
	Server policystore.Server
	Label  label.Label
}

// leak is data at Label, for which the guest holds an SA toward Via,
// aimed at To, whose range excludes Label.
type leak struct {
	Via, To policystore.Server
	Label   label.Label
}

// demoPlan is what the demo does with a set of applications.
type demoPlan struct {
	Home  *policystore.Application // the application the analyst starts from the host
	Pages []page                   // the home guest's reads, one per label of each server
	Leaks []leak                   // the compromised home guest's attempts, one per ordered server pair
	// Other is an application the home guest's browser must hand to a
	// guest of its own (its label lies outside the home guest's range),
	// with the page that shows it; nil when no application qualifies.
	Other     *policystore.Application
	OtherPage page
	// Foreign is a server of Home that no server of Other shares an
	// address with: the other guest holds no policy toward it.
	Foreign policystore.Server
}

// planDemo derives the demo's flows from the applications.
func planDemo(apps []*policystore.Application) (*demoPlan, error) {
	p := &demoPlan{}
	for _, a := range apps {
		if slices.Contains(a.LoadableFrom, "host") {
			p.Home = a
			break
		}
	}
	if p.Home == nil {
		return nil, errors.New("no application is loadable from the host: give the analyst's application loadable_from: [host, ...]")
	}
	var err error
	if p.Pages, err = appPages(p.Home); err != nil {
		return nil, err
	}
	for _, pg := range p.Pages {
		if !p.Home.Guest.Contains(pg.Label) {
			return nil, fmt.Errorf("application %s: page %s at %s is outside its own guest range %s: fix the label rule", p.Home.Name, pg.URL, pg.Label, p.Home.Guest)
		}
	}
	p.Leaks = appLeaks(p.Home)
	if len(p.Leaks) == 0 {
		return nil, fmt.Errorf("application %s: every server accepts every label of every other server, so there is no leak to attempt: give the servers disjoint ranges", p.Home.Name)
	}
	for _, a := range apps {
		if a == p.Home || !a.MayBeLoadedBy(p.Home.Name) {
			continue
		}
		pages, err := appPages(a)
		if err != nil {
			return nil, err
		}
		for _, pg := range pages {
			if p.Home.Guest.Contains(pg.Label) || !a.Guest.Contains(pg.Label) {
				continue
			}
			for _, hs := range p.Home.Servers {
				if !sharesAddress(hs, a.Servers) {
					p.Other, p.OtherPage, p.Foreign = a, pg, hs
					return p, nil
				}
			}
		}
	}
	return p, nil
}

func sharesAddress(s policystore.Server, others []policystore.Server) bool {
	for _, o := range others {
		for _, a := range o.Addresses {
			if slices.Contains(s.Addresses, a) {
				return true
			}
		}
	}
	return false
}

// appPages is one page per label rule that targets a server of app, and
// the root page of every server at its default label.
func appPages(app *policystore.Application) ([]page, error) {
	var out []page
	for _, s := range app.Servers {
		for _, r := range app.Labels {
			u, err := exampleURL(r.URL)
			if err != nil {
				return nil, fmt.Errorf("application %s: label rule %q: %w", app.Name, r.URL, err)
			}
			if servesURL(s, u) {
				out = append(out, page{URL: u, Server: s, Label: r.Label})
			}
		}
		root := "http://" + s.Hosts[0] + "/"
		if ruleFor(app, root) == nil {
			out = append(out, page{URL: root, Server: s, Label: s.DefaultLabel()})
		}
	}
	return out, nil
}

// ruleFor is the first label rule matching u, or nil.
func ruleFor(app *policystore.Application, u string) *policystore.LabelRule {
	for i, r := range app.Labels {
		if re, err := regexp.Compile("^(?:" + r.URL + ")$"); err == nil && re.MatchString(u) {
			return &app.Labels[i]
		}
	}
	return nil
}

func servesURL(s policystore.Server, u string) bool {
	pu, err := url.Parse(u)
	return err == nil && slices.Contains(s.Hosts, pu.Hostname())
}

// exampleURL is the shortest URL a label rule's expression matches: every
// optional part left out, every repetition at its minimum, the first
// alternative and the first character of every class.
func exampleURL(expr string) (string, error) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	var walk func(*syntax.Regexp) error
	walk = func(r *syntax.Regexp) error {
		switch r.Op {
		case syntax.OpLiteral:
			b.WriteString(string(r.Rune))
		case syntax.OpCharClass:
			if len(r.Rune) == 0 {
				return fmt.Errorf("empty character class in %q", expr)
			}
			b.WriteRune(r.Rune[0])
		case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
			b.WriteByte('x')
		case syntax.OpCapture:
			return walk(r.Sub[0])
		case syntax.OpConcat:
			for _, s := range r.Sub {
				if err := walk(s); err != nil {
					return err
				}
			}
		case syntax.OpAlternate:
			return walk(r.Sub[0])
		case syntax.OpStar, syntax.OpQuest:
		case syntax.OpPlus:
			return walk(r.Sub[0])
		case syntax.OpRepeat:
			for i := 0; i < r.Min; i++ {
				if err := walk(r.Sub[0]); err != nil {
					return err
				}
			}
		case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText:
		default:
			return fmt.Errorf("cannot make an example URL for %q (operator %v): write the rule with literals, classes and optional parts", expr, r.Op)
		}
		return nil
	}
	if err := walk(re); err != nil {
		return "", err
	}
	u := b.String()
	if m, _ := regexp.MatchString("^(?:"+expr+")$", u); !m {
		return "", fmt.Errorf("the example URL %q does not match %q", u, expr)
	}
	return u, nil
}

// serverLabels is every label the guest's SAs toward s carry, as the
// policy store's bundle gives them: the label rules of s's hosts and its
// default label, within the guest's and the server's ranges, one per
// SELinux level (at the lower integrity when two share one), sorted by
// secrecy.
func serverLabels(app *policystore.Application, s policystore.Server) []label.Label {
	cands := []label.Label{}
	for _, r := range app.Labels {
		if u, err := exampleURL(r.URL); err == nil && servesURL(s, u) {
			cands = append(cands, r.Label)
		}
	}
	cands = append(cands, s.DefaultLabel())
	byLevel := map[string]int{}
	var out []label.Label
	for _, l := range cands {
		if !app.Guest.Contains(l) || !s.Range.Contains(l) {
			continue
		}
		if i, ok := byLevel[l.Secrecy.String()]; ok {
			out[i].Integrity = min(out[i].Integrity, l.Integrity)
			continue
		}
		byLevel[l.Secrecy.String()] = len(out)
		out = append(out, l)
	}
	slices.SortStableFunc(out, func(a, b label.Label) int {
		switch {
		case a.Secrecy.Sens != b.Secrecy.Sens:
			return int(a.Secrecy.Sens) - int(b.Secrecy.Sens)
		default:
			return a.Secrecy.Cats.Count() - b.Secrecy.Cats.Count()
		}
	})
	return out
}

// appLeaks is, for every ordered pair of servers (via, to), the highest
// label of via's SAs that to's range excludes.
func appLeaks(app *policystore.Application) []leak {
	var out []leak
	for _, via := range app.Servers {
		ls := serverLabels(app, via)
		for _, to := range app.Servers {
			if to.Name == via.Name {
				continue
			}
			for i := len(ls) - 1; i >= 0; i-- {
				if !to.Range.Contains(ls[i]) {
					out = append(out, leak{Via: via, To: to, Label: ls[i]})
					break
				}
			}
		}
	}
	return out
}

// enforcer is who must carry or stop a flow.
type enforcer struct {
	Kind   string // byFastPath, byGuestXFRM, byGuestPolicy, byLoader, byGuestSELinux
	Reason verdict.Reason
}

const (
	byFastPath    = "fast path"
	byGuestXFRM   = "guest XFRM"
	byGuestPolicy = "guest policy"
	byLoader      = "loader"
	// byGuestSELinux: the guest kernel's SELinux policy, which knows an
	// application's type only once its bundle's module is installed.
	byGuestSELinux = "guest SELinux"
)

func (e enforcer) String() string {
	if e.Kind == byFastPath {
		return "fast path from guest " + e.Reason.String()
	}
	return e.Kind
}

// expect is what a flow's applications require of it.
type expect struct {
	Result string // "delivered" or "refused"
	By     enforcer
}

// observed is what the kernel counted during one flow.
type observed struct {
	FastPath [2][verdict.NumReasons]uint64 // fast path verdicts, from and to guests
	GuestX   map[string]uint64             // the sending guest's XFRM statistics
	Sent     int64                         // packets the flow sent from the guest; -1 unknown
	Servers  map[string]uint64             // the web servers' XFRM and TCP statistics
}

func counterDelta(before, after [2][verdict.NumReasons]bpf.Counter) (d [2][verdict.NumReasons]uint64) {
	for dir := range d {
		for r := range d[dir] {
			d[dir][r] = after[dir][r].Packets - before[dir][r].Packets
		}
	}
	return d
}

func statDelta(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after {
		if v > before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// guestXFRMDrops is the sum of the guest's outbound XFRM error counters.
func (o observed) guestXFRMDrops() uint64 {
	var n uint64
	for k, v := range o.GuestX {
		if strings.HasPrefix(k, "XfrmOut") {
			n += v
		}
	}
	return n
}

// check says why a flow's outcome is not what its applications require,
// or nil. Refusals must come from the named enforcer alone: a fast-path
// refusal counts exactly the packets the flow sent under the expected
// reason, no other deny reason and no drop in the guest's own XFRM; a
// guest-XFRM refusal counts a drop there and no fast-path deny.
func check(want expect, result string, by string, o observed) error {
	if result != want.Result {
		return fmt.Errorf("%s, want %s by %s", result, want.Result, want.By)
	}
	var denies []string
	for dir, name := range []string{"from guest", "to guest"} {
		for _, r := range verdict.Reasons() {
			if !r.Allowed() && o.FastPath[dir][r] > 0 && !(want.By.Kind == byFastPath && dir == 0 && r == want.By.Reason) {
				denies = append(denies, fmt.Sprintf("fast path %s %s ×%d", name, r, o.FastPath[dir][r]))
			}
		}
	}
	switch want.By.Kind {
	case byFastPath:
		if len(denies) > 0 {
			return fmt.Errorf("also refused by %s, want %s alone", strings.Join(denies, ", "), want.By)
		}
		if n := o.guestXFRMDrops(); n > 0 {
			return fmt.Errorf("the guest's own XFRM dropped %d packets, want every packet to reach the %s", n, want.By)
		}
		got := o.FastPath[0][want.By.Reason]
		if want.Result == "delivered" {
			if got == 0 || o.FastPath[1][want.By.Reason] == 0 {
				return fmt.Errorf("the fast path counted %s ×%d from and ×%d to the guest, want both above 0", want.By.Reason, got, o.FastPath[1][want.By.Reason])
			}
			return nil
		}
		if o.Sent <= 0 {
			return fmt.Errorf("the guest sent no packet, so the %s never decided: want the flow to leave the guest", want.By)
		}
		if got != uint64(o.Sent) {
			return fmt.Errorf("%s ×%d for %d packets sent, want one verdict per packet", want.By, got, o.Sent)
		}
	case byGuestXFRM:
		if len(denies) > 0 {
			return fmt.Errorf("refused by %s, want the guest's own XFRM to stop it before its vif", strings.Join(denies, ", "))
		}
		if o.guestXFRMDrops() == 0 {
			return fmt.Errorf("no XfrmOut* counter of the guest rose, want %s", want.By)
		}
	default:
		if by != want.By.Kind {
			return fmt.Errorf("decided by %q, want %s", by, want.By)
		}
	}
	return nil
}
