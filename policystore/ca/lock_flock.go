//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package ca

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// lockDir takes the directory's lock. Here it is an exclusive, non-blocking
// flock(2) on dir/LOCK: the kernel drops it when the holder exits or
// crashes, so there are no stale locks. The file is never removed (removing
// a flock file lets two processes lock two different inodes); the holder
// writes its pid into it for the error message only.
func lockDir(dir string) (release func() error, err error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ca: open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid := readHolder(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, inUse(dir, pid, "stop that process (or Close its CA) first")
		}
		return nil, fmt.Errorf("ca: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		// Best effort: the pid only improves the in-use message.
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	// Closing the descriptor releases the flock.
	return f.Close, nil
}
