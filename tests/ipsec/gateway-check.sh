# Sourced by guest-check.sh after the host checks, in the same guest: `follower.mode: gateway`
# on real ESP. Uses guest-check.sh's check/emit/must/log, sa_count/sa_total, tcp-free probes of
# its own and $GATEWAY_CONFIG (written by run-guest.sh: the same signed document, the gateway's
# follower settings).
#
# Three more network namespaces:
#   gpeer  192.0.2.2 2001:db8::2 (outer)   the remote site: rlb 10.9.0.5, rother 10.9.0.6,
#                                           rplain 10.9.0.7 (and fd00:9::5/6/7) on its loopback
#   gw     192.0.2.1 2001:db8::1 (outer)   the VPN gateway: forwards; reyes applies here
#          10.1.0.1 fd00:1::1 (inner)
#   srv    10.1.0.10 fd00:1::10            web, behind the gateway
# ESP tunnel-mode SAs gpeer<->gw carry rlb's and rother's traffic (IPv4 in IPv4, IPv6 in IPv6);
# rplain's goes in plain. The gateway's own addresses are in no group: it judges only what it
# forwards (and IKE/ESP to itself is accepted as on hosts). The gateway enforces egress too:
# what srv sends into a tunnel is judged by sg-web's egress rules (tcp/8443 to sg-lb only).

# shellcheck shell=bash
# shellcheck disable=SC2317 # the probe functions are called through gflow "$@"
: "${GATEWAY_CONFIG:?}" "${GATEWAY_CONFIG_2:?}"

GW_OUT4=192.0.2.1 GP_OUT4=192.0.2.2 GW_OUT6=2001:db8::1 GP_OUT6=2001:db8::2
GW_IN4=10.1.0.1 GW_IN6=fd00:1::1
SRV4=10.1.0.10 SRV6=fd00:1::10
RLB4=10.9.0.5 ROTHER4=10.9.0.6 RPLAIN4=10.9.0.7
RLB6=fd00:9::5 ROTHER6=fd00:9::6 RPLAIN6=fd00:9::7
GW0_MAC=02:00:00:00:01:01 GP0_MAC=02:00:00:00:01:02 GW1_MAC=02:00:00:00:01:11 S0_MAC=02:00:00:00:01:12

reyes_gw() { ip netns exec gw "$REYES_BIN" --config "$GATEWAY_CONFIG" "$@"; }

# --- the gateway applies first (nothing forwarded yet) --------------------------------------
must ip netns add gw
out=$(reyes_gw follower --once --backend "$BACKEND" 2>&1)
rc=$?
printf '%s\n' "$out"
check gw_apply $rc "gateway follower --once --backend $BACKEND exited $rc: ${out//$'\n'/ | }"
[ $rc -eq 0 ] || return 0

