package backend

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/loader"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// analystSpec is the paper's analyst browser guest as the loader boots it.
func analystSpec(t *testing.T) loader.BootSpec {
	sp, _ := testSpec(t, 7, "10.70.0.7", "10.70.0.1", 24)
	sp.Name = "mlsg-vm7"
	return sp
}

// analystXen is a dom0 set up as the xen-dom0 recipe measured fastest.
func analystXen(dir string) *Xen {
	return &Xen{
		ConfigDir: dir, Kernel: "/var/lib/mlsgate/guest/vmlinux", Ramdisk: "/var/lib/mlsgate/guest/initrd.gz",
		ExtraCmdline: "console=hvc0 quiet",
	}
}

func TestXenConfigGolden(t *testing.T) {
	big := loader.BootSpec{VM: 1<<24 - 5, Name: "osint-1", Addr: netip.MustParseAddr("192.168.5.2"),
		HostAddr: netip.MustParseAddr("192.168.5.1"), PrefixLen: 30, UpdatedPort: 9000, Template: "osint"}
	cases := map[string]struct {
		xen  *Xen
		spec loader.BootSpec
	}{
		"analyst-browser": {analystXen("/var/lib/mlsgate/xen"), analystSpec(t)},
		// No credentials: no per-guest ramdisk, no name (mlsg-vm<VM>), IPv6,
		// every default.
		"defaults-ipv6": {&Xen{Kernel: "/boot/vmlinux"}, loader.BootSpec{VM: 70000,
			Addr: netip.MustParseAddr("fd70::7"), HostAddr: netip.MustParseAddr("fd70::1"), PrefixLen: 64, UpdatedPort: 7444}},
		// A /30 link, more memory and vCPUs.
		"small-link": {&Xen{Kernel: "/boot/vmlinux", Ramdisk: "/boot/initrd", Memory: 512, VCPUs: 2}, big},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := c.xen.Config(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := c.xen.Config(c.spec)
			if again != got {
				t.Fatalf("Config is not deterministic:\n%s\n---\n%s", got, again)
			}
			golden := filepath.Join("testdata", "xen", name+".cfg")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestXenConfigGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("config differs from %s (rerun with -update if intended):\n%s", golden, got)
			}
		})
	}
}

