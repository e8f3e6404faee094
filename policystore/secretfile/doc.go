// Package secretfile creates the files that hold keys and policy state so
// that no other local user can read them, plant them or redirect them.
//
// The rules, for every caller (bundles, the CA, the agent's desired state,
// the update daemon's state, the store and pool databases):
//
//   - A directory is created 0700. An existing one is used only if it is a
//     real directory (not a symbolic link), owned by the running uid, and
//     not writable by group or others (else another user may have planted
//     something in it); its group and other read bits are then taken away.
//     An output directory (CreateEmpty) must be 0700 already and empty.
//   - A directory is opened once, as an os.Root, and every file is named
//     relative to that descriptor: renaming the path away and putting a
//     symbolic link in its place after the checks changes nothing.
//   - A new file is opened O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: a planted
//     file or symbolic link makes the write fail instead of being followed
//     or reused with its planted mode.
//   - A rewritten file is written to a temporary file in the same
//     directory, synced, renamed over the old one, and the directory
//     synced, so a crash leaves the old file or the new, never half.
//   - A file read back must be a regular file owned by the running uid and
//     not writable by group or others, opened with O_NOFOLLOW.
//
// It lives under policystore because the policy store's CA is the lowest
// layer that writes secrets, and the pure packages (policystore, mapper,
// label) may import it: it uses the standard library only (os.Root and the
// syscall package's O_NOFOLLOW and Stat_t), never golang.org/x/sys,
// netlink or ebpf. The agent, the loader and the commands import it too.
package secretfile
