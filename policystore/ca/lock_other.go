//go:build !(linux || darwin || dragonfly || freebsd || netbsd || openbsd)

package ca

// lockDir takes the directory's lock. Without flock(2) it falls back to an
// O_EXCL lock file, which a crashed holder leaves behind (see lockExcl).
func lockDir(dir string) (release func() error, err error) {
	return lockExcl(dir)
}
