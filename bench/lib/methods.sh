# shellcheck shell=bash
# The five ways to bring up (and down) N bare containers on one bridge network with egress NAT. Each method M
# has m_M_available (prints why not and fails if it cannot run), m_M_setup N and m_M_teardown N. bench/run
# times setup and teardown, runs each in a `set -e` subshell (any failing command fails the step), checks
# the containers after setup and the sandbox after teardown.
#
# Every method produces the same result: namespaces /run/netns/bench-c-1..N, each with lo up and eth0 holding
# an address of 10.200.0.0/16 with a default route via 10.200.0.1 (the bridge), and masquerading of
# 10.200.0.0/16 towards the uplink.

SUBNET=10.200.0.0/16
GATEWAY=10.200.0.1
ALL_METHODS="plumb base ip batch netavark cni"

# addr_of I: the address of container I for the methods that assign addresses themselves: 10.200.0.2 upward.
addr_of() { local h=$(($1 + 1)); printf '10.200.%d.%d' $((h >> 8)) $((h & 255)); }

# The one masquerade rule of the hand-written methods (ip, batch), in one nft invocation.
nat_rule() {
  nft -f - <<NFT
table ip bench_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $SUBNET oifname != "br-bench" masquerade
  }
}
NFT
}

# --- 1. plumb ------------------------------------------------------------------------------------------------
# `plumb up -f STACK.toml` / `plumb down -f STACK.toml`; plumb waits itself until the kernel removed the links.
m_plumb_available() {
  [ -x "$PLUMB" ] || { echo "plumb binary not found at $PLUMB (build it with cargo build --release, or set PLUMB)"; return 1; }
}
plumb_stack() {
  local f="$WORK/plumb/stack-$1.toml"
  mkdir -p "$WORK/plumb"
  cat >"$f" <<TOML
name = "bench"
[networks.net]
subnet = "$SUBNET"
[services.c]
replicas = $1
TOML
  echo "$f"
}
m_plumb_setup() {
  local stack
  stack=$(plumb_stack "$1")
  # A fresh state directory per run, so that nothing remembered from an earlier run can shortcut this one.
  rm -rf "$WORK/plumb/state" && mkdir -p "$WORK/plumb/state"
  PLUMB_STATE_DIR="$WORK/plumb/state" timeout 900 "$PLUMB" up -f "$stack" >/dev/null
}
m_plumb_teardown() {
  PLUMB_STATE_DIR="$WORK/plumb/state" timeout 900 "$PLUMB" down -f "$WORK/plumb/stack-$1.toml" >/dev/null
}

# --- 1b. base: another build of plumb ($PLUMB_BASE, e.g. the previous revision), the same way -------------
# For "no regression" checks: both builds measured in one interleaved run.
m_base_available() {
  [ -n "${PLUMB_BASE:-}" ] && [ -x "$PLUMB_BASE" ] || { echo "set PLUMB_BASE to another plumb binary to compare with"; return 1; }
}
m_base_setup() { PLUMB="$PLUMB_BASE" m_plumb_setup "$@"; }
m_base_teardown() { PLUMB="$PLUMB_BASE" m_plumb_teardown "$@"; }

# --- 2. ip: one `ip` command per operation, as a shell script would do it ------------------------------------
m_ip_available() { command -v ip >/dev/null && command -v nft >/dev/null; }
m_ip_setup() {
  local n=$1 i ns
  ip link add br-bench type bridge
  ip addr add "$GATEWAY/16" dev br-bench
  ip link set br-bench up
  nat_rule
  for ((i = 1; i <= n; i++)); do
    ns=bench-c-$i
    ip netns add "$ns"
    ip link add "vb$i" type veth peer name eth0 netns "$ns"
    ip link set "vb$i" master br-bench
    ip link set "vb$i" up
    ip -n "$ns" addr add "$(addr_of "$i")/16" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$GATEWAY"
  done
}
# Host veth first (deleting it takes the peer with it, synchronously), then the namespace: in the other order
# the veth would vanish asynchronously under the script's feet and `ip link del` would race it.
m_ip_teardown() {
  local n=$1 i
  for ((i = 1; i <= n; i++)); do
    ip link del "vb$i"
    ip netns del "bench-c-$i"
  done
  ip link del br-bench
  nft delete table ip bench_nat
}

# --- 3. batch: the same commands through `ip -batch` ---------------------------------------------------------
# `ip -batch` accepts `netns add` and `netns del`, but it has no per-line `-n NS`: the global -n option applies
# to the whole batch. So: one batch for everything on the host side (bridge, namespaces, veths created straight
# into their namespace, enslaving), then one `ip -n bench-c-I -batch` per namespace for its address, links and
# route: N+1 ip processes in all, instead of 8N+3.
m_batch_available() { m_ip_available; }
m_batch_setup() {
  local n=$1 i dir="$WORK/batch"
  mkdir -p "$dir"
  {
    echo "link add br-bench type bridge"
    echo "addr add $GATEWAY/16 dev br-bench"
    echo "link set br-bench up"
    for ((i = 1; i <= n; i++)); do
      echo "netns add bench-c-$i"
      echo "link add vb$i type veth peer name eth0 netns bench-c-$i"
      echo "link set vb$i master br-bench"
      echo "link set vb$i up"
    done
  } >"$dir/host.batch"
  ip -batch "$dir/host.batch"
  nat_rule
  for ((i = 1; i <= n; i++)); do
    printf 'addr add %s/16 dev eth0\nlink set lo up\nlink set eth0 up\nroute add default via %s\n' \
      "$(addr_of "$i")" "$GATEWAY" >"$dir/ns.batch"
    ip -n "bench-c-$i" -batch "$dir/ns.batch"
  done
}
m_batch_teardown() {
  local n=$1 i dir="$WORK/batch"
  {
    for ((i = 1; i <= n; i++)); do
      echo "link del vb$i"
      echo "netns del bench-c-$i"
    done
    echo "link del br-bench"
  } >"$dir/down.batch"
  ip -batch "$dir/down.batch"
  nft delete table ip bench_nat
}

