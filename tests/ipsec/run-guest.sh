#!/usr/bin/env bash
# Real IPsec end to end: prove `enforce: ipsec` on ESP traffic in an emulated guest kernel.
#
# This machine's kernel has no ESP, so this boots Debian's stock kernel (linux-image-amd64)
# under qemu with TCG, from a busybox initramfs that mounts the host's / read-only over 9p and
# chroots into it: the guest runs this build's reyes binary and the host's nft, iptables, ip,
# socat. tests/ipsec/guest-check.sh then builds network namespaces joined by veth, ESP SAs
# between some of them, has `reyes follower` apply a document signed here, sends real traffic,
# and reports one line per check on the second serial port (a file here). Then the same document
# on a VPN gateway (tests/ipsec/gateway-check.sh): ESP tunnels in, `follower.mode: gateway`.
# The guest powers itself off; the whole qemu run has a hard timeout.
#
# Usage: tests/ipsec/run-guest.sh [--backend nft|iptables] [--nft-transport cli|netlink]
#          [--reyes BIN] [--out DIR] [--timeout SECS] [--keep]
#
#   --backend        the follower's backend (default nft)
#   --nft-transport  follower.nft_transport for the nft backend (default cli: `nft -f`)
#   --reyes          the reyes binary [default: $CARGO_TARGET_DIR/debug/reyes, built if missing]
#   --out            where console.log and results.txt go [default: a temp dir, printed]
#   --timeout        hard limit on the qemu run, seconds (default 300)
#   --keep           keep the work dir (keys, config, store, initramfs)
#
# Environment: REYES_IPSEC_CACHE (default /var/cache/reyes-ipsec as root, else
# ~/.cache/reyes-ipsec) holds a kernel unpacked from its .deb when the package is not
# installed; REYES_IPSEC_KERNEL=download forces that route; REYES_IPSEC_NO_INSTALL=1 never
# runs apt-get; REYES_IPSEC_QEMU names the qemu binary (default qemu-system-x86_64).
#
# Exit status:
#   0   every check passed
#   1   a check failed, the rig could not be built, or the guest did not finish in time
#   2   usage error
#   77  SKIP: qemu, the guest kernel or a tool the guest needs is missing and cannot be installed
#   78  SKIP: this reyes build does not support the backend yet (the follower said so, exit 2)
set -euo pipefail

SKIP_ENV=77
SKIP_BACKEND=78
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

backend=nft
transport=cli
reyes=""
out=""
timeout_s=300
keep=0
usage() {
  sed -n '/^# Usage:/,/^#   --keep/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}
while [ $# -gt 0 ]; do
  case $1 in
    --backend) backend=${2:?}; shift 2 ;;
    --nft-transport) transport=${2:?}; shift 2 ;;
    --reyes) reyes=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "run-guest: unknown argument $1" >&2; usage ;;
  esac
done
case $backend in nft | iptables) ;; *) echo "run-guest: --backend nft|iptables" >&2; exit 2 ;; esac
case $transport in cli | netlink | auto) ;; *) echo "run-guest: --nft-transport cli|netlink|auto" >&2; exit 2 ;; esac
[[ $timeout_s =~ ^[0-9]+$ ]] || { echo "run-guest: --timeout takes seconds" >&2; exit 2; }

say() { echo "run-guest: $*" >&2; }
skip() {
  say "SKIP: $*"
  exit $SKIP_ENV
}
die() {
  say "FAIL: $*"
  exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }
start=$SECONDS

