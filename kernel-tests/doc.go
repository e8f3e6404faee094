// Package kerneltests holds the privileged tests of mlsgate: the fast path run
// through BPF_PROG_TEST_RUN against its Go reference, and real traffic between
// network namespaces joined by veth pairs whose host ends are named like Xen vifs.
//
// Every test is named TestPrivileged…, starts with requirePrivileged (it skips,
// with the reason, unless run as root), runs in a network namespace of its own
// and removes what it made. `make test-kernel` runs them.
package kerneltests