# --- network ----------------------------------------------------------------------------------
GW_IPB=/run/tmp/gw.ip GP_IPB=/run/tmp/gpeer.ip SRV_IPB=/run/tmp/srv.ip
{
  echo "link set lo up"
  echo "link add gw0 address $GW0_MAC type veth peer name gp0 address $GP0_MAC netns gpeer"
  echo "link add gw1 address $GW1_MAC type veth peer name s0 address $S0_MAC netns srv"
  echo "addr add $GW_OUT4/24 dev gw0"
  echo "addr add $GW_OUT6/64 dev gw0 nodad"
  echo "addr add $GW_IN4/24 dev gw1"
  echo "addr add $GW_IN6/64 dev gw1 nodad"
  echo "link set gw0 up"
  echo "link set gw1 up"
  echo "route add 10.9.0.0/24 via $GP_OUT4"
  echo "route add fd00:9::/64 via $GP_OUT6"
  for a in $GP_OUT4 $GP_OUT6; do echo "neigh replace $a lladdr $GP0_MAC dev gw0 nud permanent"; done
  for a in $SRV4 $SRV6; do echo "neigh replace $a lladdr $S0_MAC dev gw1 nud permanent"; done
} >"$GW_IPB"
{
  echo "link set lo up"
  for a in $RLB4 $ROTHER4 $RPLAIN4; do echo "addr add $a/32 dev lo"; done
  for a in $RLB6 $ROTHER6 $RPLAIN6; do echo "addr add $a/128 dev lo nodad"; done
  echo "addr add $GP_OUT4/24 dev gp0"
  echo "addr add $GP_OUT6/64 dev gp0 nodad"
  echo "link set gp0 up"
  echo "route add 10.1.0.0/16 via $GW_OUT4"
  echo "route add fd00:1::/56 via $GW_OUT6"
  for a in $GW_OUT4 $GW_OUT6; do echo "neigh replace $a lladdr $GW0_MAC dev gp0 nud permanent"; done
} >"$GP_IPB"
{
  echo "link set lo up"
  echo "addr add $SRV4/24 dev s0"
  echo "addr add $SRV6/64 dev s0 nodad"
  echo "link set s0 up"
  echo "route add default via $GW_IN4"
  echo "route add default via $GW_IN6"
  for a in $GW_IN4 $GW_IN6; do echo "neigh replace $a lladdr $GW1_MAC dev s0 nud permanent"; done
} >"$SRV_IPB"

# tunnel REMOTE OUTER_GP OUTER_GW VPC N: tunnel-mode SAs gpeer->gw (spi 0x300N) and gw->gpeer
# (spi 0x400N) for the remote host REMOTE, and the policies that require them in both, the
# gateway's forward policy included (without it the kernel drops what it decrypted).
gspi_in() { printf '0x%08x' $((0x3000 + $1)); }
gspi_out() { printf '0x%08x' $((0x4000 + $1)); }
tunnel() {
  local r=$1 gp=$2 gw=$3 vpc=$4 n=$5 plen f si so
  case $r in *:*) plen=128 ;; *) plen=32 ;; esac
  si=$(gspi_in "$n")
  so=$(gspi_out "$n")
  for f in "$GW_IPB" "$GP_IPB"; do
    {
      echo "xfrm state add src $gp dst $gw proto esp spi $si reqid $((100 + n)) mode tunnel aead rfc4106(gcm(aes)) $(key $((0x3000 + n))) 128"
      echo "xfrm state add src $gw dst $gp proto esp spi $so reqid $((100 + n)) mode tunnel aead rfc4106(gcm(aes)) $(key $((0x4000 + n))) 128"
    } >>"$f"
  done
  {
    echo "xfrm policy add src $r/$plen dst $vpc dir out tmpl src $gp dst $gw proto esp reqid $((100 + n)) mode tunnel"
    echo "xfrm policy add src $vpc dst $r/$plen dir in tmpl src $gw dst $gp proto esp reqid $((100 + n)) mode tunnel"
  } >>"$GP_IPB"
  {
    echo "xfrm policy add src $r/$plen dst $vpc dir in tmpl src $gp dst $gw proto esp reqid $((100 + n)) mode tunnel"
    echo "xfrm policy add src $r/$plen dst $vpc dir fwd tmpl src $gp dst $gw proto esp reqid $((100 + n)) mode tunnel"
    echo "xfrm policy add src $vpc dst $r/$plen dir out tmpl src $gw dst $gp proto esp reqid $((100 + n)) mode tunnel"
  } >>"$GW_IPB"
}
tunnel "$RLB4" "$GP_OUT4" "$GW_OUT4" 10.1.0.0/16 1
tunnel "$ROTHER4" "$GP_OUT4" "$GW_OUT4" 10.1.0.0/16 2
tunnel "$RLB6" "$GP_OUT6" "$GW_OUT6" fd00:1::/56 3
tunnel "$ROTHER6" "$GP_OUT6" "$GW_OUT6" fd00:1::/56 4

must ip netns add gpeer
must ip netns add srv
must ip -n gw -batch "$GW_IPB"
must ip -n gpeer -batch "$GP_IPB"
must ip -n srv -batch "$SRV_IPB"
must ip netns exec gw sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

