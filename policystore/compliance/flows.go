package compliance

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mlsgate/mlsgate/label"
)

// Direction is which way information moves when a subject (the rule's
// source type) uses a permission on an object (its target type).
type Direction uint8

// Directions of permissions. Both is the conservative answer.
const (
	// None: the permission moves no information between the two types.
	None Direction = iota
	// Read: information flows from the target to the source.
	Read
	// Write: information flows from the source to the target.
	Write
	// Both: information may flow either way.
	Both = Read | Write
)

// String prints "none", "read", "write" or "both".
func (d Direction) String() string {
	return [...]string{"none", "read", "write", "both"}[d&Both]
}

// permDirection classifies SELinux permissions by the direction of the
// information flow they allow, for every class alike.
//
// Source: the flask permission semantics as the setools permission map
// (SELinuxProject/setools, setools/perm_map, the map Apol's information-flow
// analysis uses) records them, as read, write, both or none per class and
// permission. One direction per permission name is kept for all classes;
// where classes disagree (shm lock is write, file lock none) the union is
// taken. The map's "none" is kept only where no data can move between the
// two types (noneClasses and the None entries below); permissions it calls
// "none" that can carry data are given a direction here:
//
//	ioctl, lock, quotaon, mounton, share, ptrace, use, rmdir: both
//	open, signull, polmatch, execmod: read (they reveal the object's state)
//	fork, setrlimit, siginh, rlimitinh, noatsecure: write (the source
//	shapes the target process)
//
// A permission missing from the table is treated as Both (see classify):
// an unknown permission may move data either way.
var permDirection = map[string]Direction{
	// Read: the object's content or state reaches the subject.
	"read": Read, "getattr": Read, "execute": Read, "execute_no_trans": Read,
	"entrypoint": Read, "search": Read, "audit_access": Read, "open": Read,
	"execmod": Read, "watch": Read, "watch_mount": Read, "watch_sb": Read,
	"watch_with_perm": Read, "watch_reads": Read, "relabelfrom": Read,
	"recv": Read, "recvfrom": Read, "receive": Read, "recv_msg": Read,
	"accept": Read, "listen": Read, "getopt": Read, "nlmsg_read": Read,
	"nlmsg_readpriv": Read, "unix_read": Read, "view": Read, "quotaget": Read,
	"forward_in": Read, "flow_in": Read, "ingress": Read, "polmatch": Read,
	"getsession": Read, "getsched": Read, "getpgid": Read, "getcap": Read,
	"getrlimit": Read, "signull": Read, "ipc_info": Read, "syslog_read": Read,
	"status": Read, "tcp_recv": Read, "udp_recv": Read, "rawip_recv": Read,
	"dccp_recv": Read,

	// Write: the subject's data or will reaches the object.
	"write": Write, "append": Write, "create": Write, "setattr": Write,
	"unlink": Write, "link": Write, "rename": Write, "add_name": Write,
	"remove_name": Write, "reparent": Write, "relabelto": Write,
	"send": Write, "sendto": Write, "send_msg": Write, "connectto": Write,
	"connect": Write, "name_connect": Write, "bind": Write, "setopt": Write,
	"shutdown": Write, "nlmsg_write": Write, "nlmsg_relay": Write,
	"nlmsg_tty_audit": Write, "unix_write": Write, "enqueue": Write,
	"destroy": Write, "setcontext": Write, "forward_out": Write,
	"flow_out": Write, "egress": Write, "quotamod": Write, "mount": Write,
	"remount": Write, "unmount": Write, "transition": Write,
	"dyntransition": Write, "fork": Write, "signal": Write, "sigkill": Write,
	"sigstop": Write, "sigchld": Write, "setexec": Write, "setfscreate": Write,
	"setkeycreate": Write, "setsockcreate": Write, "setcurrent": Write,
	"setsched": Write, "setpgid": Write, "setcap": Write, "setrlimit": Write,
	"siginh": Write, "rlimitinh": Write, "noatsecure": Write,
	"module_request": Write, "module_load": Write, "syslog_mod": Write,
	"syslog_console": Write, "tcp_send": Write, "udp_send": Write,
	"rawip_send": Write, "dccp_send": Write,

	// Both.
	"ioctl": Both, "lock": Both, "quotaon": Both,
	"mounton": Both, "share": Both, "ptrace": Both, "use": Both,
	"rmdir": Both, "acquire_svc": Both,

	// None: binding to a port or node label, attaching a label to a file
	// system or IPC key, and the protections of a process's own memory.
	// map is checked on mmap in addition to read, write or execute for
	// the mapping's protection, so it grants no flow of its own.
	"name_bind": None, "node_bind": None, "associate": None,
	"execmem": None, "execstack": None, "execheap": None, "map": None,
}

