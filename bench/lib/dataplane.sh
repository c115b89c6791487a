# shellcheck shell=bash
# Data plane: TCP throughput with iperf3 over the paths a container's packets can take. Each path is built,
# measured with 1 and 2 parallel streams, and torn down. Results go to $WORK/dataplane.tsv as
#   path <TAB> streams <TAB> bits_per_second <TAB> status <TAB> note
# bits_per_second is iperf3's end.sum_received.bits_per_second (what the receiver got).

DP_TSV=

# iperf_pair SERVER_NS SERVER_ADDR CLIENT_NS STREAMS: run one iperf3 test, print received bit/s. The server
# (-1: exits after one test) is remembered by PID and ended by PID if it outlives the test.
iperf_pair() {
  local sns=$1 addr=$2 cns=$3 streams=$4 spid json k rc=0
  ip netns exec "$sns" iperf3 -s -1 -B "$addr" >"$WORK/iperf-server.log" 2>&1 &
  spid=$!
  # Runs in a $(...) subshell: leave the PID in a file so that bench/run's exit trap can end a server that an
  # interruption left behind.
  echo "$spid" >"$WORK/iperf-server.pid"
  # Wait until the server listens (ip netns exec execs iperf3, so $! is iperf3 itself).
  for ((k = 0; k < 100; k++)); do
    [ -n "$(ip netns exec "$sns" ss -Hltn "sport = :5201")" ] && break
    sleep 0.05
  done
  json=$(ip netns exec "$cns" iperf3 -c "$addr" -t "$DP_SECONDS" -P "$streams" -J 2>&1) || rc=$?
  # The server exits by itself after the test; give it a moment, then end it by PID.
  for ((k = 0; k < 40; k++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.05; done
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  rm -f "$WORK/iperf-server.pid"
  python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
except ValueError as e:
    sys.exit("iperf3 printed no JSON")
if "error" in d:
    sys.exit("iperf3: " + d["error"])
print(int(d["end"]["sum_received"]["bits_per_second"]))' <<<"$json" || return 1
  return "$rc"
}

# measure PATH SERVER_NS SERVER_ADDR CLIENT_NS: both stream counts, one TSV line each.
measure() {
  local path=$1 streams bps err
  for streams in 1 2; do
    if bps=$(iperf_pair "$2" "$3" "$4" "$streams" 2>"$WORK/iperf-err.log"); then
      printf '%s\t%s\t%s\tok\t\n' "$path" "$streams" "$bps" >>"$DP_TSV"
      log "  $path -P $streams: $(awk -v b="$bps" 'BEGIN{printf "%.2f Gbit/s", b/1e9}')"
    else
      err=$(tr '\n\t' '  ' <"$WORK/iperf-err.log" | cut -c1-150)
      printf '%s\t%s\t\tinvalid\t%s\n' "$path" "$streams" "${err:-iperf3 failed}" >>"$DP_TSV"
      loud "$path -P $streams failed: $err"
    fi
  done
}
skip_path() { printf '%s\t-\t\tskipped\t%s\n' "$1" "$2" >>"$DP_TSV"; }

# Two namespaces dp-a and dp-b, for the hand-built paths.
dp_ns_pair() { ip netns add dp-a && ip netns add dp-b && ip -n dp-a link set lo up && ip -n dp-b link set lo up; }
dp_clean() {
  ip netns del dp-a 2>/dev/null || true
  ip netns del dp-b 2>/dev/null || true
  ip link del br-dp 2>/dev/null || true
  nft delete table ip dp_nat 2>/dev/null || true
  wait_links_baseline 60 || die "data plane: links left behind: $(extra_links | paste -sd' ' -)"
}

run_dataplane() {
  DP_TSV=$1
  : >"$DP_TSV"
  log "data plane: iperf3 TCP, -t $DP_SECONDS, 1 and 2 streams"

  # Loopback inside one namespace: no device between the two ends at all.
  ip netns add dp-a && ip -n dp-a link set lo up
  measure loopback dp-a 127.0.0.1 dp-a
  dp_clean

  # A veth pair straight between two namespaces: the cheapest path between two network namespaces.
  dp_ns_pair
  ip -n dp-a link add eth0 type veth peer name eth0 netns dp-b
  ip -n dp-a addr add 10.201.0.1/24 dev eth0 && ip -n dp-a link set eth0 up
  ip -n dp-b addr add 10.201.0.2/24 dev eth0 && ip -n dp-b link set eth0 up
  measure veth dp-a 10.201.0.1 dp-b
  dp_clean

  # Two namespaces on a hand-built bridge: what any bridge network can get at best; the reference for ratios.
  # Then the same bridge with one masquerade rule, client in dp-b, server in 'outside': hand-built egress NAT.
  dp_ns_pair
  ip link add br-dp type bridge && ip addr add 10.202.0.1/24 dev br-dp && ip link set br-dp up
  local x
  for x in a b; do
    ip link add "dp-$x" type veth peer name eth0 netns "dp-$x"
    ip link set "dp-$x" master br-dp && ip link set "dp-$x" up
    ip -n "dp-$x" link set eth0 up
  done
  ip -n dp-a addr add 10.202.0.2/24 dev eth0 && ip -n dp-b addr add 10.202.0.3/24 dev eth0
  ip -n dp-a route add default via 10.202.0.1 && ip -n dp-b route add default via 10.202.0.1
  measure bridge dp-a 10.202.0.2 dp-b
  nft -f - <<'NFT'
table ip dp_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.202.0.0/24 oifname != "br-dp" masquerade
  }
}
NFT
  measure bridge+nat outside 203.0.113.2 dp-b
  dp_clean

  # plumb: two replicas on its bridge network, c-1 serves, c-2 is the client; then c-2 to 'outside' via NAT.
  local why
  if why=$(m_plumb_available); then
    local stack ip1
    stack=$(plumb_stack 2)
    rm -rf "$WORK/plumb/state" && mkdir -p "$WORK/plumb/state"
    if PLUMB_STATE_DIR="$WORK/plumb/state" timeout 300 "$PLUMB" up -f "$stack" >"$WORK/plumb-dp.log" 2>&1 &&
      ip1=$(container_ip bench-c-1) && [ -n "$ip1" ]; then
      measure plumb bench-c-1 "$ip1" bench-c-2
      measure plumb+nat outside 203.0.113.2 bench-c-2
    else
      skip_path plumb "plumb up failed: $(tail -c 150 "$WORK/plumb-dp.log" | tr '\n\t' '  ')"
      loud "data plane: plumb up failed, see $WORK/plumb-dp.log"
    fi
    PLUMB_STATE_DIR="$WORK/plumb/state" timeout 300 "$PLUMB" down -f "$stack" >>"$WORK/plumb-dp.log" 2>&1 ||
      loud "data plane: plumb down failed, see $WORK/plumb-dp.log"
    wait_links_baseline 60 || loud "data plane: plumb down left links: $(extra_links | paste -sd' ' -)"
    force_clean
  else
    skip_path plumb "$why"
    skip_path plumb+nat "$why"
  fi
  reset_firewall
}
