// Package mapper is the label mapper of the paper's Loader VM (sections 3.1,
// 3.3 and 5.2): it maps URLs to security labels. Each VM, dom0 included, runs
// one. A mapper answers from, in order, its cache, its labeling policy (URL
// regex → label), the mappers its miss-handler policy names (regex →
// upstream mapper and the range of labels accepted from it), and finally a
// default label: low secrecy, low integrity (s0/i0) unless the policy says
// otherwise.
//
// # Policy file
//
// The policy store generates policy files from templates. They are plain
// text, one directive per line; blank lines are ignored and "#" starts a
// comment that runs to the end of the line (a "#" counts only at the start
// of a token, so it may appear inside a regex). Tokens are separated by
// spaces or tabs, so a regex cannot hold a space: write \x20 (URLs are
// matched in normalized form, which has no spaces anyway).
//
//	# labeling rules: map <regex> <target>
//	map https://ws-vml\.cse\.psu\.edu/public\.html  root:sysadm_r:analyst_t:s4
//	map https://intranet\.example\.org/hr/.*         system_u:object_r:hr_t:s6:c1 i5
//	map https?://([^/]*\.)?example\.org/.*          s2/i3
//
//	# miss-handler rules: forward <regex> <upstream> <bounds>
//	forward https://.*\.example\.org/.*  http://127.0.0.1:7070      s0-s9/i0-i9
//	forward .*                           unix:/run/mlsgate/map.sock s0-s15/i0-i15
//
//	# optional, at most once: default <target>
//	default s0/i0
//
// A target is either a label, "level/iN" as label.ParseLabel reads it
// ("s3:c1,c2/i5"; the integrity defaults to i0), or an SELinux context
// "user:role:type:level" with a mandatory MLS level, optionally followed by
// a separate integrity token "iN" (default i0). The label of a context is its
// (low) level with that integrity; answers carry both the context and the
// label.
//
// An upstream is a mapper's base URL ("http://127.0.0.1:7070", https works
// too) or "unix:" and an absolute socket path. Bounds are label.ParseBounds
// text ("s0-s9:c0.c3/i0-i5"); an upstream's answer whose label is not
// within them is rejected and counted, and the lookup goes on as if the
// upstream had not known.
//
// Regexes are Go RE2 syntax, at most 4 KiB, and must match the whole
// normalized URL (see NormalizeURL): each is compiled as ^(?:regex)$.
// A file holds at most 100,000 rules, each line at most 64 KiB. The first
// bad line stops parsing with a *ParseError naming the file, the line, the
// token and the fix.
//
// # Lookup order
//
//  1. The cache, keyed by normalized URL (LRU, bounded, with a TTL; default
//     answers live shorter; emptied when the policy changes).
//  2. The first map rule, in file order, whose regex matches.
//  3. Otherwise the forward rules whose regex matches, in file order, at
//     most Config.MaxForwards (3) of them: each upstream is asked in turn,
//     with Config.ForwardTimeout, until one answers with a label inside the
//     rule's bounds. An upstream that fails, times out, answers out of bounds
//     or answers with its own default counts as not knowing.
//  4. Otherwise the default.
//
// Requests between mappers carry a hop count and the IDs of the mappers
// they passed through; a mapper refuses one that already passed through it
// (ErrLoop) or made Config.HopLimit (8) hops (ErrHopLimit), and the asking
// mapper then goes on as if that upstream had not known.
//
// # HTTP API
//
// Mapper.Serve answers GET /v1/label?url=..., POST /v1/lookup
// {"url","hops","via"} (what mappers send each other), GET /v1/stats and
// GET /healthz on any net.Listener, TCP or Unix; see Mapper.Handler. An
// answer is JSON {"url","label","context","source","origin","rule",
// "upstream"}, with source one of rule, upstream, default or cache.
//
// Rules are indexed by the literal prefix and host suffix of their regexes
// (see index.go) so that a lookup runs only a few regexes even at 10,000
// rules; the index returns exactly what a linear first-match scan would.
//
// This package is control-plane code: it uses the standard library and
// package label only, and must not import netlink, ebpf (cilium/ebpf) or
// golang.org/x/sys. It needs no privileges.
package mapper
