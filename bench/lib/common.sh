# shellcheck shell=bash
# Helpers shared by the control-plane and data-plane benchmarks. Sourced by bench/run inside the sandbox.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
loud() { printf '\n[bench] !!! %s\n\n' "$*" >&2; }
die() { loud "$*"; exit 1; }

# now_us VAR: store the wall clock in microseconds in VAR. $EPOCHREALTIME costs no fork, so the clock
# itself adds nothing measurable to the numbers.
now_us() { printf -v "$1" '%s' "${EPOCHREALTIME/./}"; }
# us_to_s MICROSECONDS: print seconds with 6 decimals.
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }

# Refuse to do anything destructive (flushing nft, deleting links) unless we are really in our own network and
# mount namespaces: PID namespace is shared with the host, so PID 1's namespaces are the host's.
assert_sandboxed() {
  [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] &&
    [ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
    die "refusing to run outside the sandbox (same network or mount namespace as PID 1)"
}

# sandbox_init: make this (fresh, private) namespace look like a small host: lo up, forwarding on, and an
# 'outside' namespace at 203.0.113.2 behind the uplink up0 (203.0.113.1), which is the default route.
# 'outside' stands for the internet: egress NAT checks and the NAT throughput test go there.
sandbox_init() {
  assert_sandboxed
  # A private tmpfs over all of /run: covers /run/netns, /run/cni, the xtables lock and any other state a peer
  # writes under /run, and hides the host's D-Bus socket (so netavark cannot talk to a host firewalld).
  mount -t tmpfs tmpfs /run
  mkdir -p /run/netns
  # /etc/netns is only read by `ip netns exec`; shadow it if the host has one, never create it on the host.
  if [ -d /etc/netns ]; then mount -t tmpfs tmpfs /etc/netns; fi
  ip link set lo up
  sysctl -qw net.ipv4.ip_forward=1
  ip netns add outside
  ip link add up0 type veth peer name eth0 netns outside
  ip addr add 203.0.113.1/24 dev up0
  ip link set up0 up
  ip -n outside addr add 203.0.113.2/24 dev eth0
  ip -n outside link set eth0 up
  ip -n outside link set lo up
  ip route add default via 203.0.113.2
  BASE_LINKS=$(link_count)
  BASE_NETNS=$(netns_list)
}

link_count() { ip -o link show | wc -l; }
# Names in /run/netns, one per line, sorted ('outside' included).
netns_list() { ls -1 /run/netns | sort; }
# Network namespaces other than our own 'outside'.
extra_netns() { netns_list | grep -vx outside || true; }
# Links in the sandbox's main namespace other than lo and up0.
extra_links() { ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -vxE 'lo|up0' || true; }

# wait_links_baseline TIMEOUT_S: return once the link count is back to the sandbox's baseline. Deleting a
# namespace returns before the kernel has destroyed its devices (cleanup_net runs asynchronously), so every
# method's teardown time is measured up to this point. Polls every 10 ms for the first second, then every
# 50 ms: listing 1000 links costs CPU that the kernel's cleanup would otherwise get, and 50 ms is noise on a
# teardown that takes that long. Returns 1 on timeout.
wait_links_baseline() {
  local start=${EPOCHREALTIME/./}
  local deadline=$((start + $1 * 1000000))
  while [ "$(link_count)" -ne "$BASE_LINKS" ]; do
    [ "${EPOCHREALTIME/./}" -lt "$deadline" ] || return 1
    if [ $((${EPOCHREALTIME/./} - start)) -lt 1000000 ]; then sleep 0.01; else sleep 0.05; fi
  done
}

# firewall_leftovers: the nft tables present in the sandbox namespace, on one line.
firewall_leftovers() { nft list tables 2>/dev/null | sed 's/^table //' | paste -sd, -; }

# reset_firewall: delete, one by one, the tables a method left in the sandbox (never the host's:
# assert_sandboxed) so that its leftover chains (netavark leaves empty NETAVARK_* chains behind) cannot slow
# down the next method. Every table here was made by a method under test in this sandbox.
reset_firewall() {
  assert_sandboxed
  local family name
  nft list tables 2>/dev/null | while read -r _ family name; do nft delete table "$family" "$name"; done
}

# check_clean: print what a teardown left behind (namespaces, links); prints nothing when the sandbox is clean.
check_clean() {
  local ns links
  ns=$(extra_netns | paste -sd' ' -)
  links=$(extra_links | paste -sd' ' -)
  [ -z "$ns" ] || printf 'namespaces left: %s; ' "$(abbrev "$ns")"
  [ -z "$links" ] || printf 'links left: %s; ' "$(abbrev "$links")"
  return 0
}
abbrev() { local s=$1; [ ${#s} -le 120 ] && printf '%s' "$s" || printf '%s... (%s in all)' "${s:0:120}" "$(wc -w <<<"$s")"; }

# force_clean: after a failed or dirty method, delete every namespace and link it left so that the next method
# starts from the same empty sandbox. Only ever used inside the sandbox.
force_clean() {
  assert_sandboxed
  local n l
  for n in $(extra_netns); do ip netns del "$n" 2>/dev/null || true; done
  for l in $(extra_links); do ip link del "$l" 2>/dev/null || true; done
  wait_links_baseline 120 || loud "force_clean: links still left: $(extra_links | paste -sd' ' -)"
  reset_firewall
}

# try_ping NS DEST: one echo request, retried twice (the first packet may wait for ARP / a port to come up).
try_ping() {
  local k
  for k in 1 2 3; do
    ip netns exec "$1" ping -c1 -W2 -q "$2" >/dev/null 2>&1 && return 0
  done
  return 1
}

# verify_containers N: print what is wrong with the N containers (nothing if all is well): the namespace count
# must be N, there must be N host-side veths (plus up0), and the first and last container must reach the gateway
# 10.200.0.1 and, through egress NAT, the 'outside' namespace 203.0.113.2.
verify_containers() {
  local n=$1 got ns dest
  got=$(extra_netns | wc -l)
  [ "$got" -eq "$n" ] || printf '%s namespaces, expected %s; ' "$got" "$n"
  got=$(($(ip -o link show type veth | wc -l) - 1))
  [ "$got" -eq "$n" ] || printf '%s host veths, expected %s; ' "$got" "$n"
  for ns in "bench-c-1" "bench-c-$n"; do
    if [ ! -e "/run/netns/$ns" ]; then printf '%s missing; ' "$ns"; continue; fi
    for dest in 10.200.0.1 203.0.113.2; do
      try_ping "$ns" "$dest" || printf '%s cannot reach %s; ' "$ns" "$dest"
    done
  done
}

# container_ip NS: the IPv4 address of eth0 in namespace NS.
container_ip() { ip -n "$1" -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}'; }

# reap_strays: processes left running in the sandbox's network namespaces (e.g. by a tool under test, or an
# iperf3 we failed to end) would outlive the sandbox. Report them loudly and end them by PID.
reap_strays() {
  local -A ours=()
  local f p pid
  ours[$(readlink /proc/self/ns/net)]=1
  for f in /run/netns/*; do [ -e "$f" ] && ours["net:[$(stat -L -c %i "$f")]"]=1; done
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ -n "${ours[$(readlink "$p/ns/net" 2>/dev/null || echo none)]:-}" ] || continue
    # Our own shells (bench/run and its subshells) and the short commands of this loop are expected.
    case "$(cat "$p/comm" 2>/dev/null)" in bash | run | readlink | cat | stat | sleep | "") continue ;; esac
    loud "stray process $pid ($(cat "$p/comm" 2>/dev/null)) in the sandbox: killing it by PID"
    kill "$pid" 2>/dev/null || true
  done
}
