#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and the
# whole test suite with cargo-nextest. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo nextest run"
cargo nextest run --workspace --locked --no-fail-fast
