#!/usr/bin/env bash
# The main job. Today it builds bosun and prints its CustomResourceDefinitions;
# with the dev-cluster issue it becomes `bosun dev up` with an example etcd
# cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "==> building bosun"
cargo build --release --locked -p bosun
echo "==> bosun crds"
target/release/bosun crds
