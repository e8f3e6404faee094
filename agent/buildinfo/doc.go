// Package buildinfo reports what binary is running: the module version, the
// VCS revision, time and modified flag stamped by the Go toolchain, and the Go
// version, for 'mlsgate version', the start-up log line of every daemon and
// the mlsgate_build_info metric. It reads runtime/debug only and imports
// nothing of mlsgate.
package buildinfo
