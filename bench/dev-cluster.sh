#!/usr/bin/env bash
# Benchmarks of `bosun dev` (tools and images already built):
#   1. `bosun dev up --detach` to `ready`, on a kept state dir (warm) and --fresh
#   2. `kubectl apply` of a one-container etcd pod to Ready
#   3. memory of the idle cluster: components' RSS + pods' cgroup RSS
# Usage: bench/dev-cluster.sh [runs]   (needs root and the host's ports free)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bosun=target/debug/bosun
kubectl=${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}/bin/kubectl
cargo build -q --locked -p bosun
state=$(mktemp -d /tmp/bosun-bench.XXXXXX)
trap '$bosun dev down --state-dir "$state" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT
export KUBECONFIG=$state/kubeconfig

now() { date +%s.%N; }
secs() { echo "$1 $2" | awk '{printf "%.2f", $2 - $1}'; }

up() {
  local t0; t0=$(now)
  $bosun dev up --detach --state-dir "$state" "$@" >/dev/null
  secs "$t0" "$(now)"
}

# First start makes certificates, data and imports images; not measured.
$bosun dev up --detach --fresh --state-dir "$state" >/dev/null
$bosun dev down --state-dir "$state" >/dev/null

fresh=(); warm=(); pod=()
for i in $(seq "$runs"); do
  fresh+=("$(up --fresh)")
  $bosun dev down --state-dir "$state" >/dev/null
  warm+=("$(up)")
  cat <<YAML > "$state/pod.yaml"
apiVersion: v1
kind: Pod
metadata: {name: bench-etcd-$i, namespace: default}
spec:
  containers:
  - name: etcd
    image: gcr.io/etcd-development/etcd:v3.6.16
    imagePullPolicy: IfNotPresent
    command: [etcd, --listen-client-urls=http://0.0.0.0:2379, --advertise-client-urls=http://127.0.0.1:2379, --data-dir=/tmp/etcd]
    readinessProbe:
      httpGet: {path: /health, port: 2379}
      periodSeconds: 1
YAML
  t0=$(now)
  $kubectl apply -f "$state/pod.yaml" >/dev/null
  $kubectl wait --for=condition=Ready pod/bench-etcd-$i --timeout=120s >/dev/null
  pod+=("$(secs "$t0" "$(now)")")
  if [ "$i" -lt "$runs" ]; then $bosun dev down --state-dir "$state" >/dev/null; fi
done

sleep 5  # let the last pod settle before reading memory (not a test: a reading)
components_kib=0
for pid in $(grep -l "$state/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  components_kib=$((components_kib + ${rss:-0}))
done
pods_bytes=$(awk '/^total_rss / {print $2}' /sys/fs/cgroup/memory/bosun/memory.stat 2>/dev/null || echo 0)
total_mib=$(( (components_kib * 1024 + pods_bytes) / 1048576 ))

echo "bosun dev up to ready, kept state (s):  ${warm[*]}"
echo "bosun dev up --fresh to ready (s):      ${fresh[*]}"
echo "etcd pod apply to Ready (s):            ${pod[*]}"
echo "idle cluster memory: components $((components_kib / 1024)) MiB + pods $((pods_bytes / 1048576)) MiB = ${total_mib} MiB"
