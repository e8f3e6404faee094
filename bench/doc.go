// Package bench measures mlsgate against baselines taken in the same run and
// reports ratios, never bare numbers: the per-packet cost of the fast path
// against an empty tc program (BPF_PROG_TEST_RUN), and, as the harness grows,
// real traffic, VM start (the paper's Table 1) and the control plane.
//
// Measurements need root; tests here never assert on time.
package bench
