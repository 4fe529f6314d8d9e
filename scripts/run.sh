#!/usr/bin/env bash
# The main job: builds everything and runs `bosun dev up`, a real
# single-node Kubernetes with bosun's CRDs installed, in the foreground
# until Ctrl-C. Another terminal: export KUBECONFIG=~/.bosun/dev/kubeconfig
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --cluster

echo "==> building bosun"
cargo build --locked -p bosun
exec target/debug/bosun dev up "$@"
