package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// keyLen is how many hex digits of the input hash name an image.
const keyLen = 12

// hashInputs is the cache key of an image: a hash of the texts it is made
// from (each followed by a newline) and of the host files copied into it,
// by path, size and modification time (hashing their bytes would cost more
// than the check is worth on every Prepare). A missing file is an error:
// an image must not be keyed by what is not there.
func hashInputs(texts, files []string) (string, error) {
	h := sha256.New()
	for _, t := range texts {
		fmt.Fprintf(h, "%s\n", t)
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("image input: %w", err)
		}
		fmt.Fprintf(h, "%s %d %d\n", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:keyLen], nil
}

// imageName is the cache directory of the image of kernel release at
// Debian version with input key: <release>_<version>_<key>.
func imageName(release, version, key string) string {
	return release + "_" + version + "_" + key
}

// debName is the cached file name of kernel package pkg at version; an
// epoch's colon is escaped as apt-get download writes it.
func debName(pkg, version string) string {
	return pkg + "_" + strings.ReplaceAll(version, ":", "%3a") + "_amd64.deb"
}

// Key is the image's input hash, the last part of its cache directory's
// name: two images with the same kernel and Key were built from the same
// inputs.
func (img *Image) Key() string {
	name := filepath.Base(img.Dir)
	return name[strings.LastIndexByte(name, '_')+1:]
}

// CurrentKey is the input hash an image built now would carry (Image.Key).
// It needs the host tools the image copies (ErrMissingTools otherwise).
func CurrentKey() (string, error) {
	if cmds, pkgs := missingTools(); len(cmds) > 0 {
		return "", fmt.Errorf("%w: %s not found (packages %s); %s", ErrMissingTools,
			strings.Join(cmds, ", "), strings.Join(pkgs, " "), installHint)
	}
	return inputKey()
}

// Entry is one item of the cache: a built image or a downloaded kernel
// package.
type Entry struct {
	Kind           string    `json:"kind"` // "image", "xen-image", "kernel-package" or "xen-package"
	Path           string    `json:"path"`
	KernelRelease  string    `json:"kernel_release,omitempty"`
	PackageVersion string    `json:"package_version,omitempty"`
	Key            string    `json:"key,omitempty"` // images: the input hash
	Built          time.Time `json:"built"`         // packages: when downloaded
	LastUsed       time.Time `json:"last_used"`     // when Prepare last handed it out
	Bytes          int64     `json:"bytes"`
}

// List returns the images and kernel packages in cacheDir
// (DefaultCacheDir when empty), images first, each group by name. It takes
// no lock: a build in progress is not listed (it is not published yet), and
// an entry that cannot be read (an incomplete image) is skipped. A missing
// cache is an empty list.
func List(cacheDir string) ([]Entry, error) {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	var out []Entry
	dirs, err := os.ReadDir(filepath.Join(cacheDir, "images"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("list the image cache %s: %w", cacheDir, err)
	}
	for _, d := range dirs {
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		dir := filepath.Join(cacheDir, "images", d.Name())
		b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
		if err != nil {
			continue
		}
		var m manifest
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		used, err := lastUse(dir)
		if err != nil {
			continue
		}
		name := d.Name()
		out = append(out, Entry{
			Kind: "image", Path: dir, KernelRelease: m.KernelRelease, PackageVersion: m.PackageVersion,
			Key: name[strings.LastIndexByte(name, '_')+1:], Built: m.Built, LastUsed: used, Bytes: treeSize(dir),
		})
	}
	xdirs, _ := os.ReadDir(filepath.Join(XenCacheDir(cacheDir), "images"))
	for _, d := range xdirs {
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		dir := filepath.Join(XenCacheDir(cacheDir), "images", d.Name())
		img, err := loadXenImage(dir)
		if err != nil {
			continue
		}
		used, err := lastUse(dir)
		if err != nil {
			continue
		}
		var built time.Time
		if fi, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
			built = fi.ModTime()
		}
		out = append(out, Entry{Kind: "xen-image", Path: dir, KernelRelease: img.KernelRelease, PackageVersion: img.PackageVersion,
			Key: img.Key(), Built: built, LastUsed: used, Bytes: treeSize(dir)})
	}
	debs, _ := filepath.Glob(filepath.Join(cacheDir, "debs", "*.deb"))
	slices.Sort(debs)
	for _, p := range debs {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		e := Entry{Kind: "kernel-package", Path: p, Built: fi.ModTime(), LastUsed: fi.ModTime(), Bytes: fi.Size()}
		if f := strings.Split(strings.TrimSuffix(filepath.Base(p), "_amd64.deb"), "_"); len(f) == 2 {
			e.KernelRelease = strings.TrimPrefix(f[0], "linux-image-")
			e.PackageVersion = strings.ReplaceAll(f[1], "%3a", ":")
		}
		out = append(out, e)
	}
	xdebs, _ := filepath.Glob(filepath.Join(XenCacheDir(cacheDir), "debs", "*.deb"))
	slices.Sort(xdebs)
	for _, p := range xdebs {
		if fi, err := os.Stat(p); err == nil {
			out = append(out, Entry{Kind: "xen-package", Path: p, Built: fi.ModTime(), LastUsed: fi.ModTime(), Bytes: fi.Size()})
		}
	}
	return out, nil
}

// treeSize is the bytes of the regular files under dir.
func treeSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
