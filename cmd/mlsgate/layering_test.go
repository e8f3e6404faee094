package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestNothingShippedImportsKernelTests: the binary, the bench, the loader
// and the agent (with their tests) must not depend on the test harness
// under kernel-tests; the guest images they boot come from loader/image.
func TestNothingShippedImportsKernelTests(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "list", "-deps", "-test", "./cmd/mlsgate", "./bench", "./loader/...", "./agent/...")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "/kernel-tests") {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("shipped packages depend on the test harness: %s; move what they need into a product package (the guest image is loader/image)", strings.Join(bad, ", "))
	}
	if !strings.Contains(string(out), "github.com/mlsgate/mlsgate/loader/image") {
		t.Errorf("go list shows no loader/image among the dependencies; the check is not looking at the project:\n%.2000s", out)
	}
}

// layerRule forbids the packages matched by pkg to depend, directly or not,
// on any package matched by forbid. A pattern "p/..." matches p and every
// package below it; other patterns match one package. Project paths are
// relative to the module.
type layerRule struct {
	pkg    string
	forbid []string
	why    string
}

// layerRules are the import rules of docs/design.md ("Layers").
var layerRules = []layerRule{
	{"label", []string{"..."}, "label is the bottom layer: labels and their order, nothing else"},
	{"ipsec", []string{"agent/...", "bpf/...", "loader/...", "policystore/...", "mapper/...", "selinux/...", "verdict/..."}, "ipsec holds plain SA and policy values that every layer shares"},
	{"verdict/...", []string{"agent/...", "bpf/...", "loader/...", "policystore/...", "mapper/..."}, "the reference decision sits between label and bpf"},
	{"bpf/...", []string{"agent/...", "loader/...", "policystore/...", "mapper/...", "selinux/..."}, "the kernel layer must not depend on the daemons that drive it"},
	{"agent/xfrm/...", []string{"agent", "bpf/...", "policystore/...", "loader/..."}, "the netlink codec encodes ipsec values and knows no store"},
	{"agent/...", []string{"loader/...", "bench/...", "cmd/..."}, "the agent is below the loader and the command line"},
	{"selinux/...", []string{"agent/...", "bpf/...", "policystore/...", "loader/..."}, "module install and SELinux state are used by the agent and the update daemon, not the reverse"},
	{"policystore/...", []string{"agent/...", "bpf/...", "loader/...", "github.com/cilium/ebpf/...", "github.com/vishvananda/netlink/..."}, "the store plans plain values and never touches the kernel"},
	{"mapper/...", []string{"agent/...", "bpf/...", "loader/...", "policystore/..."}, "the label mapper depends on labels only"},
	{"loader/updatedaemon/...", []string{"agent", "bpf/...", "loader"}, "the in-guest update daemon carries no host agent or loader"},
}

// layerExceptions are known violations another branch removes, as
// "package -> dependency": the test fails once one is no longer needed, so
// that it is deleted with the move that fixes it.
var layerExceptions = map[string]string{}

func matchPkg(pattern, pkg string) bool {
	if pattern == "..." {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == p || strings.HasPrefix(pkg, p+"/")
	}
	return pkg == pattern
}

// TestLayers: no package depends on a layer above its own (go list -deps,
// without tests: what ships).
func TestLayers(t *testing.T) {
	const mod = "github.com/mlsgate/mlsgate"
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "list", "-f", "{{.ImportPath}}{{range .Deps}} {{.}}{{end}}", "./...")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	rel := func(p string) string {
		if p == mod {
			return "."
		}
		if r, ok := strings.CutPrefix(p, mod+"/"); ok {
			return r
		}
		return p
	}
	deps := map[string][]string{}
	project := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], mod) {
			continue
		}
		for _, d := range f[1:] {
			if strings.HasPrefix(d, mod) {
				project[rel(d)] = true
			}
			deps[rel(f[0])] = append(deps[rel(f[0])], rel(d))
		}
	}
	if !slices.Contains(deps["agent"], "bpf") || !slices.Contains(deps["policystore"], "label") {
		t.Fatalf("go list shows agent without bpf or policystore without label; the check is not looking at the project:\n%.2000s", out)
	}
	used := map[string]bool{}
	for pkg, ds := range deps {
		for _, r := range layerRules {
			if !matchPkg(r.pkg, pkg) {
				continue
			}
			for _, d := range ds {
				for _, f := range r.forbid {
					if f == "..." && !project[d] {
						continue
					}
					if !matchPkg(f, d) || d == pkg || matchPkg(r.pkg, d) && f != "..." {
						continue
					}
					key := pkg + " -> " + d
					if _, ok := layerExceptions[key]; ok {
						used[key] = true
						continue
					}
					t.Errorf("%s depends on %s: %s (rule %s must not import %s; see docs/design.md)", pkg, d, r.why, r.pkg, f)
				}
			}
		}
	}
	for key, why := range layerExceptions {
		if !used[key] {
			t.Errorf("layer exception %q (%s) is no longer needed: delete it from layerExceptions", key, why)
		}
	}
}
