//! Backups to the dev cluster's S3 server (SeaweedFS, Service `s3` in
//! `bosun-system`) and restores from them, both ways: a new cluster seeded
//! by `spec.bootstrap.restore`, and an existing cluster brought back by an
//! EtcdRestore. Also the refusals: wrong credentials, a missing bucket, a
//! corrupt or truncated snapshot — each with a message, no secret anywhere,
//! and the target's data untouched.

mod common;

use std::time::Duration;

use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use bosun_devcluster::fixture::{BackupDir, TestCluster};
use bosun_devcluster::readiness::wait_until;
use bosun_etcd::cluster::objects;
use bosun_etcd::restore::member::REVISION_BUMP;
use common::{
    DEADLINE, POLL, UNCHANGED_WINDOW, admission_webhooks_installed, assert_refused_at_admission,
    assert_unchanged_for, backup_condition, count_keys, etcd_client, member_pods,
    wait_for_backup_phase, wait_for_members,
};
use etcd_client::{Client as EtcdClient, GetOptions, Txn, TxnOp, WatchOptions};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

/// The dev cluster's S3 endpoint, as a pod (and the operator) names it.
const S3_ENDPOINT: &str = "http://s3.bosun-system.svc";
const BUCKET: &str = "bosun-backups";

/// Copies the dev cluster's S3 credentials into the test's namespace
/// (a spec names a Secret of its own namespace), returning the secret key.
async fn copy_s3_credentials(cluster: &TestCluster, ns: &str, name: &str) -> String {
    let system: Api<Secret> = Api::namespaced(cluster.client.clone(), "bosun-system");
    let source = system
        .get("s3-credentials")
        .await
        .expect("the dev cluster's S3 Secret");
    let data = source.data.clone().unwrap_or_default();
    let secret_key = String::from_utf8(data["secretAccessKey"].0.clone()).expect("utf-8");
    let copy: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }))
    .expect("secret");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    secrets
        .create(&PostParams::default(), &copy)
        .await
        .expect("create secret");
    secret_key
}

async fn create_secret(cluster: &TestCluster, ns: &str, name: &str, id: &str, key: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"accessKeyID": id, "secretAccessKey": key},
    }))
    .expect("secret");
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

fn cluster_object(ns: &str, size: i32, restore_from: Option<serde_json::Value>) -> EtcdCluster {
    let mut spec = serde_json::json!({"size": size, "storage": {"size": "256Mi"}});
    if let Some(source) = restore_from {
        spec["bootstrap"] = serde_json::json!({"restore": {"source": source}});
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "db", "namespace": ns},
        "spec": spec,
    }))
    .expect("cluster object")
}

/// Creates EtcdCluster `db` (from `restore_from` when given) and waits until
/// all its `size` members are healthy.
async fn create_db(
    clusters: &Api<EtcdCluster>,
    ns: &str,
    size: i32,
    restore_from: Option<serde_json::Value>,
) {
    clusters
        .create(
            &PostParams::default(),
            &cluster_object(ns, size, restore_from),
        )
        .await
        .expect("create cluster");
    wait_for_members(clusters, "db", usize::try_from(size).expect("a size")).await;
}

fn s3_backup(ns: &str, name: &str, bucket: &str, secret: &str) -> EtcdBackup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterName": "db",
            "storage": {"s3": {
                "bucket": bucket, "prefix": "tests", "endpoint": S3_ENDPOINT,
                "forcePathStyle": true, "credentialsSecret": secret,
            }},
            "timeoutSeconds": 60,
        },
    }))
    .expect("backup object")
}

/// Writes `/k/<from>` .. `/k/<to - 1>` with value `v<i>`, 100 per transaction.
async fn write_keys(etcd: &mut EtcdClient, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + 100).min(to);
        let ops: Vec<TxnOp> = (i..end)
            .map(|k| TxnOp::put(format!("/k/{k:05}"), format!("v{k}"), None))
            .collect();
        etcd.txn(Txn::new().and_then(ops)).await.expect("txn");
        i = end;
    }
}

/// Asserts the cluster holds exactly `/k/00000` .. `/k/<n - 1>` with their values.
async fn assert_exactly_keys(etcd: &mut EtcdClient, n: usize) {
    assert_eq!(count_keys(etcd, "/k/").await, n as i64, "key count");
    let all = etcd
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get keys");
    for (i, kv) in all.kvs().iter().enumerate() {
        assert_eq!(kv.key_str().expect("utf-8"), format!("/k/{i:05}"));
        assert_eq!(kv.value_str().expect("utf-8"), format!("v{i}"));
    }
}