# The gateway's SA packet counters, as sa_snapshot does for web.
gsa_snapshot() {
  ip -n gw -s xfrm state | awk '
    /proto esp spi/ { spi = $4; sub(/\(.*/, "", spi) }
    /lifetime current:/ { getline; if (match($0, /[0-9]+\(packets\)/)) print spi, substr($0, RSTART, RLENGTH - 9) }'
}
snap=$(gsa_snapshot)
if [ "$(wc -l <<<"$snap")" -ne 8 ] || [ -z "$(sa_count "$snap" "$(gspi_in 1)")" ]; then
  emit "error setup: cannot read the gateway's xfrm state counters: ${snap//$'\n'/ | }"
  return 0
fi

log "live ruleset in gw:"
if [ "$BACKEND" = nft ]; then
  ip netns exec gw nft list ruleset
else
  ip netns exec gw iptables-save
  ip netns exec gw ip6tables-save
fi

gdropped() {
  if [ "$BACKEND" = nft ]; then
    ip netns exec gw nft list counter inet reyes dropped 2>/dev/null | sed -n 's/.*packets \([0-9]*\) bytes.*/\1/p'
  else
    reyes_gw status --backend "$BACKEND" 2>/dev/null | sed -n 's/^dropped: \([0-9]*\) packets.*/\1/p'
  fi
}
[ -n "$(gdropped)" ] || {
  emit "error setup: cannot read reyes' drop counter in gw"
  return 0
}

# servers NS N TAG LISTEN ANSWER...: socat listeners in NS (one per TAG LISTEN ANSWER triple),
# then wait (bounded) until NS has N listening TCP sockets.
servers() {
  local ns=$1 want=$2 deadline=$((SECONDS + 30))
  shift 2
  # shellcheck disable=SC2016 # expanded by that shell
  ip netns exec "$ns" bash -c '
    ns=$1
    shift
    while [ $# -ge 3 ]; do
      socat -lf "/run/tmp/socat-$ns-$1.log" "$2" "$3" </dev/null >/dev/null 2>&1 &
      shift 3
    done' servers "$ns" "$@"
  until [ "$(ip netns exec "$ns" ss -Hltn | wc -l)" -eq "$want" ]; do
    [ $SECONDS -lt $deadline ] || {
      emit "error setup: socat listeners in $ns did not come up: $(ip netns exec "$ns" ss -Hltn | tr '\n' ' ')"
      return 1
    }
    sleep 0.05
  done
}

# --- servers in srv: TCP 443 (sg-lb may reach it) and 444 (nobody may) -----------------------
servers srv 5 \
  tcp4-443 "TCP4-LISTEN:443,bind=$SRV4,reuseaddr,fork" "SYSTEM:echo srv4-443" \
  tcp6-443 "TCP6-LISTEN:443,bind=[$SRV6],ipv6only=1,reuseaddr,fork" "SYSTEM:echo srv6-443" \
  tcp4-444 "TCP4-LISTEN:444,bind=$SRV4,reuseaddr,fork" "SYSTEM:echo srv4-444" \
  tcp6-444 "TCP6-LISTEN:444,bind=[$SRV6],ipv6only=1,reuseaddr,fork" "SYSTEM:echo srv6-444" \
  tcp4-8443 "TCP4-LISTEN:8443,bind=$SRV4,reuseaddr,fork" PIPE || return 0

# ntcp NS FAMILY SRC DST PORT: a TCP connection from SRC in NS, stdin sent, the answer printed.
ntcp() {
  local ns=$1 f=$2 src=$3 dst=$4 port=$5
  if [ "$f" = 6 ]; then src="[$src]" dst="[$dst]"; fi
  ip netns exec "$ns" timeout 30 socat -T 10 - "TCP$f:$dst:$port,bind=$src,connect-timeout=2" 2>/dev/null
}

# gtcp FAMILY SRC DST PORT: from the remote site, through the gateway.
gtcp() { ntcp gpeer "$@" </dev/null; }

# gflow NAME allow|drop SA(1-4 | none) PROBE...: as guest-check.sh's flow, on the gateway's
# SAs and drop counter. A tunnelled flow must have come in over its SA whatever the verdict
# (and, if allowed, its answer gone back over the reverse one); a plain flow moves no SA.
gflow() {
  local name=$1 expect=$2 n=$3
  shift 3
  local s0 s1 d1 answer rc ok=0 why="" in=0 out=0 all
  s0=$(gsa_snapshot)
  answer=$("$@")
  rc=$?
  s1=$(gsa_snapshot)
  all=$(($(sa_total "$s1") - $(sa_total "$s0")))
  local facts="probe=[$*] rc=$rc answer=${answer:-none}"
  if [ "$n" != none ]; then
    in=$(($(sa_count "$s1" "$(gspi_in "$n")") - $(sa_count "$s0" "$(gspi_in "$n")")))
    out=$(($(sa_count "$s1" "$(gspi_out "$n")") - $(sa_count "$s0" "$(gspi_out "$n")")))
    facts="$facts esp_in+=$in esp_out+=$out"
    [ "$in" -gt 0 ] || { ok=1 why="$why no ESP packets in;"; }
  else
    facts="$facts esp_all+=$all"
    [ "$all" -eq 0 ] || { ok=1 why="$why ESP counters moved;"; }
  fi
  d1=$(gdropped)
  facts="$facts dropped+=$((d1 - GDROPPED))"
  case $expect in
    allow)
      { [ $rc -eq 0 ] && [ -n "$answer" ]; } || { ok=1 why="$why no answer;"; }
      if [ "$n" != none ]; then
        [ "$out" -gt 0 ] || { ok=1 why="$why answer not sent over ESP;"; }
      fi
      [ "$d1" -eq "$GDROPPED" ] || { ok=1 why="$why reyes drop counter moved;"; }
      ;;
    drop)
      { [ $rc -ne 0 ] && [ -z "$answer" ]; } || { ok=1 why="$why got through;"; }
      [ "$d1" -gt "$GDROPPED" ] || { ok=1 why="$why reyes drop counter did not move;"; }
      ;;
  esac
  GDROPPED=$d1
  check "$name" $ok "${why:+FAILED:$why }$facts"
}

