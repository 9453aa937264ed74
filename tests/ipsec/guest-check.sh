#!/usr/bin/env bash
# Runs inside the IPsec test guest (see run-guest.sh and guest-init.sh), as root, chrooted into
# the host's / (read-only; /run is a tmpfs). Argument: the env file run-guest.sh wrote.
#
# Then a VPN gateway in three more namespaces (tests/ipsec/gateway-check.sh, sourced at the end):
# ESP tunnels from a remote site, `follower.mode: gateway` judging what the gateway forwards.
#
# Two network namespaces joined by a veth pair:
#   web    10.1.0.10 fd00:1::10                the follower: reyes applies the document here
#   peers  10.1.0.5/.6/.7 fd00:1::5/6/7        lb, other and plain (tests/ipsec/inventory.yaml)
# ESP transport-mode SAs and policies (static keys, rfc4106(gcm(aes))) protect lb<->web and
# other<->web, in IPv4 and IPv6; plain<->web has none. Then real TCP, UDP and ICMP between
# them, checked against what `enforce: ipsec` promises, with the xfrm state counters as proof
# of which packets were ESP.
#
# Results go to /dev/ttyS1 (a file on the host), one line each:
#   REYES-IPSEC begin version=1 kernel=K backend=B transport=T
#   REYES-IPSEC check NAME pass|fail DETAIL...
#   REYES-IPSEC skip REASON...              (the backend is not in this reyes build)
#   REYES-IPSEC error DETAIL...             (the rig itself could not be built)
#   REYES-IPSEC end pass=N fail=N
# The console (ttyS0) gets a running log. No step waits by sleeping: every wait polls a
# condition with a deadline, and every network probe has its own timeout.

# shellcheck disable=SC2317 # (whole file) the probe functions are called through flow "$@"
set -uo pipefail
env_file=$1
# shellcheck disable=SC1090
. "$env_file"
: "${REYES_BIN:?}" "${REYES_CONFIG:?}" "${BACKEND:?}" "${NFT_TRANSPORT:?}" "${MODROOT:?}" "${GATEWAY_CHECK:?}"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export TMPDIR=/run/tmp HOME=/run/home LC_ALL=C
unset REYES_CONFIG_ENV REYES_LOG
mkdir -p "$TMPDIR" "$HOME" /run/reyes /run/netns /run/lock

exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null || true

npass=0
nfail=0
uptime() { local u; read -r u _ </proc/uptime; echo "$u"; }
log() { printf '[%s] guest: %s\n' "$(uptime)" "$*"; }
emit() {
  printf 'REYES-IPSEC %s\n' "$*" >&3
  printf '[%s] REYES-IPSEC %s\n' "$(uptime)" "$*"
}
# check NAME OK DETAIL...: OK is a shell status (0 = pass).
check() {
  local name=$1 ok=$2
  shift 2
  if [ "$ok" -eq 0 ]; then
    npass=$((npass + 1))
    emit "check $name pass $*"
  else
    nfail=$((nfail + 1))
    emit "check $name fail $*"
  fi
}
finish() {
  emit "end pass=$npass fail=$nfail"
  exit 0
}
# Setup steps: any failure ends the run with an error line.
must() {
  local out
  if ! out=$("$@" 2>&1); then
    emit "error setup: $* -> ${out//$'\n'/ | }"
    finish
  fi
}

emit "begin version=1 kernel=$(uname -r) backend=$BACKEND transport=$NFT_TRANSPORT"

# --- kernel: the unpacked module tree, so that modprobe and module auto-loading work -------
if [ "$(readlink -f "$MODROOT")" != "$(readlink -f /lib/modules)" ]; then
  must mount --bind "$MODROOT" /lib/modules
