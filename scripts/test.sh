#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and
# the whole test suite with cargo-nextest against a real dev cluster that
# this script starts (and stops) itself. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --cluster

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> building"
cargo build --workspace --locked
cargo nextest run --workspace --locked --no-run

# One dev cluster for the whole run, in a state directory of its own.
state_dir=$(mktemp -d /tmp/bosun-test.XXXXXX)
stop_cluster() {
  target/debug/bosun dev down --state-dir "$state_dir" >/dev/null 2>&1 || true
  rm -rf "$state_dir"
}
trap stop_cluster EXIT

echo "==> bosun dev up (state in $state_dir)"
target/debug/bosun dev up --detach --state-dir "$state_dir"

echo "==> cargo nextest run (against the dev cluster)"
BOSUN_KUBECONFIG="$state_dir/kubeconfig" \
  cargo nextest run --workspace --locked --no-fail-fast

echo "==> bosun dev down"
target/debug/bosun dev down --state-dir "$state_dir"

# Tests that start and stop clusters of their own need the host to themselves.
echo "==> cargo nextest run --run-ignored only (own clusters)"
cargo nextest run --workspace --locked --no-fail-fast --run-ignored only -E 'binary(lifecycle)'
