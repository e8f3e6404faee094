package backend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/loader"
)

// TestWriteCredDirRefusesForeignDir plays a local user who created the
// guest's credential directory before the loader writes the guest's
// private key into it: the loader must refuse, not chmod the directory
// and write the key where its owner can read it.
func TestWriteCredDirRefusesForeignDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the directory to another uid")
	}
	dir := filepath.Join(t.TempDir(), "creds")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	spec := loader.BootSpec{UpdatedCertPEM: []byte("cert"), UpdatedKeyPEM: []byte("key"), CAPEM: []byte("ca")}
	err := writeCredDir(dir, spec)
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("writeCredDir into a directory of uid 65534: %v; want a refusal", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, KeyFile)); err == nil {
		t.Errorf("the guest's key was written into another user's directory")
	}
}

// TestWriteCredDirWorldWritable: a directory anyone can write is refused.
func TestWriteCredDirWorldWritable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	spec := loader.BootSpec{UpdatedCertPEM: []byte("cert"), UpdatedKeyPEM: []byte("key"), CAPEM: []byte("ca")}
	if err := writeCredDir(dir, spec); err == nil || !strings.Contains(err.Error(), "mode 0777") {
		t.Errorf("writeCredDir into a 0777 directory: %v; want a refusal", err)
	}
}
