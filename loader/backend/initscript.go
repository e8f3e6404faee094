package backend

import (
	"fmt"
	"strings"
)

// InitOptions shape the init InitScript writes.
type InitOptions struct {
	// Binary is the guest path of the mlsgate binary; "/sbin/mlsgate"
	// when empty.
	Binary string
	// Modules are loaded, in order, before the network is configured: a
	// path is insmod'ed, a name modprobe'd. A QEMU guest needs its NIC's
	// driver (virtio_net), a Xen PV guest xen-netfront, unless built in.
	Modules []string
	// Interface is the guest's NIC; "eth0" when empty.
	Interface string
	// SELinux loads the image's SELinux policy store (load_policy, the
	// store /etc/selinux/config names; loader/image builds one)
	// before the daemon starts, so the daemon installs bundles' modules
	// with semodule. The kernel needs SELinux on its command line
	// (QEMU.ExtraAppend "lsm=lockdown,yama,selinux,bpf"). A guest that
	// cannot load the policy powers off: it never runs the daemon without.
	SELinux bool
	// DemoProbe starts `<Binary> demo probe` on the Xen PV console
	// (/dev/hvc0) before the daemon: the demo's Xen guests only. The
	// probe answers dom0 on the console and opens no listening socket;
	// no image an operator builds should set it.
	DemoProbe bool
}

// InitScript returns a busybox sh script to be a QEMU or Xen guest's /init
// (PID 1), the guest half of the contract the QEMU and Xen backends keep:
//
//   - the kernel command line carries mlsgate.addr=<guest addr>/<prefix
//     len>, mlsgate.gw=<host addr> and mlsgate.port=<update daemon port>
//     (Cmdline writes them); a missing key powers the guest off at once, so
//     Boot fails fast instead of timing out;
//   - the update daemon's credentials are in GuestCredDir (CertFile,
//     KeyFile, CAFile), delivered by the backend in an initramfs overlay
//     (CredentialFiles, AppendInitramfs);
//   - the init mounts /proc, /sys, /dev, /tmp and /run, loads the SELinux
//     policy store when asked (InitOptions.SELinux), loads Modules,
//     gives Interface the address and a default route via the gateway, and
//     runs `<Binary> updated` with DaemonArgs (listening on the guest
//     address, state in GuestStateDir), logging to the console. When the
//     daemon exits, the guest powers off.
//
// Console lines it writes start with "mlsgate-init:".
func InitScript(opts InitOptions) string {
	bin, iface := opts.Binary, opts.Interface
	if bin == "" {
		bin = "/sbin/mlsgate"
	}
	if iface == "" {
		iface = "eth0"
	}
	args := DaemonArgs("LISTEN", GuestCredDir, GuestStateDir)
	if opts.SELinux {
		// The init loads the store's policy, so semodule may install
		// modules into it (selinux.SELinux.Semodule).
		args = append(args, "--semodule")
	}
	for i, a := range args {
		if a == "LISTEN" {
			args[i] = `"$LISTEN"`
		} else {
			args[i] = shellQuote(a)
		}
	}
	mods := make([]string, len(opts.Modules))
	for i, m := range opts.Modules {
		mods[i] = shellQuote(m)
	}
	sel := ""
	if opts.SELinux {
		sel = `if ! grep -qw selinuxfs /proc/filesystems; then
	say "SELinux asked for, but the kernel has none (boot with lsm=lockdown,yama,selinux,bpf); powering off"
	poweroff -f
fi
mount -t selinuxfs selinuxfs /sys/fs/selinux 2>/dev/null
if ! load_policy; then
	say "cannot load the SELinux policy store named in /etc/selinux/config; powering off"
	poweroff -f
fi
say "SELinux policy loaded from the store, enforce=$(cat /sys/fs/selinux/enforce)"
`
	}
	probe := ""
	if opts.DemoProbe {
		probe = fmt.Sprintf("%s demo probe --console /dev/hvc0 &\nsay \"demo probe started (pid $!) on /dev/hvc0\"\n", shellQuote(bin))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `#!/bin/sh
# PID 1 of an mlsgate guest, written by loader/backend.InitScript: it sets
# up the link the kernel command line describes and runs the update daemon.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
say() { echo "mlsgate-init: $* (at $(cut -d' ' -f1 /proc/uptime)s)"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
exec </dev/console >/dev/console 2>&1
say "init starts"
%[9]s
ADDR= GW= PORT=
for w in $(cat /proc/cmdline); do
	case $w in
	%[1]s=*) ADDR=${w#%[1]s=} ;;
	%[2]s=*) GW=${w#%[2]s=} ;;
	%[3]s=*) PORT=${w#%[3]s=} ;;
	esac
done
if [ -z "$ADDR" ] || [ -z "$GW" ] || [ -z "$PORT" ]; then
	say "the kernel command line lacks %[1]s, %[2]s or %[3]s; powering off"
	poweroff -f
fi

for m in %[4]s; do
	case $m in
	/*) insmod "$m" ;;
	*) modprobe "$m" ;;
	esac || say "module $m failed to load"
done

IF=%[5]s
i=0
while [ ! -e "/sys/class/net/$IF" ] && [ $i -lt 100 ]; do
	sleep 0.05
	i=$((i+1))
done
IP=${ADDR%%/*}
case $IP in
*:*) NODAD=nodad LISTEN="[$IP]:$PORT" ;;
*) NODAD= LISTEN="$IP:$PORT" ;;
esac
ip link set lo up
ip link set "$IF" up &&
	ip addr add "$ADDR" dev "$IF" $NODAD &&
	ip route add default via "$GW" dev "$IF" ||
	{ say "cannot configure $IF with $ADDR via $GW; powering off"; poweroff -f; }
say "$IF $ADDR via $GW"

mkdir -p %[6]s
chmod 700 %[6]s
%[10]s%[7]s %[8]s &
say "update daemon started (pid $!) on $LISTEN"
wait $!
say "update daemon exited with status $?; powering off"
poweroff -f
`, KeyAddr, KeyGateway, KeyPort, strings.Join(mods, " "), shellQuote(iface),
		shellQuote(GuestStateDir), shellQuote(bin), strings.Join(args, " "), sel, probe)
	return b.String()
}

// shellQuote quotes s for sh as one word.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:=,+@", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
