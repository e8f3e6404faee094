package backend

import (
	"slices"

	"github.com/mlsgate/mlsgate/loader/image"
)

// xenSkipModules are the guest image's modules a Xen guest does not load:
// the 9p share and virtio bus of the image's own runner, and those that
// serve only the in-guest tests.
var xenSkipModules = []string{"9pnet_virtio", "9p", "virtio_pci", "veth", "dummy", "sch_ingress", "cls_bpf"}

// XenGuestModules are the image's modules a Xen guest's init loads before
// its network (InitOptions.Modules for XenInitrd): the random-number
// generators and the ESP transforms its update daemon installs SAs with.
func XenGuestModules(img *image.Image) []string {
	var out []string
	for _, m := range img.Modules {
		if !slices.Contains(xenSkipModules, m) {
			out = append(out, m)
		}
	}
	return out
}