fi
[ -f "/lib/modules/$(uname -r)/modules.dep" ] || {
  emit "error setup: no /lib/modules/$(uname -r)/modules.dep (module tree for the guest kernel)"
  finish
}
# What the rig and the ruleset use, loaded in one go (auto-loading works too, one modprobe
# per expression type, which costs seconds under TCG).
must modprobe -a veth xfrm_user esp4 esp6 nf_tables nf_conntrack nft_ct nft_log nft_limit nf_log_syslog
# Log lines from network namespaces other than the initial one are dropped unless asked for.
must sysctl -qw net.netfilter.nf_log_all_netns=1
dmesg -n 1 2>/dev/null || true

# --- reyes: the follower applies the signed document in web ---------------------------------
# First thing, before the rest of the rig: a backend this build does not have ends the run here.
must ip netns add web
reyes_web() { ip netns exec web "$REYES_BIN" --config "$REYES_CONFIG" "$@"; }
out=$(reyes_web follower --once --backend "$BACKEND" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ $rc -eq 2 ] && grep -q 'not supported yet' <<<"$out"; then
  emit "skip follower --backend $BACKEND (nft_transport $NFT_TRANSPORT) exited 2: $(grep -m1 'not supported yet' <<<"$out")"
  finish
fi
check apply $rc "follower --once --backend $BACKEND exited $rc: ${out//$'\n'/ | }"
[ $rc -eq 0 ] || finish

# --- network: web <-veth-> peers ------------------------------------------------------------
WEB4=10.1.0.10 LB4=10.1.0.5 OTHER4=10.1.0.6 PLAIN4=10.1.0.7
WEB6=fd00:1::10 LB6=fd00:1::5 OTHER6=fd00:1::6 PLAIN6=fd00:1::7
WEB_MAC=02:00:00:00:00:10 PEERS_MAC=02:00:00:00:00:01

# Each namespace is set up by one `ip -batch` (one process instead of dozens: every exec
# counts under TCG). web's batch creates the veth pair and moves p0 into peers.
WEB_IP=/run/tmp/web.ip PEERS_IP=/run/tmp/peers.ip
{
  echo "link set lo up"
  echo "link add w0 address $WEB_MAC type veth peer name p0 address $PEERS_MAC netns peers"
  echo "addr add $WEB4/24 dev w0"
  echo "addr add $WEB6/64 dev w0 nodad"
  echo "link set w0 up"
  # Static neighbours: no ARP or neighbour discovery to race with (or to run through ESP).
  for a in $LB4 $OTHER4 $PLAIN4 $LB6 $OTHER6 $PLAIN6; do
    echo "neigh replace $a lladdr $PEERS_MAC dev w0 nud permanent"
  done
} >"$WEB_IP"
{
  echo "link set lo up"
  for a in $LB4 $OTHER4 $PLAIN4; do echo "addr add $a/24 dev p0"; done
  for a in $LB6 $OTHER6 $PLAIN6; do echo "addr add $a/64 dev p0 nodad"; done
  echo "link set p0 up"
  for a in $WEB4 $WEB6; do echo "neigh replace $a lladdr $WEB_MAC dev p0 nud permanent"; done
} >"$PEERS_IP"

