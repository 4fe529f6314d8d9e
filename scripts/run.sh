#!/usr/bin/env bash
# The main job: builds everything, starts `bosun dev` (a real single-node
# Kubernetes running the bosun operator), applies examples/etcd-cluster.yaml
# and waits until that etcd cluster is Available. The cluster keeps running
# afterwards; `target/debug/bosun dev down` stops it (its data is kept).
set -euo pipefail
cd "$(dirname "$0")/.."

# Not --tests: the main job runs no tests, so it needs no cargo-nextest.
scripts/setup.sh --cluster

echo "==> building bosun"
cargo build --locked -p bosun

tools=${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}
state=${BOSUN_DEV_STATE_DIR:-$HOME/.bosun/dev}
export KUBECONFIG=$state/kubeconfig
kubectl=$tools/bin/kubectl

# The status is read whole first: `grep -q` would close the pipe early.
status=$(target/debug/bosun dev status --state-dir "$state")
if [[ $status == running* ]]; then
  echo "==> bosun dev is already running"
else
  echo "==> bosun dev up"
  target/debug/bosun dev up --detach --state-dir "$state" "$@"
fi

echo "==> kubectl apply -f examples/etcd-cluster.yaml"
$kubectl apply -f examples/etcd-cluster.yaml
echo "==> waiting for the etcd cluster to be Available, then for every member"
$kubectl wait etcd/example --for=condition=Available --timeout=300s
$kubectl wait etcd/example --for=jsonpath='{.status.phase}'=Running --timeout=300s
$kubectl get etcd example

# The EtcdBackup example names a Secret of its own namespace: give
# `default` a copy of the dev cluster's S3 credentials.
$kubectl -n bosun-system get secret s3-credentials -o json \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"}, "data": s["data"]}))' \
  | $kubectl apply -f - >/dev/null

pod=$($kubectl get pods -l app.kubernetes.io/instance=example -o jsonpath='{.items[0].metadata.name}')
cat <<MSG

The example etcd cluster runs. Try:

  export KUBECONFIG=$KUBECONFIG PATH=$tools/bin:\$PATH
  kubectl get etcd
  kubectl exec $pod -- etcdctl --endpoints=http://example-client:2379 put greeting hello
  kubectl exec $pod -- etcdctl --endpoints=http://example-client:2379 get greeting
  kubectl scale etcd/example --replicas=5

Backups to the dev cluster's S3 store (docs/backup-restore.md):

  kubectl apply -f examples/etcd-backup.yaml
  target/debug/bosun backup now example
  target/debug/bosun backup list example

Stop everything with: target/debug/bosun dev down
MSG
