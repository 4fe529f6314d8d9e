//! Killing the leading operator in the middle of an operation (`kill -9`
//! of its process in its pod, from the host): a live process leads again
//! within the lease duration (the standby replica, or the killed pod's
//! restarted container) and finishes the operation correctly, because every
//! step is decided from observed state.

mod common;

use std::time::Duration;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{DEADLINE, POLL, count_keys, etcd_client, wait_for_members};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

/// How long the operator's standby waits for a Lease that stopped being
/// renewed (`bosun operator --lease-duration`'s default), plus a retry
/// period with its jitter and room for a busy API server.
const HAND_OVER: Duration = Duration::from_secs(8 + 2 + 5);

/// Kills the leading operator's process (`kill -9` from the host) and waits
/// until a live process leads again: the standby once the Lease expires, or
/// the killed pod's restarted container, which finds its own name in the
/// Lease. Returns the killed pod and the new holder.
async fn kill_operator(cluster: &TestCluster) -> (String, String) {
    let (pod, pid, killed_at) = cluster
        .kill_operator_leader()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (holder, took) = cluster
        .wait_for_operator_leader_since(killed_at, HAND_OVER)
        .await
        .unwrap_or_else(|e| panic!("after kill -9 of {pod} (pid {pid}): {e}"));
    eprintln!("killed the leading operator {pod} (pid {pid}); {holder} leads {took:?} later");
    (pod, holder)
}

