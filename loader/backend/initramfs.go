package backend

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/mlsgate/mlsgate/internal/cpio"
)

// File is one entry of an initramfs overlay.
type File struct {
	// Path is where it lands in the guest, relative to / ("etc/x" or "/etc/x").
	Path string
	// Mode is its permission bits; with fs.ModeDir set the entry is a
	// directory and Data is ignored.
	Mode fs.FileMode
	Data []byte
}

// AppendInitramfs writes to dst (mode 0600, replaced atomically) the
// initramfs at base followed by a newc archive of files. Linux unpacks
// concatenated archives in order, so files replace what base holds at the
// same paths (the /init, for example). base may be compressed; the archive
// starts on the 4-byte boundary the kernel requires. Parent directories that
// files does not list are added with mode 0755.
func AppendInitramfs(dst, base string, files []File) error {
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("initramfs overlay: base %w", err)
	}
	defer in.Close()
	return writeAtomic(dst, 0o600, func(w io.Writer) error {
		n, err := io.Copy(w, in)
		if err != nil {
			return fmt.Errorf("copy %s: %w", base, err)
		}
		if r := n % 4; r != 0 {
			if _, err := w.Write(make([]byte, 4-r)); err != nil {
				return err
			}
		}
		return WriteNewc(w, files)
	})
}

// WriteNewc writes files as one "new ASCII" cpio archive, the format the
// kernel unpacks: per entry a 110-byte header ("070701" and 13 eight-digit
// hex fields), the NUL-terminated name and the data, each padded to 4 bytes;
// then the TRAILER!!! entry. Entries are owned by root, dated 0 and sorted by
// path, with missing parent directories added, so equal inputs give equal
// bytes.
func WriteNewc(w io.Writer, files []File) error {
	entries := map[string]File{}
	for _, f := range files {
		p := strings.Trim(path.Clean("/"+f.Path), "/")
		if p == "" {
			return fmt.Errorf("initramfs entry %q: give a path below /", f.Path)
		}
		f.Path = p
		entries[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = File{Path: d, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	bw := bufio.NewWriter(w)
	nw := cpio.NewWriter(bw)
	for _, p := range slices.Sorted(maps.Keys(entries)) {
		f := entries[p]
		if f.Mode.IsDir() {
			nw.Add(p, cpio.ModeDir|uint32(f.Mode.Perm()), nil, 0, 0)
		} else {
			nw.Add(p, cpio.ModeFile|uint32(f.Mode.Perm()), f.Data, 0, 0)
		}
	}
	if err := nw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}
