package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// One agent per pin directory. Two agents on the same pins undo each
// other's work (the second detaches the first one's guests and empties
// vifs while the first still reports them attached), so the agent holds an
// exclusive flock(2) on the pin directory itself for its whole life, and
// 'agent cleanup' takes the same lock before removing anything.
//
// The lock is on the directory, not on a lock file beside it: bpffs holds
// no regular files (creating one fails with EPERM), and a lock file
// elsewhere would be a different file for two spellings of the same
// directory. The kernel drops the lock when the holder dies, so a crash
// leaves no stale lock; the holder's pid, for the error message, comes from
// /proc/locks, which lists every flock with its owner and inode.

// BPFFSMagic is the statfs f_type of a bpffs (BPF_FS_MAGIC).
const BPFFSMagic = unix.BPF_FS_MAGIC

var (
	// ErrPinDirInUse is returned when another process (an agent, or a
	// cleanup) holds the pin directory.
	ErrPinDirInUse = errors.New("pin directory in use")
	// ErrNothingPinned is returned by OpenPinDir without create when the
	// directory does not exist.
	ErrNothingPinned = errors.New("nothing pinned")
	// ErrNotBPFFS is returned for a pin directory on another filesystem.
	ErrNotBPFFS = errors.New("not on a bpffs")
)

// PinLock is a pin directory held exclusively. Close releases it.
type PinLock struct {
	dir string
	fd  int
}

// Dir is the locked directory.
func (l *PinLock) Dir() string { return l.dir }

// Close releases the lock.
func (l *PinLock) Close() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// LockPinDir takes the pin directory dir for this process: it creates dir
// (0700) if create is set, refuses a directory that is not on a bpffs or is
// a symbolic link, and takes an exclusive, non-blocking flock on it. A
// directory another process holds is ErrPinDirInUse, naming its pid.
func LockPinDir(dir string, create bool) (*PinLock, error) {
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("pin directory %s: %w (is bpffs mounted on /sys/fs/bpf?)", dir, err)
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("%w at %s: the directory does not exist (check --pin-dir)", ErrNothingPinned, dir)
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		// O_DIRECTORY|O_NOFOLLOW on a symbolic link fails with ENOTDIR.
		if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return nil, fmt.Errorf("pin directory %s is a symbolic link; give the real bpffs directory", dir)
		}
		return nil, fmt.Errorf("pin directory %s is not a directory", dir)
	case err != nil:
		return nil, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type != BPFFSMagic {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is %w (filesystem magic %#x, want %#x): it holds no pins; give the agent's pin directory under a bpffs mount such as /sys/fs/bpf", dir, ErrNotBPFFS, fs.Type, BPFFSMagic)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := pinDirHolder(fd)
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := "another process"
			if holder > 0 {
				who = "pid " + strconv.Itoa(holder)
				if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", holder)); err == nil {
					who += " (" + strings.TrimSpace(string(comm)) + ")"
				}
			}
			return nil, fmt.Errorf("%w: %s is held by %s, an mlsgate agent or cleanup; stop it first (systemctl stop mlsgate-agent), or give this one another pin directory", ErrPinDirInUse, dir, who)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return &PinLock{dir: dir, fd: fd}, nil
}

// pinDirHolder finds the pid holding a flock on the directory open as fd
// in /proc/locks; 0 when it cannot tell.
func pinDirHolder(fd int) int {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseLocks(bufio.NewScanner(f), unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

// parseLocks reads /proc/locks lines such as
//
//	1: FLOCK  ADVISORY  WRITE 13503 00:28:27245 0 EOF
//
// (the device in hex major:minor, the inode in decimal) and returns the pid
// of the granted flock on that inode; waiters ("1: -> FLOCK ...") are
// skipped.
func parseLocks(sc *bufio.Scanner, major, minor uint32, ino uint64) int {
	want := fmt.Sprintf("%02x:%02x:%d", major, minor, ino)
	for n := 0; sc.Scan() && n < 1<<16; n++ {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		if !strings.EqualFold(f[5], want) {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
