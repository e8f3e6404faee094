package backend

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/loader"
)

func TestValidate(t *testing.T) {
	good, _ := testSpec(t, 7, "10.70.0.7", "10.70.0.1", 24)
	if err := Validate(good, true); err != nil {
		t.Fatalf("Validate(analyst guest) = %v", err)
	}
	v6, _ := testSpec(t, 8, "fd70::8", "fd70::1", 64)
	if err := Validate(v6, true); err != nil {
		t.Fatalf("Validate(IPv6 guest) = %v", err)
	}
	p31, _ := testSpec(t, 9, "10.70.0.0", "10.70.0.1", 31)
	if err := Validate(p31, true); err != nil {
		t.Fatalf("Validate(/31 link) = %v", err)
	}
	noCreds := good
	noCreds.UpdatedCertPEM, noCreds.UpdatedKeyPEM, noCreds.CAPEM = nil, nil, nil
	if err := Validate(noCreds, false); err != nil {
		t.Fatalf("Validate(no credentials, none needed) = %v", err)
	}

	ip := netip.MustParseAddr
	cases := map[string]struct {
		edit      func(*loader.BootSpec)
		needCreds bool
		want      string
	}{
		"vm 0":            {func(s *loader.BootSpec) { s.VM = 0 }, false, "VM id 0 is dom0"},
		"name with space": {func(s *loader.BootSpec) { s.Name = "vm 7" }, false, `name "vm 7"`},
		"name with quote": {func(s *loader.BootSpec) { s.Name = `vm"7` }, false, "letters, digits"},
		"long name":       {func(s *loader.BootSpec) { s.Name = strings.Repeat("a", 65) }, false, "1-64"},
		"no addr":         {func(s *loader.BootSpec) { s.Addr = netip.Addr{} }, false, "guest address is missing"},
		"no host addr":    {func(s *loader.BootSpec) { s.HostAddr = netip.Addr{} }, false, "host address is missing"},
		"families":        {func(s *loader.BootSpec) { s.HostAddr = ip("fd70::1") }, false, "different families"},
		"mapped":          {func(s *loader.BootSpec) { s.Addr = ip("::ffff:10.70.0.7") }, false, "write it as IPv4 (10.70.0.7)"},
		"zone":            {func(s *loader.BootSpec) { s.Addr, s.HostAddr = ip("fd70::7%eth0"), ip("fd70::1") }, false, "has a zone"},
		"loopback":        {func(s *loader.BootSpec) { s.Addr = ip("127.0.0.7") }, false, "not a unicast address"},
		"multicast":       {func(s *loader.BootSpec) { s.HostAddr = ip("224.0.0.1") }, false, "not a unicast address"},
		"link-local":      {func(s *loader.BootSpec) { s.Addr, s.HostAddr = ip("fe80::7"), ip("fe80::1") }, false, "not a unicast address"},
		"same":            {func(s *loader.BootSpec) { s.HostAddr = s.Addr }, false, "both 10.70.0.7"},
		"prefix 0":        {func(s *loader.BootSpec) { s.PrefixLen = 0 }, false, "prefix length 0 is out of range"},
		"prefix 32":       {func(s *loader.BootSpec) { s.PrefixLen = 32 }, false, "give 1-31"},
		"other prefix":    {func(s *loader.BootSpec) { s.HostAddr = ip("10.70.1.1") }, false, "not in one /24; take both from the link prefix 10.70.0.0/24"},
		"network address": {func(s *loader.BootSpec) { s.Addr = ip("10.70.0.0") }, false, "network or broadcast address of 10.70.0.0/24"},
		"broadcast":       {func(s *loader.BootSpec) { s.HostAddr = ip("10.70.0.255") }, false, "network or broadcast"},
		"no port":         {func(s *loader.BootSpec) { s.UpdatedPort = 0 }, false, "UpdatedPort is 0"},
		"creds needed":    {func(s *loader.BootSpec) { s.UpdatedCertPEM, s.UpdatedKeyPEM, s.CAPEM = nil, nil, nil }, true, "UpdatedCertPEM: empty"},
		"key missing":     {func(s *loader.BootSpec) { s.UpdatedKeyPEM = nil }, false, "UpdatedKeyPEM: empty"},
		"key is a cert":   {func(s *loader.BootSpec) { s.UpdatedKeyPEM = s.CAPEM }, false, `UpdatedKeyPEM: PEM block is "CERTIFICATE", want "PRIVATE KEY"`},
		"ca not PEM":      {func(s *loader.BootSpec) { s.CAPEM = []byte("MIIB...") }, false, "CAPEM: no PEM block"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := good
			c.edit(&s)
			err := Validate(s, c.needCreds)
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want ErrInvalidSpec containing %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "vm"+strconv.Itoa(int(s.VM))+":") {
				t.Errorf("error %q does not name the guest", err)
			}
		})
	}
}

