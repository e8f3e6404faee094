// Package compliance checks that one information-flow policy permits no flow
// that another forbids: the paper's policy compliance (Rueda, Sreenivasan,
// Jaeger, CSAW'08, section 4). A policy is compliant with another when every
// flow the first authorizes is authorized by the second.
//
// # Model
//
// A policy is a Relation: a list of Rules, each saying that information may
// flow from an entity (an SELinux type, a guest, a web server) holding a label
// in FromLabels to an entity holding a label in ToLabels. A rule is either a
// product rule (any label of FromLabels to any label of ToLabels, which is what
// an SELinux allow rule grants between two types whose instances may hold any
// label of their bounds) or a SameLabel rule (one label L in both bounds, the
// data keeping its label, as labeled IPsec carries it).
//
// The reference is a System: the MLS lattice (a flow from A to B is permitted
// when B's secrecy dominates A's, no read-up and no write-down, and A's
// integrity is at least B's, Biba's no write-up) plus optional bounds per
// entity that its data must stay within. Because the lattice order is
// transitive, a relation whose every direct flow is permitted also permits no
// forbidden indirect flow, so checking rules one by one is enough.
//
// Every check is exact and symbolic: label bounds are intervals of a product
// lattice, so "every pair of labels of a rule is permitted" and "an interval
// lies within another" reduce to a few dominance tests on the interval ends,
// and a Violation names a concrete offending flow (a witness) rather than a
// range. Subset, which must also see when several rules together cover one,
// splits intervals into boxes instead (see Subset), exact within a work
// budget past which it answers "not covered". Labels are never enumerated;
// the tests enumerate a small lattice to hold the symbolic answers equal to
// brute force.
//
// # The paper's two checks
//
// Application compliance (section 4.1, via PIDSI): a trusted program's SELinux
// module (ParseTE) is turned into flows (Module.Flows) using labels per type in
// which program components (executables, configuration) get a higher integrity
// than the data the program processes (Program Integrity Dominates System
// Integrity). CheckPIDSI then checks those flows against the guest's system
// policy: a program reading its configuration is a flow down in integrity and
// is permitted; a program writing its executable or configuration from data is
// a flow up in integrity and is reported.
//
// VM compliance (section 4.2): the flows of a guest bundle (its SELinux and
// XFRM policies, as rules) are checked against the host's system policy, either
// against the lattice (Check) or against the host's own relation given as rules
// (Subset).
//
// The package is pure decision logic: it uses the standard library and the
// label package only, and must not import netlink, ebpf (cilium/ebpf) or
// golang.org/x/sys. It never runs checkpolicy; ParseTE reads the small subset
// of the module language that the policy store generates.
package compliance