async fn wait_for_restore_phase(api: &Api<EtcdRestore>, name: &str, phase: &str) -> EtcdRestore {
    wait_until(
        &format!("EtcdRestore {name} to be {phase}"),
        DEADLINE,
        POLL,
        || async move {
            let restore = api.get(name).await.map_err(|e| e.to_string())?;
            Ok(restore
                .status
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"))
                .as_deref()
                == Some(phase))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    api.get(name).await.expect("get restore")
}

/// A watch that resumes at `revision`, one a watcher of the old cluster
/// could have saved, is cancelled as compacted: it must re-list.
async fn assert_resumed_watch_is_compacted(etcd: &mut EtcdClient, revision: i64) {
    let mut stream = etcd
        .watch(
            "/k/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision),
            ),
        )
        .await
        .expect("watch");
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = stream
                .message()
                .await
                .expect("watch stream")
                .expect("a response");
            if response.canceled() || !response.events().is_empty() {
                return response;
            }
        }
    })
    .await
    .expect("the watch answers");
    assert!(
        response.canceled() && response.compact_revision() > revision,
        "a watch from revision {revision} after a restore: canceled {}, compact revision {}, {} events",
        response.canceled(),
        response.compact_revision(),
        response.events().len()
    );
}

/// Creates `seeded` (a cluster bootstrapped from a backup) and asserts that
/// it reports `reason` in its Degraded condition and creates no member.
async fn assert_seed_refused(
    cluster: &TestCluster,
    clusters: &Api<EtcdCluster>,
    ns: &str,
    seeded: &EtcdCluster,
    reason: &str,
) {
    let name = seeded.name_any();
    clusters
        .create(&PostParams::default(), seeded)
        .await
        .expect("create");
    wait_until(
        &format!("{name} to report {reason}"),
        DEADLINE,
        POLL,
        || async {
            let c = clusters.get(&name).await.map_err(|e| e.to_string())?;
            Ok(c.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.reason == reason)
            }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(member_pods(cluster, ns, &name).await.is_empty());
}

/// Every Event message in a namespace.
async fn event_messages(cluster: &TestCluster, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect()
}

#[tokio::test]
async fn backup_to_s3_then_restore_a_new_cluster_and_an_existing_one() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-restore-s3").await;
    let secret_key = copy_s3_credentials(&cluster, &ns.name, "s3-credentials").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);

    create_db(&clusters, &ns.name, 3, None).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    write_keys(&mut etcd, 0, 10_000).await;

    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "once", BUCKET, "s3-credentials"),
        )
        .await
        .expect("create backup");
    let done = wait_for_backup_phase(&backups, "once", "Succeeded").await;
    let record = done.status.expect("status").backups[0].clone();
    assert!(
        record.location.starts_with("s3://bosun-backups/tests/"),
        "{}",
        record.location
    );

    // 1,000 keys the backup does not have; then the cluster goes.
    write_keys(&mut etcd, 10_000, 11_000).await;
    drop(etcd);
    clusters
        .delete("db", &DeleteParams::foreground())
        .await
        .expect("delete cluster");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_until(
        "the cluster's pods and volumes to be gone",
        DEADLINE,
        POLL,
        || async {
            let pods = member_pods(&cluster, &ns.name, "db").await;
            let volumes = pvcs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let gone = clusters
                .get_opt("db")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            Ok(gone && pods.is_empty() && volumes.items.is_empty())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // (a) A new cluster from the backup: exactly the first 10,000 keys, at
    // the snapshot's revision, at full size.
    let source = serde_json::json!({"backup": {"name": "once"}});
    create_db(&clusters, &ns.name, 3, Some(source.clone())).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 10_000).await;
    let revision = etcd
        .get("/k/00000", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    // etcd's restore guidance: the revision moves past any the old cluster
    // reached, and what lies between is compacted, so a watcher resuming
    // at a revision it saw before is told to re-list instead of silently
    // missing events.
    assert!(
        revision >= record.revision + REVISION_BUMP,
        "revision {revision} after restoring a snapshot at {}",
        record.revision
    );
    assert_resumed_watch_is_compacted(&mut etcd, record.revision + 1).await;

    // (b) More keys, then an EtcdRestore of the same backup: back to exactly those keys.
    write_keys(&mut etcd, 10_000, 10_500).await;
    drop(etcd);
    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    let restore: EtcdRestore = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
        "metadata": {"name": "back", "namespace": ns.name},
        "spec": {"clusterName": "db", "source": source},
    }))
    .expect("restore object");
    restores
        .create(&PostParams::default(), &restore)
        .await
        .expect("create restore");
    let restored = wait_for_restore_phase(&restores, "back", "Succeeded").await;
    assert_eq!(
        restored.status.and_then(|s| s.restored_revision),
        Some(record.revision)
    );
    wait_for_members(&clusters, "db", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 10_000).await;
    let kept = clusters
        .get("db")
        .await
        .expect("the EtcdCluster object is kept");
    assert_eq!(kept.spec.size, 3);

    // No secret in any event.
    for message in event_messages(&cluster, &ns.name).await {
        assert!(!message.contains(&secret_key), "secret in event: {message}");
    }
}

