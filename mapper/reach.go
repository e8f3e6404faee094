package mapper

import (
	"regexp/syntax"
	"slices"
	"sort"
)

// Which hosts a rule can label: the policy store asks, for each labeling
// rule, whether it matches some URL of a server, to give the guest SAs for
// that server's labels and to check them against the server's range.

// CompileAnchored compiles a rule's regular expression as the mapper
// applies it (to the whole URL) into a program TargetsHost can run.
func CompileAnchored(expr string) (*syntax.Prog, error) {
	re, err := syntax.Parse(`^(?:`+expr+`)$`, syntax.Perl)
	if err != nil {
		return nil, err
	}
	return syntax.Compile(re.Simplify())
}

// TargetsHost reports whether the anchored program matches some URL on
// host: "http://host" or "https://host", then nothing, or '/', ':', '?' or
// '#' and anything. It runs the program's NFA over the known prefix
// exactly, then asks whether a match is reachable at all from the states
// left; that second step ignores what the rest would have to be, so the
// answer errs toward "yes" (an extra SA pair, never a missing one).
func TargetsHost(p *syntax.Prog, host string) bool {
	for _, scheme := range []string{"http://", "https://"} {
		if nfaCanComplete(p, scheme+host, []rune{'/', ':', '?', '#'}) {
			return true
		}
	}
	return false
}

// nfaCanComplete runs p over prefix and reports whether prefix alone, or
// prefix followed by one of next and then something, can match.
func nfaCanComplete(p *syntax.Prog, prefix string, next []rune) bool {
	rs := []rune(prefix)
	before := func(i int) rune { // the rune before position i, -1 at the start
		if i == 0 {
			return -1
		}
		return rs[i-1]
	}
	pending := []uint32{uint32(p.Start)}
	for i, r := range rs {
		cur := closure(p, pending, syntax.EmptyOpContext(before(i), r))
		pending = step(p, cur, r)
		if len(pending) == 0 {
			return false
		}
	}
	last := before(len(rs))
	// The URL ends right after the host.
	for _, pc := range closure(p, pending, syntax.EmptyOpContext(last, -1)) {
		if p.Inst[pc].Op == syntax.InstMatch {
			return true
		}
	}
	for _, r := range next {
		after := step(p, closure(p, pending, syntax.EmptyOpContext(last, r)), r)
		if matchReachable(p, after) {
			return true
		}
	}
	return false
}

// closure follows empty transitions from pcs, passing an empty-width
// assertion only when ctx satisfies it, and returns the instructions that
// consume a rune or match.
func closure(p *syntax.Prog, pcs []uint32, ctx syntax.EmptyOp) []uint32 {
	seen := make([]bool, len(p.Inst))
	var out []uint32
	var visit func(pc uint32)
	visit = func(pc uint32) {
		if seen[pc] {
			return
		}
		seen[pc] = true
		in := &p.Inst[pc]
		switch in.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			visit(in.Out)
			visit(in.Arg)
		case syntax.InstCapture, syntax.InstNop:
			visit(in.Out)
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(in.Arg)&^ctx == 0 {
				visit(in.Out)
			}
		case syntax.InstFail:
		default: // InstRune*, InstMatch
			out = append(out, pc)
		}
	}
	for _, pc := range pcs {
		visit(pc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// step consumes r from the rune instructions in pcs.
func step(p *syntax.Prog, pcs []uint32, r rune) []uint32 {
	var out []uint32
	for _, pc := range pcs {
		in := &p.Inst[pc]
		if in.Op != syntax.InstMatch && in.MatchRune(r) {
			out = append(out, in.Out)
		}
	}
	return out
}

// matchReachable reports whether InstMatch can be reached from pcs along
// any path, taking every rune instruction and assertion as passable.
func matchReachable(p *syntax.Prog, pcs []uint32) bool {
	seen := make([]bool, len(p.Inst))
	stack := slices.Clone(pcs)
	for len(stack) > 0 {
		pc := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[pc] {
			continue
		}
		seen[pc] = true
		in := &p.Inst[pc]
		switch in.Op {
		case syntax.InstMatch:
			return true
		case syntax.InstFail:
		case syntax.InstAlt, syntax.InstAltMatch:
			stack = append(stack, in.Out, in.Arg)
		default:
			stack = append(stack, in.Out)
		}
	}
	return false
}
