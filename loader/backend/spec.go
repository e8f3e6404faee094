package backend

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/mlsgate/mlsgate/loader"
)

// Kernel command-line keys a guest's init reads its link from (Xen's extra=,
// QEMU's -append). InitScript writes an init that understands them.
const (
	// KeyAddr is the guest's address with its prefix length: 10.70.0.7/24.
	KeyAddr = "mlsgate.addr"
	// KeyGateway is the host's address on the link, the guest's default
	// route: 10.70.0.1.
	KeyGateway = "mlsgate.gw"
	// KeyPort is the TCP port the update daemon listens on.
	KeyPort = "mlsgate.port"
)

// Where the update daemon's credentials and state live inside a QEMU or Xen
// guest. The backends put the credentials there through an initramfs overlay
// (CredentialFiles); InitScript points the daemon at them.
const (
	GuestCredDir  = "/etc/mlsgate/updated"
	GuestStateDir = "/var/lib/mlsgate/updated"
)

// Names of the credential files in a credentials directory.
const (
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
	CAFile   = "ca.pem"
	// CRLFile is the CA's revocation list; the daemon reads it again when
	// it changes.
	CRLFile = "crl.pem"
)

// maxIfName is the longest Linux interface name (IFNAMSIZ 16, less the NUL).
const maxIfName = 15

// IfName is the host-side interface of guest vm: vif<vm>.0, as Xen names it.
// Every uint32 fits: "vif4294967295.0" is 15 bytes, the Linux limit.
func IfName(vm uint32) string { return "vif" + strconv.FormatUint(uint64(vm), 10) + ".0" }

// NetnsName is the network namespace of guest vm under the Netns backend, and
// the default guest name of the other backends: mlsg-vm<vm>.
func NetnsName(vm uint32) string { return "mlsg-vm" + strconv.FormatUint(uint64(vm), 10) }

// MAC is the guest's deterministic Ethernet address: Xen's OUI 00:16:3e and
// the low 24 bits of vm for ids below 2^24, else a locally administered
// 02:00 address carrying all 32 bits. Distinct ids give distinct addresses.
func MAC(vm uint32) net.HardwareAddr {
	if vm < 1<<24 {
		return net.HardwareAddr{0x00, 0x16, 0x3e, byte(vm >> 16), byte(vm >> 8), byte(vm)}
	}
	return net.HardwareAddr{0x02, 0x00, byte(vm >> 24), byte(vm >> 16), byte(vm >> 8), byte(vm)}
}

// Cmdline is the kernel command-line fragment that tells the guest's init
// its link: "mlsgate.addr=10.70.0.7/24 mlsgate.gw=10.70.0.1 mlsgate.port=7444".
func Cmdline(spec loader.BootSpec) string {
	return fmt.Sprintf("%s=%s %s=%s %s=%d",
		KeyAddr, netip.PrefixFrom(spec.Addr, spec.PrefixLen), KeyGateway, spec.HostAddr, KeyPort, spec.UpdatedPort)
}

// UpdatedAddr is where the guest's update daemon answers: Addr:UpdatedPort
// ("[fd00::7]:7444" for IPv6).
func UpdatedAddr(spec loader.BootSpec) string {
	return netip.AddrPortFrom(spec.Addr, spec.UpdatedPort).String()
}

// guestName is spec.Name, or mlsg-vm<VM> when it is empty.
func guestName(spec loader.BootSpec) string {
	if spec.Name != "" {
		return spec.Name
	}
	return NetnsName(spec.VM)
}

// nameRE is what a guest name may look like: it becomes a Xen domain name, a
// file name and a QEMU -name, so nothing that needs quoting.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrInvalidSpec is wrapped by every error Validate returns.
var ErrInvalidSpec = errors.New("invalid boot spec")