#[tokio::test]
async fn wrong_credentials_and_a_missing_bucket_fail_with_a_message_and_no_secret() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-s3-refused").await;
    let real_key = copy_s3_credentials(&cluster, &ns.name, "s3-credentials").await;
    let wrong_key = "wrong-secret-key-0123456789abcdef";
    create_secret(
        &cluster,
        &ns.name,
        "wrong",
        "BOSUNWRONGKEYID0000",
        wrong_key,
    )
    .await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_db(&clusters, &ns.name, 1, None).await;
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);

    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "wrong-key", BUCKET, "wrong"),
        )
        .await
        .expect("create backup");
    // A name no earlier run used: some servers create a bucket on upload.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let missing_bucket = format!("missing-{}-{nanos}", std::process::id());
    let failed = wait_for_backup_phase(&backups, "wrong-key", "Failed").await;
    let condition = backup_condition(&failed, "Failed")
        .expect("Failed condition")
        .clone();
    assert_eq!(
        condition.reason, "CredentialsRefused",
        "{}",
        condition.message
    );

    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "no-bucket", &missing_bucket, "s3-credentials"),
        )
        .await
        .expect("create backup");
    let failed = wait_for_backup_phase(&backups, "no-bucket", "Failed").await;
    let condition = backup_condition(&failed, "Failed")
        .expect("Failed condition")
        .clone();
    assert_eq!(condition.reason, "StorageNotFound", "{}", condition.message);

    let mut texts = event_messages(&cluster, &ns.name).await;
    for name in ["wrong-key", "no-bucket"] {
        let backup = backups.get(name).await.expect("get");
        texts.extend(
            backup
                .status
                .into_iter()
                .flat_map(|s| s.conditions)
                .map(|c| c.message),
        );
    }
    // The operator's own logs, of every replica (the leader did the work).
    let log = cluster.kubectl_ok(&[
        "-n",
        "bosun-system",
        "logs",
        "-l",
        "app.kubernetes.io/name=bosun-operator",
        "--tail=-1",
    ]);
    assert!(!log.is_empty(), "the operator's pods logged nothing");
    texts.push(log);
    for text in &texts {
        assert!(!text.contains(wrong_key), "wrong secret key leaked: {text}");
        assert!(!text.contains(&real_key), "secret key leaked");
    }
}

