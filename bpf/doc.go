// Package bpf holds the fast path: the C programs in fastpath.c and lib/, the Go
// code bpf2go generates from them (every struct shared with C comes from there,
// never from a hand copy), and the thin Go layer that loads them and turns a
// verdict.Policy into map contents.
//
// Planning is pure (Plan); only Load and (*Maps).Apply touch the kernel.
// Regenerate with `make generate` (clang-19); the output is committed.
package bpf
