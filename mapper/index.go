package mapper

import (
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"sync"
)

// The index finds, for a URL, the few rules whose regex could match it, so a
// lookup runs a handful of regexes instead of all of them. Its contract is
// exact: for every string u, match(u, k) returns the same rules as a linear
// scan in file order that keeps the first k matches (linearMatch). The
// differential test and FuzzLookup hold it to that.
//
// Each rule's regex is analysed with regexp/syntax for facts that every
// string it matches must satisfy, and the rule is filed under them:
//
//   - a literal prefix, e.g. "https://example.org/app/" for
//     `https://example\.org/app/.*`: the rule goes into a radix tree keyed by
//     prefix. A lookup walks the URL down the tree and collects the rules on
//     the way. Small alternations and optional parts are expanded, so
//     `https?://(www\.)?example\.(org|com)/.*` is filed under eight prefixes.
//   - a host suffix, for rules whose host starts with a pattern, e.g.
//     `https?://([^/]*\.)?example\.org/.*`: after "scheme://" come parts that
//     can never match '/', then a literal holding the '/' that ends the host.
//     Every match then has a host[:port] ending in ".example.org" (the literal
//     before the '/'), and the rule is filed under that suffix together with
//     its literal prefix ("http://" or "https://").
//   - anything else (no literal prefix at all, e.g. `.*\.pdf`, or a
//     case-insensitive scheme) goes to a fallback list tried for every URL.
//
// Candidates from all three are merged in file order, and their regexes run
// until k have matched.

// matcher is one rule as the index sees it.
type matcher struct {
	re  *regexp.Regexp
	src string
	// must is a literal every match contains (the longest one the regex
	// concatenates at its top level), checked before the regex runs: a
	// cheap strings.Contains rules out most candidates, above all the
	// fallback rules, whose regexes start with ".*" and are slow to fail.
	must string
}

// Bounds on the analysis of one regex, so a pathological rule costs little
// and simply lands in the fallback list.
const (
	maxExpansions = 32  // literal prefixes tracked at once
	maxWalks      = 64  // forks at alternations and optional parts
	maxPlacements = 256 // places one rule is filed under
)

type index struct {
	rules      []matcher
	tree       rnode
	suffixes   map[string][]suffixEntry
	suffixLens []int // distinct keys' lengths, ascending
	fallback   []int32
}

type suffixEntry struct {
	id     int32
	prefix string // every match starts with it ("https://", "http://a")
}

// placement is where one rule is filed: under prefix in the radix tree, or,
// when suffix is set, under the host suffix with prefix as a filter.
type placement struct {
	prefix, suffix string
	sure           bool // the regex is prefix followed by ".*"
}

func buildIndex(rules []matcher) *index {
	ix := &index{rules: rules, suffixes: map[string][]suffixEntry{}}
	lens := map[int]bool{}
	for i := range rules {
		r := &rules[i]
		id := int32(i)
		r.must = mustContain(r.src)
		pls, ok := analyzeRegex(r.src)
		if !ok {
			ix.fallback = append(ix.fallback, id<<1)
			continue
		}
		for _, pl := range pls {
			if pl.suffix == "" {
				cand := id << 1
				if pl.sure {
					cand |= 1
				}
				ix.tree.insert(pl.prefix, cand)
				continue
			}
			ix.suffixes[pl.suffix] = append(ix.suffixes[pl.suffix], suffixEntry{id: id, prefix: pl.prefix})
			lens[len(pl.suffix)] = true
		}
	}
	for l := range lens {
		ix.suffixLens = append(ix.suffixLens, l)
	}
	slices.Sort(ix.suffixLens)
	return ix
}

var candPool = sync.Pool{New: func() any { s := make([]int32, 0, 64); return &s }}