# --- IPsec: ESP transport mode between some pairs --------------------------------------------
# sa PEER WEB PLEN N: SAs peer->web (spi 0x100N) and web->peer (spi 0x200N) in both
# namespaces, and the policies that require them, for every protocol between the two.
spi_in() { printf '0x%08x' $((0x1000 + $1)); }
spi_out() { printf '0x%08x' $((0x2000 + $1)); }
key() { local k; k=$(printf '%08x' "$1"); printf '0x%s%s%s%s%s' "$k" "$k" "$k" "$k" "$k"; }
sa() {
  local p=$1 w=$2 plen=$3 n=$4 f
  local si so
  si=$(spi_in "$n")
  so=$(spi_out "$n")
  for f in "$WEB_IP" "$PEERS_IP"; do
    {
      echo "xfrm state add src $p dst $w proto esp spi $si reqid $n mode transport aead rfc4106(gcm(aes)) $(key $((0x1000 + n))) 128"
      echo "xfrm state add src $w dst $p proto esp spi $so reqid $n mode transport aead rfc4106(gcm(aes)) $(key $((0x2000 + n))) 128"
    } >>"$f"
  done
  {
    echo "xfrm policy add src $p/$plen dst $w/$plen dir out tmpl proto esp reqid $n mode transport"
    echo "xfrm policy add src $w/$plen dst $p/$plen dir in tmpl proto esp reqid $n mode transport"
  } >>"$PEERS_IP"
  {
    echo "xfrm policy add src $p/$plen dst $w/$plen dir in tmpl proto esp reqid $n mode transport"
    echo "xfrm policy add src $w/$plen dst $p/$plen dir out tmpl proto esp reqid $n mode transport"
  } >>"$WEB_IP"
}
sa "$LB4" "$WEB4" 32 1
sa "$OTHER4" "$WEB4" 32 2
sa "$LB6" "$WEB6" 128 3
sa "$OTHER6" "$WEB6" 128 4

must ip netns add peers
must ip -n web -batch "$WEB_IP"
must ip -n peers -batch "$PEERS_IP"
log "xfrm states in web:"
ip -n web xfrm state | sed -e 's/0x[0-9a-f]\{40\}/KEY/'

