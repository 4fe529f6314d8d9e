//! End-to-end tests of `bosun backup` on the dev cluster, running the built
//! binary as a person would. `backup now` copies the storage of the
//! cluster's EtcdBackup into a one-shot one, follows it to success and
//! prints where the snapshot is; `backup list` then shows it. Without an
//! EtcdBackup, or with several and no `--from`, `now` refuses and says
//! what to do; a backup that fails makes `now` exit non-zero with the
//! operator's reason, and `list` shows the failed run.
//!
//! The EtcdBackups the tests create are schedules that do not fire during
//! the test (once a year), so every run is one that `backup now` started.
//! Backups go to the `file` backend under the temporary directory: the dev
//! cluster's operator runs on this host.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bosun_api::{EtcdBackup, EtcdCluster};
use bosun_devcluster::fixture::{BackupDir, TestCluster};
use bosun_devcluster::readiness::wait_until;
use kube::Api;
use kube::api::PostParams;

/// How long an etcd cluster may take to come up, and a backup to finish.
const DEADLINE: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(250);
/// Once a year: never during a test.
const DORMANT_SCHEDULE: &str = "0 0 1 1 *";

/// Runs the built `bosun` with the cluster's kubeconfig, within a deadline.
async fn bosun(cluster: &TestCluster, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bosun"));
    command
        .args(args)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("bosun {args:?} did not finish within {DEADLINE:?}"))
        .expect("bosun runs");
    eprintln!(
        "$ bosun {}\n{}{}(exit: {:?})",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status.code()
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The value of a `  key  value` line of `backup now`'s result.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} line in:\n{text}"))
}

/// Creates a one-member EtcdCluster `name` and waits until it is Available.
async fn size_one_cluster(cluster: &TestCluster, ns: &str, name: &str) {
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), ns);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": 1, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_until(
        &format!("EtcdCluster {name} to be Available with 1 ready member"),
        DEADLINE,
        POLL,
        || async {
            let status = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            Ok(status.ready_members == 1
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Creates a dormant EtcdBackup `name` of `cluster_name` into `dir`.
async fn dormant_backup(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
    cluster_name: &str,
    dir: &Path,
) {
    let api: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), ns);
    let object: EtcdBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterName": cluster_name,
            "storage": {"file": {"path": dir.display().to_string()}},
            "schedule": DORMANT_SCHEDULE,
            "retention": {"maxBackups": 3},
        },
    }))
    .expect("backup object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create backup");
}

