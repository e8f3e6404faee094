package secretfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// TempPrefix starts the name of every temporary file Replace writes; a
// crash can leave such files behind, and RemoveTemps deletes them.
const TempPrefix = ".tmp-"

// DirMode and FileMode are the modes of what this package creates.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// ErrUnsafe is wrapped by every refusal of a directory or file that
// another user could have prepared.
var ErrUnsafe = errors.New("unsafe for secrets")

// Dir is a private directory, held open: names given to its methods are
// resolved below it, never outside.
type Dir struct {
	root *os.Root
	path string
}

// Path is the directory's path as it was opened.
func (d *Dir) Path() string { return d.path }

// Close releases the directory's descriptor.
func (d *Dir) Close() error { return d.root.Close() }

// Open opens the private directory path, creating it (and missing parents)
// 0700 if it does not exist. An existing directory must be a real
// directory owned by the running uid that group and others cannot write
// (so nobody else can have planted anything in it); read and search bits
// for group and others are taken away, so it ends 0700.
func Open(path string) (*Dir, error) {
	return open(path, false)
}

// CreateEmpty is Open for an output directory: an existing one must be
// exactly private already (no group or other bits at all) and empty, so
// that nothing another user planted or read in it is reused and no earlier
// output is mixed with the new.
func CreateEmpty(path string) (*Dir, error) {
	return open(path, true)
}

// openShared is Open for the directory of a private file: group and others
// may read or search it, but not write it.
func openShared(path string) (*Dir, error) {
	return openMode(path, false, 0o022, false)
}

func open(path string, empty bool) (*Dir, error) {
	if empty {
		return openMode(path, true, 0o077, false)
	}
	return openMode(path, false, 0o022, true)
}

