// Package xen carries mlsgate's Xen dom0 files as data, so that the image
// builder (loader/image.PrepareXen) packs the very script shipped here
// without a source tree: VifScript is deploy/xen/vif-mlsgate, the vif
// hotplug script xl runs for every guest vif (loader/backend.Xen.Script).
package xen

import _ "embed"

// VifScriptName is the script's file name in /etc/xen/scripts.
const VifScriptName = "vif-mlsgate"

// VifScript is the text of vif-mlsgate.
//
//go:embed vif-mlsgate
var VifScript string
