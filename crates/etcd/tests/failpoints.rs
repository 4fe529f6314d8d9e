//! The failpoint matrix: each operation — create, scale down, heal,
//! upgrade, an upgrade given up, bootstrap restore, in-place restore,
//! backup — with the operator
//! crashed once at each crash point on its path (`crash_point!` in the
//! operator's code), then restarted, and the outcome judged by reading etcd
//! and the API server directly, never the operator's own status.
//!
//! Each (operation, crash point) pair is one test in a namespace of its
//! own, with its own `bosun operator --watch-namespace` processes on the
//! host: first one armed with the crash point (`FAILPOINTS`), which must
//! exit with the crash code — proof that the point is on the path — then a
//! clean one that must finish the work. The pairs need a dev cluster
//! without an installed operator (which would act in their namespaces
//! too) and a `bosun` built with `--features bosun/failpoints`:
//! scripts/test.sh runs them in a phase of their own.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use bosun_devcluster::fixture::{BackupDir, TestCluster, bosun_binary};
use bosun_devcluster::readiness::wait_until;
use bosun_etcd::cluster::objects;
use bosun_etcd::failpoints::CRASH_EXIT_CODE;
use common::{DEADLINE, POLL, count_keys, etcd_client, member_ids, member_pods};
use etcd_client::{Client as EtcdClient, GetOptions};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

/// How long an armed operator may take to reach its crash point.
const CRASH_DEADLINE: Duration = Duration::from_secs(150);

/// A `bosun operator` process watching one namespace; killed when dropped.
struct Operator {
    child: Child,
}

impl Operator {
    /// Starts an operator for `namespace`, with `crash_point` armed if given.
    fn start(cluster: &TestCluster, namespace: &str, crash_point: Option<&str>) -> Self {
        let mut command = Command::new(bosun_binary());
        command
            .args(["operator", "--kubeconfig"])
            .arg(&cluster.kubeconfig)
            .arg(format!(
                "--backup-dir={}",
                bosun_devcluster::layout::Layout::new(cluster.state_dir())
                    .backups()
                    .display()
            ))
            .args([
                "--watch-namespace",
                namespace,
                // One operator per namespace at a time: no election needed,
                // and a restarted one starts at once.
                "--leader-elect=false",
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "info,kube_client::client::builder=off")
            .stdin(Stdio::null());
        if let Some(point) = crash_point {
            command.env("FAILPOINTS", format!("{point}=return"));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bosun_binary().display()));
        Operator { child }
    }

