package inguest

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/kernel-tests/guestvm"
)

// A key for rfc4106(gcm(aes)): 16 bytes of AES key and 4 of salt.
const gcmKey = "0x0102030405060708090a0b0c0d0e0f1011121314"

func TestGuestSELinuxMLS(t *testing.T) {
	requireGuest(t)
	if got := readTrim(t, "/sys/fs/selinux/mls"); got != "1" {
		t.Errorf("/sys/fs/selinux/mls = %q, want 1: the MLS policy is not loaded", got)
	}
	want := "0"
	if wantEnforcing() {
		want = "1"
	}
	if got := readTrim(t, "/sys/fs/selinux/enforce"); got != want {
		t.Errorf("/sys/fs/selinux/enforce = %q, want %s (RunOptions.Enforcing)", got, want)
	}
	if got := readTrim(t, "/proc/self/attr/current"); got != guestvm.RunnerContext {
		t.Errorf("test runs as %q, want %q (the init's transition)", got, guestvm.RunnerContext)
	}
	// The kernel knows the policy's contexts, and the full lattice.
	for _, ctx := range []string{
		"system_u:system_r:analyst_t:s0-s15:c0.c1023",
		"system_u:object_r:analyst_spd_t:s0-s15",
		"system_u:system_r:osint_t:s3:c1,c7.c9",
	} {
		if err := checkContext(ctx); err != nil {
			t.Errorf("context %s: %v", ctx, err)
		}
	}
	for _, ctx := range []string{
		"system_u:system_r:nosuch_t:s0",   // undeclared type
		"system_u:system_r:analyst_t:s16", // beyond s15
		"system_u:system_r:analyst_t:s0:c1024",
	} {
		if err := checkContext(ctx); err == nil {
			t.Errorf("context %s is accepted; the policy must refuse it", ctx)
		}
	}
}

// checkContext asks the kernel whether ctx is valid in the loaded policy,
// as selinux_check_context does: a write to /sys/fs/selinux/context.
func checkContext(ctx string) error {
	fd, err := unix.Open("/sys/fs/selinux/context", unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, append([]byte(ctx), 0))
	return err
}

func TestGuestXFRMStateContext(t *testing.T) {
	requireGuest(t)
	newNetNS(t, "sa")
	for _, tc := range []struct{ spi, ctx string }{
		{"0x2001", "system_u:system_r:analyst_t:s4"},
		{"0x2002", "system_u:system_r:analyst_t:s0-s15"},
		{"0x2003", "system_u:system_r:osint_t:s2:c1,c7"},
	} {
		ip(t, "-n", "sa", "xfrm", "state", "add", "src", "10.88.0.1", "dst", "10.88.0.2",
			"proto", "esp", "spi", tc.spi, "reqid", testReqid, "mode", "transport",
			"aead", "rfc4106(gcm(aes))", gcmKey, "128", "ctx", tc.ctx)
		out := ip(t, "-n", "sa", "xfrm", "state", "get", "src", "10.88.0.1", "dst", "10.88.0.2", "proto", "esp", "spi", tc.spi)
		if !strings.Contains(out, "security context "+tc.ctx+"\n") && !strings.Contains(out, "security context "+tc.ctx+" ") {
			t.Errorf("SA %s added with ctx %s; the kernel returns:\n%s", tc.spi, tc.ctx, out)
		}
	}
	// With a policy loaded, a context outside it is refused.
	for _, ctx := range []string{"system_u:system_r:nosuch_t:s4", "system_u:system_r:analyst_t:s20"} {
		if out, err := ipTry("-n", "sa", "xfrm", "state", "add", "src", "10.88.0.1", "dst", "10.88.0.3",
			"proto", "esp", "spi", "0x2009", "mode", "transport",
			"aead", "rfc4106(gcm(aes))", gcmKey, "128", "ctx", ctx); err == nil {
			t.Errorf("SA with ctx %s is accepted:\n%s", ctx, out)
		}
	}
}

func TestGuestXFRMPolicyContext(t *testing.T) {
	requireGuest(t)
	newNetNS(t, "spd")
	const ctx = "system_u:object_r:analyst_spd_t:s0-s15"
	ip(t, "-n", "spd", "xfrm", "policy", "add", "src", "10.88.1.1/32", "dst", "10.88.1.2/32",
		"dir", "out", "ctx", ctx, "tmpl", "src", "10.88.1.1", "dst", "10.88.1.2",
		"proto", "esp", "reqid", testReqid, "mode", "transport")
	out := ip(t, "-n", "spd", "xfrm", "policy", "list")
	if !strings.Contains(out, "security context "+ctx) {
		t.Errorf("policy added with ctx %s; the kernel returns:\n%s", ctx, out)
	}
}

func TestGuestBPFFS(t *testing.T) {
	requireGuest(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("/sys/fs/bpf has file system magic %#x, want bpffs %#x", st.Type, unix.BPF_FS_MAGIC)
	}
	if err := unix.Access("/sys/kernel/btf/vmlinux", unix.R_OK); err != nil {
		t.Errorf("kernel BTF: %v", err)
	}
}
