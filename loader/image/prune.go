package image

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PruneAge is how long an image nobody prepared stays in the cache: every
// Prepare that returns an image marks it used, and a build removes the
// images (and the kernel packages no remaining image was built from) not
// used for longer. Other branches and checkouts share the cache, so age,
// not the builder's version, decides.
const PruneAge = 14 * 24 * time.Hour

// usedStamp is the file in an image directory whose time is its last use.
const usedStamp = ".used"

// markUsed records that the image in dir was just handed out; a cache the
// caller cannot write is left as it is.
func markUsed(dir string) {
	p := filepath.Join(dir, usedStamp)
	now := time.Now()
	if err := os.Chtimes(p, now, now); os.IsNotExist(err) {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
}

// lastUse is when the image in dir was last handed out: its stamp, or
// else when it was built.
func lastUse(dir string) (time.Time, error) {
	if fi, err := os.Stat(filepath.Join(dir, usedStamp)); err == nil {
		return fi.ModTime(), nil
	}
	fi, err := os.Stat(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

// Prune removes from cacheDir (DefaultCacheDir when empty) the images not
// used for longer than maxAge before now, then the kernel packages older
// than maxAge that no remaining image was built from. It waits for builds
// in progress (the cache lock) and returns what it removed. Entries it
// cannot read are left alone. The Xen dom0 images (XenCacheDir) are pruned
// by the same rule, with the Xen packages no remaining dom0 image came
// from.
func Prune(ctx context.Context, cacheDir string, maxAge time.Duration, now time.Time) ([]string, error) {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	if maxAge <= 0 {
		return nil, fmt.Errorf("prune the guest cache: age %v must be positive", maxAge)
	}
	unlock, err := lockDir(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	removed, err := prune(cacheDir, maxAge, now)
	if err != nil {
		return removed, err
	}
	xdir := XenCacheDir(cacheDir)
	if _, err := os.Stat(xdir); err != nil {
		return removed, nil
	}
	xunlock, err := lockDir(ctx, xdir)
	if err != nil {
		return removed, err
	}
	defer xunlock()
	more, err := pruneXen(xdir, maxAge, now)
	return append(removed, more...), err
}

// pruneXen is prune for the dom0 images in xdir (XenCacheDir), with its
// lock held: the images unused for longer than maxAge, then the Xen
// packages older than that which no remaining image names.
func pruneXen(xdir string, maxAge time.Duration, now time.Time) ([]string, error) {
	var removed []string
	keep := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(xdir, "images"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(xdir, "images", e.Name())
		used, err := lastUse(dir)
		if err != nil {
			continue
		}
		if now.Sub(used) <= maxAge {
			if b, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err == nil {
				var m xenManifest
				if json.Unmarshal(b, &m) == nil {
					for _, d := range m.XenDebs {
						keep[d] = true
					}
				}
			}
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return removed, fmt.Errorf("prune %s: %w", dir, err)
		}
		removed = append(removed, dir)
	}
	debs, _ := filepath.Glob(filepath.Join(xdir, "debs", "*.deb"))
	for _, d := range debs {
		fi, err := os.Stat(d)
		if err != nil || keep[filepath.Base(d)] || now.Sub(fi.ModTime()) <= maxAge {
			continue
		}
		if err := os.Remove(d); err != nil {
			return removed, fmt.Errorf("prune %s: %w", d, err)
		}
		removed = append(removed, d)
	}
	return removed, nil
}

// prune is Prune with the cache lock held.
func prune(cacheDir string, maxAge time.Duration, now time.Time) ([]string, error) {
	var removed []string
	keepDebs := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(cacheDir, "images"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(cacheDir, "images", e.Name())
		used, err := lastUse(dir)
		if err != nil {
			continue // incomplete or foreign: not ours to judge
		}
		if now.Sub(used) <= maxAge {
			if b, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err == nil {
				var m manifest
				if json.Unmarshal(b, &m) == nil {
					keepDebs[debName("linux-image-"+m.KernelRelease, m.PackageVersion)] = true
				}
			}
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return removed, fmt.Errorf("prune %s: %w", dir, err)
		}
		removed = append(removed, dir)
	}
	// A dom0 image in use keeps the kernel package it came from too.
	xen, _ := filepath.Glob(filepath.Join(XenCacheDir(cacheDir), "images", "*", "manifest.json"))
	for _, mf := range xen {
		used, err := lastUse(filepath.Dir(mf))
		if err != nil || now.Sub(used) > maxAge {
			continue
		}
		if b, err := os.ReadFile(mf); err == nil {
			var m xenManifest
			if json.Unmarshal(b, &m) == nil && m.PackageVersion != "" {
				keepDebs[debName("linux-image-"+m.KernelRelease, m.PackageVersion)] = true
			}
		}
	}
	debs, _ := filepath.Glob(filepath.Join(cacheDir, "debs", "*.deb"))
	for _, d := range debs {
		fi, err := os.Stat(d)
		if err != nil || keepDebs[filepath.Base(d)] || now.Sub(fi.ModTime()) <= maxAge {
			continue
		}
		if err := os.Remove(d); err != nil {
			return removed, fmt.Errorf("prune %s: %w", d, err)
		}
		removed = append(removed, d)
	}
	return removed, nil
}
