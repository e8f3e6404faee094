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

	deployxen "github.com/mlsgate/mlsgate/deploy/xen"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// imageKinds are what `mlsgate image build --kind` makes.
var imageKinds = []string{"guest", "qemu", "xen"}

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

--kind xen is the Xen host the xen backend runs on: Xen 4.17's hypervisor and
userspace (Debian packages, unpacked), Debian's kernel as dom0 with netback and
the fast path's modules, mlsgate's vif hotplug script, the SELinux userland
and module store (the host's modules are installed with semodule in dom0), and
the guests' raw vmlinux at ` + image.XenGuestKernel + `. With --out it adds this
mlsgate binary (or --binary) as ` + image.XenMlsgate + ` and the guests' ramdisk
(the guest image with xen-netfront and an /init that starts the update daemon)
as ` + image.XenGuestRamdisk + `, and writes xen, vmlinux and initrd-xen.cpio there.

--out DIR copies the kernel and initrd there, for a host that boots them from
a fixed place.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains(imageKinds, kind) {
				return fmt.Errorf("--kind %q is unknown; kinds: %s", kind, strings.Join(imageKinds, ", "))
			}
			if kind == "qemu" && out == "" {
				return errors.New("--kind qemu writes a new initrd: give --out DIR")
			}
			w := cmd.OutOrStdout()
			if kind == "xen" {
				return buildXenImage(cmd, cache, out, binary, selinux)
			}
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
	cmd.Flags().StringVar(&binary, "binary", "", "--kind qemu, xen: the static mlsgate binary to pack (default: this executable)")
	cmd.Flags().BoolVar(&selinux, "selinux", false, "--kind qemu, xen: the guests' init loads the image's SELinux policy store before the daemon (boot with lsm=...,selinux)")
	return cmd
}

// buildXenImage prepares the dom0 image and, with out, writes xen, vmlinux
// and a dom0 initrd with the mlsgate binary and the guests' ramdisk there.
func buildXenImage(cmd *cobra.Command, cache, out, binary string, selinux bool) error {
	ctx, log := cmd.Context(), cmd.ErrOrStderr()
	x, err := image.PrepareXen(ctx, cache, image.XenOptions{VifScript: deployxen.VifScript, VifScriptName: deployxen.VifScriptName}, log)
	if err != nil {
		return err
	}
	hv, kernel, initrd := x.Xen, x.Kernel, x.Initrd
	if out != "" {
		d, err := secretfile.Open(out)
		if err != nil {
			return fmt.Errorf("--out %s: %w", out, err)
		}
		d.Close()
		bin, err := staticBinary(binary)
		if err != nil {
			return err
		}
		g, err := image.Prepare(ctx, cache, log)
		if err != nil {
			return err
		}
		tmp, err := os.MkdirTemp(out, ".xen-")
		if err != nil {
			return fmt.Errorf("--out %s: %w", out, err)
		}
		defer os.RemoveAll(tmp)
		guest := filepath.Join(tmp, "guest.cpio")
		fmt.Fprintln(log, "image: the guests' ramdisk: the guest image with xen-netfront, the update daemon and its /init")
		if _, err := backend.XenInitrd(ctx, g, cache, bin, backend.InitOptions{Modules: backend.XenGuestModules(g), SELinux: selinux}, guest); err != nil {
			return err
		}
		gdata, err := os.ReadFile(guest)
		if err != nil {
			return err
		}
		hv, kernel, initrd = filepath.Join(out, "xen"), filepath.Join(out, "vmlinux"), filepath.Join(out, "initrd-xen.cpio")
		for _, c := range [][2]string{{x.Xen, hv}, {x.Kernel, kernel}} {
			if err := image.CopyFile(c[0], c[1], 0o644); err != nil {
				return fmt.Errorf("--out %s: %w", out, err)
			}
		}
		fmt.Fprintln(log, "image: adding mlsgate and the guests' ramdisk to dom0's initramfs")
		if err := backend.AppendInitramfs(initrd, x.Initrd, []backend.File{
			{Path: strings.TrimPrefix(image.XenMlsgate, "/"), Mode: 0o755, Data: bin},
			{Path: strings.TrimPrefix(image.XenGuestRamdisk, "/"), Mode: 0o644, Data: gdata},
		}); err != nil {
			return err
		}
	}
	sums := map[string]string{}
	for _, f := range []string{hv, kernel, initrd} {
		if sums[f], err = imageFileSHA256(f); err != nil {
			return err
		}
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "kind:\txen\n")
	fmt.Fprintf(tw, "image:\t%s\n", x.Dir)
	fmt.Fprintf(tw, "key:\t%s\t(hash of the builder, dom0 init, vif script, modules, packages and host tools)\n", x.Key())
	fmt.Fprintf(tw, "xen:\t%s %s\tsha256:%s\n", hv, x.XenVersion, sums[hv])
	fmt.Fprintf(tw, "dom0 kernel:\t%s (linux-image-%s %s)\tsha256:%s\n", kernel, x.KernelRelease, x.PackageVersion, sums[kernel])
	fmt.Fprintf(tw, "dom0 initrd:\t%s\tsha256:%s\n", initrd, sums[initrd])
	if out != "" {
		fmt.Fprintf(tw, "in dom0:\tmlsgate loader --backend xen --xen-kernel %s --xen-ramdisk %s\n", image.XenGuestKernel, image.XenGuestRamdisk)
		fmt.Fprintf(tw, "boot with:\tqemu-system-x86_64 -kernel %s -append 'console=com1 dom0_mem=512M' -initrd '%s console=hvc0,%s' (Xen 4.17 as multiboot)\n", hv, kernel, initrd)
	}
	return tw.Flush()
}

// staticBinary reads the static mlsgate binary to pack: binary, or this
// executable.
func staticBinary(binary string) ([]byte, error) {
	if binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this executable: %w (give --binary)", err)
		}
		binary = exe
	}
	if err := image.CheckStatic(binary); err != nil {
		return nil, fmt.Errorf("--binary %s: %w (build it with CGO_ENABLED=0 go build ./cmd/mlsgate)", binary, err)
	}
	return os.ReadFile(binary)
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
<cache>/xen are pruned by the same rule, with the Xen packages no remaining
dom0 image came from.`,
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
