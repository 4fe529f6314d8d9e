#!/usr/bin/env bash
# Benchmarks of the EtcdCluster controller on a dev cluster of its own:
#   1. kubectl apply to all members ready, for sizes 1, 3 and 5, and for
#      size 3 again with etcd's strict reconfiguration check off
#   2. a rolling upgrade 3.6 -> 3.7 of a size-3 cluster
#   3. the operator's RSS with N idle size-1 clusters (default 50)
# Usage: bench/etcd-operator.sh [clusters]   (root; the host's ports free)
# The operator is a release build (BOSUN_BENCH_PROFILE=dev for a debug one).
set -euo pipefail
cd "$(dirname "$0")/.."
clusters=${1:-50}
profile=${BOSUN_BENCH_PROFILE:-release}
case $profile in
  release) bosun=target/release/bosun ;;
  dev) bosun=target/debug/bosun ;;
  *) echo "BOSUN_BENCH_PROFILE must be release or dev" >&2; exit 2 ;;
esac
kubectl=${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}/bin/kubectl
cargo build -q --locked --profile "$profile" -p bosun
state=$(mktemp -d /tmp/bosun-bench.XXXXXX)
trap '$bosun dev down --state-dir "$state" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT
export KUBECONFIG=$state/kubeconfig
$bosun dev up --detach --fresh --state-dir "$state" >/dev/null

now() { date +%s.%N; }
secs() { echo "$1 $2" | awk '{printf "%.1f", $2 - $1}'; }
cluster() { # name size version [emptyDir|non-strict]
  local storage='{"size": "1Gi"}' options='{}'
  [ "${4:-}" = emptyDir ] && storage='{"size": "256Mi", "emptyDir": true}'
  [ "${4:-}" = non-strict ] && options='{"strict-reconfig-check": "false"}'
  echo "{\"apiVersion\":\"etcd.bosun.dev/v1alpha1\",\"kind\":\"EtcdCluster\",\"metadata\":{\"name\":\"$1\"},\"spec\":{\"size\":$2,\"version\":\"$3\",\"storage\":$storage,\"etcdOptions\":$options}}" | $kubectl apply -f - >/dev/null
}
wait_ready() { # name size
  $kubectl wait "etcd/$1" --for=jsonpath='{.status.readyMembers}'="$2" --timeout=600s >/dev/null
  $kubectl wait "etcd/$1" --for=jsonpath='{.status.phase}'=Running --timeout=600s >/dev/null
}

for size in 1 3 5; do
  t0=$(now); cluster "size-$size" "$size" 3.7.3; wait_ready "size-$size" "$size"
  echo "apply to $size ready members: $(secs "$t0" "$(now)") s"
  $kubectl delete etcd "size-$size" --wait=true >/dev/null
done
t0=$(now); cluster non-strict 3 3.7.3 non-strict; wait_ready non-strict 3
echo "apply to 3 ready members, strict-reconfig-check=false: $(secs "$t0" "$(now)") s"
$kubectl delete etcd non-strict --wait=true >/dev/null

cluster upgrade 3 3.6.16; wait_ready upgrade 3
t0=$(now)
$kubectl patch etcd upgrade --type merge -p '{"spec":{"version":"3.7.3"}}' >/dev/null
$kubectl wait etcd/upgrade --for=jsonpath='{.status.currentVersion}'=3.7.3 --timeout=600s >/dev/null
wait_ready upgrade 3
echo "upgrade 3.6.16 -> 3.7.3, size 3: $(secs "$t0" "$(now)") s"
$kubectl delete etcd upgrade --wait=true >/dev/null

# The leading replica of the operator `dev up` installed (the standby
# holds no informer caches, so it is not the one to measure).
. bench/operator-pid.sh
operator_rss() {
  local pid; pid=$(leading_operator_pid)
  awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"
}
echo "operator RSS with 0 clusters: $(operator_rss) MiB"
t0=$(now)
for i in $(seq "$clusters"); do cluster "idle-$i" 1 3.7.3 emptyDir; done
for i in $(seq "$clusters"); do wait_ready "idle-$i" 1; done
echo "$clusters size-1 clusters ready in $(secs "$t0" "$(now)") s; operator RSS: $(operator_rss) MiB"