func TestNames(t *testing.T) {
	if got := IfName(math.MaxUint32); len(got) > maxIfName || got != "vif4294967295.0" {
		t.Errorf("IfName(max) = %q (%d bytes), want vif4294967295.0 within Linux's %d", got, len(got), maxIfName)
	}
	if got := IfName(7); got != "vif7.0" {
		t.Errorf("IfName(7) = %q", got)
	}
	if got := NetnsName(7); got != "mlsg-vm7" {
		t.Errorf("NetnsName(7) = %q", got)
	}
	macs := map[string]uint32{}
	for _, vm := range []uint32{1, 7, 255, 256, 1<<24 - 1, 1 << 24, 1<<24 + 1, 1<<24 + 7, math.MaxUint32} {
		m := MAC(vm)
		if m[0]&1 != 0 {
			t.Errorf("MAC(%d) = %s is multicast", vm, m)
		}
		if prev, ok := macs[m.String()]; ok {
			t.Errorf("MAC(%d) = MAC(%d) = %s", vm, prev, m)
		}
		macs[m.String()] = vm
	}
	if got := MAC(7).String(); got != "00:16:3e:00:00:07" {
		t.Errorf("MAC(7) = %s, want Xen's OUI", got)
	}
	if got := MAC(1<<24 + 7).String(); got != "02:00:01:00:00:07" {
		t.Errorf("MAC(2^24+7) = %s, want a locally administered address", got)
	}
	sp, _ := testSpec(t, 8, "fd70::8", "fd70::1", 64)
	if got := Cmdline(sp); got != "mlsgate.addr=fd70::8/64 mlsgate.gw=fd70::1 mlsgate.port=7444" {
		t.Errorf("Cmdline = %q", got)
	}
	if got := UpdatedAddr(sp); got != "[fd70::8]:7444" {
		t.Errorf("UpdatedAddr = %q", got)
	}
}

// readNewc parses a newc archive into path → entry, failing on anything
// malformed: the oracle for WriteNewc.
func readNewc(t *testing.T, b []byte) (map[string]File, []string) {
	t.Helper()
	files := map[string]File{}
	var order []string
	for off := 0; ; {
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		if field(2) != 0 || field(3) != 0 || field(5) != 0 {
			t.Errorf("entry at %d is not root-owned with time 0", off)
		}
		name := string(b[off+110 : off+110+namesize-1])
		off = (off + 110 + namesize + 3) &^ 3
		data := b[off : off+size]
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return files, order
		}
		m := fs.FileMode(mode & 0o777)
		if mode&0o170000 == 0o040000 {
			m |= fs.ModeDir
		}
		files[name] = File{Path: name, Mode: m, Data: data}
		order = append(order, name)
	}
}

func TestAppendInitramfs(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	os.WriteFile(base, []byte("BASE!"), 0o644)
	sp, _ := testSpec(t, 7, "10.70.0.7", "10.70.0.1", 24)
	files := append(CredentialFiles(sp), File{Path: "/sbin/mlsgate", Mode: 0o755, Data: []byte("ELF")})
	out := filepath.Join(dir, "initrd")
	if err := AppendInitramfs(out, base, files); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !bytes.HasPrefix(b, []byte("BASE!\x00\x00\x00")) {
		t.Fatalf("overlay does not start with the base padded to 4 bytes: %q", b[:12])
	}
	got, order := readNewc(t, b[8:])
	want := map[string]fs.FileMode{
		"etc": fs.ModeDir | 0o755, "etc/mlsgate": fs.ModeDir | 0o755, "etc/mlsgate/updated": fs.ModeDir | 0o700,
		"etc/mlsgate/updated/cert.pem": 0o644, "etc/mlsgate/updated/key.pem": 0o600, "etc/mlsgate/updated/ca.pem": 0o644,
		"etc/mlsgate/updated/crl.pem": 0o644,
		"sbin":                        fs.ModeDir | 0o755, "sbin/mlsgate": 0o755,
	}
	if len(got) != len(want) {
		t.Errorf("archive holds %v, want %d entries", order, len(want))
	}
	for p, m := range want {
		if got[p].Mode != m {
			t.Errorf("%s: mode %v, want %v", p, got[p].Mode, m)
		}
	}
	if !bytes.Equal(got["etc/mlsgate/updated/key.pem"].Data, sp.UpdatedKeyPEM) || string(got["sbin/mlsgate"].Data) != "ELF" {
		t.Error("file contents did not survive the archive")
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("entries out of order: %q before %q", order[i-1], order[i])
		}
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay mode %v, want 0600 (it holds a key)", fi.Mode())
	}
	var again bytes.Buffer
	WriteNewc(&again, files)
	if !bytes.Equal(again.Bytes(), b[8:]) {
		t.Error("WriteNewc is not deterministic")
	}
	if err := AppendInitramfs(filepath.Join(dir, "x"), filepath.Join(dir, "missing"), files); err == nil {
		t.Error("AppendInitramfs with a missing base succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Errorf("failed AppendInitramfs left its output: %v", err)
	}
	if err := WriteNewc(&again, []File{{Path: "/"}}); err == nil {
		t.Error("WriteNewc accepted an entry for /")
	}
}

