// Package cpio writes the "new ASCII" (newc) cpio format the Linux kernel
// unpacks as an initramfs. The guest images (loader/image) and the
// per-guest ramdisks (loader/backend) are written with it.
package cpio

import (
	"fmt"
	"io"
)

// File types of a newc mode (stat.h).
const (
	ModeDir  = 0o040000
	ModeChar = 0o020000
	ModeFile = 0o100000
	ModeLink = 0o120000
)

// Writer writes newc entries: per entry a 110-byte header ("070701" and 13
// eight-digit hex fields), the NUL-terminated name padded to 4 bytes, then
// the data padded to 4 bytes. Entries are owned by root and dated 0, and
// numbered from 1 in the order written, so equal inputs give equal bytes.
// It keeps the first write error, which Err returns; later calls do
// nothing.
type Writer struct {
	w   io.Writer
	ino uint32
	err error
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Add writes one entry. mode holds the file type and permissions;
// rdevMajor and rdevMinor are the device of a ModeChar entry, else 0. A
// symbolic link's data is its target.
func (n *Writer) Add(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) {
	if n.err != nil {
		return
	}
	n.ino++
	nlink := uint32(1)
	if mode&0o170000 == ModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		n.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	n.write([]byte(hdr + name + "\x00"))
	n.pad(len(hdr) + len(name) + 1)
	n.write(data)
	n.pad(len(data))
}

// Close writes the TRAILER!!! entry that ends the archive and returns the
// first error. It does not close the underlying writer.
func (n *Writer) Close() error {
	n.ino = 0
	n.Add("TRAILER!!!", 0, nil, 0, 0)
	return n.err
}

// Err is the first write error.
func (n *Writer) Err() error { return n.err }

func (n *Writer) write(b []byte) {
	if n.err == nil {
		_, n.err = n.w.Write(b)
	}
}

func (n *Writer) pad(size int) {
	if r := size % 4; r != 0 {
		n.write(make([]byte, 4-r))
	}
}