func TestXenConfigErrors(t *testing.T) {
	sp := analystSpec(t)
	noCreds := sp
	noCreds.UpdatedCertPEM, noCreds.UpdatedKeyPEM, noCreds.CAPEM = nil, nil, nil
	badSpec := sp
	badSpec.VM = 0
	bigID := noCreds
	bigID.VM = 1<<24 + 7
	farHost := noCreds
	farHost.HostAddr = netip.MustParseAddr("10.70.0.9")
	cases := map[string]struct {
		xen  *Xen
		spec loader.BootSpec
		want string
	}{
		"no kernel":               {&Xen{Ramdisk: "/r"}, sp, "Xen.Kernel is empty"},
		"credentials, no ramdisk": {&Xen{Kernel: "/k"}, sp, "Xen.Ramdisk is empty"},
		"quote in extra":          {&Xen{Kernel: "/k", ExtraCmdline: `init="/x"`}, noCreds, "Xen.ExtraCmdline"},
		"comma in script":         {&Xen{Kernel: "/k", Script: "vif-route,bridge=xenbr0"}, noCreds, "Xen.Script"},
		"space in script":         {&Xen{Kernel: "/k", Script: "vif fast"}, noCreds, "Xen.Script"},
		"id past 24 bits":         {&Xen{Kernel: "/k"}, bigID, "share MACs"},
		"host not first address":  {&Xen{Kernel: "/k"}, farHost, "give HostAddr 10.70.0.1"},
		"tiny memory":             {&Xen{Kernel: "/k", Memory: 16}, noCreds, "at least 32 MiB"},
		"bad spec":                {&Xen{Kernel: "/k"}, badSpec, "VM id 0"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := c.xen.Config(c.spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Config: %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// fakeXL plays xl for the Xen backend: it records every command line and
// answers from a table keyed by the verb.
type fakeXL struct {
	calls   [][]string
	answers map[string]func(args []string) ([]byte, error)
}

func (f *fakeXL) run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, append([]string{name}, args...))
	if a := f.answers[args[0]]; a != nil {
		return a(args)
	}
	return nil, nil
}

func (f *fakeXL) lines() []string {
	var out []string
	for _, c := range f.calls {
		out = append(out, strings.Join(c, " "))
	}
	return out
}

// xlFailure is what a failed xl command looks like through runCmd.
func xlFailure(out string, args ...string) ([]byte, error) {
	return []byte(out), &CmdError{Cmd: append([]string{"/usr/sbin/xl"}, args...), Output: out, Err: errors.New("exit status 1")}
}

func TestXenBootFlows(t *testing.T) {
	base := filepath.Join(t.TempDir(), "initrd.gz")
	if err := os.WriteFile(base, []byte("BASE!"), 0o644); err != nil {
		t.Fatal(err)
	}
	newXen := func(t *testing.T, f *fakeXL) (*Xen, string) {
		dir := t.TempDir()
		x := analystXen(dir)
		x.XL, x.Ramdisk, x.Run = "/usr/sbin/xl", base, f.run
		x.Created = func(context.Context, *loader.Guest) error { return nil }
		x.Attached = func(context.Context, *loader.Guest) error { return nil }
		return x, dir
	}
	sp := analystSpec(t)
	created := []string{"/usr/sbin/xl create -p " + "CFG", "/usr/sbin/xl domid mlsg-vm7"}
	unpaused := append(slices.Clone(created), "/usr/sbin/xl unpause mlsg-vm7")
	expect := func(dir string, lines ...string) []string {
		out := slices.Clone(lines)
		for i := range out {
			out[i] = strings.ReplaceAll(out[i], "CFG", filepath.Join(dir, "mlsg-vm7.cfg"))
		}
		return out
	}

	t.Run("boots", func(t *testing.T) {
		f := &fakeXL{}
		x, dir := newXen(t, f)
		wantCfg, err := x.Config(sp)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		f.answers = map[string]func([]string) ([]byte, error){
			"create": func(args []string) ([]byte, error) {
				// What xl would read: the config, and the ramdisk it names.
				if len(args) != 3 || args[1] != "-p" {
					t.Errorf("xl %q: want create -p CONFIG, the domain paused until its vif is filtered", args)
					return nil, errors.New("bad args")
				}
				cfg, err := os.ReadFile(args[2])
				if err != nil || string(cfg) != wantCfg {
					t.Errorf("at xl create, %s holds %q (%v), want the config", args[2], cfg, err)
				}
				rd := filepath.Join(dir, "mlsg-vm7.initrd")
				if !strings.Contains(string(cfg), fmt.Sprintf("ramdisk = %q", rd)) {
					t.Errorf("config does not name the per-guest ramdisk %s", rd)
				}
				fi, err := os.Stat(rd)
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("per-guest ramdisk %s: %v, want mode 0600", rd, err)
				} else {
					data, _ := os.ReadFile(rd)
					if !bytes.HasPrefix(data, []byte("BASE!\x00\x00\x00070701")) || !bytes.Contains(data, sp.UpdatedKeyPEM) || !bytes.Contains(data, []byte("TRAILER!!!")) {
						t.Errorf("per-guest ramdisk is not the base padded to 4 bytes and a newc archive holding the key:\n%q", data[:min(len(data), 200)])
					}
				}
				return []byte("Parsing config from " + args[2] + "\n"), nil
			},
			"domid": func([]string) ([]byte, error) { return []byte("3\n"), nil },
		}
		// Every step records the xl commands run before it: the guest is
		// declared and attached while paused, unpaused, then waited for.
		step := func(name string, g *loader.Guest) {
			seen = append(seen, fmt.Sprintf("%s %s %s after %d xl", name, g.Interface, g.MAC, len(f.calls)))
		}
		x.Created = func(_ context.Context, g *loader.Guest) error { step("created", g); return nil }
		x.Attached = func(_ context.Context, g *loader.Guest) error { step("attached", g); return nil }
		x.Ready = func(ctx context.Context, g *loader.Guest) error {
			step("ready "+g.UpdatedAddr, g)
			return nil
		}
		g, err := x.Boot(context.Background(), sp)
		if err != nil {
			t.Fatal(err)
		}
		want := loader.Guest{VM: 3, Name: "mlsg-vm7", Backend: "xen", Interface: "vif3.0", Addr: sp.Addr, HostAddr: sp.HostAddr,
			MAC: "02:6d:6c:00:00:07", UpdatedAddr: "10.70.0.7:7444", Handle: "mlsg-vm7", Template: "analyst"}
		if *g != want {
			t.Errorf("Boot = %+v, want %+v", *g, want)
		}
		if got, want := f.lines(), expect(dir, unpaused...); !slices.Equal(got, want) {
			t.Errorf("xl commands %q, want %q", got, want)
		}
		if want := []string{
			"created vif3.0 02:6d:6c:00:00:07 after 2 xl", "attached vif3.0 02:6d:6c:00:00:07 after 2 xl",
			"ready 10.70.0.7:7444 vif3.0 02:6d:6c:00:00:07 after 3 xl",
		}; !slices.Equal(seen, want) {
			t.Errorf("steps %q, want %q", seen, want)
		}
		if _, err := os.Stat(filepath.Join(dir, "mlsg-vm7.initrd")); !os.IsNotExist(err) {
			t.Errorf("the ramdisk holding the key outlived xl create: %v", err)
		}
		if _, err := os.Stat(x.ConfigPath("mlsg-vm7")); err != nil {
			t.Errorf("the config of a running guest is gone: %v", err)
		}

		// Pause, unpause, destroy twice: the second finds no domain.
		destroyed := 0
		f.answers["destroy"] = func(args []string) ([]byte, error) {
			if destroyed++; destroyed > 1 {
				return xlFailure("invalid domain identifier (rc=-6)\n", args...)
			}
			return nil, nil
		}
		for _, step := range []func(context.Context, *loader.Guest) error{x.Pause, x.Unpause, x.Destroy, x.Destroy} {
			if err := step(context.Background(), g); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := f.lines()[3:], []string{
			"/usr/sbin/xl pause mlsg-vm7", "/usr/sbin/xl unpause mlsg-vm7",
			"/usr/sbin/xl destroy mlsg-vm7", "/usr/sbin/xl destroy mlsg-vm7",
		}; !slices.Equal(got, want) {
			t.Errorf("xl commands %q, want %q", got, want)
		}
		if _, err := os.Stat(x.ConfigPath("mlsg-vm7")); !os.IsNotExist(err) {
			t.Errorf("Destroy left the config: %v", err)
		}
	})

	failures := map[string]struct {
		answers           map[string]func([]string) ([]byte, error)
		created, attached error
		ready             error
		lines             []string // after CFG substitution
		want              string
	}{
		"agent refuses the declaration": {
			created: errors.New("agent: PUT /v1/guests/vif12.0: 422"),
			answers: map[string]func([]string) ([]byte, error){"domid": func([]string) ([]byte, error) { return []byte("12\n"), nil }},
			lines:   append(slices.Clone(created), "/usr/sbin/xl destroy mlsg-vm7"),
			want:    "declare vif12.0 (domid 12) to the agent: agent: PUT",
		},
		"agent never attaches": {
			attached: context.DeadlineExceeded,
			answers:  map[string]func([]string) ([]byte, error){"domid": func([]string) ([]byte, error) { return []byte("12\n"), nil }},
			lines:    append(slices.Clone(created), "/usr/sbin/xl destroy mlsg-vm7"),
			want:     "did not report the fast path attached to vif12.0",
		},
		"unpause fails": {
			answers: map[string]func([]string) ([]byte, error){
				"domid":   func([]string) ([]byte, error) { return []byte("12\n"), nil },
				"unpause": func(a []string) ([]byte, error) { return xlFailure("libxl: error: unpause failed\n", a...) },
			},
			lines: append(slices.Clone(unpaused), "/usr/sbin/xl destroy mlsg-vm7"),
			want:  "unpause mlsg-vm7",
		},
		"create fails": {
			answers: map[string]func([]string) ([]byte, error){"create": func(a []string) ([]byte, error) {
				return xlFailure("libxl: error: libxl_domain.c: Domain with name mlsg-vm7 already exists\n", a...)
			}},
			lines: []string{"/usr/sbin/xl create -p CFG"},
			want:  "already exists",
		},
		// The hotplug script exits non-zero when the agent does not answer:
		// xl create fails and tears the domain down itself.
		"hotplug script refuses the vif": {
			answers: map[string]func([]string) ([]byte, error){"create": func(a []string) ([]byte, error) {
				return xlFailure("libxl: error: libxl_exec.c: /etc/xen/scripts/vif-mlsgate online [-1] exited with error status 1\n", a...)
			}},
			lines: []string{"/usr/sbin/xl create -p CFG"},
			want:  "vif-mlsgate online",
		},
		"domid not a number": {
			answers: map[string]func([]string) ([]byte, error){"domid": func([]string) ([]byte, error) { return []byte("Parsing config\n"), nil }},
			lines:   append(slices.Clone(created), "/usr/sbin/xl destroy mlsg-vm7"),
			want:    `answer "Parsing config" is not a domain id`,
		},
		"domid is dom0": {
			answers: map[string]func([]string) ([]byte, error){"domid": func([]string) ([]byte, error) { return []byte("0\n"), nil }},
			lines:   append(slices.Clone(created), "/usr/sbin/xl destroy mlsg-vm7"),
			want:    "not a guest's domain id",
		},
		"domid fails": {
			answers: map[string]func([]string) ([]byte, error){"domid": func(a []string) ([]byte, error) {
				return xlFailure("Can't get domid of domain name 'mlsg-vm7', maybe this domain does not exist.\n", a...)
			}},
			lines: append(slices.Clone(created), "/usr/sbin/xl destroy mlsg-vm7"),
			want:  "domid of mlsg-vm7",
		},
		"daemon never answers": {
			answers: map[string]func([]string) ([]byte, error){"domid": func([]string) ([]byte, error) { return []byte("12\n"), nil }},
			ready:   context.DeadlineExceeded,
			lines:   append(slices.Clone(unpaused), "/usr/sbin/xl destroy mlsg-vm7"),
			want:    "mlsg-vm7 (domid 12): context deadline exceeded",
		},
		"destroy after failure fails too": {
			answers: map[string]func([]string) ([]byte, error){
				"domid":   func([]string) ([]byte, error) { return []byte("12\n"), nil },
				"destroy": func(a []string) ([]byte, error) { return xlFailure("libxl: error: timed out\n", a...) },
			},
			ready: errors.New("interface vif12.0 did not appear"),
			lines: append(slices.Clone(unpaused), "/usr/sbin/xl destroy mlsg-vm7"),
			want:  "cleanup also failed",
		},
	}
	for name, c := range failures {
		t.Run(name, func(t *testing.T) {
			f := &fakeXL{answers: c.answers}
			x, dir := newXen(t, f)
			x.Created = func(context.Context, *loader.Guest) error { return c.created }
			x.Attached = func(context.Context, *loader.Guest) error { return c.attached }
			x.Ready = func(context.Context, *loader.Guest) error { return c.ready }
			_, err := x.Boot(context.Background(), sp)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Boot: %v, want an error containing %q", err, c.want)
			}
			if got, want := f.lines(), expect(dir, c.lines...); !slices.Equal(got, want) {
				t.Errorf("xl commands %q, want %q", got, want)
			}
			left, _ := os.ReadDir(dir)
			if len(left) != 0 {
				t.Errorf("failed Boot left %v in %s", left, dir)
			}
		})
	}
}

func TestXenDestroyErrors(t *testing.T) {
	f := &fakeXL{answers: map[string]func([]string) ([]byte, error){
		"destroy": func(a []string) ([]byte, error) { return xlFailure("libxl: error: permission denied\n", a...) },
	}}
	x := &Xen{Run: f.run, ConfigDir: t.TempDir()}
	err := x.Destroy(context.Background(), &loader.Guest{VM: 3, Handle: "mlsg-vm7"})
	if err == nil || !strings.Contains(err.Error(), "destroy mlsg-vm7") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Destroy with a failing xl: %v, want xl's message", err)
	}
	if err := x.Destroy(context.Background(), &loader.Guest{VM: 3}); err == nil {
		t.Error("Destroy of a guest without a handle succeeded")
	}
	if err := x.Pause(context.Background(), &loader.Guest{VM: 3}); err == nil {
		t.Error("Pause of a guest without a handle succeeded")
	}
}

// TestXenBootNeedsHooks: without a way to declare the vif and wait for the
// agent, Boot refuses before it creates anything: the guest would run on an
// unfiltered vif.
func TestXenBootNeedsHooks(t *testing.T) {
	sp := analystSpec(t)
	sp.UpdatedCertPEM, sp.UpdatedKeyPEM, sp.CAPEM = nil, nil, nil
	hook := func(context.Context, *loader.Guest) error { return nil }
	for name, x := range map[string]*Xen{
		"neither":     {Kernel: "/k"},
		"no Attached": {Kernel: "/k", Created: hook},
		"no Created":  {Kernel: "/k", Attached: hook},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeXL{}
			x.Run, x.ConfigDir = f.run, t.TempDir()
			_, err := x.Boot(context.Background(), sp)
			if err == nil || !strings.Contains(err.Error(), "Xen.Created and Xen.Attached") {
				t.Fatalf("Boot: %v, want a refusal naming the hooks", err)
			}
			if len(f.calls) != 0 {
				t.Errorf("Boot ran xl %q", f.lines())
			}
		})
	}
}
