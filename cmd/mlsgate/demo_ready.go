package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/bench"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/policystore"
)

// The demo's ready-pool hit (issue 14), kept apart from the scenario: once
// the flows are checked, an application (osint where the applications have
// it) asks for one ready guest, the pool prepares it beforehand (boot,
// bundle with its own keys, compliance, push, host policy), and a load of
// its URL is then only resolve, authorize and hand-out. It prints one line
// with the timing.

// readyDemoApp picks the application the hit is shown with: osint if
// present, else the first (by name) that the host may load, other than
// home; and a URL of its first server.
func readyDemoApp(st *policystore.Store, home string) (*policystore.Application, string, error) {
	var names []string
	apps := map[string]*policystore.Application{}
	for _, e := range st.Entries() {
		if e.App != nil && e.App.Name != home && e.App.MayBeLoadedBy(policystore.HostCaller) && len(e.App.Servers) > 0 && len(e.App.Servers[0].Hosts) > 0 {
			names = append(names, e.App.Name)
			apps[e.App.Name] = e.App
		}
	}
	if len(names) == 0 {
		return nil, "", fmt.Errorf("no application other than %s that the host may load", home)
	}
	sort.Strings(names)
	pick := names[0]
	if apps["osint"] != nil {
		pick = "osint"
	}
	a := apps[pick]
	return a, "http://" + strings.TrimPrefix(a.Servers[0].Hosts[0], "*.") + "/", nil
}

// demoReadyHit shows the hit on v, whose applications come from appsDir;
// home is the demo's own application. The guests serving the application
// are removed first (a guest serving it would be reused before a ready
// one), and the applications are put back as they were at the end.
func demoReadyHit(ctx context.Context, out io.Writer, v *vmload, appsDir, home string) error {
	app, url, err := readyDemoApp(v.store, home)
	if err != nil {
		return fmt.Errorf("ready-pool hit: %w", err)
	}
	for _, e := range v.pool.List() {
		if e.App == app.Name {
			if err := v.pool.Remove(ctx, e.Guest.VM); err != nil {
				return fmt.Errorf("ready-pool hit: remove %s's guest %s: %w", app.Name, e.Guest.Name, err)
			}
		}
	}
	dir, err := os.MkdirTemp("", "mlsgate-demo-ready-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	apps := filepath.Join(dir, "apps")
	if err := bench.ReadyAppsDir(appsDir, apps, url, v.store); err != nil {
		return fmt.Errorf("ready-pool hit: %w", err)
	}
	if _, err := v.store.SyncDir(apps); err != nil {
		return fmt.Errorf("ready-pool hit: %w", err)
	}
	defer v.store.SyncDir(appsDir) //nolint:errcheck // the demo ends here; its guests are removed next
	t0 := time.Now()
	if err := v.pool.Refill(ctx); err != nil {
		return fmt.Errorf("ready-pool hit: the pool's refill (prepares the ready guest): %w", err)
	}
	prepared := time.Since(t0)
	res, err := v.loader.Load(ctx, loader.Caller{Host: true}, url)
	if err != nil {
		return fmt.Errorf("ready-pool hit: load %s: %w", url, err)
	}
	if res.How != "ready" {
		return fmt.Errorf("ready-pool hit: load %s got a guest by %q, want a ready one", url, res.How)
	}
	var parts []string
	for _, s := range res.Steps {
		if s.Name != "ready" {
			parts = append(parts, fmt.Sprintf("%s %v", s.Name, s.Duration.Round(10*time.Microsecond)))
		}
	}
	fmt.Fprintf(out, "\nReady-pool hit: %s (%s, pool: {ready: 1}) handed out %s in %v (%s); prepared beforehand, off the path, in %v.\n",
		url, app.Name, res.Guest.Name, res.Total.Round(10*time.Microsecond), strings.Join(parts, ", "), prepared.Round(time.Millisecond))
	return nil
}