// Validate checks what every backend needs of a spec: a guest id other than 0
// (dom0 on Xen), a name usable as a domain and file name, two distinct
// unicast addresses of one family on one prefix, a port, and, when
// needCreds is set or any credential is given, all four PEM credentials
// (the CRL among them: the daemon always runs with --crl).
func Validate(spec loader.BootSpec, needCreds bool) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: vm%d: %s", ErrInvalidSpec, spec.VM, fmt.Sprintf(format, args...))
	}
	if spec.VM == 0 {
		return bad("VM id 0 is dom0 on Xen and never a guest; number guests from 1")
	}
	if spec.Name != "" && !nameRE.MatchString(spec.Name) {
		return bad("name %q must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", spec.Name)
	}
	if err := validateAddrs(spec); err != nil {
		return bad("%v", err)
	}
	if spec.UpdatedPort == 0 {
		return bad("UpdatedPort is 0; give the port the update daemon listens on")
	}
	if needCreds || len(spec.UpdatedCertPEM)+len(spec.UpdatedKeyPEM)+len(spec.CAPEM) > 0 {
		for _, c := range []struct {
			field, want string
			data        []byte
		}{
			{"UpdatedCertPEM", "CERTIFICATE", spec.UpdatedCertPEM},
			{"UpdatedKeyPEM", "PRIVATE KEY", spec.UpdatedKeyPEM},
			{"CAPEM", "CERTIFICATE", spec.CAPEM},
			{"CRLPEM", "X509 CRL", spec.CRLPEM},
		} {
			if err := checkPEM(c.data, c.want); err != nil {
				return bad("%s: %v; issue the update daemon's credentials from the policy store's CA (kind Guest)", c.field, err)
			}
		}
	}
	return nil
}

// validateAddrs checks the link addresses of spec.
func validateAddrs(spec loader.BootSpec) error {
	a, h := spec.Addr, spec.HostAddr
	for _, x := range []struct {
		what string
		ip   netip.Addr
	}{{"guest address", a}, {"host address", h}} {
		switch {
		case !x.ip.IsValid():
			return fmt.Errorf("%s is missing", x.what)
		case x.ip.Zone() != "":
			return fmt.Errorf("%s %s has a zone; give a global address", x.what, x.ip)
		case x.ip.Is4In6():
			return fmt.Errorf("%s %s is IPv4-mapped IPv6; write it as IPv4 (%s)", x.what, x.ip, x.ip.Unmap())
		case !x.ip.IsGlobalUnicast():
			return fmt.Errorf("%s %s is not a unicast address a guest link can use (loopback, link-local, multicast or unspecified)", x.what, x.ip)
		}
	}
	if a.Is4() != h.Is4() {
		return fmt.Errorf("guest address %s and host address %s are of different families; give both IPv4 or both IPv6", a, h)
	}
	if a == h {
		return fmt.Errorf("guest and host address are both %s; give each its own", a)
	}
	if spec.PrefixLen < 1 || spec.PrefixLen >= a.BitLen() {
		return fmt.Errorf("prefix length %d is out of range for %s; give 1-%d (e.g. 24)", spec.PrefixLen, a, a.BitLen()-1)
	}
	p := netip.PrefixFrom(a, spec.PrefixLen).Masked()
	if !p.Contains(h) {
		return fmt.Errorf("guest address %s and host address %s are not in one /%d; take both from the link prefix %s", a, h, spec.PrefixLen, p)
	}
	if a.Is4() && spec.PrefixLen <= 30 {
		bcast := broadcast(p)
		for _, x := range []netip.Addr{a, h} {
			if x == p.Addr() || x == bcast {
				return fmt.Errorf("%s is the network or broadcast address of %s; pick a host address inside it", x, p)
			}
		}
	}
	return nil
}

// broadcast is the last address of the IPv4 prefix p.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}

// checkPEM checks that data holds a PEM block whose type ends in want.
func checkPEM(data []byte, want string) error {
	if len(data) == 0 {
		return errors.New("empty")
	}
	blk, _ := pem.Decode(data)
	if blk == nil {
		return errors.New("no PEM block")
	}
	if !strings.HasSuffix(blk.Type, want) {
		return fmt.Errorf("PEM block is %q, want %q", blk.Type, want)
	}
	return nil
}

// CredentialFiles are the files that carry spec's update-daemon credentials
// into a guest under GuestCredDir (directory 0700, key 0600), for an
// initramfs overlay (AppendInitramfs).
func CredentialFiles(spec loader.BootSpec) []File {
	dir := strings.TrimPrefix(GuestCredDir, "/")
	return []File{
		{Path: dir, Mode: fs.ModeDir | 0o700},
		{Path: dir + "/" + CertFile, Mode: 0o644, Data: spec.UpdatedCertPEM},
		{Path: dir + "/" + KeyFile, Mode: 0o600, Data: spec.UpdatedKeyPEM},
		{Path: dir + "/" + CAFile, Mode: 0o644, Data: spec.CAPEM},
		{Path: dir + "/" + CRLFile, Mode: 0o644, Data: spec.CRLPEM},
	}
}

// hasCreds reports whether spec carries update-daemon credentials.
func hasCreds(spec loader.BootSpec) bool {
	return len(spec.UpdatedCertPEM) > 0
}