    /// Waits until the operator exits, and asserts it did at the crash point.
    async fn assert_crashes(&mut self, crash_point: &str) {
        let started = std::time::Instant::now();
        loop {
            match self.child.try_wait().expect("the operator's status") {
                Some(status) => {
                    assert_eq!(
                        status.code(),
                        Some(CRASH_EXIT_CODE),
                        "the operator armed with {crash_point} exited otherwise ({status}); \
                         is bosun built with --features bosun/failpoints?"
                    );
                    return;
                }
                None if started.elapsed() > CRASH_DEADLINE => {
                    panic!("crash point {crash_point} was not reached within {CRASH_DEADLINE:?}")
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }
}

impl Operator {
    /// Waits for this armed operator to crash at `point`, then starts the
    /// clean one that must finish the work.
    async fn crashed_then_replaced(
        mut self,
        cluster: &TestCluster,
        namespace: &str,
        point: &str,
    ) -> Operator {
        self.assert_crashes(point).await;
        Operator::start(cluster, namespace, None)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_object(ns: &str, name: &str, size: i32, extra: serde_json::Value) -> EtcdCluster {
    let mut spec = serde_json::json!({"size": size, "storage": {"size": "128Mi"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("cluster object")
}

async fn create_cluster(
    api: &Api<EtcdCluster>,
    ns: &str,
    name: &str,
    size: i32,
    extra: serde_json::Value,
) {
    api.create(
        &PostParams::default(),
        &cluster_object(ns, name, size, extra),
    )
    .await
    .expect("create cluster");
}

/// Writes `/fp/<from>` .. `/fp/<to - 1>`.
async fn write_keys(etcd: &mut EtcdClient, from: usize, to: usize) {
    for i in from..to {
        etcd.put(format!("/fp/{i:05}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
}

/// Exactly `/fp/00000` .. `/fp/<n - 1>`, with their values.
async fn assert_exactly_keys(etcd: &mut EtcdClient, n: usize) {
    assert_eq!(count_keys(etcd, "/fp/").await, n as i64, "key count");
    let all = etcd
        .get("/fp/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get keys");
    for (i, kv) in all.kvs().iter().enumerate() {
        assert_eq!(kv.key_str().expect("utf-8"), format!("/fp/{i:05}"));
        assert_eq!(kv.value_str().expect("utf-8"), format!("v{i}"));
    }
}

/// The oracle of a cluster at rest, read from etcd and the API server:
/// `size` started voters and no learner in etcd's own member list; one
/// live pod and one volume per member and nothing else of ours; every
/// volume marked as holding its member; and the cluster serves writes.
/// Waits until it holds (the restarted operator is finishing), then
/// asserts it.
async fn wait_for_cluster_at_rest(cluster: &TestCluster, ns: &str, name: &str, size: usize) {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
    let outcome = wait_until(
        &format!("{name} to be at rest with {size} members"),
        DEADLINE,
        POLL,
        || async {
            let pods: Vec<_> = member_pods(cluster, ns, name)
                .await
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if pods.len() != size || !pods.iter().all(common::is_ready) {
                return Ok(false);
            }
            let volumes = pvcs
                .list(&ListParams::default().labels(&objects::label_selector(name)))
                .await
                .map_err(|e| e.to_string())?
                .items;
            let mut etcd = etcd_client(cluster, ns, name).await;
            let Ok(list) = etcd.member_list().await else {
                return Ok(false);
            };
            let mut members: Vec<String> = list
                .members()
                .iter()
                .filter(|m| !m.is_learner() && !m.name().is_empty())
                .map(|m| m.name().to_string())
                .collect();
            members.sort();
            let mut pod_names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            pod_names.sort();
            let mut volume_names: Vec<String> = volumes.iter().map(|v| v.name_any()).collect();
            volume_names.sort();
            let held = volumes.iter().all(objects::held_member);
            Ok(list.members().len() == size
                && members == pod_names
                && volume_names == pod_names
                && held)
        },
    )
    .await;
    if let Err(e) = outcome {
        let pods: Vec<String> = member_pods(cluster, ns, name)
            .await
            .iter()
            .map(|p| {
                format!(
                    "{} {:?}",
                    p.name_any(),
                    p.status.as_ref().and_then(|s| s.phase.clone())
                )
            })
            .collect();
        panic!("{e}\npods: {pods:?}");
    }
    let mut etcd = etcd_client(cluster, ns, name).await;
    etcd.put("/fp-probe", "ok", None)
        .await
        .expect("the cluster serves writes");
}

/// Runs the clean operator that prepares a pair's starting state, waits for
/// `ready`, then stops it.
async fn prepare<F, Fut>(cluster: &TestCluster, ns: &str, ready: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let operator = Operator::start(cluster, ns, None);
    ready().await;
    drop(operator);
}

/// Create: a cluster of three from nothing, crashed at `point`.
async fn create(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    create_cluster(&api, &ns.name, "db", 3, serde_json::json!({})).await;
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 3).await;
}

/// A cluster of `size` with `keys` keys, made by a clean operator.
async fn prepared_cluster(
    cluster: &TestCluster,
    ns: &str,
    size: usize,
    keys: usize,
    extra: serde_json::Value,
) {
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), ns);
    prepare(cluster, ns, || async {
        create_cluster(&api, ns, "db", i32::try_from(size).expect("size"), extra).await;
        wait_for_cluster_at_rest(cluster, ns, "db", size).await;
        let mut etcd = etcd_client(cluster, ns, "db").await;
        write_keys(&mut etcd, 0, keys).await;
    })
    .await;
}

/// Scale down 3 → 1, crashed at `point`: one member left, every key.
async fn scale_down(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    prepared_cluster(&cluster, &ns.name, 3, 100, serde_json::json!({})).await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"size": 1}})),
    )
    .await
    .expect("scale down");
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 100).await;
}

/// Heal: a member pod deleted, crashed at `point`: the same members (etcd's
/// IDs unchanged), every key.
async fn heal(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    prepared_cluster(&cluster, &ns.name, 3, 100, serde_json::json!({})).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    let ids_before = member_ids(&mut etcd).await;
    drop(etcd);
    let victim = member_pods(&cluster, &ns.name, "db")
        .await
        .remove(0)
        .name_any();
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("delete a member pod");
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    let ids_after = member_ids(&mut etcd).await;
    assert_eq!(ids_after, ids_before, "a healed member keeps its identity");
    assert_exactly_keys(&mut etcd, 100).await;
}

/// Upgrade 3.5 → 3.6 of three members, crashed at `point`: every member
/// runs 3.6 by its own word, every key.
async fn upgrade(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    prepared_cluster(
        &cluster,
        &ns.name,
        3,
        100,
        serde_json::json!({"version": "3.5.35"}),
    )
    .await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": "3.6.16"}})),
    )
    .await
    .expect("upgrade");
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_until("every member to run 3.6.16", DEADLINE, POLL, || async {
        let endpoints: Vec<String> = member_pods(&cluster, &ns.name, "db")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .map(|ip| format!("http://{ip}:2379"))
            .collect();
        if endpoints.len() != 3 {
            return Ok(false);
        }
        for endpoint in endpoints {
            let Ok(mut etcd) = EtcdClient::connect([endpoint], None).await else {
                return Ok(false);
            };
            match etcd.status().await {
                Ok(status) if status.version() == "3.6.16" => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 100).await;
}

/// A one-shot file backup of the prepared cluster, taken by a clean
/// operator; returns its EtcdBackup's name.
async fn prepared_backup(cluster: &TestCluster, ns: &str, dir: &BackupDir) -> String {
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), ns);
    prepare(cluster, ns, || async {
        backups
            .create(&PostParams::default(), &file_backup(ns, "once", dir))
            .await
            .expect("create backup");
        common::wait_for_backup_phase(&backups, "once", "Succeeded").await;
    })
    .await;
    "once".to_string()
}

fn file_backup(ns: &str, name: &str, dir: &BackupDir) -> EtcdBackup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterName": "db", "storage": {"file": {"path": dir.0.display().to_string()}},
                 "retention": {"maxBackups": 1}},
    }))
    .expect("backup object")
}

