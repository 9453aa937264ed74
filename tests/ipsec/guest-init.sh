#!/bin/busybox sh
# PID 1 of the IPsec test guest: run-guest.sh copies this file into the initramfs as /init,
# next to a static busybox and the modules listed in /modules/order.
#
# It loads virtio and 9p, mounts the host's / (exported read-only by qemu as `hostroot`),
# gives it a fresh /dev, /proc, /sys and a tmpfs /run, and then chroots into it as PID 1 (so
# that the kernel's own module loader, which runs /sbin/modprobe from PID 1's root, uses the
# host's modprobe too), where /bin/sh runs tests/ipsec/guest-check.sh and powers off.
#
# The kernel command line carries one parameter of ours: reyes_env=PATH, a host file (seen
# through 9p) of shell assignments written by run-guest.sh; GUEST_CHECK names the script.

/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Results go to the second serial port (ttyS1); the console (ttyS0) is the log.
fail() {
  echo "REYES-IPSEC error init: $*" >/dev/ttyS1
  echo "reyes-init: $*" >/dev/console
  poweroff -f
}

env_file=
for arg in $(cat /proc/cmdline); do
  case "$arg" in reyes_env=*) env_file=${arg#reyes_env=} ;; esac
done
[ -n "$env_file" ] || fail "no reyes_env= on the kernel command line"

for m in $(cat /modules/order); do
  insmod "/modules/$m.ko" || fail "insmod $m"
done

mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot ||
  fail "cannot mount the host's / over 9p"
[ -f "/newroot$env_file" ] || fail "$env_file not found on the host's /"
GUEST_CHECK=
# shellcheck disable=SC1090 # written by run-guest.sh
. "/newroot$env_file"
[ -n "$GUEST_CHECK" ] || fail "GUEST_CHECK not set in $env_file"

mount -t tmpfs -o mode=0755,size=256m tmpfs /newroot/run || fail "tmpfs on /run"
for d in dev proc sys; do
  mount --move "/$d" "/newroot/$d" || fail "move /$d"
done

# From here on the host's own tools run. The host's busybox-static (the file this initramfs
# was built from) powers off, whatever the check did.
cd /newroot || fail "cd /newroot"
# shellcheck disable=SC2016 # expanded by the chrooted shell
exec chroot /newroot /bin/sh -c '
  /bin/bash "$1" "$2"
  echo "reyes-init: guest-check exited $?"
  exec /bin/busybox poweroff -f
' sh "$GUEST_CHECK" "$env_file"