GDROPPED=$(gdropped)
gflow gw_esp_allowed_tcp_v4 allow 1 gtcp 4 "$RLB4" "$SRV4" 443
gflow gw_esp_allowed_tcp_v6 allow 3 gtcp 6 "$RLB6" "$SRV6" 443
gflow gw_plain_untouched_v4 allow none gtcp 4 "$RPLAIN4" "$SRV4" 444
gflow gw_plain_untouched_v6 allow none gtcp 6 "$RPLAIN6" "$SRV6" 444
gflow gw_esp_denied_group_v4 drop 2 gtcp 4 "$ROTHER4" "$SRV4" 443
gflow gw_esp_denied_group_v6 drop 4 gtcp 6 "$ROTHER6" "$SRV6" 443
gflow gw_esp_denied_port_v4 drop 1 gtcp 4 "$RLB4" "$SRV4" 444
gflow gw_esp_denied_port_v6 drop 3 gtcp 6 "$RLB6" "$SRV6" 444

# --- egress: srv opens connections into the tunnels ----------------------------------------
# Echo servers on tcp/8443 at rlb and rother (v4 and v6) in gpeer.
servers gpeer 4 \
  rlb4 "TCP4-LISTEN:8443,bind=$RLB4,reuseaddr,fork" PIPE \
  rlb6 "TCP6-LISTEN:8443,bind=[$RLB6],ipv6only=1,reuseaddr,fork" PIPE \
  rother4 "TCP4-LISTEN:8443,bind=$ROTHER4,reuseaddr,fork" PIPE \
  rother6 "TCP6-LISTEN:8443,bind=[$ROTHER6],ipv6only=1,reuseaddr,fork" PIPE || return 0