#[tokio::test]
async fn corrupt_and_truncated_snapshots_are_refused_and_the_cluster_is_untouched() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("restore-corrupt").await;
    let dir = BackupDir::new(&cluster, "restore-corrupt");
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_db(&clusters, &ns.name, 1, None).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    write_keys(&mut etcd, 0, 300).await;
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backup: EtcdBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": "file", "namespace": ns.name},
        "spec": {"clusterName": "db", "storage": {"file": {"path": dir.0.display().to_string()}}},
    }))
    .expect("backup");
    backups
        .create(&PostParams::default(), &backup)
        .await
        .expect("create backup");
    let record = wait_for_backup_phase(&backups, "file", "Succeeded")
        .await
        .status
        .expect("status")
        .backups[0]
        .clone();
    let snapshot = std::path::PathBuf::from(record.location.trim_start_matches("file://"));
    let good = std::fs::read(&snapshot).expect("read snapshot");
    write_keys(&mut etcd, 300, 400).await;
    let pods_before: Vec<String> = member_pods(&cluster, &ns.name, "db")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();

    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cases: [(&str, Vec<u8>); 2] = [
        ("flipped", {
            let mut bytes = good.clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            bytes
        }),
        ("truncated", good[..good.len() - 4096].to_vec()),
    ];
    for (case, bytes) in cases {
        std::fs::write(&snapshot, &bytes).expect("damage the snapshot");
        let restore: EtcdRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
            "metadata": {"name": case, "namespace": ns.name},
            "spec": {"clusterName": "db", "source": {"backup": {"name": "file"}}},
        }))
        .expect("restore object");
        restores
            .create(&PostParams::default(), &restore)
            .await
            .expect("create restore");
        let failed = wait_for_restore_phase(&restores, case, "Failed").await;
        let condition = failed
            .status
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Failed")
            .expect("Failed condition");
        assert_eq!(
            condition.reason, "SnapshotCorrupt",
            "{case}: {}",
            condition.message
        );
        assert!(
            condition.message.contains("not touched"),
            "{case}: {}",
            condition.message
        );
    }

    // A new cluster seeded from the damaged snapshot creates no member.
    let seeded: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "seeded", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"},
                 "bootstrap": {"restore": {"source": {"backup": {"name": "file"}}}}},
    }))
    .expect("cluster");
    assert_seed_refused(&cluster, &clusters, &ns.name, &seeded, "SnapshotCorrupt").await;

    // The target kept its pods and every key, including those after the backup.
    let pods_after: Vec<String> = member_pods(&cluster, &ns.name, "db")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    assert_eq!(pods_before, pods_after);
    let annotations = clusters
        .get("db")
        .await
        .expect("get")
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(
        !annotations.contains_key("etcd.bosun.dev/restore"),
        "{annotations:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), assert_exactly_keys(&mut etcd, 400))
        .await
        .expect("keys readable");
}

/// Invariant: a volume made for a restore never starts a member empty.
/// The seed of a cluster bootstrapped from a backup loses its pod before
/// etcd ever ran on the volume (deleted at once, as a drain, an admission
/// refusal or an operator stopped between the PVC and the pod would leave
/// it); every key of the backup must still be there, read from etcd itself.
#[tokio::test]
async fn restore_seed_pod_lost_mid_restore_keeps_every_key() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("restore-seed-lost").await;
    copy_s3_credentials(&cluster, &ns.name, "s3-credentials").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_db(&clusters, &ns.name, 1, None).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    write_keys(&mut etcd, 0, 1_500).await;
    drop(etcd);
    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "once", BUCKET, "s3-credentials"),
        )
        .await
        .expect("create backup");
    wait_for_backup_phase(&backups, "once", "Succeeded").await;

    let seeded: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "seeded", "namespace": ns.name},
        "spec": {"size": 3, "storage": {"size": "256Mi"},
                 "bootstrap": {"restore": {"source": {"backup": {"name": "once"}}}}},
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &seeded)
        .await
        .expect("create");
    // The seed pod, deleted the moment it exists: before its restore init
    // container has finished, so etcd never ran on the volume.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_until(
        "the seed pod to exist",
        DEADLINE,
        Duration::from_millis(20),
        || async { Ok(!member_pods(&cluster, &ns.name, "seeded").await.is_empty()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let seed = member_pods(&cluster, &ns.name, "seeded").await.remove(0);
    let seed_name = seed.metadata.name.clone().expect("name");
    let etcd_started = seed
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.name == "etcd" && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        });
    assert!(
        !etcd_started,
        "etcd already ran before the seed pod was deleted"
    );
    pods.delete(
        &seed_name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete the seed pod");

    wait_for_members(&clusters, "seeded", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "seeded").await;
    assert_exactly_keys(&mut etcd, 1_500).await;
    // The volume still names the restore it was made for.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let seed_volume = pvcs.get(&seed_name).await.expect("the seed's volume");
    assert!(
        objects::restore_intent_of(&seed_volume).is_some_and(|i| i.is_ok()),
        "{:?}",
        seed_volume.metadata.annotations
    );
}

/// Sets (or with `None` clears) `spec.paused` of EtcdCluster `db`.
async fn set_paused(clusters: &Api<EtcdCluster>, paused: bool) {
    clusters
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": paused}})),
        )
        .await
        .expect("pause or resume the cluster");
}

/// The uids of the cluster's member pods and volumes.
async fn member_object_uids(cluster: &TestCluster, ns: &str) -> Vec<String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
    let mut uids: Vec<String> = member_pods(cluster, ns, "db")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    uids.extend(
        pvcs.list(&ListParams::default().labels(&objects::label_selector("db")))
            .await
            .expect("list volumes")
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone()),
    );
    uids.sort();
    uids
}

