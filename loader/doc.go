// Package loader is VMLoad (the paper's sections 3.2 and 5.2.1): it
// authorizes requests to load a web application, runs the configuration
// phase (resolve, authorize, acquire a guest, bundle, compliance, push the
// guest's policy, apply the host's) with a timing per step and a rollback
// on failure, and serves POST /v1/load to the host and to guests.
//
// Its parts: backend (netns, QEMU, Xen), pool (the pre-loaded guests),
// updated (the in-guest update daemon and its client). Kernel-facing code
// stays in the backends and the agent, behind small interfaces.
package loader
