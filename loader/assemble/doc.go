// Package assemble assembles a running VMLoad from its parts: the policy store
// and its CA, the pre-loaded pool over a backend, the update daemon's
// client and the host side (agent, host XFRM, host SELinux modules). The
// command line (`mlsgate demo`) and the benchmarks (bench, the paper's
// Table 1) start the loader through Start, so that what is measured is what
// runs.
//
// It lives apart from package loader because it needs the pool, the
// backends and the update daemon's client, which themselves import loader.
// It starts no goroutines and touches the kernel only through the backend
// and the agent it is given.
package assemble