/// Bootstrap restore: a new cluster seeded from a backup, crashed at
/// `point`: exactly the backup's keys.
async fn bootstrap_restore(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    let dir = BackupDir::new(&cluster, test);
    prepared_cluster(&cluster, &ns.name, 1, 150, serde_json::json!({})).await;
    let backup = prepared_backup(&cluster, &ns.name, &dir).await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    create_cluster(
        &api,
        &ns.name,
        "restored",
        1,
        serde_json::json!({"bootstrap": {"restore": {"source": {"backup": {"name": backup}}}}}),
    )
    .await;
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_for_cluster_at_rest(&cluster, &ns.name, "restored", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "restored").await;
    assert_exactly_keys(&mut etcd, 150).await;
}

/// In-place restore of a cluster with 100 keys written after its backup,
/// crashed at `point`: exactly the backup's keys, the restore succeeded,
/// and the cluster's mark is gone.
async fn restore_in_place(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    let dir = BackupDir::new(&cluster, test);
    prepared_cluster(&cluster, &ns.name, 1, 150, serde_json::json!({})).await;
    let backup = prepared_backup(&cluster, &ns.name, &dir).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    write_keys(&mut etcd, 150, 250).await;
    drop(etcd);
    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    let restore: EtcdRestore = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
        "metadata": {"name": "back", "namespace": ns.name},
        "spec": {"clusterName": "db", "source": {"backup": {"name": backup}}},
    }))
    .expect("restore object");
    restores
        .create(&PostParams::default(), &restore)
        .await
        .expect("create restore");
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_until("the restore to succeed", DEADLINE, POLL, || async {
        let r = restores.get("back").await.map_err(|e| e.to_string())?;
        let phase = r.status.and_then(|s| s.phase).map(|p| format!("{p:?}"));
        if phase.as_deref() == Some("Failed") {
            return Err(format!(
                "the restore failed: {:?}",
                restores.get("back").await.ok().and_then(|r| r.status)
            ));
        }
        Ok(phase.as_deref() == Some("Succeeded"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_exactly_keys(&mut etcd, 150).await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let marked = api
        .get("db")
        .await
        .expect("get cluster")
        .annotations()
        .contains_key(objects::RESTORE_ANNOTATION);
    assert!(!marked, "the restore mark outlived the restore");
}

/// Backup to a directory with retention of one, crashed at `point`: the
/// next run succeeds, its record names a file that is there with the
/// recorded size, and retention leaves one snapshot.
async fn backup(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    let dir = BackupDir::new(&cluster, test);
    prepared_cluster(&cluster, &ns.name, 1, 150, serde_json::json!({})).await;
    prepared_backup(&cluster, &ns.name, &dir).await;
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    backups
        .create(
            &PostParams::default(),
            &file_backup(&ns.name, "again", &dir),
        )
        .await
        .expect("create backup");
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    let done = common::wait_for_backup_phase(&backups, "again", "Succeeded").await;
    let record = done.status.expect("status").backups[0].clone();
    let file = std::path::PathBuf::from(record.location.trim_start_matches("file://"));
    let size = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .len();
    assert_eq!(i64::try_from(size).expect("size"), record.size_bytes);
    let snapshots: Vec<_> = dir
        .files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "db"))
        .filter(|f| f.starts_with(file.parent().expect("a directory")))
        .collect();
    assert_eq!(
        snapshots,
        vec![file],
        "retention keeps one snapshot of this EtcdBackup"
    );
}

/// Halted upgrade: a cluster of one upgraded to an image that cannot start
/// gives the upgrade up after its deadline (10 s), crashed at `point`: the
/// member runs its old image again, as itself, with every key.
async fn halt_upgrade(point: &str, test: &str) {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(test).await;
    prepared_cluster(
        &cluster,
        &ns.name,
        1,
        50,
        serde_json::json!({"version": "3.6.16", "memberStartDeadlineSeconds": 10}),
    )
    .await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    let ids = member_ids(&mut etcd).await;
    let image = || async {
        member_pods(&cluster, &ns.name, "db")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let spec = p.spec.as_ref()?;
                spec.containers
                    .iter()
                    .find(|c| c.name == "etcd")?
                    .image
                    .clone()
            })
            .next()
            .unwrap_or_default()
    };
    let before = image().await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let armed = Operator::start(&cluster, &ns.name, Some(point));
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"version": "3.6.17", "image": "127.0.0.1:1/etcd"}}),
        ),
    )
    .await
    .expect("upgrade to an image nobody serves");
    let _clean = armed.crashed_then_replaced(&cluster, &ns.name, point).await;
    wait_until(
        "the member's old image to be back",
        DEADLINE,
        POLL,
        || async { Ok(image().await == before) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_cluster_at_rest(&cluster, &ns.name, "db", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "db").await;
    assert_eq!(member_ids(&mut etcd).await, ids, "the same member");
    assert_exactly_keys(&mut etcd, 50).await;
}

/// One test per (operation, crash point).
macro_rules! matrix {
    ($($operation:ident { $($test:ident => $point:literal),* $(,)? })*) => {
        $($(
            #[tokio::test]
            #[ignore = "needs a dev cluster without an installed operator and a failpoints build: scripts/test.sh runs it in its own phase"]
            async fn $test() {
                $operation($point, stringify!($test)).await;
            }
        )*)*
    };
}

matrix! {
    create {
        create_crash_before_seed_volume => "cluster.create-seed.before-volume",
        create_crash_after_seed_volume => "cluster.create-seed.after-volume",
        create_crash_after_seed_pod => "cluster.create-seed.after-pod",
        create_crash_before_marking_held => "cluster.mark-held.before",
        create_crash_after_marking_held => "cluster.mark-held.after",
        create_crash_before_learner_add => "cluster.add-learner.before-add",
        create_crash_after_learner_add => "cluster.add-learner.after-add",
        create_crash_after_learner_volume => "cluster.add-learner.after-volume",
        create_crash_after_learner_pod => "cluster.add-learner.after-pod",
        create_crash_before_promote => "cluster.promote.before",
        create_crash_after_promote => "cluster.promote.after",
    }
    scale_down {
        scale_down_crash_before_remove => "cluster.remove-member.before-remove",
        scale_down_crash_after_remove => "cluster.remove-member.after-remove",
        scale_down_crash_after_delete => "cluster.remove-member.after-delete",
    }
    heal {
        heal_crash_before_pod => "cluster.create-pod.before",
        heal_crash_after_pod => "cluster.create-pod.after",
    }
    upgrade {
        upgrade_crash_before_delete => "cluster.upgrade.before-delete",
        upgrade_crash_after_delete => "cluster.upgrade.after-delete",
        upgrade_crash_before_move_leader => "cluster.move-leader.before",
        upgrade_crash_after_move_leader => "cluster.move-leader.after",
    }
    halt_upgrade {
        halt_upgrade_crash_before_record => "cluster.halt.before",
        halt_upgrade_crash_after_record => "cluster.halt.after",
    }
    bootstrap_restore {
        seed_restore_crash_before_volume => "cluster.create-seed.before-volume",
        seed_restore_crash_after_volume => "cluster.create-seed.after-volume",
        seed_restore_crash_after_pod => "cluster.create-seed.after-pod",
    }
    restore_in_place {
        restore_crash_before_pin => "restore.pin.before-status",
        restore_crash_after_pin => "restore.pin.after-status",
        restore_crash_before_mark => "restore.mark.before",
        restore_crash_after_mark => "restore.mark.after",
        restore_crash_before_acknowledge => "restore-in-place.acknowledge.before",
        restore_crash_after_acknowledge => "restore-in-place.acknowledge.after",
        restore_crash_before_wipe => "restore-in-place.wipe.before",
        restore_crash_after_wipe => "restore-in-place.wipe.after",
        restore_crash_before_finish => "restore-in-place.finish.before",
        restore_crash_after_finish_acknowledge => "restore-in-place.finish.after-acknowledge",
        restore_crash_after_unmark => "restore-in-place.finish.after-unmark",
    }
    backup {
        backup_crash_before_upload => "backup.upload.before",
        backup_crash_before_retention => "backup.retention.before",
        backup_crash_after_retention => "backup.retention.after",
    }
}
