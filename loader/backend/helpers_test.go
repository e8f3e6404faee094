package backend

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// requirePrivileged skips unless the test runs as root with iproute2: the
// privileged tests create network namespaces, veth pairs and taps.
func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and taps (run go test as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip: apt-get install iproute2")
	}
}

var standin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// TestMain removes the stand-in daemon built for the privileged tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if standin.dir != "" {
		os.RemoveAll(standin.dir)
	}
	os.Exit(code)
}

// buildStandin compiles testdata/standin into a static binary, once per test
// run.
func buildStandin(t *testing.T) string {
	t.Helper()
	standin.once.Do(func() {
		standin.dir, standin.err = os.MkdirTemp("", "mlsgate-standin-")
		if standin.err != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		standin.path = filepath.Join(standin.dir, "standin")
		cmd := exec.Command(goTool, "build", "-o", standin.path, "./testdata/standin")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			standin.err = fmt.Errorf("go build ./testdata/standin: %v\n%s", err, out)
		}
		os.Chmod(standin.dir, 0o755) // the daemon runs as root anyway; keep it reachable
	})
	if standin.err != nil {
		t.Fatal(standin.err)
	}
	return standin.path
}

// testCreds makes a CA and an update-daemon certificate for the given
// addresses, as PEM.
func testCreds(t *testing.T, addrs ...netip.Addr) (certPEM, keyPEM, caPEM, crlPEM []byte, pool *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "backend test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "updated"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	crlDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour)}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crlDER}), pool
}

// testSpec is a spec for guest vm on addr/bits with the host at host, with
// fresh credentials; pool verifies the daemon's certificate.
func testSpec(t *testing.T, vm uint32, addr, host string, bits int) (loader.BootSpec, *x509.CertPool) {
	t.Helper()
	a, h := netip.MustParseAddr(addr), netip.MustParseAddr(host)
	cert, key, ca, crl, pool := testCreds(t, a)
	return loader.BootSpec{
		VM: vm, Name: NetnsName(vm), Addr: a, HostAddr: h, PrefixLen: bits, Template: "analyst",
		UpdatedCertPEM: cert, UpdatedKeyPEM: key, CAPEM: ca, CRLPEM: crl, UpdatedPort: 7444,
	}, pool
}

// newHostNS creates a named network namespace for the host ends of a test's
// guests, deleted when the test ends, so no test touches the host's own
// network.
func newHostNS(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("mlsgt-host-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// ipAddrs is what `ip -j addr show dev` reports of one interface in ns ("" =
// the caller's): its flags and addresses as prefix strings.
func ipAddrs(t *testing.T, ns, dev string) (flags []string, addrs []string, err error) {
	t.Helper()
	args := []string{"-j", "addr", "show", "dev", dev}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return nil, nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var links []struct {
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return nil, nil, fmt.Errorf("ip -j addr show dev %s: %q: %v", dev, out, err)
	}
	for _, a := range links[0].AddrInfo {
		addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
	}
	return links[0].Flags, addrs, nil
}

// greet connects to the update daemon at addr over TLS, verifying its
// certificate against pool, and returns its greeting line.
func greet(ctx context.Context, addr string, pool *x509.CertPool) (string, error) {
	host, _, _ := net.SplitHostPort(addr)
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 3 * time.Second}, Config: &tls.Config{RootCAs: pool, ServerName: host}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var buf bytes.Buffer
	b := make([]byte, 256)
	for !bytes.Contains(buf.Bytes(), []byte("\n")) {
		n, err := c.Read(b)
		buf.Write(b[:n])
		if err != nil {
			break
		}
	}
	return strings.TrimSpace(buf.String()), nil
}

// contains reports whether list holds s.
func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// linkLocals returns the IPv6 link-local addresses among addrs.
func linkLocals(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if strings.HasPrefix(a, "fe80:") {
			out = append(out, a)
		}
	}
	return out
}

// linkMAC returns dev's Ethernet address in the named namespace.
func linkMAC(t *testing.T, ns, dev string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "link", "show", "dev", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s link show dev %s: %v: %s", ns, dev, err, out)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show dev %s: %q: %v", dev, out, err)
	}
	return links[0].Address
}
