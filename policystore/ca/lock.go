package ca

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// lockName is the lock file inside a CA directory.
const lockName = "LOCK"

// ErrInUse is returned by Open when another CA value, in this process or
// another, holds the directory.
var ErrInUse = errors.New("CA directory in use")

// readHolder returns the pid written in a lock file, or 0 if the file holds
// none (the holder may be between creating and writing it).
func readHolder(r io.Reader) int {
	b, err := io.ReadAll(io.LimitReader(r, 32))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// inUse builds the error for a directory held by pid (0: unknown).
func inUse(dir string, pid int, fix string) error {
	who := "another process"
	if pid > 0 {
		who = "pid " + strconv.Itoa(pid)
	}
	return fmt.Errorf("ca: %s: %w by %s; %s", dir, ErrInUse, who, fix)
}

// lockExcl holds dir/LOCK by creating it with O_EXCL and writing the pid
// into it; release removes it. A process that dies while holding it leaves
// the file behind, and the error says to remove it. It is the fallback on
// systems without flock(2).
func lockExcl(dir string) (release func() error, err error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		pid := 0
		if g, err := os.Open(path); err == nil {
			pid = readHolder(g)
			g.Close()
		}
		return nil, inUse(dir, pid, "remove "+path+" if that process is gone")
	}
	if err != nil {
		return nil, fmt.Errorf("ca: create lock file: %w", err)
	}
	_, werr := f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return nil, fmt.Errorf("ca: write lock file %s: %w", path, werr)
	}
	return func() error { return os.Remove(path) }, nil
}
