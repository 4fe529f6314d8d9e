#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and
# the whole test suite with cargo-nextest against a real dev cluster that
# this script starts (and stops) itself. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --cluster --tests

echo "==> cargo fmt --check"
cargo fmt --all -- --check

# Every build here carries the etcd operator's crash points (the failpoints
# feature), which the failpoint phase needs; one feature set for every step
# builds nothing twice. Release builds carry none.
features=(--features bosun/failpoints)

echo "==> cargo clippy -D warnings (with and without crash points)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings

echo "==> building"
cargo build --workspace --locked "${features[@]}"
cargo nextest run --workspace --locked "${features[@]}" --no-run

# One dev cluster per phase, each in a state directory of its own.
state_dirs=()
stop_clusters() {
  for dir in "${state_dirs[@]}"; do
    target/debug/bosun dev down --state-dir "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
  done
}
trap stop_clusters EXIT
new_state_dir() {
  local dir
  dir=$(mktemp -d /tmp/bosun-test.XXXXXX)
  state_dirs+=("$dir")
  state_dir=$dir
}

# Phase 1: everything but the phases below, against the installed operator.
new_state_dir
echo "==> bosun dev up (state in $state_dir)"
target/debug/bosun dev up --detach --state-dir "$state_dir"
echo "==> cargo nextest run (against the dev cluster)"
BOSUN_KUBECONFIG="$state_dir/kubeconfig" \
  cargo nextest run --workspace --locked "${features[@]}" --no-fail-fast
echo "==> bosun dev down"
target/debug/bosun dev down --state-dir "$state_dir"

# Phase 2: the failpoint matrix. Each (operation, crash point) pair runs its
# own operators on the host in a namespace of its own, so the cluster has
# no installed operator; the pairs mostly wait on etcd and the API server,
# so four run at once on two cores. The object store's restart test runs
# here too: no test of this phase uses the store.
new_state_dir
echo "==> bosun dev up --operator none (state in $state_dir)"
target/debug/bosun dev up --detach --operator none --state-dir "$state_dir"
echo "==> cargo nextest run --run-ignored only (failpoint matrix)"
BOSUN_KUBECONFIG="$state_dir/kubeconfig" \
  cargo nextest run --workspace --locked "${features[@]}" --no-fail-fast \
  --run-ignored only --test-threads 4 \
  -E 'binary(failpoints) | test(objects_survive_a_restart_of_the_stores_pod)'
echo "==> bosun dev down"
target/debug/bosun dev down --state-dir "$state_dir"

# Phase 3: tests that start and stop clusters of their own need the host to themselves.
echo "==> cargo nextest run --run-ignored only (own clusters)"
cargo nextest run --workspace --locked "${features[@]}" --no-fail-fast --run-ignored only -E 'binary(lifecycle)'
