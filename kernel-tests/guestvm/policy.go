package guestvm

import (
	"context"
	"fmt"
	"strings"
)

// The MLS lattice of the guest policy, as DESIGN.md fixes it.
const (
	Sensitivities = 16   // s0–s15
	Categories    = 1024 // c0–c1023
)

// The contexts the guest policy defines for tests.
const (
	// RunnerContext is the domain the init runs the test binary in: it may
	// set any context on sockets, SAs and SPD entries, and is exempt from
	// the MLS network constraints, like an unconfined administrator.
	RunnerContext = "system_u:system_r:runner_t:s0-s15:c0.c1023"
	// OutsiderType is a domain with no association permission at all: its
	// sockets match no labeled XFRM policy in enforcing mode.
	OutsiderType = "outsider_t"
)

// PolicyApplications are the applications the guest policy declares types
// for, as the policy store names them: "<app>_t" labels processes, sockets
// and SAs (system_u:system_r:analyst_t:s4), "<app>_spd_t" the XFRM policies
// of the application (system_u:object_r:analyst_spd_t:s0-s15).
var PolicyApplications = []string{"analyst", "osint"}

// initialSIDs are the kernel's initial security identifiers in the order of
// its table (security/selinux/include/initial_sid_to_string.h); a policy must
// declare them in this order.
var initialSIDs = []string{
	"kernel", "security", "unlabeled", "fs", "file", "file_labels", "init",
	"any_socket", "port", "netif", "netmsg", "node", "igmp_packet", "icmp_socket",
	"tcp_socket", "sysctl_modprobe", "sysctl", "sysctl_fs", "sysctl_kernel",
	"sysctl_net", "sysctl_net_unix", "sysctl_vm", "sysctl_dev", "kmod", "policy",
	"scmp_packet", "devnull",
}

// The classes the policy declares, with the kernel's permission names. Every
// other class is unknown to the policy and allowed (checkpolicy -U allow),
// so files, sockets, capabilities and BPF work as without SELinux, and only
// processes and labeled networking are enforced.
var policyClasses = []struct{ name, perms string }{
	{"process", "fork transition sigchld sigkill sigstop signull signal ptrace getsched setsched getsession getpgid setpgid getcap setcap share getattr setexec setfscreate noatsecure siginh setrlimit rlimitinh dyntransition setcurrent execmem execstack execheap setkeycreate setsockcreate getrlimit"},
	{"association", "sendto recvfrom setcontext polmatch"},
	{"packet", "send recv relabelto forward_in forward_out"},
	{"peer", "recv"},
}

// labeledFilesystems get one context for every file (genfscon); the
// policy labels nothing finer.
var labeledFilesystems = []string{
	"rootfs", "ramfs", "tmpfs", "devtmpfs", "proc", "sysfs", "selinuxfs",
	"securityfs", "debugfs", "tracefs", "bpf", "9p", "cgroup2", "nsfs",
}

// PolicySource returns the text of the guest's SELinux policy (policy.conf
// syntax): the full MLS lattice (s0–s15, c0–c1023), an unconfined kernel
// and runner domain, for every application in PolicyApplications a process
// type and an SPD type with the association rules the policy store's host
// module grants (polmatch, sendto, recvfrom, peer recv), and a domain with no
// association rights (outsider_t). MLS constraints: a flow matches an XFRM
// policy only when its level lies in the policy's range, and a socket
// receives only packets its level dominates. The text is deterministic.
func PolicySource() string { return policySource(PolicyApplications, false) }

// BasePolicySource returns the base of the guest's SELinux module store
// (StoreDir in the image): the lattice, the constraints, the kernel, runner
// and outsider domains of PolicySource, but no application: an
// application's types come only from the module of its bundle, which the
// update daemon installs with semodule. It also declares, with the
// permissions the policy store's guest module requires, the object classes
// that module names (files, directories, local and network sockets), and
// lets every domain use them on its own objects, files and unlabeled
// objects. The text is deterministic.
func BasePolicySource() string { return policySource(nil, true) }

// moduleClasses are the classes the policy store's guest module requires
// (policystore/templates/guest.te.tmpl), with the permissions it names:
// semodule refuses a module whose require block the base does not satisfy.
var moduleClasses = []struct{ name, perms string }{
	{"file", "create read write append getattr setattr open lock ioctl unlink rename execute execute_no_trans entrypoint map"},
	{"dir", "create read write getattr setattr open search add_name remove_name rmdir"},
	{"lnk_file", "read getattr"},
	{"fifo_file", "read write getattr open"},
	{"unix_stream_socket", "create connect read write getattr setopt getopt shutdown bind"},
	{"tcp_socket", "create connect read write getattr setopt getopt shutdown bind"},
	{"udp_socket", "create connect read write getattr setopt getopt shutdown bind"},
}

