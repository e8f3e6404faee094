package bpf

// Clang flags and the compiler come from the Makefile (BPF2GO_CC, BPF2GO_STRIP,
// BPF2GO_CFLAGS): run `make generate`, not go generate directly.
//go:generate go tool bpf2go -target bpfel -type mls_label -type vif -type sa -type sa_key -type peer_key -type peer -type counter -type event -type reason -type direction -type vif_flag -type sa_flag -type peer_kind -type peer_flag -type label_accepts Fastpath fastpath.c
//go:generate go tool bpf2go -target bpfel FastpathTest fastpath_test.c