/// Waits until `check` holds for the cluster's status, then kills the operator.
async fn kill_operator_when(
    cluster: &TestCluster,
    api: &Api<EtcdCluster>,
    what: &str,
    check: impl Fn(&bosun_api::EtcdClusterStatus) -> bool + Copy,
) {
    wait_until(what, DEADLINE, Duration::from_millis(50), || async move {
        let status = api
            .get("restarts")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        Ok(check(&status))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (pod, holder) = kill_operator(cluster).await;
    eprintln!("killed {pod} once {what}; {holder} leads");
}

#[tokio::test]
async fn operator_killed_mid_scale_up_and_mid_upgrade_finishes_both() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("operator-restarts").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "restarts", "namespace": ns.name},
        "spec": {"size": 3, "version": "3.5.35", "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "restarts", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "restarts").await;
    for i in 0..100 {
        etcd.put(format!("/r/{i:03}"), "v", None)
            .await
            .expect("put");
    }
    let params = PatchParams::default();

    api.patch(
        "restarts",
        &params,
        &Patch::Merge(serde_json::json!({"spec": {"size": 5}})),
    )
    .await
    .expect("scale up");
    kill_operator_when(&cluster, &api, "a fourth member has joined", |s| {
        s.members.len() >= 4
    })
    .await;
    wait_for_members(&api, "restarts", 5).await;

    api.patch(
        "restarts",
        &params,
        &Patch::Merge(serde_json::json!({"spec": {"version": "3.6.16"}})),
    )
    .await
    .expect("upgrade");
    kill_operator_when(&cluster, &api, "the first member runs 3.6.16", |s| {
        s.members
            .iter()
            .any(|m| m.version.as_deref() == Some("3.6.16"))
    })
    .await;
    wait_until("every member to run 3.6.16", DEADLINE, POLL, || {
        let api = api.clone();
        async move {
            let status = api
                .get("restarts")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            Ok(status.members.len() == 5
                && status
                    .members
                    .iter()
                    .all(|m| m.ready && m.version.as_deref() == Some("3.6.16")))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "restarts", 5).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "restarts").await;
    assert_eq!(count_keys(&mut etcd, "/r/").await, 100);
}

/// Proof 5 of backups: the operator is killed while a backup streams into
/// S3. The interrupted run leaves no object that counts as a backup (a
/// multipart upload that never completed is no object; a snapshot without
/// its manifest is debris), and the run after the restart succeeds.
#[tokio::test]
async fn operator_killed_during_an_upload_leaves_no_partial_backup_and_the_next_run_succeeds() {
    use bosun_api::EtcdBackup;
    use bosun_etcd::backup::{reconcile as backup, service_address, store};
    use etcd_client::{Txn, TxnOp};
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use object_store::ObjectStoreExt;

    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("operator-killed-upload").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "restarts", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    clusters
        .create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&clusters, "restarts", 1).await;
    // ~150 MiB, so that the upload takes long enough to be interrupted.
    let mut etcd = etcd_client(&cluster, &ns.name, "restarts").await;
    let value = "x".repeat(1024 * 1024);
    // One 1 MiB value per request: etcd takes requests up to 1.5 MiB.
    for i in 0..150 {
        etcd.txn(Txn::new().and_then([TxnOp::put(format!("/big/{i:03}"), value.clone(), None)]))
            .await
            .expect("txn");
    }

    let system: Api<Secret> = Api::namespaced(cluster.client.clone(), "bosun-system");
    let mut secret = system.get("s3-credentials").await.expect("S3 Secret");
    secret.metadata = kube::api::ObjectMeta {
        name: Some("s3-credentials".into()),
        namespace: Some(ns.name.clone()),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns.name);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("copy S3 Secret");
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backup: EtcdBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": "interrupted", "namespace": ns.name},
        "spec": {"clusterName": "restarts", "storage": {"s3": {
            "bucket": "bosun-backups", "prefix": "restarts", "endpoint": "http://s3.bosun-system.svc",
            "forcePathStyle": true, "credentialsSecret": "s3-credentials"}}},
    }))
    .expect("backup object");
    backups
        .create(&PostParams::default(), &backup)
        .await
        .expect("create backup");

    // The upload's id is recorded before its first part: the kill lands
    // mid-stream.
    wait_until(
        "the backup to be uploading",
        DEADLINE,
        Duration::from_millis(20),
        || async {
            let status = backups
                .get("interrupted")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            Ok(
                status.phase == Some(bosun_api::backup::BackupPhase::Running)
                    && status.upload.is_some(),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let interrupted = backups
        .get("interrupted")
        .await
        .expect("get")
        .status
        .and_then(|s| s.upload)
        .expect("a recorded upload");
    let (pod, holder) = kill_operator(&cluster).await;
    eprintln!("killed {pod} during the upload; {holder} leads");

    let done = common::wait_for_backup_phase(&backups, "interrupted", "Succeeded").await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.backups.len(), 1, "{:?}", status.backups);
    let record = &status.backups[0];

    // The store holds exactly the recorded backup: its snapshot and manifest.
    let credentials = backup::credentials_for(&cluster.client, &ns.name, Some("s3-credentials"))
        .await
        .expect("credentials");
    let endpoint =
        service_address::reachable_url(&cluster.client, "http://s3.bosun-system.svc").await;
    let destination = store::destination(&done.spec.storage, credentials.as_ref(), Some(&endpoint))
        .expect("store");
    let dir = backup::backup_dir(&destination, &done);
    let names: Vec<String> = destination
        .store
        .list(Some(&dir))
        .map(|m| m.expect("list").location.to_string())
        .collect()
        .await;
    let snapshots: Vec<&String> = names.iter().filter(|n| n.ends_with(".db")).collect();
    assert_eq!(snapshots.len(), 1, "{names:?}");
    assert_eq!(
        destination.url_of(&snapshots[0].as_str().into()),
        record.location
    );
    assert_eq!(names.len(), 2, "a snapshot and its manifest: {names:?}");
    // The interrupted upload is gone from the store itself: S3 refuses a
    // part for it (NoSuchUpload), where a live upload would take one.
    let parts = destination
        .multipart
        .clone()
        .expect("S3 has a multipart API");
    let refused = parts
        .put_part(
            &interrupted.path.as_str().into(),
            &interrupted.upload_id,
            0,
            object_store::PutPayload::from_static(b"late"),
        )
        .await;
    assert!(
        matches!(refused, Err(object_store::Error::NotFound { .. })),
        "the interrupted upload still takes parts: {refused:?}"
    );
    assert!(status.upload.is_none(), "{:?}", status.upload);
    for name in &names {
        destination
            .store
            .delete(&name.as_str().into())
            .await
            .expect("clean up");
    }
}
