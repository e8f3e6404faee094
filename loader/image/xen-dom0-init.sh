#!/bin/sh
# PID 1 of the Xen dom0 packed by loader/image.PrepareXen (Debian's kernel as
# a PV dom0 under Xen 4.17). It loads the Xen and network modules, mounts
# selinuxfs where the kernel runs SELinux (no policy is loaded: whoever wants
# one runs load_policy on the image's module store), starts the Xen daemons
# (xenstored, xen-init-dom0, xenconsoled), runs the job the host left in the 9p share under
# /mnt/.xendom0/<job>/, writes its exit code and times beside it, and powers
# off. Console lines start with "xendom0:".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
export LD_LIBRARY_PATH=/usr/lib/xen-4.17/lib/x86_64-linux-gnu
say() { echo "xendom0: $* (at $(cut -d' ' -f1 /proc/uptime)s)"; }
XB=/usr/lib/xen-4.17/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
if grep -qw selinuxfs /proc/filesystems; then
	mount -t selinuxfs selinuxfs /sys/fs/selinux 2>/dev/null
fi
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen
JOB=
for w in $(cat /proc/cmdline); do
	case $w in
	xendom0.job=*) JOB=${w#xendom0.job=} ;;
	esac
done
say "init"

failed=
if ! modprobe -a $(cat /etc/xendom0/modules) 2>/dev/null; then
	for m in $(cat /etc/xendom0/modules); do
		modprobe "$m" 2>/dev/null || failed="$failed $m"
	done
fi
mount -t xenfs xenfs /proc/xen
say "modules loaded, failed:${failed:- none}; xen capabilities: $(cat /proc/xen/capabilities 2>/dev/null)"

xen=ok
XENSTORED_ROOTDIR=/run/xenstored $XB/xenstored --pid-file /run/xenstored.pid || xen="xenstored failed"
n=0
until xenstore-read -s / >/dev/null 2>&1; do
	n=$((n + 1))
	[ $n -ge 200 ] && { xen="xenstored does not answer"; break; }
	sleep 0.05
done
$XB/xen-init-dom0 >/dev/null 2>&1 || xen="xen-init-dom0 failed"
$XB/xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console || xen="xenconsoled failed"
say "xen daemons: $xen"

# No bridge: every guest's vif is a routed link of its own (vif-mlsgate).
ip link set lo up

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt; then
	say "cannot mount the host share (tag host0)"
	poweroff -f
fi
J=/mnt/.xendom0/$JOB
if [ -z "$JOB" ] || [ ! -f "$J/job.sh" ]; then
	say "no job at $J/job.sh"
	poweroff -f
fi
{
	echo "modules_failed=$failed"
	echo "xen=$xen"
} > "$J/boot"
start=$(cut -d' ' -f1 /proc/uptime)
say "job $JOB starts"
/bin/sh "$J/job.sh" > "$J/output" 2>&1 < /dev/null
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
xl dmesg > "$J/xl-dmesg" 2>&1
dmesg > "$J/dmesg" 2>/dev/null
cp /var/log/xen/console/*.log "$J/" 2>/dev/null
echo "$rc $start $end" > "$J/exit.tmp" && mv "$J/exit.tmp" "$J/exit"
say "job $JOB exited $rc"
umount /mnt
poweroff -f