# otcp FAMILY SRC DST PORT: from srv, through the gateway into a tunnel; a line out, its echo.
otcp() { printf 'egress\n' | ntcp srv "$@"; }

# oflow NAME allow|drop SA PROBE...: an egress flow on tunnel SA (1-4). Allowed: the echo
# came back, srv's packets left over the SA's outbound ESP and the answer came in over its
# inbound one, no drop counted. Dropped: no answer, nothing left over the SA, a drop counted.
oflow() {
  local name=$1 expect=$2 n=$3
  shift 3
  local s0 s1 d1 answer rc ok=0 why="" in out
  s0=$(gsa_snapshot)
  answer=$("$@")
  rc=$?
  s1=$(gsa_snapshot)
  in=$(($(sa_count "$s1" "$(gspi_in "$n")") - $(sa_count "$s0" "$(gspi_in "$n")")))
  out=$(($(sa_count "$s1" "$(gspi_out "$n")") - $(sa_count "$s0" "$(gspi_out "$n")")))
  d1=$(gdropped)
  local facts="probe=[$*] rc=$rc answer=${answer:-none} esp_out+=$out esp_in+=$in dropped+=$((d1 - GDROPPED))"
  case $expect in
    allow)
      { [ $rc -eq 0 ] && [ "$answer" = egress ]; } || { ok=1 why="$why no echo;"; }
      [ "$out" -gt 0 ] || { ok=1 why="$why nothing left over ESP;"; }
      [ "$in" -gt 0 ] || { ok=1 why="$why no answer over ESP;"; }
      [ "$d1" -eq "$GDROPPED" ] || { ok=1 why="$why reyes drop counter moved;"; }
      ;;
    drop)
      { [ $rc -ne 0 ] && [ -z "$answer" ]; } || { ok=1 why="$why got through;"; }
      [ "$out" -eq 0 ] || { ok=1 why="$why left over ESP;"; }
      [ "$d1" -gt "$GDROPPED" ] || { ok=1 why="$why reyes drop counter did not move;"; }
      ;;
  esac
  GDROPPED=$d1
  check "$name" $ok "${why:+FAILED:$why }$facts"
}

oflow gw_egress_allowed_v4 allow 1 otcp 4 "$SRV4" "$RLB4" 8443
oflow gw_egress_allowed_v6 allow 3 otcp 6 "$SRV6" "$RLB6" 8443
oflow gw_egress_denied_v4 drop 2 otcp 4 "$SRV4" "$ROTHER4" 8443
oflow gw_egress_denied_v6 drop 4 otcp 6 "$SRV6" "$ROTHER6" 8443

# The denied flows are logged with the forwarding interfaces (IN=gw0 OUT=gw1): the forward hook
# judged them, not the gateway's input.
klog=$(dmesg 2>/dev/null)
grep -E 'reyes drop: .*IN=gw0 OUT=gw1 .*SRC=10\.9\.0\.6 DST=10\.1\.0\.10 .*PROTO=TCP .*DPT=443 ' <<<"$klog" >/dev/null
check gw_log_forward_drop $? "$(grep -c 'reyes drop: .*IN=gw0 OUT=gw1 ' <<<"$klog") kernel log lines for forwarded drops"

# `reyes status` on the gateway: live, and the forwarded drops counted.
st=$(reyes_gw status --backend "$BACKEND" 2>&1)
src=$?
printf '%s\n' "$st"
sd=$(sed -n 's/^dropped: \([0-9]*\) packets.*/\1/p' <<<"$st")
[ $src -eq 0 ] && [ -n "$sd" ] && [ "$sd" -gt 0 ] && [ "$sd" -eq "$(gdropped)" ]
check gw_status_counts $? "reyes status exited $src: dropped ${sd:-?} packets; the counter itself: $(gdropped)"