// openMode opens path, refusing it if any permission bit in forbidden is
// set; tighten takes the remaining group and other bits away.
func openMode(path string, empty bool, forbidden fs.FileMode, tighten bool) (*Dir, error) {
	if path == "" {
		return nil, errors.New("secretfile: empty directory name")
	}
	path = filepath.Clean(path)
	if err := os.MkdirAll(filepath.Dir(path), DirMode); err != nil {
		return nil, fmt.Errorf("create parent of %s: %w", path, err)
	}
	created := false
	switch err := os.Mkdir(path, DirMode); {
	case err == nil:
		created = true
		syncPath(filepath.Dir(path))
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	before, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if before.Mode()&fs.ModeSymlink != 0 {
		return nil, unsafe(path, "is a symbolic link; give the real directory, or remove the link (someone may have planted it)")
	}
	if !before.IsDir() {
		return nil, unsafe(path, "is not a directory; move it away or choose another path")
	}
	root, err := os.OpenRoot(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := &Dir{root: root, path: path}
	fi, err := root.Stat(".")
	if err == nil && !os.SameFile(before, fi) {
		err = unsafe(path, "was replaced while it was opened; check who else writes its parent directory")
	}
	if err == nil {
		err = checkDir(path, fi, forbidden)
	}
	if err == nil && empty && !created {
		err = d.checkEmpty()
	}
	if err == nil && tighten && fi.Mode().Perm()&0o077 != 0 {
		err = d.chmod(DirMode)
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return d, nil
}

// checkDir refuses a directory another user owns, or one with a permission
// bit in forbidden.
func checkDir(path string, fi fs.FileInfo, forbidden fs.FileMode) error {
	if !fi.IsDir() {
		return unsafe(path, "is not a directory; move it away or choose another path")
	}
	if uid, ok := owner(fi); ok && uid != os.Geteuid() {
		return unsafe(path, fmt.Sprintf("is owned by uid %d, not by uid %d (this process); another user prepared it: remove it and let it be created, or chown it after checking its contents", uid, os.Geteuid()))
	}
	if perm := fi.Mode().Perm(); perm&forbidden != 0 {
		what := "writable by group or others, so someone else may have planted files in it"
		if perm&0o022 == 0 {
			what = "open to group or others (an output directory must be 0700)"
		}
		return unsafe(path, fmt.Sprintf("has mode %#o, %s; check its contents, then chmod 700 %s, or choose a new path", perm, what, path))
	}
	return nil
}

func (d *Dir) checkEmpty() error {
	f, err := d.root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(8)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", d.path, err)
	}
	if len(names) > 0 {
		sort.Strings(names)
		return unsafe(d.path, fmt.Sprintf("is not empty (%s); give a new or empty directory", strings.Join(names, ", ")))
	}
	return nil
}

// Sub opens the private subdirectory name of d, creating it 0700 if it is
// missing, with the checks of Open.
func (d *Dir) Sub(name string) (*Dir, error) {
	p := filepath.Join(d.path, name)
	switch err := d.root.Mkdir(name, DirMode); {
	case err == nil:
		d.sync()
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("create %s: %w", p, err)
	}
	before, err := d.root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if before.Mode()&fs.ModeSymlink != 0 {
		return nil, unsafe(p, "is a symbolic link; remove it (someone may have planted it)")
	}
	sub, err := d.root.OpenRoot(name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	fi, err := sub.Stat(".")
	if err == nil && !os.SameFile(before, fi) {
		err = unsafe(p, "was replaced while it was opened")
	}
	if err == nil {
		err = checkDir(p, fi, 0o022)
	}
	sd := &Dir{root: sub, path: p}
	if err == nil && fi.Mode().Perm()&0o077 != 0 {
		err = sd.chmod(DirMode)
	}
	if err != nil {
		sub.Close()
		return nil, err
	}
	return sd, nil
}

// WriteNew writes data to the new file name (which may name a file in a
// subdirectory d created), mode 0600: O_CREAT|O_EXCL|O_NOFOLLOW, so an
// existing file or symbolic link is an error, never overwritten or
// followed.
func (d *Dir) WriteNew(name string, data []byte) error {
	p := filepath.Join(d.path, name)
	f, err := d.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, FileMode)
	if errors.Is(err, fs.ErrExist) {
		return unsafe(p, "exists already; nothing may be in an output directory before it is written")
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		d.root.Remove(name)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Replace writes data to name atomically: a new temporary file (0600,
// O_EXCL|O_NOFOLLOW) in the same directory, given mode perm, synced,
// renamed over name, and the directory synced. perm may not let group or
// others write.
func (d *Dir) Replace(name string, data []byte, perm fs.FileMode) (err error) {
	p := filepath.Join(d.path, name)
	if perm&0o022 != 0 || perm&^fs.ModePerm != 0 {
		return fmt.Errorf("write %s: mode %#o lets group or others write; use at most 0644", p, perm)
	}
	if strings.ContainsRune(name, filepath.Separator) {
		return fmt.Errorf("write %s: Replace takes a name in the directory; use Sub for subdirectories", p)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := TempPrefix + name + "-" + hex.EncodeToString(rnd[:])
	f, err := d.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, FileMode)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			d.root.Remove(tmp)
			err = fmt.Errorf("write %s: %w", p, err)
		}
	}()
	if perm != FileMode {
		if err = f.Chmod(perm); err != nil {
			return err
		}
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
	if err = d.root.Rename(tmp, name); err != nil {
		return err
	}
	return d.sync()
}

// ReadFile reads name (O_NOFOLLOW). The file must be a regular file owned by
// the running uid that group and others cannot write; a missing file is an
// error wrapping fs.ErrNotExist.
func (d *Dir) ReadFile(name string) ([]byte, error) {
	f, err := d.OpenFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(d.path, name), err)
	}
	return b, nil
}

// OpenFile opens name for reading with the checks of ReadFile.
func (d *Dir) OpenFile(name string) (*os.File, error) {
	return d.openChecked(name, os.O_RDONLY)
}

// OpenAppend opens name for appending with the checks of ReadFile,
// creating it (0600, O_EXCL, the directory synced so that its entry
// survives a crash) when it is missing.
func (d *Dir) OpenAppend(name string) (*os.File, error) {
	f, err := d.root.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, FileMode)
	switch {
	case err == nil:
		if err := d.sync(); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case errors.Is(err, fs.ErrExist):
		return d.openChecked(name, os.O_WRONLY|os.O_APPEND)
	default:
		return nil, fmt.Errorf("create %s: %w", filepath.Join(d.path, name), err)
	}
}

// openChecked opens name with flags (and O_NOFOLLOW): a regular file of
// this uid that group and others cannot write, never a symbolic link.
func (d *Dir) openChecked(name string, flags int) (*os.File, error) {
	p := filepath.Join(d.path, name)
	// os.Root resolves a symbolic link that stays inside the root even
	// when asked for O_NOFOLLOW: look first, and check the opened file is
	// the one looked at.
	before, err := d.root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if before.Mode()&fs.ModeSymlink != 0 {
		return nil, unsafe(p, "is a symbolic link; remove it (someone may have planted it)")
	}
	f, err := d.root.OpenFile(name, flags|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !os.SameFile(before, fi) {
		err = unsafe(p, "was replaced while it was opened")
	}
	if err == nil {
		err = CheckFile(p, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckFile refuses a file that is not regular, owned by another uid, or
// writable by group or others.
func CheckFile(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return unsafe(path, fmt.Sprintf("is not a regular file (%v); remove it", fi.Mode().Type()))
	}
	if uid, ok := owner(fi); ok && uid != os.Geteuid() {
		return unsafe(path, fmt.Sprintf("is owned by uid %d, not by uid %d (this process); another user wrote it: remove it", uid, os.Geteuid()))
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return unsafe(path, fmt.Sprintf("has mode %#o, writable by group or others; check its contents, then chmod 600 %s", perm, path))
	}
	return nil
}

// Lstat describes name without following a symbolic link.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) { return d.root.Lstat(name) }

// Remove removes name.
func (d *Dir) Remove(name string) error { return d.root.Remove(name) }

// ReadDir lists the directory, sorted by name.
func (d *Dir) ReadDir() ([]fs.DirEntry, error) {
	f, err := d.root.Open(".")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, err
}

// RemoveTemps deletes the temporary files a crash during Replace left. Only
// the owner writes in a private directory, so every one found is dead.
func (d *Dir) RemoveTemps() error {
	ents, err := d.ReadDir()
	if err != nil {
		return fmt.Errorf("read %s: %w", d.path, err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), TempPrefix) || e.IsDir() {
			continue
		}
		if err := d.root.Remove(e.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove leftover %s: %w", filepath.Join(d.path, e.Name()), err)
		}
	}
	return nil
}

// chmod sets the directory's own mode through its descriptor.
func (d *Dir) chmod(mode fs.FileMode) error {
	f, err := d.root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", d.path, err)
	}
	return nil
}

// sync makes the directory's entries durable.
func (d *Dir) sync() error {
	f, err := d.root.Open(".")
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", d.path, err)
	}
	return nil
}

func syncPath(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// PrepareFile readies path for a program that opens it by name with mode
// 0600 (a bbolt database): its directory is created 0700 if missing; an
// existing one must be a real directory owned by the running uid that
// group and others cannot write (it may be readable, as /var/lib is: the
// file's own mode keeps its content private, and nobody else can plant,
// rename or replace an entry in it). A missing file is created empty with
// O_CREAT|O_EXCL|O_NOFOLLOW, 0600, and an existing one must be a regular
// file owned by the running uid with no group or other permission bits.
// Only the owner can write the directory, so the file stays what was
// checked until the caller opens it.
func PrepareFile(path string) error {
	d, err := openShared(filepath.Dir(filepath.Clean(path)))
	if err != nil {
		return err
	}
	defer d.Close()
	name := filepath.Base(path)
	f, err := d.root.OpenFile(name, os.O_RDONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, FileMode)
	if err == nil {
		d.sync()
		return f.Close()
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", path, err)
	}
	fi, err := d.root.Lstat(name)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return unsafe(path, "is a symbolic link; remove it (someone may have planted it)")
	}
	if err := CheckFile(path, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return unsafe(path, fmt.Sprintf("has mode %#o, readable by group or others; check it, then chmod 600 %s", perm, path))
	}
	return nil
}

func unsafe(path, why string) error {
	return fmt.Errorf("%s %s (%w)", path, why, ErrUnsafe)
}