fn restore_of(ns: &str, name: &str, source: &serde_json::Value) -> EtcdRestore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterName": "db", "source": source},
    }))
    .expect("restore object")
}

/// Invariants of the in-place restore protocol: a restore pins its snapshot
/// once and uses exactly that one even when a newer backup is asked for
/// meanwhile (held until the restore ends); a second restore of a cluster
/// with one in flight is refused and touches nothing; the restore succeeds
/// only on the cluster controller's acknowledgement; and a stale mark (a
/// restore that does not exist, or has finished) wipes nothing. Judged by
/// the keys etcd holds and the pods and volumes the API server lists.
#[tokio::test]
async fn restores_pin_their_snapshot_one_at_a_time_and_stale_marks_wipe_nothing() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("restore-protocol").await;
    copy_s3_credentials(&cluster, &ns.name, "s3-credentials").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_db(&clusters, &ns.name, 1, None).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    write_keys(&mut etcd, 0, 200).await;
    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "first", BUCKET, "s3-credentials"),
        )
        .await
        .expect("create backup");
    wait_for_backup_phase(&backups, "first", "Succeeded").await;
    write_keys(&mut etcd, 200, 300).await;
    drop(etcd);

    // Paused, the cluster controller takes nothing on: restore A pins and
    // marks, and then holds the mark.
    set_paused(&clusters, true).await;
    let before = member_object_uids(&cluster, &ns.name).await;
    let source = serde_json::json!({"backup": {"name": "first"}});
    restores
        .create(&PostParams::default(), &restore_of(&ns.name, "a", &source))
        .await
        .expect("create restore a");
    let a = wait_for_restore_phase(&restores, "a", "Running").await;
    let pinned = a
        .status
        .and_then(|s| s.pinned)
        .expect("a running restore has pinned its snapshot");
    assert!(
        pinned.location.sha256.is_some() && pinned.size > 0,
        "{pinned:?}"
    );

    // A backup asked for now is held: it would change what index 0 means,
    // and its retention could prune the pinned object.
    backups
        .create(
            &PostParams::default(),
            &s3_backup(&ns.name, "meanwhile", BUCKET, "s3-credentials"),
        )
        .await
        .expect("create backup");
    // B, while A is in flight: refused, nothing touched — by the API
    // server where the admission webhooks are installed, else by the
    // restore controller.
    let b = restores
        .create(&PostParams::default(), &restore_of(&ns.name, "b", &source))
        .await;
    if admission_webhooks_installed(&cluster).await {
        assert_refused_at_admission(
            b,
            &["spec.clusterName: EtcdCluster db already has a restore in flight, EtcdRestore a"],
        );
    } else {
        b.expect("create restore b");
        let b = wait_for_restore_phase(&restores, "b", "Failed").await;
        let refusal = b
            .status
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Failed")
            .expect("Failed condition");
        assert_eq!(refusal.reason, "RestoreInProgress", "{}", refusal.message);
    }
    assert_unchanged_for(
        "the cluster's pods and volumes",
        &before,
        UNCHANGED_WINDOW,
        || member_object_uids(&cluster, &ns.name),
    )
    .await;
    let meanwhile = backups.get("meanwhile").await.expect("get backup");
    assert!(
        meanwhile.status.and_then(|s| s.phase).is_none(),
        "a backup ran while a restore had its snapshot pinned"
    );

    // Resumed: A is carried out, from exactly the pinned snapshot.
    set_paused(&clusters, false).await;
    let a = wait_for_restore_phase(&restores, "a", "Succeeded").await;
    let acknowledged = clusters
        .get("db")
        .await
        .expect("get cluster")
        .status
        .and_then(|s| s.restore)
        .expect("the cluster controller's acknowledgement");
    assert_eq!(acknowledged.uid, a.metadata.uid.clone().expect("uid"));
    wait_for_members(&clusters, "db", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 200).await;
    wait_for_backup_phase(&backups, "meanwhile", "Succeeded").await;

    // Stale marks: one naming no EtcdRestore (an exported object applied
    // again), one naming the finished A. Neither wipes anything.
    let restored = member_object_uids(&cluster, &ns.name).await;
    let a_uid = a.metadata.uid.clone().expect("uid");
    for stale in [
        "ghost/00000000-0000-0000-0000-000000000000".to_string(),
        format!("a/{a_uid}"),
    ] {
        clusters
            .patch(
                "db",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                    objects::RESTORE_ANNOTATION: stale,
                }}})),
            )
            .await
            .expect("set a stale mark");
        wait_until("the stale mark to be removed", DEADLINE, POLL, || async {
            let c = clusters.get("db").await.map_err(|e| e.to_string())?;
            Ok(!c.annotations().contains_key(objects::RESTORE_ANNOTATION))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_unchanged_for(
            "the cluster's pods and volumes",
            &restored,
            UNCHANGED_WINDOW,
            || member_object_uids(&cluster, &ns.name),
        )
        .await;
    }
    assert_exactly_keys(&mut etcd, 200).await;
    assert!(
        event_messages(&cluster, &ns.name)
            .await
            .iter()
            .any(|m| m.contains("names no live, pinned EtcdRestore")),
        "an event says why a stale mark was removed"
    );
}