# --- 4. netavark (Debian's 1.4) ------------------------------------------------------------------------------
# As podman runs it: the runtime creates the namespace, then `netavark setup NSPATH` with the network options
# document (podman's JSON: the container's per-network options plus the network definition). The first setup
# creates the bridge nv-bench and the firewall rules; the last teardown removes them. netavark 1.4 has only the
# iptables and firewalld firewall drivers (nftables arrived in 1.10): iptables it is, which on Debian 12 is
# iptables-nft, so its rules land in nf_tables of the sandbox namespace. It sets lo up itself. DNS (aardvark)
# off. Addresses are static, given by the runtime, as podman does with its own IPAM.
NETAVARK=/usr/lib/podman/netavark
m_netavark_available() {
  [ -x "$NETAVARK" ] || { echo "$NETAVARK not found (package netavark)"; return 1; }
  command -v iptables >/dev/null || { echo "iptables not found (netavark 1.4's firewall driver needs package iptables)"; return 1; }
}
netavark_opts() {
  cat <<JSON
{"container_id": "$(printf '%064x' "$1")", "container_name": "c-$1",
 "networks": {"net": {"interface_name": "eth0", "static_ips": ["$(addr_of "$1")"]}},
 "network_info": {"net": {"name": "net", "id": "$(printf '%064x' 48879)", "driver": "bridge",
   "network_interface": "nv-bench", "internal": false, "ipv6_enabled": false, "dns_enabled": false,
   "subnets": [{"subnet": "$SUBNET", "gateway": "$GATEWAY"}]}}}
JSON
}
m_netavark_setup() {
  local n=$1 i dir="$WORK/netavark"
  rm -rf "$dir" && mkdir -p "$dir/config"
  for ((i = 1; i <= n; i++)); do
    ip netns add "bench-c-$i"
    netavark_opts "$i" >"$dir/opts-$i.json"
    NETAVARK_FW=iptables "$NETAVARK" --config "$dir/config" -f "$dir/opts-$i.json" setup "/run/netns/bench-c-$i" >/dev/null
  done
}
m_netavark_teardown() {
  local n=$1 i dir="$WORK/netavark"
  for ((i = 1; i <= n; i++)); do
    NETAVARK_FW=iptables "$NETAVARK" --config "$dir/config" -f "$dir/opts-$i.json" teardown "/run/netns/bench-c-$i"
    ip netns del "bench-c-$i"
  done
}

# --- 5. CNI reference plugins: bridge + host-local IPAM + ipMasq ---------------------------------------------
# As a CNI runtime does it: create the namespace, ADD the loopback plugin (lo up), ADD the bridge plugin with the
# network config on stdin. The bridge plugin creates cni-bench on first use and is the gateway (isGateway);
# host-local hands out addresses from 10.200.0.2 and keeps its leases in a temporary dataDir; ipMasq adds one
# iptables(-nft) chain and rule per container. Teardown: DEL on the bridge plugin (DEL on loopback is a no-op
# and skipped), delete the namespace. CNI plugins never delete the bridge: we do, as part of the teardown.
CNI_DIR=/usr/lib/cni
m_cni_available() {
  local p
  for p in bridge host-local loopback; do
    [ -x "$CNI_DIR/$p" ] || { echo "$CNI_DIR/$p not found (package containernetworking-plugins)"; return 1; }
  done
  command -v iptables >/dev/null || { echo "iptables not found (the bridge plugin's ipMasq needs package iptables)"; return 1; }
}
cni_conf() {
  cat <<JSON
{"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni-bench",
 "isGateway": true, "ipMasq": true,
 "ipam": {"type": "host-local", "dataDir": "$WORK/cni/ipam",
          "ranges": [[{"subnet": "$SUBNET", "rangeStart": "10.200.0.2", "gateway": "$GATEWAY"}]],
          "routes": [{"dst": "0.0.0.0/0"}]}}
JSON
}
m_cni_setup() {
  local n=$1 i dir="$WORK/cni"
  rm -rf "$dir" && mkdir -p "$dir"
  cni_conf >"$dir/bridge.json"
  echo '{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}' >"$dir/lo.json"
  for ((i = 1; i <= n; i++)); do
    ip netns add "bench-c-$i"
    CNI_COMMAND=ADD CNI_CONTAINERID="c-$i" CNI_NETNS="/run/netns/bench-c-$i" CNI_IFNAME=lo CNI_PATH="$CNI_DIR" \
      "$CNI_DIR/loopback" <"$dir/lo.json" >/dev/null
    CNI_COMMAND=ADD CNI_CONTAINERID="c-$i" CNI_NETNS="/run/netns/bench-c-$i" CNI_IFNAME=eth0 CNI_PATH="$CNI_DIR" \
      "$CNI_DIR/bridge" <"$dir/bridge.json" >/dev/null
  done
}
m_cni_teardown() {
  local n=$1 i dir="$WORK/cni"
  for ((i = 1; i <= n; i++)); do
    CNI_COMMAND=DEL CNI_CONTAINERID="c-$i" CNI_NETNS="/run/netns/bench-c-$i" CNI_IFNAME=eth0 CNI_PATH="$CNI_DIR" \
      "$CNI_DIR/bridge" <"$dir/bridge.json" >/dev/null
    ip netns del "bench-c-$i"
  done
  ip link del cni-bench
}