// noneClasses hold privileges of the subject itself (target self); they
// move no data between types. The flows a capability enables still need
// allow rules on the objects, which are checked.
var noneClasses = map[string]bool{
	"capability": true, "capability2": true, "cap_userns": true, "cap2_userns": true,
}

// Classify returns the direction of information flow of permission perm of
// class class, and whether the table knows it. An unknown permission is
// Both: it may move data either way, so treating it as both keeps the check
// sound at the price of false alarms.
func Classify(class, perm string) (Direction, bool) {
	if noneClasses[class] {
		return None, true
	}
	d, ok := permDirection[perm]
	if !ok {
		return Both, false
	}
	return d, true
}

// ErrUnlabeled is matched by Flows' error when a type has no label.
var ErrUnlabeled = errors.New("type has no label")

// Flows turns the module's allow rules into a Relation. labels gives each
// type (not alias) the labels its subjects and objects may hold; under PIDSI
// program components (executables, configuration) get a higher integrity
// than the data the program works on.
//
// Each allow rule gives, for each source type S and target type T ("self"
// is S), a rule T → S when it grants a read-like permission and a rule
// S → T when it grants a write-like one (see Classify; "*" and "~{...}" grant
// both), with Source "file:line" and Via naming the permissions. The rules
// are product rules: TE alone does not keep labels equal, so any label of
// one type's bounds may meet any label of the other's. Give types single
// labels for the most precise answer; a type with a range counts as holding
// every label of it at once.
//
// A type used by a rule with no entry in labels is an error naming it and
// the line (errors.Is ErrUnlabeled).
func (m Module) Flows(labels map[string]label.Bounds) (Relation, error) {
	var rel Relation
	var errs []error
	missing := map[string]bool{}
	lookup := func(typ string, line int) (label.Bounds, bool) {
		b, ok := labels[typ]
		if !ok && !missing[typ] {
			missing[typ] = true
			errs = append(errs, fmt.Errorf("%s:%d: type %q has no label: give it bounds such as \"s0/i0\" in the labels: %w", m.File, line, typ, ErrUnlabeled))
		}
		return b, ok
	}
	for _, r := range m.Allows {
		reads, writes := r.directions()
		if reads == "" && writes == "" {
			continue
		}
		src := fmt.Sprintf("%s:%d", m.File, r.Line)
		var seen [][2]string
		for _, sName := range r.Sources {
			s := m.resolve(sName)
			for _, tName := range r.Targets {
				t := s
				if tName != "self" {
					t = m.resolve(tName)
				}
				if slices.Contains(seen, [2]string{s, t}) {
					continue
				}
				seen = append(seen, [2]string{s, t})
				sb, ok1 := lookup(s, r.Line)
				tb, ok2 := lookup(t, r.Line)
				if !ok1 || !ok2 {
					continue
				}
				if reads != "" {
					rel = append(rel, Rule{From: t, To: s, FromLabels: tb, ToLabels: sb, Source: src, Via: reads})
				}
				if writes != "" {
					rel = append(rel, Rule{From: s, To: t, FromLabels: sb, ToLabels: tb, Source: src, Via: writes})
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rel, nil
}

// directions describes the rule's read-like and write-like permissions per
// class, e.g. "read: file { read getattr }"; "" when it has none.
func (r AVRule) directions() (reads, writes string) {
	var rd, wr []string
	for _, c := range r.Classes {
		var cr, cw []string
		if r.AllPerms {
			if !noneClasses[c] {
				cr, cw = []string{"*"}, []string{"*"}
			}
		}
		for _, p := range r.Perms {
			d, known := Classify(c, p)
			if !known {
				p += "(unclassified)"
			}
			if d&Read != 0 {
				cr = append(cr, p)
			}
			if d&Write != 0 {
				cw = append(cw, p)
			}
		}
		if len(cr) > 0 {
			rd = append(rd, c+" "+braced(cr))
		}
		if len(cw) > 0 {
			wr = append(wr, c+" "+braced(cw))
		}
	}
	if len(rd) > 0 {
		reads = "read: " + strings.Join(rd, ", ")
	}
	if len(wr) > 0 {
		writes = "write: " + strings.Join(wr, ", ")
	}
	return reads, writes
}

// CheckPIDSI checks a trusted program's policy module against the system
// policy of its VM, the paper's application compliance: Check of the
// module's flows under labels (see Module.Flows). With PIDSI labels a
// program reading its configuration is a flow down in integrity and
// complies; a program writing its executable or configuration from data is
// a write-up and is reported. If the module's flows cannot be built (a type
// without a label) the result is one PolicyError violation: what cannot be
// checked does not comply.
//
// sys.Entities, when given, bounds each type's labels (e.g. by the VM's
// range, the paper's first condition); with AllowUnknown only the lattice
// applies.
func CheckPIDSI(sys System, mod Module, labels map[string]label.Bounds) []Violation {
	rel, err := mod.Flows(labels)
	if err != nil {
		return []Violation{{Kind: PolicyError, Rule: Rule{Source: mod.File}, Reason: err.Error()}}
	}
	return Check(sys, rel)
}

// ErrMLSExempt marks a module that exempts a type from the OS's MLS
// constraints, so that FlowsMLS cannot rely on them.
var ErrMLSExempt = errors.New("type exempt from MLS constraints")

// FlowsMLS is Flows for a module loaded into an OS that enforces MLS
// constraints, as an SELinux MLS policy does: every rule is SameSecrecy,
// because the kernel lets a process write only at its own level and read
// only at or below it, whatever the allow rules say. The lattice check is
// then about integrity, which SELinux does not enforce: the split the
// paper's PIDSI assumes. Types may keep their whole secrecy range.
//
// The assumption fails for a type the module places in an MLS-exempt
// attribute (refpolicy's mlstrustedsubject, mlstrustedobject,
// mlsfilewrite, ... all start with "mls"): that is an error naming the type
// and the attribute (errors.Is ErrMLSExempt). Attributes given to required
// types by other modules are outside what one module can show.
func (m Module) FlowsMLS(labels map[string]label.Bounds) (Relation, error) {
	var errs []error
	types := make([]string, 0, len(m.TypeAttributes))
	for t := range m.TypeAttributes {
		types = append(types, t)
	}
	slices.Sort(types)
	for _, t := range types {
		for _, a := range m.TypeAttributes[t] {
			if strings.HasPrefix(a, "mls") {
				errs = append(errs, fmt.Errorf("%s: type %q has attribute %q, which exempts it from MLS constraints: drop the attribute or check the module with Flows: %w", m.File, t, a, ErrMLSExempt))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	rel, err := m.Flows(labels)
	if err != nil {
		return nil, err
	}
	for i := range rel {
		rel[i].SameSecrecy = true
	}
	return rel, nil
}

// CheckPIDSIMLS is CheckPIDSI under MLS constraints (FlowsMLS): the check
// for a guest whose kernel enforces secrecy, leaving integrity to PIDSI.
func CheckPIDSIMLS(sys System, mod Module, labels map[string]label.Bounds) []Violation {
	rel, err := mod.FlowsMLS(labels)
	if err != nil {
		return []Violation{{Kind: PolicyError, Rule: Rule{Source: mod.File}, Reason: err.Error()}}
	}
	return Check(sys, rel)
}
