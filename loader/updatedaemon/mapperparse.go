package updatedaemon

import (
	"crypto/sha256"
	"sync"

	"github.com/mlsgate/mlsgate/mapper"
)

// lastParsed is the mapper policy parsed last, by name and text: a push's
// validation parses its policy, and applying it then installs that parse
// instead of compiling every rule's regex a second time. A parsed
// mapper.Policy is not changed after ParsePolicy, so one value may be
// shared.
var lastParsed struct {
	mu   sync.Mutex
	name string
	sum  [32]byte
	p    *mapper.Policy
}

// parsePolicy is mapper.ParsePolicy (a variable for tests).
var parsePolicy = mapper.ParsePolicy

// parseMapperPolicy parses a mapper policy, or returns the parse of the
// same name and text made last.
func parseMapperPolicy(name string, text []byte) (*mapper.Policy, error) {
	sum := sha256.Sum256(text)
	lastParsed.mu.Lock()
	if lastParsed.p != nil && lastParsed.name == name && lastParsed.sum == sum {
		p := lastParsed.p
		lastParsed.mu.Unlock()
		return p, nil
	}
	lastParsed.mu.Unlock()
	p, err := parsePolicy(name, text)
	if err != nil {
		return nil, err
	}
	lastParsed.mu.Lock()
	lastParsed.name, lastParsed.sum, lastParsed.p = name, sum, p
	lastParsed.mu.Unlock()
	return p, nil
}
