#!/usr/bin/env bash
# Backup and restore throughput of a large etcd database, bosun beside etcd's
# own tools on the same size-1 cluster in the same run:
#   1. etcdctl snapshot save to a local file
#   2. a one-shot EtcdBackup to a `file` store, with the operator's RSS
#      sampled every 0.2 s meanwhile
#   3. etcdutl snapshot restore of the etcdctl snapshot into a data dir
#   4. a new EtcdCluster bootstrapped from the EtcdBackup, to ready
# and a Markdown table of both sides. Filling the cluster is timed apart.
# Usage: [SIZE_MB=1024] [ETCD_VERSION=3.7.3] bench/backup-restore.sh
# As root, on the host of a running dev cluster (the one $KUBECONFIG names,
# default $HOME/.bosun/dev/kubeconfig) with the operator `dev up` installed:
# the operator writes the file store into the cluster's backups directory
# (<state dir>/data/backups, mounted into its pods) and the member pod
# reads it back from there. It starts and stops no cluster and leaves
# nothing behind but what it prints.
set -euo pipefail
size_mb=${SIZE_MB:-1024}
export KUBECONFIG=${KUBECONFIG:-$HOME/.bosun/dev/kubeconfig}
tools=${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}
kubectl=$tools/bin/kubectl
etcd_bin=$tools/bin
[ -n "${ETCD_VERSION:-}" ] && etcd_bin=$tools/etcd-$ETCD_VERSION
etcdctl=$etcd_bin/etcdctl
etcdutl=$etcd_bin/etcdutl
# The leading replica of the dev cluster's operator. Looked up again right
# before the backup, since leadership may move.
cd "$(dirname "$0")/.."
. bench/operator-pid.sh
operator_pid() { leading_operator_pid; }
operator=$(operator_pid) || true
[ -n "$operator" ] || { echo "no leading \`bosun operator\` runs on this host" >&2; exit 1; }

ns=bench-backup-$(printf '%04x%04x' $RANDOM $RANDOM)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bosun-bench-backup.XXXXXX")
sampler=
cleanup() {
  local status=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  if [ "$status" -ne 0 ]; then
    echo "failed; what $ns held:" >&2
    $kubectl -n "$ns" get etcd,etcdbackup,pods -o wide >&2 || true
    $kubectl -n "$ns" get etcd,etcdbackup \
      -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}: {.status.conditions}{"\n"}{end}' >&2 || true
  fi
  $kubectl delete namespace "$ns" --wait=true --timeout=300s >/dev/null 2>&1 || true
  rm -rf "$tmp" "$store"
}
store=$(dirname "$KUBECONFIG")/data/backups/$ns
trap cleanup EXIT

