package updatedaemon

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// StateFile is the name of the file in the state directory that records the
// applied bundle.
const StateFile = "state.json"

// stateFormat is the version of the state file's layout.
const stateFormat = 1

// persisted is the content of StateFile: what was applied, and the bundle
// itself, which a restarted daemon needs to load the mapper policy again and
// to know which SAs and policies are its own. The bundle's certificate keys
// are not kept; its SA keys are (the kernel holds them anyway), so the file
// is 0600 in a 0700 directory.
type persisted struct {
	Format      int                 `json:"format"`
	Guest       string              `json:"guest"`
	Application string              `json:"application"`
	Version     uint64              `json:"version"`
	Digest      string              `json:"digest"`
	AppliedAt   time.Time           `json:"applied_at"`
	Report      *Report             `json:"report"`
	Bundle      *policystore.Bundle `json:"bundle"`
}

// Digest is the identity of a bundle's content: "sha256:" and the hex
// SHA-256 of its JSON encoding. Two pushes of the same bundle have the same
// digest; a bundle generated again has new keys and another digest.
func Digest(b *policystore.Bundle) (string, error) {
	c := *b
	c.CRL = nil // delivered with the bundle, not part of it
	data, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("encode bundle: %w", err)
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// loadState reads the state file of dir; a missing file is no state. The
// file must be a regular file only the daemon can write (O_NOFOLLOW, see
// package secretfile).
func loadState(dir string) (*persisted, error) {
	path := filepath.Join(dir, StateFile)
	sd, err := secretfile.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	defer sd.Close()
	data, err := sd.ReadFile(StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("state file %s does not parse (%v); it is written atomically, so something else changed it: move it away to start without state (the loader then pushes the guest's bundle again)", path, err)
	}
	if p.Format != stateFormat {
		return nil, fmt.Errorf("state file %s has format %d, this daemon writes %d; run the daemon version that wrote it, or move the file away", path, p.Format, stateFormat)
	}
	if p.Bundle == nil || p.Version == 0 || p.Digest == "" {
		return nil, fmt.Errorf("state file %s lacks the bundle, version or digest; move it away to start without state", path)
	}
	return &p, nil
}

// saveState writes the state file atomically, 0600 in the private state
// directory: a temporary file in the same directory, synced, renamed over
// the old one, and the directory synced, so a crash leaves the old state or
// the new, never a mix.
func saveState(dir string, p *persisted) error {
	data, err := json.Marshal(p) // compact: under emulation indenting the bundle cost milliseconds
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	sd, err := secretfile.Open(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	defer sd.Close()
	if err := sd.Replace(StateFile, data, secretfile.FileMode); err != nil {
		return fmt.Errorf("install state file: %w", err)
	}
	return nil
}

// prepareStateDir creates dir (0700), refuses one another user could have
// prepared (it holds the applied bundle's SA keys), and removes temporaries
// a crash left.
func prepareStateDir(dir string) error {
	if dir == "" {
		return errors.New("no state directory: give one (--state-dir); the daemon records the applied version there to refuse stale bundles after a restart")
	}
	sd, err := secretfile.Open(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	defer sd.Close()
	if err := sd.RemoveTemps(); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// Temporaries of the format before package secretfile.
	ents, err := sd.ReadDir()
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".state-") && strings.HasSuffix(e.Name(), ".tmp") {
			sd.Remove(e.Name())
		}
	}
	return nil
}

// withoutCertKeys is b with the certificates' private keys removed, as the
// state file keeps it.
func withoutCertKeys(b *policystore.Bundle) *policystore.Bundle {
	c := *b
	c.Certificates = make([]policystore.Certificate, len(b.Certificates))
	for i, cert := range b.Certificates {
		cert.KeyPEM = nil
		c.Certificates[i] = cert
	}
	return &c
}