# Web's SA packet counters, one "SPI PACKETS" line per state, from one `ip -s xfrm state`.
sa_snapshot() {
  ip -n web -s xfrm state | awk '
    /proto esp spi/ { spi = $4; sub(/\(.*/, "", spi) }
    /lifetime current:/ { getline; if (match($0, /[0-9]+\(packets\)/)) print spi, substr($0, RSTART, RLENGTH - 9) }'
}
# sa_count SNAPSHOT SPI: that state's packets. sa_total SNAPSHOT: all states' packets.
# (Shell builtins only: every exec costs under TCG.)
sa_count() {
  local spi n
  while read -r spi n; do [ "$spi" = "$2" ] && echo "$n"; done <<<"$1"
}
sa_total() {
  local spi n t=0
  while read -r spi n; do t=$((t + n)); done <<<"$1"
  echo $t
}
snap=$(sa_snapshot)
if [ "$(wc -l <<<"$snap")" -ne 8 ] || [ -z "$(sa_count "$snap" "$(spi_in 1)")" ]; then
  emit "error setup: cannot read the packet counters of the xfrm states (ip -s xfrm state): ${snap//$'\n'/ | }"
  finish
fi

log "live ruleset in web:"
if [ "$BACKEND" = nft ]; then
  ip netns exec web nft list ruleset
else
  ip netns exec web iptables-save
  ip netns exec web ip6tables-save
fi

# reyes' drop counter in web: `reyes status` for any backend; for nft the same counter read
# directly (one nft run instead of reyes' three: seconds under TCG).
dropped() {
  if [ "$BACKEND" = nft ]; then
    ip netns exec web nft list counter inet reyes dropped 2>/dev/null | sed -n 's/.*packets \([0-9]*\) bytes.*/\1/p'
  else
    reyes_web status --backend "$BACKEND" 2>/dev/null | sed -n 's/^dropped: \([0-9]*\) packets.*/\1/p'
  fi
}
status_dropped=$(reyes_web status --backend "$BACKEND" 2>&1)
printf '%s\n' "$status_dropped"
grep -q '^dropped: 0 packets' <<<"$status_dropped"
check status $? "reyes status after apply: ${status_dropped//$'\n'/ | }"
[ -n "$(dropped)" ] || {
  emit "error setup: cannot read reyes' drop counter in web"
  finish
}

# --- servers in web ------------------------------------------------------------------------
# TCP 443 (allowed for lb) and 444 (allowed for nobody) answer with a line naming themselves;
# UDP 500 and 4500 (IKE, NAT-T) echo the datagram back (no exec per datagram: cheaper).
# All started by one shell inside web (fewer execs); socat's own logs go to /run/tmp.
# shellcheck disable=SC2016 # expanded by that shell
ip netns exec web bash -c '
  while [ $# -ge 3 ]; do
    socat -lf "/run/tmp/socat-$1.log" "$2" "$3" </dev/null >/dev/null 2>&1 &
    shift 3
  done' servers \
  tcp4-443 "TCP4-LISTEN:443,bind=$WEB4,reuseaddr,fork" "SYSTEM:echo tcp4-443" \
  tcp6-443 "TCP6-LISTEN:443,bind=[$WEB6],ipv6only=1,reuseaddr,fork" "SYSTEM:echo tcp6-443" \
  tcp4-444 "TCP4-LISTEN:444,bind=$WEB4,reuseaddr,fork" "SYSTEM:echo tcp4-444" \
  tcp6-444 "TCP6-LISTEN:444,bind=[$WEB6],ipv6only=1,reuseaddr,fork" "SYSTEM:echo tcp6-444" \
  udp4-500 "UDP4-RECVFROM:500,bind=$WEB4,reuseaddr,fork" PIPE \
  udp6-500 "UDP6-RECVFROM:500,bind=[$WEB6],ipv6only=1,reuseaddr,fork" PIPE \
  udp4-4500 "UDP4-RECVFROM:4500,bind=$WEB4,reuseaddr,fork" PIPE \
  udp6-4500 "UDP6-RECVFROM:4500,bind=[$WEB6],ipv6only=1,reuseaddr,fork" PIPE
# Wait (polling, with a deadline) until all eight sockets are bound.
listening() {
  local line n=0
  while read -r line; do
    [[ $line =~ :(443|444|500|4500)[[:space:]] ]] && n=$((n + 1))
  done <<<"$(ip netns exec web ss -Hltun)"
  [ $n -eq 8 ]
}
deadline=$((SECONDS + 30))
until listening; do
  [ $SECONDS -lt $deadline ] || {
    emit "error setup: socat listeners in web did not come up: $(ip netns exec web ss -Hltun | tr '\n' ' ')"
    finish
  }
  sleep 0.05
done

# --- probes from peers ---------------------------------------------------------------------
# tcp FAMILY SRC DST PORT: prints the server's line; fails if the connection is not made
# within 2 s (a dropped SYN) or no answer comes.
tcp() {
  local f=$1 src=$2 dst=$3 port=$4
  if [ "$f" = 6 ]; then src="[$src]" dst="[$dst]"; fi
  ip netns exec peers timeout 30 socat -T 10 - "TCP$f:$dst:$port,bind=$src,connect-timeout=2" </dev/null 2>/dev/null
}
# udp FAMILY SRC DST PORT: one datagram out, its echo back. socat waits up to 8 s for the
# echo after its input ends, and stops as soon as the echo's bytes are in (readbytes).
udp() {
  local f=$1 src=$2 dst=$3 port=$4 msg
  msg="udp$f-$port"
  if [ "$f" = 6 ]; then src="[$src]" dst="[$dst]"; fi
  echo "$msg" | ip netns exec peers timeout 30 socat -t 8 -T 10 - "UDP$f:$dst:$port,bind=$src,readbytes=$((${#msg} + 1))" 2>/dev/null
}
ping_from() {
  local f=$1 src=$2 dst=$3
  ip netns exec peers ping "-$f" -n -c 1 -W 5 -I "$src" "$dst" >/dev/null 2>&1 && echo echo-reply
}

# One flow: run PROBE (it prints the answer, if any) and compare web's SA counters before and
# after: an ESP flow must have come in over its SA (and, if allowed, its answer gone out over
# the reverse one); a flow without SA must not move any of web's SA counters. A flow expected
# to be dropped must also move reyes' drop counter (read only around those flows, as every
# exec costs under TCG: $DROPPED is its last reading).
# flow NAME allow|drop SA(1-4 | none) PROBE...
flow() {
  local name=$1 expect=$2 n=$3
  shift 3
  local s0 s1 d1 answer rc ok=0 why="" in=0 out=0 all
  s0=$(sa_snapshot)
  answer=$("$@")
  rc=$?
  s1=$(sa_snapshot)
  all=$(($(sa_total "$s1") - $(sa_total "$s0")))
  local facts="probe=[$*] rc=$rc answer=${answer:-none}"
  if [ "$n" != none ]; then
    in=$(($(sa_count "$s1" "$(spi_in "$n")") - $(sa_count "$s0" "$(spi_in "$n")")))
    out=$(($(sa_count "$s1" "$(spi_out "$n")") - $(sa_count "$s0" "$(spi_out "$n")")))
    facts="$facts esp_in+=$in esp_out+=$out"
    # Whatever the verdict, the packets must have come in over ESP.
    [ "$in" -gt 0 ] || { ok=1 why="$why no ESP packets in;"; }
  else
    facts="$facts esp_all+=$all"
    # Without an SA, not one packet may touch any SA of web's.
    [ "$all" -eq 0 ] || { ok=1 why="$why ESP counters moved;"; }
  fi
  case $expect in
    allow)
      { [ $rc -eq 0 ] && [ -n "$answer" ]; } || { ok=1 why="$why no answer;"; }
      if [ "$n" != none ]; then
        [ "$out" -gt 0 ] || { ok=1 why="$why answer not sent over ESP;"; }
      fi
      ;;
    drop)
      d1=$(dropped)
      facts="$facts dropped+=$((d1 - DROPPED))"
      { [ $rc -ne 0 ] && [ -z "$answer" ]; } || { ok=1 why="$why got through;"; }
      [ "$d1" -gt "$DROPPED" ] || { ok=1 why="$why reyes drop counter did not move;"; }
      DROPPED=$d1
      ;;
  esac
  check "$name" $ok "${why:+FAILED:$why }$facts"
}

