//! EtcdBackup to the `file` backend, a directory the operator writes (the
//! dev cluster mounts its backups directory into the operator's pods at the
//! same path): a one-shot backup is stored,
//! verified and readable by etcd's own tools; a schedule with retention
//! keeps exactly its newest backups and its status history matches the
//! directory; a backup of a cluster that cannot serve fails with a message.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bosun_api::{EtcdBackup, EtcdCluster};
use bosun_devcluster::fixture::{BackupDir, TestCluster};
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, backup_condition as condition, etcd_client,
    wait_for_backup_phase as wait_for_phase, wait_for_members,
};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};

async fn size_one_cluster(cluster: &TestCluster, ns: &str, keys: usize) -> Api<EtcdCluster> {
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), ns);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "source", "namespace": ns},
        "spec": {"size": 1, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_for_members(&api, "source", 1).await;
    let mut etcd = etcd_client(cluster, ns, "source").await;
    for i in 0..keys {
        etcd.put(format!("/k/{i:05}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    api
}

fn backup_object(ns: &str, name: &str, dir: &Path, extra: serde_json::Value) -> EtcdBackup {
    let mut spec = serde_json::json!({
        "clusterName": "source",
        "storage": {"file": {"path": dir.display().to_string()}},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("backup object")
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read snapshot");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn one_shot_backup_is_stored_verified_and_readable_by_etcdutl() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-file-once").await;
    let dir = BackupDir::new(&cluster, "backup-once");
    size_one_cluster(&cluster, &ns.name, 200).await;
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    backups
        .create(
            &PostParams::default(),
            &backup_object(&ns.name, "once", &dir.0, serde_json::json!({})),
        )
        .await
        .expect("create backup");

    let done = wait_for_phase(&backups, "once", "Succeeded").await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.backups.len(), 1, "{status:?}");
    let record = &status.backups[0];
    assert!(status.last_successful_time.is_some());
    assert_eq!(
        condition(&done, "Complete").map(|c| c.status.as_str()),
        Some("True")
    );

    // Exactly one snapshot and its manifest, where the record says.
    let files = dir.files();
    assert_eq!(files.len(), 2, "{files:?}");
    let snapshot = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "db"))
        .expect("a .db snapshot");
    assert_eq!(record.location, format!("file://{}", snapshot.display()));
    assert_eq!(
        std::fs::metadata(snapshot).expect("stat").len() as i64,
        record.size_bytes
    );
    assert_eq!(sha256_hex(snapshot), record.sha256);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snapshot.with_extension("json")).expect("manifest"))
            .expect("manifest is JSON");
    assert_eq!(manifest["sha256"], record.sha256.as_str());
    assert_eq!(manifest["revision"], record.revision);

    // etcd's own tool reads it: hash intact, the recorded revision, every key.
    let etcdutl = cluster.tools.bin("etcdutl").expect("etcdutl is built");
    let output = std::process::Command::new(etcdutl)
        .args(["snapshot", "status", "-w", "json"])
        .arg(snapshot)
        .output()
        .expect("run etcdutl");
    assert!(
        output.status.success(),
        "etcdutl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status_json = String::from_utf8_lossy(&output.stdout).into_owned();
    let etcdutl: serde_json::Value = serde_json::from_str(&status_json).expect("etcdutl JSON");
    assert_eq!(etcdutl["revision"], record.revision, "{status_json}");
    assert!(
        etcdutl["totalKey"].as_i64().unwrap_or_default() >= 200,
        "{status_json}"
    );
}