# --- host tools ------------------------------------------------------------------------------
# What the host needs (qemu, cpio, a static busybox for the initramfs, kmod) and what the guest
# runs from the host's / (nft, iptables, ipset, ip, ping, socat). Missing ones are installed
# when we are root and may (scripts/setup normally did it already).
apt_install() {
  is_root && [ "${REYES_IPSEC_NO_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null || return 1
  say "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
}
static_busybox() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }
have() {
  case $1 in
    busybox-static) static_busybox ;;
    qemu-system-x86) command -v "$qemu" >/dev/null ;;
    kmod) command -v modinfo >/dev/null && command -v depmod >/dev/null ;;
    nftables) command -v nft >/dev/null ;;
    iproute2) command -v ip >/dev/null && command -v ss >/dev/null ;;
    iputils-ping) command -v ping >/dev/null ;;
    *) command -v "$1" >/dev/null ;;
  esac
}
export PATH="$PATH:/usr/sbin:/sbin"
qemu=${REYES_IPSEC_QEMU:-qemu-system-x86_64}
missing=()
for p in qemu-system-x86 busybox-static cpio kmod socat nftables iptables ipset iproute2 iputils-ping; do
  have "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt_install "${missing[@]}" || true
  still=()
  for p in "${missing[@]}"; do have "$p" || still+=("$p"); done
  ((${#still[@]} == 0)) || skip "missing and not installable here: ${still[*]} (run scripts/setup as root)"
fi

# --- the guest kernel: Debian's stock linux-image-amd64 ---------------------------------------
# Installed package: /boot/vmlinuz-K and /lib/modules/K (depmod'ed by the package), which the
# guest sees as they are. Otherwise its .deb is downloaded, unpacked and depmod'ed into the
# cache, and the guest binds that module tree over /lib/modules.
if is_root; then cache=${REYES_IPSEC_CACHE:-/var/cache/reyes-ipsec}; else
  cache=${REYES_IPSEC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reyes-ipsec}
fi
image_pkg() { # the linux-image-K-amd64 package the metapackage points at (installed or candidate)
  local d
  d=$(dpkg-query -W -f='${Status} ${Depends}\n' linux-image-amd64 2>/dev/null | sed -n 's/^install ok installed \(linux-image-[^ ,]*\).*/\1/p')
  [ -n "$d" ] || d=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
  echo "$d"
}
kernel=""
modbase=""
kver=""
use_installed() {
  local pkg
  pkg=$(image_pkg)
  [ -n "$pkg" ] || return 1
  kver=${pkg#linux-image-}
  [ -r "/boot/vmlinuz-$kver" ] && [ -f "/lib/modules/$kver/modules.dep" ] || return 1
  kernel=/boot/vmlinuz-$kver
  modbase=/
}
use_download() {
  local pkg dir
  pkg=$(image_pkg)
  [ -n "$pkg" ] || return 1
  kver=${pkg#linux-image-}
  dir=$cache/$kver
  mkdir -p "$dir" || return 1
  exec 9>"$dir/.lock" # one unpacker at a time
  flock 9 || return 1
  if [ ! -f "$dir/complete" ]; then
    say "downloading and unpacking $pkg into $dir"
    mkdir -p "$dir/deb" || return 1
    rm -rf "$dir/root" "$dir/deb"/*.deb "$dir/complete"
    (cd "$dir/deb" && apt-get download "$pkg" >/dev/null 2>&1) || return 1
    dpkg-deb -x "$dir"/deb/*.deb "$dir/root" || return 1
    [ -d "$dir/root/lib/modules/$kver" ] || { # merged-/usr packages ship usr/lib/modules
      mkdir -p "$dir/root/lib" && mv "$dir/root/usr/lib/modules" "$dir/root/lib/modules" || return 1
    }
    depmod -b "$dir/root" "$kver" || return 1
    rm -f "$dir"/deb/*.deb
    touch "$dir/complete"
  fi
  exec 9>&-
  kernel=$dir/root/boot/vmlinuz-$kver
  modbase=$dir/root
  [ -r "$kernel" ] || return 1
  # The guest binds the tree over /lib/modules, which must exist on the host's /.
  [ -d /lib/modules ] || { is_root && mkdir -p /lib/modules; } || return 1
}
if [ "${REYES_IPSEC_KERNEL:-}" = download ]; then
  use_download || skip "could not download and unpack linux-image-amd64 into $cache"
else
  use_installed || { apt_install linux-image-amd64 && use_installed; } || use_download ||
    skip "no guest kernel: linux-image-amd64 is neither installed nor downloadable (run scripts/setup as root)"
fi
say "guest kernel $kver ($kernel, modules from ${modbase%/}/lib/modules)"

# --- paths the guest will open through 9p -----------------------------------------------------
# The guest mounts its own /dev, /proc, /sys and a tmpfs on /run, hiding the host's: nothing it
# needs may live there, and paths go through a kernel command line and shell assignments.
guest_path() {
  local p
  p=$(readlink -f "$1") || die "$1: not found"
  case $p in /run/* | /proc/* | /sys/* | /dev/*) die "$1 is under /run, /proc, /sys or /dev, which the guest does not see (set TMPDIR or CARGO_TARGET_DIR elsewhere)" ;; esac
  [[ $p =~ ^[A-Za-z0-9_./+-]+$ ]] || die "$p: the guest needs a path of [A-Za-z0-9_./+-] only"
  echo "$p"
}
if [ -z "$reyes" ]; then
  reyes=${CARGO_TARGET_DIR:-$repo/target}/debug/reyes
  [ -x "$reyes" ] || (cd "$repo" && cargo build --quiet) || die "cargo build failed"
fi
[ -x "$reyes" ] || die "$reyes: not an executable"
reyes=$(guest_path "$reyes")
modroot=$(guest_path "${modbase%/}/lib/modules")
inventory=$(guest_path "$here/inventory.yaml")
guest_check=$(guest_path "$here/guest-check.sh")
gateway_check=$(guest_path "$here/gateway-check.sh")

tmpbase=${TMPDIR:-/tmp}
case $(readlink -f "$tmpbase") in /run/* | /proc/* | /sys/* | /dev/*) tmpbase=/var/tmp ;; esac
work=$(mktemp -d "$tmpbase/reyes-ipsec.XXXXXX")
work=$(guest_path "$work")
cleanup() { if [ "$keep" = 1 ]; then say "work dir kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
if [ -z "$out" ]; then out=$work/out; keep=1; fi
mkdir -p "$out"
out=$(readlink -f "$out")
rm -f "$out/console.log" "$out/results.txt"

# --- the signed document, made here by this build's reyes -------------------------------------
"$reyes" keygen --name leader --output-dir "$work/keys" >/dev/null || die "reyes keygen failed"
cat >"$work/reyes.yaml" <<EOF
# Written by tests/ipsec/run-guest.sh: the leader runs on the host, the follower in the guest.
environment: ipsec-lab
store:
  directory: store
signing:
  key: keys/leader.secret.asc
  keyring: keys/leader.cert.asc
  validity: 1h
inventory:
  file: $inventory
follower:
  backend: nft
  nft_transport: $transport
  enforce: ipsec
  addresses: [10.1.0.10, "fd00:1::10"]
  log_accept: true
  log_drop: true
  disable_file: /run/reyes/disabled
  state_dir: /run/reyes/state
EOF
"$reyes" -q --config "$work/reyes.yaml" leader --once || die "reyes leader --once failed"
# The gateway scenario's follower: the same store and keyring, `mode: gateway` for the VPC
# behind it; its own (outer) addresses are in no group.
cat >"$work/reyes-gw.yaml" <<EOF
# Written by tests/ipsec/run-guest.sh: the VPN gateway's follower (tests/ipsec/gateway-check.sh).
environment: ipsec-lab
store:
  directory: store
signing:
  keyring: keys/leader.cert.asc
follower:
  backend: nft
  nft_transport: $transport
  enforce: ipsec
  mode: gateway
  gateway_cidrs: [10.1.0.0/16, "fd00:1::/56"]
  egress: true
  addresses: [192.0.2.1, "2001:db8::1"]
  log_accept: true
  log_drop: true
  disable_file: /run/reyes/gw-disabled
  state_dir: /run/reyes/gw-state
EOF
# The next policy for the gateway's revocation check: remote-lb leaves sg-lb. Published into a
# copy of the store (the leader moves the serial on from the copied document), which the
# gateway fetches through reyes-gw2.yaml.
sed 's/{id: remote-lb, addresses: \[10.9.0.5, "fd00:9::5"\], groups: \[sg-lb\]}/{id: remote-lb, addresses: [10.9.0.5, "fd00:9::5"], groups: [sg-other]}/' \
  "$inventory" >"$work/inventory-2.yaml"
cmp -s "$inventory" "$work/inventory-2.yaml" && die "inventory-2.yaml: remote-lb not found in $inventory"
cp -a "$work/store" "$work/store2"
sed -e 's/^  directory: store$/  directory: store2/' -e "s|^  file: .*|  file: $work/inventory-2.yaml|" \
  "$work/reyes.yaml" >"$work/reyes2.yaml"
"$reyes" -q --config "$work/reyes2.yaml" leader --once || die "reyes leader --once (second policy) failed"
sed 's/^  directory: store$/  directory: store2/' "$work/reyes-gw.yaml" >"$work/reyes-gw2.yaml"
"$reyes" --config "$work/reyes-gw.yaml" render --document "$work/store/rules.json" \
  --mode gateway --gateway-cidr 10.1.0.0/16 --gateway-cidr fd00:1::/56 --egress \
  --host 192.0.2.1 --host 2001:db8::1 >"$out/render-gw.nft" 2>&1 || true
"$reyes" --config "$work/reyes.yaml" render --document "$work/store/rules.json" \
  --host 10.1.0.10 --host fd00:1::10 >"$out/render.nft" 2>&1 || true

cat >"$work/guest-env" <<EOF
GUEST_CHECK='$guest_check'
GATEWAY_CHECK='$gateway_check'
GATEWAY_CONFIG='$work/reyes-gw.yaml'
GATEWAY_CONFIG_2='$work/reyes-gw2.yaml'
REYES_BIN='$reyes'
REYES_CONFIG='$work/reyes.yaml'
BACKEND='$backend'
NFT_TRANSPORT='$transport'
MODROOT='$modroot'
EOF

# --- initramfs: busybox, /init, and the modules needed to reach the host's / ----------------
mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p)
ir=$work/initramfs
mkdir -p "$ir/bin" "$ir/modules" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/newroot"
cp /bin/busybox "$ir/bin/busybox"
install -m 755 "$here/guest-init.sh" "$ir/init"
: >"$ir/modules/order"
for m in "${mods[@]}"; do
  f=$(modinfo -b "$modbase" -k "$kver" -n "$m" 2>/dev/null) || die "module $m not in the $kver module tree"
  case $f in
    "" | "(builtin)" | *builtin*) continue ;;
    *.ko) cp "$f" "$ir/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ir/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ir/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$ir/modules/$m.ko" ;;
    *) die "module $m: unexpected file $f" ;;
  esac
  echo "$m" >>"$ir/modules/order"
done
(cd "$ir" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio" || die "cpio failed"

# --- boot ------------------------------------------------------------------------------------
say "booting the guest (TCG, timeout ${timeout_s}s): backend $backend, nft transport $transport; console $out/console.log"
boot=$SECONDS
set +e
timeout -k 10 "$timeout_s" "$qemu" \
  -machine accel=tcg -cpu max -smp 1 -m 1024 \
  -nodefaults -no-reboot -display none -nic none \
  -kernel "$kernel" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 panic=1 quiet mitigations=off reyes_env=$work/guest-env" \
  -serial "file:$out/console.log" -serial "file:$out/results.txt" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  >"$out/qemu.log" 2>&1
qrc=$?
set -e
say "qemu exited $qrc after $((SECONDS - boot))s (whole run $((SECONDS - start))s)"

# --- results ---------------------------------------------------------------------------------
tr -d '\r' <"$out/results.txt" 2>/dev/null | grep '^REYES-IPSEC ' >"$out/results.clean" || true
sed 's/^REYES-IPSEC /  /' "$out/results.clean" >&2
show_console() {
  say "qemu output:"
  sed 's/^/  | /' "$out/qemu.log" >&2
  say "last console lines ($out/console.log):"
  tr -d '\r' <"$out/console.log" | tail -n 40 | sed 's/^/  | /' >&2
}
if grep -q '^REYES-IPSEC skip ' "$out/results.clean"; then
  say "SKIP (backend $backend, nft transport $transport not in this build): $(sed -n 's/^REYES-IPSEC skip //p' "$out/results.clean")"
  exit $SKIP_BACKEND
fi
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
  show_console
  die "the guest did not finish within ${timeout_s}s"
fi
grep -q '^REYES-IPSEC begin ' "$out/results.clean" || { show_console; die "the guest reported nothing"; }
if grep -q '^REYES-IPSEC error ' "$out/results.clean"; then
  show_console
  die "the guest could not build the rig: $(sed -n 's/^REYES-IPSEC error //p' "$out/results.clean" | head -n1)"
fi
grep -q '^REYES-IPSEC end ' "$out/results.clean" || { show_console; die "the guest stopped before its last line"; }
nfail=$(grep -c '^REYES-IPSEC check [^ ]* fail' "$out/results.clean" || true)
npass=$(grep -c '^REYES-IPSEC check [^ ]* pass' "$out/results.clean" || true)
if [ "$nfail" -ne 0 ] || [ "$npass" -eq 0 ]; then
  show_console
  die "$nfail of $((npass + nfail)) checks failed"
fi
say "$npass checks passed (kernel $kver, backend $backend, nft transport $transport) in $((SECONDS - start))s"