DROPPED=$(dropped)
flow esp_allowed_tcp_v4 allow 1 tcp 4 "$LB4" "$WEB4" 443
flow esp_allowed_tcp_v6 allow 3 tcp 6 "$LB6" "$WEB6" 443
flow esp_allowed_icmp_v4 allow 1 ping_from 4 "$LB4" "$WEB4"
flow esp_allowed_icmp_v6 allow 3 ping_from 6 "$LB6" "$WEB6"
flow plain_untouched_tcp_v4 allow none tcp 4 "$PLAIN4" "$WEB4" 443
flow plain_untouched_tcp_v6 allow none tcp 6 "$PLAIN6" "$WEB6" 443
flow plain_untouched_port_v4 allow none tcp 4 "$PLAIN4" "$WEB4" 444
# IKE inside ESP from a peer whose group may reach nothing on web: still accepted.
flow esp_ike_500_v4 allow 2 udp 4 "$OTHER4" "$WEB4" 500
flow esp_ike_4500_v4 allow 2 udp 4 "$OTHER4" "$WEB4" 4500
flow esp_ike_500_v6 allow 4 udp 6 "$OTHER6" "$WEB6" 500
flow esp_ike_4500_v6 allow 4 udp 6 "$OTHER6" "$WEB6" 4500
flow plain_ike_500_v4 allow none udp 4 "$PLAIN4" "$WEB4" 500
d=$(dropped)
[ "$d" -eq "$DROPPED" ]
check no_drops_while_allowed $? "reyes drop counter $DROPPED -> $d over the allowed and out-of-scope flows"
DROPPED=$d
flow esp_denied_group_v4 drop 2 tcp 4 "$OTHER4" "$WEB4" 443
flow esp_denied_group_v6 drop 4 tcp 6 "$OTHER6" "$WEB6" 443
flow esp_denied_port_v4 drop 1 tcp 4 "$LB4" "$WEB4" 444
flow esp_denied_port_v6 drop 3 tcp 6 "$LB6" "$WEB6" 444

