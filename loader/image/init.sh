#!/bin/sh
# PID 1 of the mlsgate test guest, packed by kernel-tests/guestvm. It readies
# the kernel (file systems, modules, the MLS policy), runs the job the host
# left in the 9p share under /mnt/.guestvm/<job>/, writes the job's exit code
# and times beside it, and powers off. Console lines start with "guestvm:".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
say() { echo "guestvm: $*"; }
up() { cut -d' ' -f1 /proc/uptime; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null

JOB= ENFORCING=0 PROBE=0
for w in $(cat /proc/cmdline); do
	case $w in
	guestvm.job=*) JOB=${w#guestvm.job=} ;;
	guestvm.enforcing=*) ENFORCING=${w#guestvm.enforcing=} ;;
	guestvm.probe=1) PROBE=1 ;;
	esac
done
say "init at $(up)s, lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"
if [ "$PROBE" = 1 ]; then
	say "probe ok"
	poweroff -f
fi

# One modprobe for all is fast; only when it fails, find out which.
failed=
if ! modprobe -a $(cat /etc/guestvm/modules) 2>/dev/null; then
	for m in $(cat /etc/guestvm/modules); do
		modprobe "$m" 2>/dev/null || failed="$failed $m"
	done
fi
say "modules loaded at $(up)s: $(wc -l < /proc/modules) in the kernel, failed:${failed:- none}"
/usr/sbin/ip link set lo up

policy=none
if grep -q selinuxfs /proc/filesystems; then
	mount -t selinuxfs selinuxfs /sys/fs/selinux
	# The policy must reach the kernel in one write.
	if dd if=/etc/guestvm/policy.33 of=/sys/fs/selinux/load bs=16M 2>/dev/null; then
		policy=loaded
		echo "$ENFORCING" > /sys/fs/selinux/enforce
	else
		policy=failed
	fi
fi
say "policy $policy at $(up)s, enforce=$(cat /sys/fs/selinux/enforce 2>/dev/null)"

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt; then
	say "cannot mount the host share (tag host0)"
	poweroff -f
fi
J=/mnt/.guestvm/$JOB
if [ -z "$JOB" ] || [ ! -f "$J/job.sh" ]; then
	say "no job at $J/job.sh"
	poweroff -f
fi
{
	echo "modules_failed=$failed"
	echo "policy=$policy"
	echo "enforce=$(cat /sys/fs/selinux/enforce 2>/dev/null)"
} > "$J/boot"

start=$(up)
say "job $JOB starts at ${start}s"
# The job runs in the runner domain when the policy is loaded. echo is a
# shell builtin, so /proc/self is the subshell that then execs the job.
(
	read -r ctx < /etc/guestvm/runner-context
	echo -n "$ctx" > /proc/self/attr/exec 2>/dev/null
	exec /bin/sh "$J/job.sh"
) > "$J/output" 2>&1 < /dev/null
rc=$?
end=$(up)
dmesg > "$J/dmesg" 2>/dev/null
echo "$rc $start $end" > "$J/exit.tmp" && mv "$J/exit.tmp" "$J/exit"
say "job $JOB exited $rc at ${end}s"
umount /mnt
poweroff -f
