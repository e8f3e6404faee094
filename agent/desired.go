package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"sort"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
	"github.com/mlsgate/mlsgate/verdict"
)

// GuestSpec declares a guest on one host-side interface. The loader (or an
// operator) sends it before, or after, the interface appears.
type GuestSpec struct {
	Interface string       `json:"interface"`
	VM        uint32       `json:"vm"`
	App       uint32       `json:"app"`
	Range     label.Bounds `json:"range"`
	Addr4     netip.Addr   `json:"addr4,omitzero"`
	Addr6     netip.Addr   `json:"addr6,omitzero"`
	// The host's end of the guest's link: the only address control
	// traffic (ARP, ND, DHCP, IKE, the API port) may reach. HostAddr6 is
	// the host-side interface's IPv6 link-local address.
	HostAddr4 netip.Addr `json:"host_addr4,omitzero"`
	HostAddr6 netip.Addr `json:"host_addr6,omitzero"`
	// MAC is the guest's Ethernet address ("02:6d:6c:00:00:07"): every
	// frame from the guest must carry it as its source.
	MAC            string `json:"mac,omitempty"`
	AllowUnlabeled bool   `json:"allow_unlabeled,omitempty"`
	Audit          bool   `json:"audit,omitempty"`
}

// mac parses MAC: the zero value when unset (no frame source check).
func (g *GuestSpec) mac() ([6]byte, error) {
	if g.MAC == "" {
		return [6]byte{}, nil
	}
	hw, err := net.ParseMAC(g.MAC)
	if err != nil || len(hw) != 6 {
		return [6]byte{}, fmt.Errorf("mac %q: want the guest's Ethernet address, six bytes like 02:6d:6c:00:00:07", g.MAC)
	}
	if hw[0]&1 != 0 {
		return [6]byte{}, fmt.Errorf("mac %s is a multicast address: want the guest's unicast Ethernet address", g.MAC)
	}
	if [6]byte(hw) == ([6]byte{}) {
		return [6]byte{}, fmt.Errorf("mac %s is all zero: leave it out to turn the check off, or give the guest's address", g.MAC)
	}
	return [6]byte(hw), nil
}

// PeerSpec is a remote party guests may talk to.
type PeerSpec struct {
	Prefix netip.Prefix     `json:"prefix"`
	App    uint32           `json:"app"`
	Range  label.Bounds     `json:"range"`
	Kind   verdict.PeerKind `json:"kind"`
}

// SASpec is an SA the agent is told about rather than reads from the
// kernel: one a peer terminates elsewhere, or one on a host whose kernel
// lacks the ESP transform.
type SASpec struct {
	SPI   uint32      `json:"spi"`
	Daddr netip.Addr  `json:"daddr"`
	Owner uint32      `json:"owner"`
	App   uint32      `json:"app"`
	Label label.Label `json:"label"`
}

// Desired is what the agent must enforce, apart from the kernel's SAs.
type Desired struct {
	Guests []GuestSpec `json:"guests"`
	Peers  []PeerSpec  `json:"peers"`
	SAs    []SASpec    `json:"sas"`
	// Rotations bind SA successors to their predecessors (rotation.go).
	Rotations []RotationSpec `json:"rotations,omitempty"`
}

// Validate checks the desired state and names the bad entry.
func (d *Desired) Validate() error {
	ifs := map[string]bool{}
	for i := range d.Guests {
		if ifs[d.Guests[i].Interface] {
			return fmt.Errorf("guests[%d]: interface %s declared twice", i, d.Guests[i].Interface)
		}
		if err := d.validateGuest(i); err != nil {
			return err
		}
		ifs[d.Guests[i].Interface] = true
	}
	for i, p := range d.Peers {
		if !p.Prefix.IsValid() {
			return fmt.Errorf("peers[%d]: invalid prefix", i)
		}
		if err := p.Range.Validate(); err != nil {
			return fmt.Errorf("peers[%d] (%s): range: %w", i, p.Prefix, err)
		}
	}
	for i, s := range d.SAs {
		if s.SPI < 256 {
			return fmt.Errorf("sas[%d]: spi %d is reserved (RFC 4303)", i, s.SPI)
		}
		if err := s.Label.Validate(); err != nil {
			return fmt.Errorf("sas[%d] (spi %#x): label: %w", i, s.SPI, err)
		}
	}
	return validateRotations(d.Rotations)
}