# ESP itself: every SA into web carried packets (so the ESP packets passed the input hook,
# including those from `other`, whose inner traffic reyes dropped), and no packet failed
# integrity or replay checks.
esp_ok=0
facts=""
snap=$(sa_snapshot)
for n in 1 2 3 4; do
  v=$(sa_count "$snap" "$(spi_in $n)")
  facts="$facts sa$n.in=${v:-?}"
  [ "${v:-0}" -gt 0 ] || esp_ok=1
done
stats=$(ip -n web -s xfrm state | grep -o 'replay-window [0-9]* replay [0-9]* failed [0-9]*' | sort | uniq -c | tr -s ' \n' ' ')
grep -qE 'replay [1-9]|failed [1-9]' <<<"$stats" && esp_ok=1
check esp_accepted $esp_ok "$facts stats=[$stats]"

# log_drop: the kernel log names the denied ESP flows, and nothing of plain's.
klog=$(dmesg 2>/dev/null)
printf '%s\n' "$klog" | grep 'reyes drop' | tail -n 20
grep -E 'reyes drop: .*SRC=10\.1\.0\.6 DST=10\.1\.0\.10 .*PROTO=TCP .*DPT=443 ' <<<"$klog" >/dev/null
check log_drop_v4 $? "$(grep -c 'reyes drop: .*SRC=10\.1\.0\.6 ' <<<"$klog") kernel log lines for other4 -> web4"
re6='SRC=fd00:(0001:0000:0000:0000:0000:0000:0006|1::6) DST=fd00:(0001:0000:0000:0000:0000:0000:0010|1::10) '
grep -E "reyes drop: .*$re6.*PROTO=TCP .*DPT=443 " <<<"$klog" >/dev/null
check log_drop_v6 $? "$(grep -cE "reyes drop: .*$re6" <<<"$klog") kernel log lines for other6 -> web6"
# log_accept: the accepted ESP flows are logged too (rate-limited like drops, by a rule of
# their own in front of the accepting one); plain's traffic is out of scope and never logged.
printf '%s\n' "$klog" | grep 'reyes accept' | tail -n 10
grep -E 'reyes accept [^:]*: .*SRC=10\.1\.0\.5 DST=10\.1\.0\.10 .*PROTO=TCP .*DPT=443 ' <<<"$klog" >/dev/null
check log_accept_v4 $? "$(grep -c 'reyes accept [^:]*: .*SRC=10\.1\.0\.5 ' <<<"$klog") kernel log lines for lb4 -> web4"
re6a='SRC=fd00:(0001:0000:0000:0000:0000:0000:0005|1::5) DST=fd00:(0001:0000:0000:0000:0000:0000:0010|1::10) '
grep -E "reyes accept [^:]*: .*$re6a.*PROTO=TCP .*DPT=443 " <<<"$klog" >/dev/null
check log_accept_v6 $? "$(grep -cE "reyes accept [^:]*: .*$re6a" <<<"$klog") kernel log lines for lb6 -> web6"
! grep -E 'reyes (drop|accept [^:]*): .*SRC=(10\.1\.0\.7|fd00:(0001:0000:0000:0000:0000:0000:0007|1::7)) ' <<<"$klog" >/dev/null
check log_no_plain $? "no kernel log line for plain's traffic"

# `reyes status` reports what the kernel counted.
st=$(reyes_web status --backend "$BACKEND" 2>&1)
printf '%s\n' "$st"
sd=$(sed -n 's/^dropped: \([0-9]*\) packets.*/\1/p' <<<"$st")
[ -n "$sd" ] && [ "$sd" -gt 0 ] && [ "$sd" -eq "$(dropped)" ]
check status_counts $? "reyes status: dropped ${sd:-?} packets; the counter itself: $(dropped)"

# --- gateway mode: the same document enforced on what a VPN gateway forwards --------------------
# shellcheck source=tests/ipsec/gateway-check.sh
. "$GATEWAY_CHECK"
finish
