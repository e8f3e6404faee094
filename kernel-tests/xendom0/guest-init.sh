#!/bin/sh
# PID 1 of the tiny PV guest packed by kernel-tests/xendom0. It reads its
# link from the loader backend's keys on the command line (mlsgate.addr,
# mlsgate.gw), adds a second address it is not entitled to
# (xendom0.spoof=), and pings the gateway from both, five times a second,
# for at most xendom0.pings rounds; then it powers off. With xendom0.claim=
# it also impersonates another guest: it takes that guest's address and, once
# a second for xendom0.claims rounds, announces it with a gratuitous ARP,
# asks for its gateway from it, and opens a TCP connection from it to
# xendom0.claimhost= port 7444 (the loader's API port). Console lines start
# with "xenguest:".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
say() { echo "xenguest: $* (at $(cut -d' ' -f1 /proc/uptime)s)"; }
say "init"
ADDR= GW= SPOOF= PINGS=600 CLAIM= CLAIMHOST= CLAIMS=10
for w in $(cat /proc/cmdline); do
	case $w in
	mlsgate.addr=*) ADDR=${w#mlsgate.addr=} ;;
	mlsgate.gw=*) GW=${w#mlsgate.gw=} ;;
	xendom0.spoof=*) SPOOF=${w#xendom0.spoof=} ;;
	xendom0.pings=*) PINGS=${w#xendom0.pings=} ;;
	xendom0.claim=*) CLAIM=${w#xendom0.claim=} ;;
	xendom0.claimhost=*) CLAIMHOST=${w#xendom0.claimhost=} ;;
	xendom0.claims=*) CLAIMS=${w#xendom0.claims=} ;;
	esac
done
if [ -z "$ADDR" ] || [ -z "$GW" ]; then
	say "no mlsgate.addr or mlsgate.gw on the command line"
	poweroff -f
fi
modprobe xen-netfront
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
ip link set lo up
ip addr add "$ADDR" dev eth0
[ -n "$SPOOF" ] && ip addr add "$SPOOF/32" dev eth0
ip link set eth0 up
say "eth0 up: $ADDR (and ${SPOOF:-no spoofed address})"
ping -q -i 0.2 -c "$PINGS" -W 1 "$GW" > /dev/null 2>&1 &
[ -n "$SPOOF" ] && ping -q -I "$SPOOF" -i 0.2 -c "$PINGS" "$GW" > /dev/null 2>&1 &
if [ -n "$CLAIM" ]; then
	ip addr add "$CLAIM/32" dev eth0
	if [ -n "$CLAIMHOST" ] && [ "$CLAIMHOST" != "$GW" ]; then
		ip route add "$CLAIMHOST/32" via "$GW" src "$CLAIM"
	else
		ip route add "$GW/32" dev eth0 src "$CLAIM"
	fi
	sleep 2
	say "claiming $CLAIM"
	i=0
	while [ $i -lt "$CLAIMS" ]; do
		arping -U -c 1 -I eth0 -s "$CLAIM" "$CLAIM" > /dev/null 2>&1
		arping -c 1 -w 1 -I eth0 -s "$CLAIM" "$GW" > /dev/null 2>&1
		nc -w 1 "${CLAIMHOST:-$GW}" 7444 < /dev/null > /dev/null 2>&1
		i=$((i + 1))
	done
	say "claim done"
fi
wait
say "pings done"
poweroff -f