// validateGuest checks d.Guests[i] alone (Validate checks them all and
// that no interface is declared twice).
func (d *Desired) validateGuest(i int) error {
	g := &d.Guests[i]
	if g.Interface == "" || len(g.Interface) > 15 {
		return fmt.Errorf("guests[%d]: interface %q: want a Linux interface name (1-15 characters)", i, g.Interface)
	}
	if g.VM == 0 {
		return fmt.Errorf("guests[%d] (%s): vm 0 is reserved; give the guest's VM id", i, g.Interface)
	}
	if err := g.Range.Validate(); err != nil {
		return fmt.Errorf("guests[%d] (%s): range: %w", i, g.Interface, err)
	}
	if g.Addr4.IsValid() && !g.Addr4.Is4() {
		return fmt.Errorf("guests[%d] (%s): addr4 %s is not IPv4", i, g.Interface, g.Addr4)
	}
	if g.Addr6.IsValid() && (!g.Addr6.Is6() || g.Addr6.Is4In6()) {
		return fmt.Errorf("guests[%d] (%s): addr6 %s is not IPv6", i, g.Interface, g.Addr6)
	}
	if g.HostAddr4.IsValid() && (!g.HostAddr4.Is4() || g.HostAddr4.IsUnspecified() || g.HostAddr4 == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return fmt.Errorf("guests[%d] (%s): host_addr4 %s: want the host's unicast IPv4 address on the guest's link", i, g.Interface, g.HostAddr4)
	}
	if g.HostAddr6.IsValid() && (!g.HostAddr6.Is6() || !g.HostAddr6.IsLinkLocalUnicast()) {
		return fmt.Errorf("guests[%d] (%s): host_addr6 %s: want the host-side interface's IPv6 link-local address (fe80::/10)", i, g.Interface, g.HostAddr6)
	}
	if _, err := g.mac(); err != nil {
		return fmt.Errorf("guests[%d] (%s): %w", i, g.Interface, err)
	}
	return nil
}

func (d *Desired) sort() {
	sort.Slice(d.Guests, func(i, j int) bool { return d.Guests[i].Interface < d.Guests[j].Interface })
}

const desiredFile = "desired.json"

// loadDesired reads the desired state; a missing file is an empty state.
// The state directory must be the agent's own (package secretfile: created
// 0700, never one others can write) and desired.json a regular file only
// the agent can write: a desired state planted by another local user could
// switch a guest to audit or let its plain traffic through.
func loadDesired(dir string) (Desired, error) {
	var d Desired
	sd, err := secretfile.Open(dir)
	if err != nil {
		return d, fmt.Errorf("state_dir: %w", err)
	}
	defer sd.Close()
	b, err := sd.ReadFile(desiredFile)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, fmt.Errorf("state_dir: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("%s: %w (move it away to start empty; the loader re-declares its guests)", filepath.Join(dir, desiredFile), err)
	}
	if err := d.Validate(); err != nil {
		return d, fmt.Errorf("%s: %w", filepath.Join(dir, desiredFile), err)
	}
	return d, nil
}

// saveDesired writes the desired state, 0600 in the agent's private state
// directory, so that a crash at any point leaves the old file or the new
// one: temp file, fsync, rename, fsync the directory.
func saveDesired(dir string, d Desired) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	sd, err := secretfile.Open(dir)
	if err != nil {
		return err
	}
	defer sd.Close()
	return sd.Replace(desiredFile, b, secretfile.FileMode)
}