#[tokio::test]
async fn backup_now_stores_a_backup_that_list_shows() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-cli-now").await;
    let dir = BackupDir::new(&cluster, "backup-cli-now");
    size_one_cluster(&cluster, &ns.name, "source").await;

    // No EtcdBackup yet: nothing to list, and nowhere to put a backup.
    let out = bosun(&cluster, &["backup", "list", "source", "-n", &ns.name]).await;
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(&format!(
            "No EtcdBackup in namespace {} backs up EtcdCluster source",
            ns.name
        )),
        "{}",
        stdout(&out)
    );
    let out = bosun(&cluster, &["backup", "now", "source", "-n", &ns.name]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no EtcdBackup to take the storage from"),
        "{}",
        stderr(&out)
    );

    // With the cluster's EtcdBackup as the storage, a backup now.
    dormant_backup(&cluster, &ns.name, "nightly", "source", &dir.0).await;
    let out = bosun(
        &cluster,
        &["backup", "now", "source", "-n", &ns.name, "--timeout", "3m"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("created EtcdBackup source-manual-"), "{text}");
    assert!(text.contains("succeeded in"), "{text}");
    let location = field(&text, "location");
    let sha256 = field(&text, "sha256");
    let revision: i64 = field(&text, "revision").parse().expect("revision");
    let size = field(&text, "size");
    let bytes: u64 = size
        .split_once('(')
        .and_then(|(_, b)| b.strip_suffix(" bytes)"))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("size {size:?}"));

    // The snapshot is where it says, as big as it says, and under the
    // copied storage; the one-shot EtcdBackup records the same.
    let path = location
        .strip_prefix("file://")
        .expect("a file:// location");
    assert!(path.starts_with(&dir.0.display().to_string()), "{location}");
    assert_eq!(std::fs::metadata(path).expect("snapshot").len(), bytes);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let all = backups.list(&Default::default()).await.expect("list").items;
    let manual: Vec<&EtcdBackup> = all
        .iter()
        .filter(|b| {
            b.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("source-manual-"))
        })
        .collect();
    assert_eq!(manual.len(), 1, "{all:?}");
    let manual = manual[0];
    let nightly = all
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some("nightly"))
        .expect("nightly");
    assert_eq!(manual.spec.storage, nightly.spec.storage);
    assert_eq!(manual.spec.schedule, None);
    assert_eq!(manual.spec.retention, None);
    let record = &manual.status.as_ref().expect("status").backups[0];
    assert_eq!(
        (
            record.location.as_str(),
            record.sha256.as_str(),
            record.revision
        ),
        (location.as_str(), sha256.as_str(), revision)
    );

    // `list` shows it.
    let out = bosun(&cluster, &["backup", "list", "source", "-n", &ns.name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("BACKUP") && header.ends_with("LOCATION"),
        "{text}"
    );
    let row = lines.next().unwrap_or_default();
    let manual_name = manual.metadata.name.clone().unwrap_or_default();
    assert!(row.starts_with(&manual_name), "{text}");
    assert!(row.contains(&sha256[..12]), "{text}");
    assert!(row.ends_with(&location), "{text}");
    assert_eq!(lines.next(), None, "one backup, no failed run:\n{text}");

    // Two EtcdBackups of the cluster: `now` asks which one (the manual one
    // is not a candidate).
    dormant_backup(&cluster, &ns.name, "offsite", "source", &dir.0).await;
    let out = bosun(&cluster, &["backup", "now", "source", "-n", &ns.name]).await;
    assert_eq!(out.status.code(), Some(1));
    let error = stderr(&out);
    assert!(
        error.contains("several EtcdBackups (nightly, offsite)") && error.contains("--from"),
        "{error}"
    );
}

#[tokio::test]
async fn backup_now_that_fails_exits_non_zero_with_the_reason_and_list_shows_it() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("backup-cli-fail").await;
    let dir = BackupDir::new(&cluster, "backup-cli-fail");
    // An EtcdBackup of a cluster that does not exist: every run fails.
    dormant_backup(&cluster, &ns.name, "ghost-nightly", "ghost", &dir.0).await;

    let out = bosun(
        &cluster,
        &[
            "backup",
            "now",
            "ghost",
            "-n",
            &ns.name,
            "--from",
            "ghost-nightly",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let error = stderr(&out);
    assert!(
        error.contains("failed after")
            && error.contains("ClusterUnhealthy")
            && error.contains("EtcdCluster ghost does not exist"),
        "{error}"
    );

    let out = bosun(&cluster, &["backup", "list", "ghost", "-n", &ns.name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("No completed backup of EtcdCluster ghost"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("EtcdBackup ghost-manual-")
                && l.contains("last run failed (ClusterUnhealthy)")
                && l.contains("does not exist")),
        "{text}"
    );

    // --no-wait creates and returns.
    let out = bosun(
        &cluster,
        &["backup", "now", "ghost", "-n", &ns.name, "--no-wait"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let name = text
        .split_whitespace()
        .find(|w| w.starts_with("ghost-manual-"))
        .unwrap_or_else(|| panic!("no name in {text}"));
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let created = backups.get(name).await.expect("the EtcdBackup exists");
    assert_eq!(created.spec.cluster_name, "ghost");
    assert!(!text.contains("succeeded"), "{text}");
}