func TestInitScript(t *testing.T) {
	s := InitScript(InitOptions{Modules: []string{"virtio_pci", "/lib/modules/extra/virtio_net.ko"}})
	for _, want := range []string{
		"mlsgate.addr=*) ADDR=${w#mlsgate.addr=}", "mlsgate.gw=*)", "mlsgate.port=*)",
		"for m in virtio_pci /lib/modules/extra/virtio_net.ko; do",
		`/sbin/mlsgate updated --config '' --listen "$LISTEN" --cert /etc/mlsgate/updated/cert.pem --key /etc/mlsgate/updated/key.pem --ca /etc/mlsgate/updated/ca.pem --crl /etc/mlsgate/updated/crl.pem --state-dir /var/lib/mlsgate/updated &`,
		"IF=eth0", `IP=${ADDR%/*}`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to check the script's syntax")
	}
	f := filepath.Join(t.TempDir(), "init")
	os.WriteFile(f, []byte(InitScript(InitOptions{Binary: "/opt/my mlsgate", Interface: "enX0"})), 0o755)
	if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(f); !strings.Contains(string(b), "'/opt/my mlsgate' updated") || !strings.Contains(string(b), "IF=enX0") {
		t.Errorf("options not honoured:\n%s", b)
	}
}

// TestNetnsBootRefusesBadSpec runs without privileges: the spec is checked
// before anything touches the host.
func TestNetnsBootRefusesBadSpec(t *testing.T) {
	sp, _ := testSpec(t, 60050, "10.70.0.7", "10.70.0.1", 24)
	sp.UpdatedKeyPEM = nil
	n := &Netns{Binary: "/bin/true", IP: "/nonexistent/ip", StateDir: t.TempDir()}
	if _, err := n.Boot(context.Background(), sp); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("Boot without a key for the daemon: %v, want ErrInvalidSpec", err)
	}
	sp.UpdatedCertPEM, sp.CAPEM = nil, nil
	n.Binary = ""
	_, err := n.Boot(context.Background(), sp)
	var ce *CmdError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "/nonexistent/ip netns add mlsg-vm60050") {
		t.Errorf("Boot with no daemon and a missing ip: %v, want the failed command", err)
	}
	if err := n.Destroy(context.Background(), &loader.Guest{VM: 60050, Handle: "other"}); err == nil || !strings.Contains(err.Error(), "not booted by this backend") {
		t.Errorf("Destroy of a foreign handle: %v", err)
	}
}

// TestInitScriptSELinux: asked for SELinux, the init loads the store's
// policy before the daemon and powers off when it cannot; not asked, it
// leaves SELinux alone.
func TestInitScriptSELinux(t *testing.T) {
	s := InitScript(InitOptions{SELinux: true})
	load, daemon := strings.Index(s, "if ! load_policy; then"), strings.Index(s, "mlsgate updated ")
	if load < 0 || daemon < 0 || load > daemon {
		t.Errorf("load_policy must run before the daemon starts:\n%s", s)
	}
	if !strings.Contains(s, "cannot load the SELinux policy store named in /etc/selinux/config; powering off\"\n\tpoweroff -f") {
		t.Errorf("a failed load_policy must power the guest off:\n%s", s)
	}
	if plain := InitScript(InitOptions{}); strings.Contains(plain, "load_policy") || strings.Contains(plain, "selinuxfs") {
		t.Errorf("SELinux not asked for, yet the init touches it:\n%s", plain)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to check the script's syntax")
	}
	f := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(f, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s", err, out)
	}
}
