package bpf

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLocks(t *testing.T) {
	locks := `1: POSIX  ADVISORY  WRITE 900 00:28:27245 0 EOF
2: FLOCK  ADVISORY  WRITE 13503 00:28:27245 0 EOF
2: -> FLOCK  ADVISORY  WRITE 777 00:28:27245 0 EOF
3: FLOCK  ADVISORY  WRITE 42 103:02:27245 0 EOF
`
	for _, tc := range []struct {
		major, minor uint32
		ino          uint64
		want         int
	}{
		{0, 0x28, 27245, 13503},
		{0x103, 2, 27245, 42},
		{0, 0x28, 1, 0},
	} {
		if got := parseLocks(bufio.NewScanner(strings.NewReader(locks)), tc.major, tc.minor, tc.ino); got != tc.want {
			t.Errorf("parseLocks(%x:%x:%d) = %d, want %d", tc.major, tc.minor, tc.ino, got, tc.want)
		}
	}
}

// TestLockPinDirRefusesWithoutPrivileges: the checks before the lock need
// no privileges: a missing directory is "nothing pinned", a directory on
// another filesystem is refused and left alone, and so is a symlink.
func TestLockPinDirRefusesWithoutPrivileges(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := LockPinDir(missing, false); !errors.Is(err, ErrNothingPinned) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing directory: %v, want ErrNothingPinned naming it", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LockPinDir without create made %s", missing)
	}
	if _, err := LockPinDir(dir, false); !errors.Is(err, ErrNotBPFFS) || !strings.Contains(err.Error(), dir) {
		t.Errorf("directory on %s: %v, want ErrNotBPFFS naming it", dir, err)
	}
	if err := RemovePins(dir); !errors.Is(err, ErrNotBPFFS) {
		t.Errorf("RemovePins on a non-bpffs directory: %v, want ErrNotBPFFS", err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	if _, err := LockPinDir(link, false); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("symlinked pin directory: %v, want a refusal", err)
	}
}