now() { date +%s.%N; }
calc() { awk "BEGIN {printf \"$1\", $2}"; } # format expression
mib() { calc %.1f "$1 / 1048576"; }
k() { $kubectl -n "$ns" "$@"; }
cluster() { # name [bootstrap JSON]
  local bootstrap=${2:+,\"bootstrap\":$2} version=${ETCD_VERSION:+,\"version\":\"$ETCD_VERSION\"}
  echo "{\"apiVersion\":\"etcd.bosun.dev/v1alpha1\",\"kind\":\"EtcdCluster\",\"metadata\":{\"name\":\"$1\"},\"spec\":{\"size\":1$version,\"storage\":{\"size\":\"4Gi\"},\"etcdOptions\":{\"quota-backend-bytes\":\"4294967296\"}$bootstrap}}" | k apply -f - >/dev/null
}
wait_ready() { # name
  k wait "etcd/$1" --for=jsonpath='{.status.readyMembers}'=1 --timeout=1800s >/dev/null
  k wait "etcd/$1" --for=jsonpath='{.status.phase}'=Running --timeout=1800s >/dev/null
}
endpoint() { # cluster name: its member's client URL, by pod IP
  echo "http://$(k get pod -l "app.kubernetes.io/instance=$1" -o jsonpath='{.items[0].status.podIP}'):2379"
}
# Waits, by a watch (no polling load on the 2 cores), until the phase of
# $1 matches the pattern $2; prints that phase.
wait_phase() { # resource pattern seconds
  local phase='' fd watcher
  exec {fd}< <(exec timeout "$3" "$kubectl" -n "$ns" get "$1" -w -o jsonpath='{.status.phase}{"\n"}')
  watcher=$!
  while read -r -u "$fd" phase; do [[ $phase =~ ^($2)$ ]] && break; done
  kill "$watcher" 2>/dev/null || true
  exec {fd}<&-
  echo "$phase"
}
rss_kib() { # pid
  local key value _
  while read -r key value _; do [ "$key" = VmRSS: ] && { echo "$value"; return; }; done <"/proc/$1/status"
}
# Writes the highest VmRSS of $1 (KiB) into $2 every 0.2 s until killed.
# VmHWM would be the process's lifetime peak, not this run's.
sample_rss() { # pid file
  local max=0 value
  while value=$(rss_kib "$1" 2>/dev/null) && [ -n "$value" ]; do
    [ "$value" -gt "$max" ] && { max=$value; echo "$max" >"$2"; }
    sleep 0.2
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system
utc_secs() { date -d "$1" +%s; }

$kubectl create namespace "$ns" >/dev/null
echo "namespace $ns; operator $(readlink "/proc/$operator/exe"); etcdctl $($etcdctl version | awk 'NR==1 {print $3}')"
cluster db
wait_ready db
ep=$(endpoint db)

# Fill: 1 MiB values (below etcd's 1.5 MiB request limit), 16 distinct
# random ones, written by 4 etcdctl processes at a time.
for i in $(seq 0 15); do head -c 1048576 /dev/urandom >"$tmp/value.$i"; done
t0=$(now)
seq 0 $((size_mb - 1)) | xargs -P 4 -I{} sh -c \
  "$etcdctl --endpoints=$ep put bench/{} <$tmp/value.\$(({} % 16)) >/dev/null"
fill=$(calc %.1f "$(now) - $t0")
db_bytes=$($etcdctl --endpoints="$ep" endpoint status -w json | sed -n 's/.*"dbSize":\([0-9]*\).*/\1/p')
echo "filled $size_mb x 1 MiB in $fill s; database $(mib "$db_bytes") MiB"

# 1. etcdctl snapshot save.
t0=$(now)
$etcdctl --endpoints="$ep" snapshot save "$tmp/etcdctl.db" >/dev/null 2>&1
save_s=$(calc %.2f "$(now) - $t0")
save_bytes=$(stat -c %s "$tmp/etcdctl.db")
echo "etcdctl snapshot save: $(mib "$save_bytes") MiB in $save_s s"

# 2. bosun: a one-shot EtcdBackup to a file store on this host.
operator=$(operator_pid)
rss_before=$(rss_kib "$operator")
echo "$rss_before" >"$tmp/rss.max"
sample_rss "$operator" "$tmp/rss.max" &
sampler=$!
cpu_before=$(cpu_ticks "$operator")
t0=$(now)
echo "{\"apiVersion\":\"etcd.bosun.dev/v1alpha1\",\"kind\":\"EtcdBackup\",\"metadata\":{\"name\":\"once\"},\"spec\":{\"clusterName\":\"db\",\"timeoutSeconds\":3600,\"storage\":{\"file\":{\"path\":\"$store\"}}}}" | k apply -f - >/dev/null
phase=$(wait_phase etcdbackup/once 'Succeeded|Failed' 3600)
backup_s=$(calc %.2f "$(now) - $t0")
cpu_s=$(calc %.1f "($(cpu_ticks "$operator") - $cpu_before) / $(getconf CLK_TCK)")
kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=
[ "$phase" = Succeeded ] || { echo "EtcdBackup ended in phase '$phase'" >&2; exit 1; }
[ "$(operator_pid)" = "$operator" ] || { echo "the operator (pid $operator) was restarted during the backup: its RSS says nothing; run again" >&2; exit 1; }
rss_max=$(cat "$tmp/rss.max")
rss_after=$(rss_kib "$operator")
read -r backup_bytes start completion < <(k get etcdbackup once \
  -o jsonpath='{.status.backups[0].sizeBytes} {.status.backups[0].startTime} {.status.backups[0].completionTime}{"\n"}')
record_s=$(($(utc_secs "$completion") - $(utc_secs "$start")))
echo "EtcdBackup: $(mib "$backup_bytes") MiB in $backup_s s (record: $record_s s); operator CPU $cpu_s s, RSS $((rss_before / 1024)) -> peak $((rss_max / 1024)) MiB"

# 3. etcdutl snapshot restore of etcdctl's snapshot.
t0=$(now)
$etcdutl snapshot restore "$tmp/etcdctl.db" --data-dir "$tmp/restored" >/dev/null 2>&1
restore_s=$(calc %.2f "$(now) - $t0")
echo "etcdutl snapshot restore: $restore_s s"
rm -rf "$tmp/restored" "$tmp/etcdctl.db"

# 4. bosun: a new cluster seeded from the EtcdBackup.
t0=$(now)
cluster restored '{"restore":{"source":{"backup":{"name":"once"}}}}'
wait_ready restored
seed_s=$(calc %.2f "$(now) - $t0")
read -r started finished < <(k get pod -l app.kubernetes.io/instance=restored \
  -o jsonpath='{.items[0].status.initContainerStatuses[?(@.name=="restore")].state.terminated.startedAt} {.items[0].status.initContainerStatuses[?(@.name=="restore")].state.terminated.finishedAt}{"\n"}')
container_s=$(($(utc_secs "$finished") - $(utc_secs "$started")))
# Before it creates the seed pod, the operator reads the whole snapshot to
# check it.
created=$(k get etcd/restored -o jsonpath='{.metadata.creationTimestamp}')
pod_created=$(k get pod -l app.kubernetes.io/instance=restored -o jsonpath='{.items[0].metadata.creationTimestamp}')
check_s=$(($(utc_secs "$pod_created") - $(utc_secs "$created")))
keys=$($etcdctl --endpoints="$(endpoint restored)" get bench/ --prefix --count-only -w fields | awk '/^"Count"/ {print $3}')
[ "$keys" = "$size_mb" ] || { echo "the restored cluster holds $keys keys, not $size_mb" >&2; exit 1; }
echo "EtcdCluster from the backup: ready in $seed_s s (operator's check before the pod: $check_s s; restore container: $container_s s); $keys keys"

speed() { calc %.1f "$1 / 1048576 / $2"; } # bytes seconds
cat <<EOF

Database $(mib "$db_bytes") MiB ($size_mb x 1 MiB values, filled in $fill s); snapshot $(mib "$save_bytes") MiB.

| | etcd's tool | bosun | bosun speed / tool speed |
|---|---|---|---|
| backup | \`etcdctl snapshot save\`: $save_s s, $(speed "$save_bytes" "$save_s") MiB/s | EtcdBackup create to Succeeded: $backup_s s, $(speed "$backup_bytes" "$backup_s") MiB/s (record's completion - start: $record_s s) | $(calc %.2f "($backup_bytes / $backup_s) / ($save_bytes / $save_s)") |
| restore | \`etcdutl snapshot restore\`: $restore_s s, $(speed "$save_bytes" "$restore_s") MiB/s | EtcdCluster create to ready: $seed_s s, $(speed "$backup_bytes" "$seed_s") MiB/s (of which the operator's check before creating the pod: $check_s s, the restore init container: $container_s s) | $(calc %.2f "($backup_bytes / $seed_s) / ($save_bytes / $restore_s)") |
| operator RSS during the backup | | $(mib $((rss_before * 1024))) MiB before, $(mib $((rss_max * 1024))) MiB peak, $(mib $((rss_after * 1024))) MiB after: +$(mib $(((rss_max - rss_before) * 1024))) MiB; CPU $cpu_s s | |
EOF
