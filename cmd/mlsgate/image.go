package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// imageKinds are what `mlsgate image build --kind` makes.
var imageKinds = []string{"guest", "qemu"}

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "build, list and prune the guest images the backends boot",
		Long: `The guest images are Debian's own kernel (linux-image-amd64, from apt) with an
initramfs holding its modules, busybox, Debian's SELinux userland and an SELinux
module store built offline from mlsgate's base MLS policy. They are cached by
content hash under --cache (default $MLSGATE_GUEST_CACHE or
/var/cache/mlsgate/guest): a build whose inputs are already there costs
milliseconds, and images nobody used for ` + imageAge(image.PruneAge) + ` are pruned.`,
	}
	cmd.AddCommand(newImageBuildCmd(), newImageListCmd(), newImagePruneCmd())
	return cmd
}

func newImageBuildCmd() *cobra.Command {
	var cache, kind, out, binary string
	var selinux bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "build (or find in the cache) a guest image and print where it is",
		Long: `build prepares the guest image (downloading the kernel package and installing
the Debian packages it needs when run as root) and prints the kernel, the initrd
and their hashes.

--kind guest (default) is the base image: its init runs one static binary from
a 9p share (what 'mlsgate demo' and the bench boot). --kind qemu adds to it what
'mlsgate loader --backend qemu' boots: the virtio-net driver, this mlsgate
binary (or --binary, which must be static) as /sbin/mlsgate, and an /init that
starts the update daemon; it needs --out.

--out DIR copies the kernel and initrd there, for a host that boots them from
a fixed place.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains(imageKinds, kind) {
				if kind == "xen" || kind == "dom0" {
					return fmt.Errorf("--kind %s: the Xen dom0 image is still built by the test harness (kernel-tests/xendom0), not by mlsgate; kinds: %s", kind, strings.Join(imageKinds, ", "))
				}
				return fmt.Errorf("--kind %q is unknown; kinds: %s", kind, strings.Join(imageKinds, ", "))
			}
			if kind == "qemu" && out == "" {
				return errors.New("--kind qemu writes a new initrd: give --out DIR")
			}
			w := cmd.OutOrStdout()
			img, err := image.Prepare(cmd.Context(), cache, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			kernel, initrd := img.Kernel, img.Initrd
			if out != "" {
				// The images are not secret, but the qemu and xen
				// backends boot what is here as root: a directory another
				// user could write (and swap the initrd in) is refused.
				d, err := secretfile.Open(out)
				if err != nil {
					return fmt.Errorf("--out %s: %w", out, err)
				}
				d.Close()
				kernel = filepath.Join(out, filepath.Base(img.Kernel))
				if err := image.CopyFile(img.Kernel, kernel, 0o644); err != nil {
					return fmt.Errorf("--out %s: %w", out, err)
				}
				initrd = filepath.Join(out, "initrd.cpio")
				if kind == "qemu" {
					initrd = filepath.Join(out, "initrd-qemu.cpio")
					if err := qemuImageInitrd(cmd, img, cache, binary, selinux, initrd); err != nil {
						return err
					}
				} else if err := image.CopyFile(img.Initrd, initrd, 0o644); err != nil {
					return fmt.Errorf("--out %s: %w", out, err)
				}
			}
			return printImage(w, kind, img, kernel, initrd)
		},
	}
	cmd.Flags().StringVar(&cache, "cache", "", "image cache (default $MLSGATE_GUEST_CACHE or /var/cache/mlsgate/guest)")
	cmd.Flags().StringVar(&kind, "kind", "guest", "image kind: "+strings.Join(imageKinds, ", "))
	cmd.Flags().StringVar(&out, "out", "", "copy the kernel and initrd into this directory")
	cmd.Flags().StringVar(&binary, "binary", "", "--kind qemu: the static mlsgate binary to pack (default: this executable)")
	cmd.Flags().BoolVar(&selinux, "selinux", false, "--kind qemu: the init loads the image's SELinux policy store before the daemon (boot with lsm=...,selinux)")
	return cmd
}

// qemuImageInitrd writes out: the image's initramfs with virtio-net, the
// mlsgate binary and an init that starts the update daemon.
func qemuImageInitrd(cmd *cobra.Command, img *image.Image, cache, binary string, selinux bool, out string) error {
	if binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this executable: %w (give --binary)", err)
		}
		binary = exe
	}
	if err := image.CheckStatic(binary); err != nil {
		return fmt.Errorf("--binary %s: %w (build it with CGO_ENABLED=0 go build ./cmd/mlsgate)", binary, err)
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("--binary: %w", err)
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "image: adding virtio-net, the update daemon and its /init")
	_, err = backend.QEMUInitrd(cmd.Context(), img, cache, bin, backend.InitOptions{SELinux: selinux}, out)
	return err
}

// printImage writes where the image's files are and their hashes.
func printImage(w io.Writer, kind string, img *image.Image, kernel, initrd string) error {
	ksum, err := imageFileSHA256(kernel)
	if err != nil {
		return err
	}
	isum, err := imageFileSHA256(initrd)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "kind:\t%s\n", kind)
	fmt.Fprintf(tw, "image:\t%s\n", img.Dir)
	fmt.Fprintf(tw, "key:\t%s\t(hash of the builder, init, policies, modules and host tools)\n", img.Key())
	fmt.Fprintf(tw, "kernel package:\tlinux-image-%s %s\n", img.KernelRelease, img.PackageVersion)
	fmt.Fprintf(tw, "kernel:\t%s\tsha256:%s\n", kernel, ksum)
	fmt.Fprintf(tw, "initrd:\t%s\tsha256:%s\n", initrd, isum)
	fmt.Fprintf(tw, "policy:\t%s\n", img.Policy)
	if kind == "qemu" {
		fmt.Fprintf(tw, "boot with:\tmlsgate loader --backend qemu --qemu-kernel %s --qemu-initrd %s\n", kernel, initrd)
	}
	return tw.Flush()
}

func imageFileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func newImageListCmd() *cobra.Command {
	var cache string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list the cached images and kernel packages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entries, err := image.List(cache)
			if err != nil {
				return err
			}
			current, _ := image.CurrentKey() // "" without the host tools
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tKERNEL\tKEY\tBUILT\tLAST USED\tSIZE\tPATH")
			var total int64
			for _, e := range entries {
				key := e.Key
				if key != "" && key == current {
					key += " (current)"
				}
				if key == "" {
					key = "-"
				}
				fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\t%s\t%s\n", e.Kind, e.KernelRelease, e.PackageVersion, key,
					e.Built.UTC().Format(time.DateTime), e.LastUsed.UTC().Format(time.DateTime), imageBytes(e.Bytes), e.Path)
				total += e.Bytes
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d entries, %s; 'mlsgate image prune' removes those unused for %s\n", len(entries), imageBytes(total), imageAge(image.PruneAge))
			return nil
		},
	}
	cmd.Flags().StringVar(&cache, "cache", "", "image cache (default $MLSGATE_GUEST_CACHE or /var/cache/mlsgate/guest)")
	return cmd
}

func newImagePruneCmd() *cobra.Command {
	var cache, olderThan string
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "remove the images (and kernel packages) not used for a while",
		Long: `prune removes the cached images no build or boot handed out for longer than
--older-than, then the kernel packages older than that which no remaining
image came from. It waits for a build in progress. The Xen dom0 images under
<cache>/xen are not touched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			age, err := parseImageAge(olderThan)
			if err != nil {
				return err
			}
			removed, err := image.Prune(cmd.Context(), cache, age, time.Now())
			for _, r := range removed {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", r)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d removed (unused for more than %s)\n", len(removed), imageAge(age))
			return nil
		},
	}
	cmd.Flags().StringVar(&cache, "cache", "", "image cache (default $MLSGATE_GUEST_CACHE or /var/cache/mlsgate/guest)")
	cmd.Flags().StringVar(&olderThan, "older-than", "14d", "remove what was not used for this long: a Go duration (36h) or days (14d)")
	return cmd
}

// parseImageAge reads a positive age: a Go duration or a whole number of days
// ("14d").
func parseImageAge(s string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("--older-than %q: write days as a whole number, e.g. 14d", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("--older-than %q: write a duration like 36h or days like 14d", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("--older-than %q: the age must be positive (0 would remove images in use)", s)
	}
	return d, nil
}

func imageBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// imageAge writes whole days as days.
func imageAge(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}
