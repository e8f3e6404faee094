package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/internal/cpio"
)

func TestPolicySourceCompiles(t *testing.T) {
	src := PolicySource()
	if src != PolicySource() {
		t.Fatal("PolicySource is not deterministic: the image cache key would change on every call")
	}
	for _, want := range []string{
		"sensitivity s15;", "category c1023;", "level s15:c0.c1023;",
		"type runner_t, domain, unconfined;", "type outsider_t, domain;",
		"type analyst_t, domain, sa_type;", "type analyst_spd_t, spd_type;",
		"allow analyst_t analyst_spd_t:association polmatch;",
		"mlsconstrain association { polmatch } ( l1 dom l2 and l1 domby h2 );",
	} {
		if !strings.Contains(src, want+"\n") {
			t.Errorf("policy source lacks %q", want)
		}
	}
	if strings.Contains(src, "outsider_t self:association") || strings.Contains(src, "outsider_t "+"analyst_spd_t") {
		t.Error("outsider_t must have no association rights of its own")
	}
	if _, err := findTool("checkpolicy"); err != nil {
		t.Skip("checkpolicy not installed (make deps-selinux); the source was checked, not compiled")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "policy.conf")
	if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CompilePolicy(context.Background(), conf, filepath.Join(dir, "policy.33")); err != nil {
		t.Fatal(err)
	}
	// A binary policy starts with the SELinux magic 0xf97cff8c (little endian).
	b, err := os.ReadFile(filepath.Join(dir, "policy.33"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 4 || !bytes.Equal(b[:4], []byte{0x8c, 0xff, 0x7c, 0xf9}) {
		t.Fatalf("policy.33 does not start with the SELinux policy magic: % x", b[:min(len(b), 8)])
	}
}

// newcEntry is one member of a newc archive as readNewc parses it.
type newcEntry struct {
	mode         uint32
	rdev         [2]uint32
	data         string
	headerOffset int
}

// readNewc parses a newc archive, checking the magic and 4-byte alignment.
func readNewc(t *testing.T, b []byte) map[string]newcEntry {
	t.Helper()
	out := map[string]newcEntry{}
	off := 0
	for {
		if off%4 != 0 || off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no aligned newc header at offset %d", off)
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header at %d, field %d: %v", off, i, err)
			}
			f[i] = uint32(v)
		}
		mode, size, rmaj, rmin, namesize := f[1], int(f[6]), f[9], f[10], int(f[11])
		if f[2] != 0 || f[3] != 0 || f[5] != 0 {
			t.Errorf("entry at %d: uid %d gid %d mtime %d, want zeros", off, f[2], f[3], f[5])
		}
		name := string(b[off+110 : off+110+namesize-1])
		if b[off+110+namesize-1] != 0 {
			t.Fatalf("name %q is not NUL-terminated", name)
		}
		data := off + 110 + namesize
		data += (4 - data%4) % 4
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = newcEntry{mode: mode, rdev: [2]uint32{rmaj, rmin}, data: string(b[data : data+size]), headerOffset: off}
		off = data + size
		off += (4 - off%4) % 4
	}
}