/// Invariant: a tenant never gets more from the operator than its own
/// rights. A `file://` restore source outside the operator's backup
/// directories (`file:///etc/hostname`: the node's root filesystem) and a
/// backup to such a directory are refused, and so is an object store
/// without a credentials Secret (it would use the operator's own
/// identity) — each with its reason (by the API server where the admission
/// webhooks are installed, else in the object's status), nothing created,
/// the cluster untouched. Judged from the API server.
#[tokio::test]
async fn file_locations_outside_the_backup_dirs_and_ambient_credentials_are_refused() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("storage-policy").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_db(&clusters, &ns.name, 1, None).await;
    let before = member_object_uids(&cluster, &ns.name).await;
    // Where the admission webhooks are installed, the API server refuses
    // each of these with the same reason; else the controllers do.
    let webhooks = admission_webhooks_installed(&cluster).await;

    let refused_backups: [(&str, serde_json::Value); 2] = [
        (
            "outside",
            serde_json::json!({"file": {"path": "/etc/bosun-test"}}),
        ),
        (
            "ambient",
            serde_json::json!({"s3": {"bucket": BUCKET, "endpoint": S3_ENDPOINT, "forcePathStyle": true}}),
        ),
    ];
    for (name, storage) in refused_backups {
        let backup: EtcdBackup = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {"clusterName": "db", "storage": storage},
        }))
        .expect("backup object");
        let created = backups.create(&PostParams::default(), &backup).await;
        if webhooks {
            assert_refused_at_admission(created, &["spec.storage"]);
            continue;
        }
        created.expect("create backup");
        let failed = wait_for_backup_phase(&backups, name, "Failed").await;
        let condition = backup_condition(&failed, "Failed").expect("Failed condition");
        assert_eq!(
            condition.reason, "StorageRefused",
            "{name}: {}",
            condition.message
        );
    }
    assert!(
        !std::path::Path::new("/etc/bosun-test").exists(),
        "the operator wrote outside its backup directories"
    );

    let outside = serde_json::json!({"location": {"url": "file:///etc/hostname"}});
    let created = restores
        .create(
            &PostParams::default(),
            &restore_of(&ns.name, "outside", &outside),
        )
        .await;
    if webhooks {
        assert_refused_at_admission(created, &["spec.source.location.url"]);
    } else {
        created.expect("create restore");
        let failed = wait_for_restore_phase(&restores, "outside", "Failed").await;
        let condition = failed
            .status
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Failed")
            .expect("Failed condition");
        assert_eq!(
            condition.reason, "RestoreSourceRefused",
            "{}",
            condition.message
        );
    }
    assert_unchanged_for(
        "the cluster's pods and volumes",
        &before,
        UNCHANGED_WINDOW,
        || member_object_uids(&cluster, &ns.name),
    )
    .await;

    // A new cluster seeded from the node's filesystem creates no member.
    let seeded: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "seeded", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"},
                 "bootstrap": {"restore": {"source": outside}}},
    }))
    .expect("cluster");
    if webhooks {
        assert_refused_at_admission(
            clusters.create(&PostParams::default(), &seeded).await,
            &["spec.bootstrap.restore.source.location.url"],
        );
        assert!(member_pods(&cluster, &ns.name, "seeded").await.is_empty());
    } else {
        assert_seed_refused(
            &cluster,
            &clusters,
            &ns.name,
            &seeded,
            "RestoreSourceRefused",
        )
        .await;
    }
}
