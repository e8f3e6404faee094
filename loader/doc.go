// Package loader is VMLoad (the paper's sections 3.2 and 5.2.1): it
// authorizes requests to load a web application, runs the configuration
// phase (resolve, authorize, acquire a guest, bundle, compliance, push the
// guest's policy, apply the host's) with a timing per step and a rollback
// on failure, and serves POST /v1/load to the host and to guests.
//
// Trust: the host asks on a Unix socket; each guest asks on a listener of
// its own (GuestListeners: its host-side address, bound to its interface,
// never the wildcard address), and is the guest of the listener its
// request arrived on. Guests' requests are limited (Limits: a token bucket,
// active loads per guest and per application, fresh guests per guest, a
// required and bounded request id, a bounded replay cache); refusals are
// counted in mlsgate_loader_refusals_total{reason}. A guest whose destroy
// failed is isolated (Host.Isolate: declared deny-all), held (Held, GET
// /v1/status) and destroyed again, never forgotten while it may run.
//
// Its parts: backend (netns, QEMU, Xen), pool (the pre-loaded guests),
// updated (the in-guest update daemon and its client), wire (the parts put
// together: certificates revoked at teardown, the CRL published and pushed
// with bundles). Kernel-facing code stays in the backends and the agent,
// behind small interfaces; the one exception is ListenGuest's
// SO_BINDTODEVICE.
package loader