func policySource(apps []string, base bool) string {
	classes := policyClasses
	if base {
		classes = append(append(classes[:0:0], policyClasses...), moduleClasses...)
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	if base {
		w("# mlsgate guest base policy, generated by kernel-tests/guestvm (BasePolicySource).")
	} else {
		w("# mlsgate guest test policy, generated by kernel-tests/guestvm (PolicySource).")
	}
	for _, c := range classes {
		w("class %s", c.name)
	}
	for _, s := range initialSIDs {
		w("sid %s", s)
	}
	for _, c := range classes {
		w("class %s { %s }", c.name, c.perms)
	}

	sens := make([]string, Sensitivities)
	for i := range sens {
		sens[i] = fmt.Sprintf("s%d", i)
		w("sensitivity %s;", sens[i])
	}
	w("dominance { %s }", strings.Join(sens, " "))
	for i := 0; i < Categories; i++ {
		w("category c%d;", i)
	}
	top := fmt.Sprintf("c0.c%d", Categories-1)
	for _, s := range sens {
		w("level %s:%s;", s, top)
	}
	// A socket or SA matches an SPD entry only at a level within its range.
	w("mlsconstrain association { polmatch } ( l1 dom l2 and l1 domby h2 );")
	// No read up: a socket receives only packets its level dominates.
	w("mlsconstrain peer { recv } ( l1 dom l2 or t1 == unconfined );")
	w("policycap network_peer_controls;")

	w("attribute domain;")
	w("attribute unconfined;")
	w("attribute sa_type;")
	w("attribute spd_type;")
	w("type kernel_t, domain, unconfined;")
	w("type runner_t, domain, unconfined;")
	w("type unlabeled_t;")
	w("type file_t;")
	w("type %s, domain;", OutsiderType)
	for _, app := range apps {
		w("type %s_t, domain, sa_type;", app)
		w("type %s_spd_t, spd_type;", app)
	}
	w("role system_r;")
	w("role system_r types domain;")

	w("# Processes: the unconfined domains do anything to any process (the init")
	w("# execs the runner with a transition); every domain manages itself.")
	w("allow unconfined domain:process *;")
	w("allow domain self:process *;")
	w("# The unconfined domains label SAs and SPD entries and use any of them.")
	w("allow unconfined { domain spd_type unlabeled_t }:association *;")
	w("allow unconfined { domain unlabeled_t }:peer recv;")
	w("allow unconfined { domain unlabeled_t }:packet *;")
	w("# Every domain may send and receive in clear.")
	w("allow domain unlabeled_t:association { sendto recvfrom };")
	w("allow domain unlabeled_t:peer recv;")
	w("allow domain unlabeled_t:packet *;")
	if base {
		var names []string
		for _, c := range moduleClasses {
			names = append(names, c.name)
		}
		w("# Files and sockets: every domain uses its own, the files and unlabeled objects.")
		w("allow domain { domain file_t unlabeled_t }:{ %s } *;", strings.Join(names, " "))
	}
	for _, app := range apps {
		w("# %s: as the policy store's host module grants it.", app)
		w("allow %s_t %s_spd_t:association polmatch;", app, app)
		w("allow %s_t self:association { sendto recvfrom };", app)
		w("allow %s_t self:peer recv;", app)
		w("allow %s_t self:packet *;", app)
	}

	full := fmt.Sprintf("s0 - s%d:%s", Sensitivities-1, top)
	w("user system_u roles { system_r } level s0 range %s;", full)
	for _, s := range initialSIDs {
		switch s {
		case "kernel", "init":
			w("sid %s system_u:system_r:kernel_t:%s", s, full)
		case "file", "devnull", "fs", "file_labels":
			w("sid %s system_u:object_r:file_t:s0", s)
		default:
			w("sid %s system_u:object_r:unlabeled_t:s0", s)
		}
	}
	w("fs_use_task pipefs system_u:object_r:file_t:s0;")
	w("fs_use_task sockfs system_u:object_r:file_t:s0;")
	for _, fs := range labeledFilesystems {
		w("genfscon %s / system_u:object_r:file_t:s0", fs)
	}
	return b.String()
}

// CompilePolicy compiles the policy.conf at src into a binary MLS policy of
// version 33 (what Debian's 6.1 kernel loads) at dst, with unknown classes
// allowed.
func CompilePolicy(ctx context.Context, src, dst string) error {
	if err := run(ctx, "", nil, "checkpolicy", "-M", "-U", "allow", "-c", "33", "-o", dst, src); err != nil {
		return fmt.Errorf("compile the guest policy %s: %w", src, err)
	}
	return nil
}
