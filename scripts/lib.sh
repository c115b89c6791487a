# Sourced by scripts/demo, scripts/test and .ci: the Debian packages plumb needs, in one place,
# and an install that fails within a minute when the package registry cannot be reached.
# A fresh Debian 12 (debootstrap --variant=minbase) has none of them; .ci/run proves each list
# is complete by running the scripts in such a root.

# Building plumb: a C compiler and linker (rustup brings none: "linker `cc` not found"),
# libpcap for the pcap crate, protoc and the well-known .proto files (descriptor.proto, only a
# Recommends of protobuf-compiler) for etcd-client's build script, CA certificates for crates.io.
BUILD_PACKAGES=(build-essential pkg-config libpcap-dev protobuf-compiler libprotobuf-dev ca-certificates)
# Running the demo shop app: the kernel tools plumb drives, then nginx, Flask and Redis.
DEMO_PACKAGES=(iproute2 nftables util-linux procps iputils-ping curl
  python3 python3-flask python3-redis nginx-light redis-server redis-tools)
# The test suite, beyond the demo's: dig, reading pcapng captures, graphviz for `plumb graph`,
# promtool for the metrics, a real etcd and etcdctl for the cluster, strace, Node.js and npm
# for Mermaid's own parser, Debian's CNI plugins (portmap after plumb) and the iptables they use,
# podman (its CNI backend driving plumb as a plugin; image services), chromium with its
# WebDriver and Selenium (a real browser on `plumb ui`).
TEST_PACKAGES=(bind9-dnsutils tshark graphviz prometheus etcd-server etcd-client strace nodejs npm ethtool
  containernetworking-plugins iptables podman runc catatonit debootstrap fuse-overlayfs
  chromium chromium-driver python3-selenium)
# Image services (docs/oci.md): podman runs them with runc (podman's first choice, crun, refuses
# hybrid cgroups) and catatonit as the containers' init (--init), fuse-overlayfs where podman's
# store is itself on overlayfs (CI's fresh root); debootstrap makes the base
# image's root (scripts/oci-base) with these packages in it, as no registry is needed then.
OCI_BASE_PACKAGES=(nginx-light python3 python3-flask python3-redis redis-server redis-tools curl)
# The benchmarks' peers and load generators (bench/; CI runs them in --quick mode).
BENCH_PACKAGES=(netavark containernetworking-plugins iperf3 wrk dnsperf aardvark-dns haproxy)

lib_say() { printf '%s: %s\n' "$LIB_WHO" "$*"; }
# The first line names the problem, the others (indented) say what to do.
lib_fail() { printf '%s: %s\n' "$LIB_WHO" "$1" >&2; shift; printf '  %s\n' "$@" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || { echo "$LIB_WHO: run as root (plumb creates namespaces, links and nft rules)" >&2; exit 2; }
}

require_cargo() {
  command -v cargo >/dev/null ||
    lib_fail "cargo is not installed; plumb is built with it." \
             "Install a current stable Rust with rustup (https://rustup.rs), then run $LIB_WHO again."
}

# install_packages PKG...: installs those not installed yet, without recommends. An
# unreachable registry fails in seconds, not after apt's default timeouts and retries (minutes
# of silence, then only a warning and stale lists): short timeouts, no retries, one DNS
# attempt (RES_OPTIONS, for apt only), and any source not fetched is an error.
install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  local apt=(env DEBIAN_FRONTEND=noninteractive RES_OPTIONS=attempts:1 apt-get)
  local quick=(-o Acquire::http::Timeout=10 -o Acquire::https::Timeout=10 -o Acquire::Retries=0)
  lib_say "packages to install: ${missing[*]}"
  lib_say "updating the package lists (apt-get update; gives up within a minute if the registry cannot be reached)"
  local log errors hosts
  if ! log=$(with_heartbeat "${apt[@]}" update -q "${quick[@]}" -o APT::Update::Error-Mode=any); then
    errors=$(printf '%s\n' "$log" | grep -E '^E: ' | grep -v 'Some index files failed' | sort -u | head -5)
    hosts=$(printf '%s\n' "$errors" | grep -oE '[a-z]+://[^/ ]+' | sort -u | tr '\n' ' ')
    printf '%s\n' "${errors:-$log}" >&2
    lib_fail "cannot reach the package registry ${hosts:+(${hosts% })}: apt-get update failed (above)." \
             "Check this machine's network, DNS and proxy (apt's Acquire::http::Proxy), then run $LIB_WHO again;" \
             "or install these packages some other way first: ${missing[*]}"
  fi
  # plumb runs nginx, Redis and etcd inside its containers and sandboxes: keep the packages'
  # system services from starting. Removed again however this ends (an interrupted install
  # must not leave it behind).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  lib_say "installing ${#missing[@]} package(s)"
  "${apt[@]}" install -y -q --no-install-recommends "${quick[@]}" "${missing[@]}" ||
    lib_fail "apt-get install failed (see above); run $LIB_WHO again once it is fixed."
  if [ "$made_policy" = 1 ]; then rm -f "$policy"; trap - EXIT; fi
}

# fetch_crates: downloads the crates for this machine's target only (not Windows' or macOS'),
# with short timeouts, so an unreachable crates.io fails in seconds and a machine with every
# Linux crate cached builds offline.
fetch_crates() {
  local host
  host=$(rustc -vV | sed -n 's/^host: //p')
  lib_say "fetching the Rust crates plumb uses for $host (if not already here)"
  with_heartbeat env CARGO_HTTP_TIMEOUT=15 CARGO_NET_RETRY=1 cargo fetch --target "$host" ||
    lib_fail "cannot download the Rust crates plumb needs from crates.io." \
             "Check this machine's network and proxy (https_proxy, or cargo's http.proxy), then run $LIB_WHO again."
}

# with_heartbeat CMD...: runs CMD (a build, a download), passing its output (and errors) on to
# stdout, and says on stderr that it is still at work whenever it has been silent for 10 s
# (cargo prints nothing while one big crate compiles; `$(with_heartbeat ...)` captures only
# the command's output).
with_heartbeat() {
  local start=$SECONDS line rc
  "$@" 2>&1 | while :; do
    if IFS= read -r -t 10 line; then
      printf '%s\n' "$line"
    else
      rc=$?
      [ -n "$line" ] && printf '%s\n' "$line"
      [ "$rc" -gt 128 ] || break
      lib_say "still at work ($((SECONDS - start)) s): $*" >&2
    fi
  done
  return "${PIPESTATUS[0]}"
}