// match appends to out the ids of the first k rules, in file order, whose
// regex matches u.
func (ix *index) match(u string, k int, out []int32) []int32 {
	if ix == nil || k <= 0 || len(ix.rules) == 0 {
		return out
	}
	cp := candPool.Get().(*[]int32)
	c := ix.candidates(u, (*cp)[:0])
	if len(c) > 1 {
		slices.Sort(c)
	}
	newline := strings.IndexByte(u, '\n') >= 0
	n := 0
	for i := 0; i < len(c); i++ {
		id, sure := c[i]>>1, c[i]&1 == 1
		for i+1 < len(c) && c[i+1]>>1 == id { // filed more than once
			i++
			sure = sure || c[i]&1 == 1
		}
		// A sure candidate is proved by having reached its prefix.
		if !sure || newline {
			r := &ix.rules[id]
			if r.must != "" && !strings.Contains(u, r.must) || !r.re.MatchString(u) {
				continue
			}
		}
		out = append(out, id)
		if n++; n == k {
			break
		}
	}
	*cp = c[:0]
	candPool.Put(cp)
	return out
}

func (ix *index) candidates(u string, c []int32) []int32 {
	c = ix.tree.collect(u, c)
	c = append(c, ix.fallback...)
	if len(ix.suffixLens) == 0 {
		return c
	}
	var rest string
	if strings.HasPrefix(u, "https://") {
		rest = u[len("https://"):]
	} else if strings.HasPrefix(u, "http://") {
		rest = u[len("http://"):]
	} else {
		return c
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return c // every suffix rule needs the '/' that ends the host
	}
	host := rest[:slash]
	for _, l := range ix.suffixLens {
		if l > len(host) {
			break
		}
		for _, e := range ix.suffixes[host[len(host)-l:]] {
			if strings.HasPrefix(u, e.prefix) {
				c = append(c, e.id<<1)
			}
		}
	}
	return c
}

// linearMatch is the reference the index must agree with: every rule in file
// order, keeping the first k that match.
func linearMatch(rules []matcher, u string, k int) []int32 {
	var out []int32
	for i, r := range rules {
		if len(out) == k {
			break
		}
		if r.re.MatchString(u) {
			out = append(out, int32(i))
		}
	}
	return out
}

// ---- regex analysis ----

// analyzeRegex returns where to file a rule, or false for the fallback list.
func analyzeRegex(src string) ([]placement, bool) {
	re, err := syntax.Parse(src, syntax.Perl)
	if err != nil {
		return nil, false
	}
	re = re.Simplify()
	a := analyzer{walks: maxWalks}
	pls, ok := a.walk([]string{""}, flatten(re, nil))
	if !ok || len(pls) == 0 || len(pls) > maxPlacements {
		return nil, false
	}
	slices.SortFunc(pls, func(x, y placement) int {
		if c := strings.Compare(x.prefix, y.prefix); c != 0 {
			return c
		}
		return strings.Compare(x.suffix, y.suffix)
	})
	return slices.Compact(pls), true
}

// mustContain returns the longest case-sensitive literal the regex
// concatenates at its top level, or "".
func mustContain(src string) string {
	re, err := syntax.Parse(src, syntax.Perl)
	if err != nil {
		return ""
	}
	best := ""
	for _, el := range flatten(re.Simplify(), nil) {
		if el.Op == syntax.OpLiteral && el.Flags&syntax.FoldCase == 0 && len(string(el.Rune)) > len(best) {
			best = string(el.Rune)
		}
	}
	return best
}

// flatten appends the sequence of nodes re concatenates, looking through
// groups.
func flatten(re *syntax.Regexp, seq []*syntax.Regexp) []*syntax.Regexp {
	switch re.Op {
	case syntax.OpConcat:
		for _, s := range re.Sub {
			seq = flatten(s, seq)
		}
		return seq
	case syntax.OpCapture:
		return flatten(re.Sub[0], seq)
	}
	return append(seq, re)
}

type analyzer struct {
	walks int
}

