package ca

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// File and directory names inside a CA directory.
const (
	certFile      = "ca.pem"
	keyFile       = "ca-key.pem"
	crlNumberFile = "crlnumber"
	issuedDir     = "issued"
	revokedDir    = "revoked"

	// tempPrefix starts the name of every file being written. A crash can
	// leave such files behind; Open removes them, and no reader looks at
	// them.
	tempPrefix = ".tmp-"
)

// writeFileAtomic replaces dir/name with data, with permissions perm, so
// that after a crash at any point dir/name is either the old file or the
// new one in full: write a temporary file in the same directory, sync it,
// rename it over the target and sync the directory so the rename itself is
// durable.
func writeFileAtomic(dir, name string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("ca: write %s: %w", filepath.Join(dir, name), err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("ca: write %s: %w", filepath.Join(dir, name), err)
		}
	}()
	// CreateTemp makes the file 0600; give it its final mode before the
	// rename, so it never appears under its real name with another mode.
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the directory's entries (creations, renames) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// mkdirDurable creates dir (0700) if it is missing, durably, and checks an
// existing one: a real directory owned by this uid that nobody else can
// write (see package secretfile); it ends 0700.
func mkdirDurable(dir string) error {
	d, err := secretfile.Open(dir)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return d.Close()
}

// removeTemps deletes the temporaries a crash left in dir. Only the lock
// holder writes in the directory, so every temporary found is dead.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("ca: read %s: %w", dir, err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tempPrefix) || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ca: remove leftover temporary file: %w", err)
		}
	}
	return nil
}

// readOptional returns the contents of path, or nil and no error if it
// does not exist. A symbolic link is refused, not followed.
func readOptional(path string) ([]byte, error) {
	b, err := readNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// readNoFollow reads path, refusing a symbolic link or a file that is not
// regular.
func readNoFollow(path string) ([]byte, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", path, err)
	}
	return b, nil
}

// openNoFollow opens path for reading with O_NOFOLLOW: a planted symbolic
// link is an error naming the file, never a way to read another file.
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("ca: %s is a symbolic link; remove it (the CA never writes links, so someone planted it) and restore the file from backup", path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("ca: read %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("ca: %s is not a regular file (%v); move it away and restore the file from backup", path, fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// exists reports whether path exists; errors other than "not found"
// count as existing, so that the caller goes on to read the file and
// reports the real error.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