func TestWriteArchive(t *testing.T) {
	stage := t.TempDir()
	for _, d := range []string{"bin", "etc/guestvm", "dev"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{"init": "#!/bin/sh\n", "etc/guestvm/modules": "veth\n9p\n", "bin/odd": "12345"}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(stage, name), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/bin/busybox", filepath.Join(stage, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := writeArchive(stage, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, b)
	for name, data := range files {
		e, ok := got[name]
		if !ok || e.data != data || e.mode != cpio.ModeFile|0o755 {
			t.Errorf("%s: got %+v, want a 0755 file holding %q", name, e, data)
		}
	}
	if e := got["bin/sh"]; e.mode&0o170000 != cpio.ModeLink || e.data != "/bin/busybox" {
		t.Errorf("bin/sh: got %+v, want a link to /bin/busybox", e)
	}
	if e := got["dev/console"]; e.mode != cpio.ModeChar|0o600 || e.rdev != [2]uint32{5, 1} {
		t.Errorf("dev/console: got %+v, want character device 5:1", e)
	}
	if got["etc"].headerOffset > got["etc/guestvm/modules"].headerOffset {
		t.Error("a directory comes after its contents")
	}
	// Equal trees give equal archives.
	again := filepath.Join(t.TempDir(), "again.cpio")
	if err := writeArchive(stage, again); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(again); !bytes.Equal(b, b2) {
		t.Error("two archives of one tree differ")
	}
	// GNU cpio, where installed, reads it too.
	if cpio, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command(cpio, "-it", "--quiet")
		cmd.Stdin = bytes.NewReader(b)
		list, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -it: %v", err)
		}
		if !strings.Contains(string(list), "etc/guestvm/modules\n") || !strings.Contains(string(list), "dev/console\n") {
			t.Errorf("cpio -it lists:\n%s", list)
		}
	}
}

func TestJobScriptQuoting(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "show")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nfor a; do echo \"[$a]\"; done\necho \"in=$MLSGATE_IN_GUEST enf=$MLSGATE_GUEST_ENFORCING x=$X\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := jobScript(bin, RunOptions{
		Args:      []string{"-test.run=^TestA$", "it's", "a b", "$HOME", ""},
		Enforcing: true,
		Env:       map[string]string{"X": "y'z w"},
	})
	// The script starts in /mnt, the share in the guest; here any directory does.
	script = strings.Replace(script, "cd /mnt ||", "cd "+shellQuote(dir)+" ||", 1)
	out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s\nscript:\n%s", err, out, script)
	}
	want := "[-test.run=^TestA$]\n[it's]\n[a b]\n[$HOME]\n[]\nin=1 enf=1 x=y'z w\n"
	if string(out) != want {
		t.Errorf("the job ran with\n%s\nwant\n%s\nscript:\n%s", out, want, script)
	}
}

func TestParseExit(t *testing.T) {
	code, start, end, err := parseExit("3 4.25 6.75\n")
	if err != nil || code != 3 || start != 4250*time.Millisecond || end != 6750*time.Millisecond {
		t.Errorf("parseExit = %d, %v, %v, %v", code, start, end, err)
	}
	for _, bad := range []string{"", "3 4.25", "x 1 2", "0 1 y"} {
		if _, _, _, err := parseExit(bad); err == nil {
			t.Errorf("parseExit(%q) accepted", bad)
		}
	}
}

func TestKernelDependency(t *testing.T) {
	show := "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"
	pkg, version, ok := kernelDependency(show)
	if !ok || pkg != "linux-image-6.1.0-56-amd64" || version != "6.1.192-2" {
		t.Errorf("kernelDependency = %q, %q, %v", pkg, version, ok)
	}
	for _, bad := range []string{
		"Depends: linux-image-cloud-amd64 (= 1)\n", // a meta-package
		"Depends: linux-image-6.1.0-56-amd64\n",    // no version
		"Pre-Depends: linux-image-6.1.0-56-amd64 (= 1)\n",
	} {
		if p, v, ok := kernelDependency(bad); ok {
			t.Errorf("kernelDependency(%q) = %q, %q", bad, p, v)
		}
	}
}

func TestRunRefusesDynamicBinary(t *testing.T) {
	img := &Image{}
	_, err := img.Run(context.Background(), RunOptions{Binary: "/bin/sh"})
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("Run with a dynamic binary: %v, want an error naming CGO_ENABLED=0", err)
	}
}

func ExampleImage_Run() {
	ctx := context.Background()
	img, err := Prepare(ctx, "", os.Stderr)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := BuildTestBinary(ctx, "./kernel-tests/inguest", "/tmp/inguest.test"); err != nil {
		fmt.Println(err)
		return
	}
	res, err := img.Run(ctx, RunOptions{Binary: "/tmp/inguest.test", Args: []string{"-test.v"}, Enforcing: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(res.Output)
}