#[tokio::test]
async fn schedule_with_retention_keeps_the_newest_two_and_status_matches_the_directory() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-file-schedule").await;
    let dir = BackupDir::new(&cluster, "backup-schedule");
    size_one_cluster(&cluster, &ns.name, 50).await;
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Every 5 s (croner's optional seconds field), keeping 2.
    let spec = serde_json::json!({"schedule": "*/5 * * * * *", "retention": {"maxBackups": 2}});
    backups
        .create(
            &PostParams::default(),
            &backup_object(&ns.name, "every5s", &dir.0, spec),
        )
        .await
        .expect("create backup");

    // At least three runs succeed.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    wait_until("three successful scheduled runs", DEADLINE, POLL, || {
        let backups = backups.clone();
        let seen = seen.clone();
        async move {
            let backup = backups.get("every5s").await.map_err(|e| e.to_string())?;
            let status = backup.status.unwrap_or_default();
            let mut seen = seen.lock().map_err(|e| e.to_string())?;
            seen.extend(status.backups.iter().map(|r| r.location.clone()));
            Ok(seen.len() >= 3)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Stop the schedule, then compare the store with the status history.
    backups
        .patch(
            "every5s",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"schedule": "0 0 1 1 *"}})),
        )
        .await
        .expect("slow the schedule down");
    // Once the operator has written a next time under the new schedule, no
    // run is in flight: a pass writes it only after any run it made.
    wait_until(
        "the schedule change to be taken up",
        DEADLINE,
        POLL,
        || async {
            let backup = backups.get("every5s").await.map_err(|e| e.to_string())?;
            let next = backup.status.and_then(|s| s.next_schedule_time);
            Ok(next.is_some_and(|t| {
                t.0.as_second() > k8s_openapi::jiff::Timestamp::now().as_second() + 86_400
            }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let settled = backups.get("every5s").await.expect("get backup");
    let status = settled.status.expect("status");
    let snapshots: Vec<PathBuf> = dir
        .files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "db"))
        .collect();
    let manifests = dir
        .files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .count();
    assert_eq!(snapshots.len(), 2, "{:?}", dir.files());
    assert_eq!(manifests, 2, "{:?}", dir.files());
    let recorded: BTreeSet<String> = status.backups.iter().map(|r| r.location.clone()).collect();
    let stored: BTreeSet<String> = snapshots
        .iter()
        .map(|f| format!("file://{}", f.display()))
        .collect();
    assert_eq!(recorded, stored);
    for record in &status.backups {
        let path = record.location.trim_start_matches("file://");
        assert_eq!(sha256_hex(Path::new(path)), record.sha256);
    }
}

#[tokio::test]
async fn backups_of_a_missing_or_stopped_cluster_fail_with_a_message() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-file-fail").await;
    let dir = BackupDir::new(&cluster, "backup-fail");
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);

    // No such cluster.
    let mut missing = backup_object(&ns.name, "missing", &dir.0, serde_json::json!({}));
    missing.spec.cluster_name = "nowhere".into();
    backups
        .create(&PostParams::default(), &missing)
        .await
        .expect("create backup");
    let failed = wait_for_phase(&backups, "missing", "Failed").await;
    let message = condition(&failed, "Failed")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("nowhere") && message.contains("does not exist"),
        "{message}"
    );

    // A cluster with no member serving: paused, then its only pod deleted.
    let clusters = size_one_cluster(&cluster, &ns.name, 1).await;
    clusters
        .patch(
            "source",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    for pod in common::member_pods(&cluster, &ns.name, "source").await {
        let name = pod.metadata.name.clone().unwrap_or_default();
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .expect("delete member pod");
    }
    wait_until("the member pod to be gone", DEADLINE, POLL, || async {
        Ok(common::member_pods(&cluster, &ns.name, "source")
            .await
            .is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    backups
        .create(
            &PostParams::default(),
            &backup_object(&ns.name, "stopped", &dir.0, serde_json::json!({})),
        )
        .await
        .expect("create backup");
    let failed = wait_for_phase(&backups, "stopped", "Failed").await;
    let failed_condition = condition(&failed, "Failed").expect("Failed condition");
    assert_eq!(failed_condition.reason, "ClusterUnhealthy");
    assert!(
        failed_condition.message.contains("quorum"),
        "{}",
        failed_condition.message
    );
    assert!(dir.files().is_empty(), "{:?}", dir.files());
}