// walk extends the literal prefixes ps through seq. Where seq offers a
// choice it cannot expand in place (an alternation or optional part holding
// more than literals), it follows each branch separately while the budget
// lasts.
func (a *analyzer) walk(ps []string, seq []*syntax.Regexp) ([]placement, bool) {
	a.walks--
	for i, el := range seq {
		switch el.Op {
		case syntax.OpEmptyMatch:
			continue
		case syntax.OpBeginText, syntax.OpBeginLine:
			if len(ps) == 1 && ps[0] == "" {
				continue // at offset 0, where these always hold
			}
		}
		if s, ok := expand(el); ok {
			if next, ok := cross(ps, s); ok {
				ps = next
				continue
			}
		}
		var branches [][]*syntax.Regexp
		switch el.Op {
		case syntax.OpAlternate:
			for _, sub := range el.Sub {
				branches = append(branches, flatten(sub, nil))
			}
		case syntax.OpQuest:
			branches = [][]*syntax.Regexp{nil, flatten(el.Sub[0], nil)}
		}
		if branches == nil || a.walks < len(branches) {
			return finish(ps, seq[i:])
		}
		var all []placement
		for _, b := range branches {
			next := append(slices.Clip(b), seq[i+1:]...)
			pls, ok := a.walk(ps, next)
			if !ok {
				return nil, false
			}
			all = append(all, pls...)
			if len(all) > maxPlacements {
				return nil, false
			}
		}
		return all, true
	}
	return finish(ps, nil)
}

// finish files the prefixes ps, reached just before rest.
func finish(ps []string, rest []*syntax.Regexp) ([]placement, bool) {
	var pls []placement
	suffix, suffixDone := "", false
	sure := anyTail(rest)
	for _, p := range ps {
		if p == "" {
			return nil, false
		}
		host, ok := strings.CutPrefix(p, "https://")
		if !ok {
			host, ok = strings.CutPrefix(p, "http://")
		}
		if ok && !strings.Contains(host, "/") {
			if !suffixDone {
				suffix, suffixDone = hostSuffix(rest), true
			}
			if suffix != "" {
				pls = append(pls, placement{prefix: p, suffix: suffix})
				continue
			}
		}
		pls = append(pls, placement{prefix: p, sure: sure})
	}
	return pls, true
}

// anyTail reports whether rest is ".*", possibly followed by "$": then the
// regex matches every string that starts with a prefix reached just before
// rest and has no newline after it.
func anyTail(rest []*syntax.Regexp) bool {
	for len(rest) > 1 && rest[len(rest)-1].Op == syntax.OpEndText {
		rest = rest[:len(rest)-1]
	}
	if len(rest) != 1 || rest[0].Op != syntax.OpStar {
		return false
	}
	op := rest[0].Sub[0].Op
	return op == syntax.OpAnyCharNotNL || op == syntax.OpAnyChar
}

// hostSuffix looks, in the rest of a regex that so far matched
// "scheme://" and part of a host, for parts that cannot match '/' followed
// by a literal holding a '/'. It returns the literal text just before that
// '/', which every match's host[:port] ends with, or "".
func hostSuffix(rest []*syntax.Regexp) string {
	trailing := ""
	for _, el := range rest {
		if el.Op == syntax.OpLiteral && el.Flags&syntax.FoldCase == 0 {
			s := string(el.Rune)
			if i := strings.IndexByte(s, '/'); i >= 0 {
				return trailing + s[:i]
			}
			trailing += s
			continue
		}
		if !noSlash(el) {
			return ""
		}
		trailing = ""
	}
	return ""
}

// noSlash reports whether no string re matches contains '/'.
func noSlash(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpNoMatch, syntax.OpEmptyMatch,
		syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	case syntax.OpLiteral:
		return !slices.Contains(re.Rune, '/') // '/' has no case variants
	case syntax.OpCharClass:
		for i := 0; i+1 < len(re.Rune); i += 2 {
			if re.Rune[i] <= '/' && '/' <= re.Rune[i+1] {
				return false
			}
		}
		return true
	case syntax.OpCapture, syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat,
		syntax.OpConcat, syntax.OpAlternate:
		for _, s := range re.Sub {
			if !noSlash(s) {
				return false
			}
		}
		return true
	}
	return false // AnyChar, AnyCharNotNL and anything new
}