# --- revocation on the gateway ------------------------------------------------------------
# Two long-lived TCP connections to srv:8443 (an echo server), one from rlb through its tunnel
# and one from rplain in plain. The next policy (GATEWAY_CONFIG_2: remote-lb left sg-lb)
# denies rlb's: the apply must cut it (the forward chain labelled it, revocation re-judges it
# on the forward hook), while the plain one, out of scope and never labelled, lives on.
must ip netns exec gw sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
# conn_open FD_IN FD_OUT SRC [NETNS DST]: socat in NETNS (gpeer) between two FIFOs and a
# connection from SRC to DST (srv):8443.
conn_open() {
  local fin=$1 fout=$2 src=$3 ns=${4:-gpeer} dst=${5:-$SRV4} base=/run/tmp/conn-$3
  mkfifo "$base.in" "$base.out" || return 1
  ip netns exec "$ns" socat -T 120 - "TCP4:$dst:8443,bind=$src,connect-timeout=2" \
    <"$base.in" >"$base.out" 2>/dev/null &
  eval "exec $fin>\"$base.in\" $fout<\"$base.out\""
}
# conn_echo FD_IN FD_OUT WORD: the word comes back within 5 s.
conn_echo() {
  local line=""
  printf '%s\n' "$3" >&"$1" 2>/dev/null || return 1
  read -r -t 5 line <&"$2" || return 1
  [ "$line" = "$3" ]
}
# (Not through `must`: the descriptors must stay open in this shell.)
conn_open 5 6 "$RLB4" && conn_open 7 8 "$RPLAIN4" && conn_open 9 10 "$SRV4" srv "$RLB4" || {
  emit "error setup: cannot open the connections for the revocation check"
  return 0
}
conn_echo 5 6 one && conn_echo 7 8 one
check gw_revoke_open $? "both connections echo before the policy change"
# The egress one: srv -> rlb:8443, judged by sg-web's egress rules (sg-lb, which rlb leaves).
conn_echo 9 10 one
check gw_egress_revoke_open $? "srv's connection into rlb's tunnel echoes before the policy change"

out=$(ip netns exec gw "$REYES_BIN" --config "$GATEWAY_CONFIG_2" follower --once --backend "$BACKEND" 2>&1)
rc=$?
printf '%s\n' "$out"
# rlb's earlier probes (tcp/443, v4 and v6, in TIME_WAIT) are denied now too and may be cut
# with it; nothing of rplain's may be.
[ $rc -eq 0 ] && grep -q "revoking: .* connection=$RLB4 -> $SRV4 tcp/8443" <<<"$out" &&
  ! grep -q "revoking: .* connection=$RPLAIN4 " <<<"$out"
check gw_revoke_apply $? "the next policy applied (exit $rc): $(grep -o 'revoking: .*' <<<"$out" | tr '\n' ';') $(grep -o 'revocation: .*revoked=[0-9]*' <<<"$out")"
grep -q "revoking: .* connection=$SRV4 -> $RLB4 tcp/8443" <<<"$out"
check gw_egress_revoke_apply $? "srv's egress connection to rlb is among those revoked"
d0=$(gdropped)
# Cut means: no echo, and reyes' forward chain dropped what rlb sent on it.
echoed=no
conn_echo 5 6 two && echoed=yes
[ $echoed = no ] && [ "$(gdropped)" -gt "$d0" ]
check gw_revoke_cut $? "rlb's connection echoes after the apply: $echoed; reyes drops $d0 -> $(gdropped)"
conn_echo 7 8 two
check gw_revoke_plain_kept $? "the plain connection (out of scope) still echoes"
d0=$(gdropped)
echoed=no
conn_echo 9 10 two && echoed=yes
[ $echoed = no ] && [ "$(gdropped)" -gt "$d0" ]
check gw_egress_revoke_cut $? "srv's connection to rlb echoes after the apply: $echoed; reyes drops $d0 -> $(gdropped)"
exec 5>&- 6<&- 7>&- 8<&- 9>&- 10<&-
