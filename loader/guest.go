package loader

import (
	"context"
	"fmt"
	"net/netip"
)

// GuestMAC is the locally administered Ethernet address a backend gives
// guest vm on its link to the host: 02:6d:6c ("ml") and the low 24 bits of
// the VM id.
func GuestMAC(vm uint32) string {
	return fmt.Sprintf("02:6d:6c:%02x:%02x:%02x", byte(vm>>16), byte(vm>>8), byte(vm))
}

// BootSpec is what a backend needs to start one guest.
type BootSpec struct {
	// VM is the guest's id: the Xen domid where the backend chooses it,
	// else the loader's number. Its host-side interface is vif<VM>.0.
	VM uint32 `json:"vm"`
	// Name is the guest's name ("mlsg-vm7").
	Name string `json:"name"`
	// Addr is the guest's address on its link to the host, HostAddr the
	// host's, both in a /PrefixLen.
	Addr      netip.Addr `json:"addr"`
	HostAddr  netip.Addr `json:"host_addr"`
	PrefixLen int        `json:"prefix_len"`
	// Template names the guest image the pool keeps guests of.
	Template string `json:"template"`
	// Update daemon identity: its certificate and key (from the policy
	// store's CA, kind Guest), the CA certificate it trusts for the
	// loader's client certificate, and the port it listens on.
	UpdatedCertPEM []byte `json:"-"`
	UpdatedKeyPEM  []byte `json:"-"`
	CAPEM          []byte `json:"-"`
	// CRLPEM is the CA's current revocation list (PEM "X509 CRL"): the
	// daemon is started with --crl and refuses a loader certificate it
	// lists. Required with the credentials.
	CRLPEM      []byte `json:"-"`
	UpdatedPort uint16 `json:"updated_port"`
}

// Guest is a running guest as the loader knows it.
type Guest struct {
	VM        uint32     `json:"vm"`
	Name      string     `json:"name"`
	Backend   string     `json:"backend"`
	Interface string     `json:"interface"` // host side: vif<VM>.0
	Addr      netip.Addr `json:"addr"`
	HostAddr  netip.Addr `json:"host_addr"`
	// HostLL is the host-side interface's IPv6 link-local address, the
	// host's end of ND, MLD and DHCPv6 on the link; invalid when the
	// backend gives the link none.
	HostLL netip.Addr `json:"host_ll,omitzero"`
	// MAC is the guest's Ethernet address on its link (GuestMAC(VM)
	// unless the backend says otherwise).
	MAC string `json:"mac,omitempty"`
	// UpdatedAddr is where the update daemon answers (host:port).
	UpdatedAddr string `json:"updated_addr"`
	// Handle is the backend's own reference: a namespace name, a domid, a
	// QEMU pid file.
	Handle   string `json:"handle"`
	Template string `json:"template"`
}

// Backend starts and stops guests: Xen (xl), QEMU/KVM, or network
// namespaces for development and tests.
type Backend interface {
	// Name is "netns", "qemu" or "xen".
	Name() string
	// Boot starts a guest and returns once its host-side interface exists
	// and its update daemon answers, or ctx ends (then nothing is left).
	Boot(ctx context.Context, spec BootSpec) (*Guest, error)
	// Destroy stops a guest and removes what Boot created; a guest that is
	// already gone is not an error.
	Destroy(ctx context.Context, g *Guest) error
}