// expand returns every string re matches when that is a short list of
// literals, as for "s?", "(org|com)" or "[sS]".
func expand(re *syntax.Regexp) ([]string, bool) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return []string{""}, true
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		return []string{string(re.Rune)}, true
	case syntax.OpCharClass:
		var out []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			if len(out)+int(re.Rune[i+1]-re.Rune[i])+1 > 4 {
				return nil, false
			}
			for r := re.Rune[i]; r <= re.Rune[i+1]; r++ {
				out = append(out, string(r))
			}
		}
		return out, len(out) > 0
	case syntax.OpCapture:
		return expand(re.Sub[0])
	case syntax.OpQuest:
		s, ok := expand(re.Sub[0])
		if !ok {
			return nil, false
		}
		return dedup(append(s, "")), true
	case syntax.OpAlternate:
		var out []string
		for _, sub := range re.Sub {
			s, ok := expand(sub)
			if !ok {
				return nil, false
			}
			if out = append(out, s...); len(out) > maxExpansions {
				return nil, false
			}
		}
		return dedup(out), true
	case syntax.OpConcat:
		out := []string{""}
		for _, sub := range re.Sub {
			s, ok := expand(sub)
			if !ok {
				return nil, false
			}
			if out, ok = cross(out, s); !ok {
				return nil, false
			}
		}
		return out, true
	}
	return nil, false
}

// cross returns every x+y, or false when there would be too many.
func cross(a, b []string) ([]string, bool) {
	if len(a)*len(b) > maxExpansions {
		return nil, false
	}
	out := make([]string, 0, len(a)*len(b))
	for _, x := range a {
		for _, y := range b {
			out = append(out, x+y)
		}
	}
	return dedup(out), true
}

func dedup(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// ---- radix tree of literal prefixes ----

// A radix tree node holds the candidates filed under the key spelled by the
// path to it. Candidates are encoded as id<<1|sure: sure means the rule is
// "literal prefix, then .*", so reaching the node already proves the match
// unless the rest of the URL holds a newline (which '.' does not match).
type rnode struct {
	cands  []int32
	firsts string  // first byte of each edge's label, ascending
	edges  []redge // in the order of firsts
}

type redge struct {
	label string
	child *rnode
}

func (n *rnode) insert(key string, cand int32) {
	for {
		if key == "" {
			n.cands = append(n.cands, cand)
			return
		}
		i := strings.IndexByte(n.firsts, key[0])
		if i < 0 {
			i = 0
			for i < len(n.firsts) && n.firsts[i] < key[0] {
				i++
			}
			n.firsts = n.firsts[:i] + key[:1] + n.firsts[i:]
			n.edges = slices.Insert(n.edges, i, redge{label: key, child: &rnode{cands: []int32{cand}}})
			return
		}
		e := &n.edges[i]
		common := 0
		for common < len(e.label) && common < len(key) && e.label[common] == key[common] {
			common++
		}
		if common < len(e.label) { // split the edge
			mid := &rnode{firsts: e.label[common : common+1], edges: []redge{{label: e.label[common:], child: e.child}}}
			e.label, e.child = e.label[:common], mid
		}
		n, key = e.child, key[common:]
	}
}

// collect appends the candidates filed under every prefix of s.
func (n *rnode) collect(s string, c []int32) []int32 {
	for {
		c = append(c, n.cands...)
		if s == "" {
			return c
		}
		i := strings.IndexByte(n.firsts, s[0])
		if i < 0 || !strings.HasPrefix(s, n.edges[i].label) {
			return c
		}
		s, n = s[len(n.edges[i].label):], n.edges[i].child
	}
}
