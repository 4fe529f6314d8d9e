//! The etcd API's admission webhooks, served by the installed operator
//! (`bosun dev up`), judged by what the real API server stores and answers:
//!
//! - each kind of mistake the webhooks catch is refused at create (or
//!   update) with one message naming the field and what is allowed, and
//!   the good objects beside them are admitted;
//! - with the operator scaled to zero, Pods, Deployments and StatefulSets
//!   are still created (nothing of Kubernetes' own depends on bosun), and
//!   an EtcdCluster is refused, not stored unchecked.
//!
//! Needs a dev cluster with the installed operator.

mod common;

use std::time::Duration;

use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use bosun_devcluster::fixture::{BackupDir, OPERATOR_NAMESPACE, TestCluster};
use bosun_devcluster::image::PAUSE_IMAGE;
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, admission_webhooks_installed, assert_refused_at_admission,
    wait_for_backup_phase, wait_for_members,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The operator's Deployment as `bosun install` names it.
const OPERATOR_DEPLOYMENT: &str = "bosun-operator";

fn object<K: DeserializeOwned>(kind: &str, ns: &str, name: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

async fn assert_webhooks_installed(cluster: &TestCluster) {
    assert!(
        admission_webhooks_installed(cluster).await,
        "this test needs the operator as `bosun dev up` installs it, with its webhooks"
    );
}

async fn wait_for_restore_phase(api: &Api<EtcdRestore>, name: &str, phase: &str) {
    wait_until(
        &format!("EtcdRestore {name} to be {phase}"),
        DEADLINE,
        POLL,
        || async move {
            let restore = api.get(name).await.map_err(|e| e.to_string())?;
            Ok(restore
                .status
                .and_then(|s| s.phase)
                .is_some_and(|p| format!("{p:?}") == phase))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// User story: a user who applies a mistake hears about it from
/// `kubectl apply`, with the field and what would be accepted, instead of
/// from a condition later — and what is right goes through.
#[tokio::test]
async fn mistakes_are_refused_at_apply_with_the_field_and_what_is_allowed() {
    let cluster = TestCluster::connect().await;
    assert_webhooks_installed(&cluster).await;
    let ns = cluster.namespace("admission").await;
    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let backups: Api<EtcdBackup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let restores: Api<EtcdRestore> = Api::namespaced(cluster.client.clone(), &ns.name);
    let post = PostParams::default();

    // A version this bosun ships no image for; with an image of one's own
    // it is the user's call.
    let unshipped = json!({"size": 1, "version": "3.6.0", "storage": {"size": "256Mi"}});
    assert_refused_at_admission(
        clusters
            .create(
                &post,
                &object("EtcdCluster", &ns.name, "old", unshipped.clone()),
            )
            .await,
        &[
            "spec.version: this bosun ships no etcd image for 3.6.0",
            "3.6.16",
            "spec.image",
        ],
    );
    let mut own_image = unshipped;
    own_image["image"] = json!("registry.example.com/etcd");
    clusters
        .create(
            &dry_run(),
            &object("EtcdCluster", &ns.name, "old", own_image),
        )
        .await
        .expect("a version of one's own image is admitted");

    // Storage the operator would refuse: outside its backup directories,
    // or an object store without the tenant's own credentials.
    assert_refused_at_admission(
        backups
            .create(
                &post,
                &object(
                    "EtcdBackup",
                    &ns.name,
                    "etc",
                    json!({"clusterName": "db", "storage": {"file": {"path": "/etc/bosun-test"}}}),
                ),
            )
            .await,
        &["spec.storage", "/etc/bosun-test"],
    );
    assert_refused_at_admission(
        backups
            .create(
                &post,
                &object(
                    "EtcdBackup",
                    &ns.name,
                    "ambient",
                    json!({"clusterName": "db", "storage": {"s3": {"bucket": "backups"}}}),
                ),
            )
            .await,
        &["spec.storage", "credentialsSecret"],
    );
    assert_refused_at_admission(
        restores
            .create(
                &post,
                &object("EtcdRestore", &ns.name, "etc", json!({"clusterName": "db", "source": {"location": {"url": "file:///etc/hostname"}}})),
            )
            .await,
        &["spec.source.location.url"],
    );
    assert_refused_at_admission(
        restores
            .create(
                &post,
                &object(
                    "EtcdRestore",
                    &ns.name,
                    "ghost",
                    json!({"clusterName": "db", "source": {"backup": {"name": "ghost"}}}),
                ),
            )
            .await,
        &["spec.source.backup.name: EtcdBackup ghost does not exist"],
    );

    // A cluster with one backup.
    let dir = BackupDir::new(&cluster, "admission");
    clusters
        .create(
            &post,
            &object(
                "EtcdCluster",
                &ns.name,
                "db",
                json!({"size": 1, "version": "3.5.35", "storage": {"size": "256Mi"}}),
            ),
        )
        .await
        .expect("a good cluster is admitted");
    wait_for_members(&clusters, "db", 1).await;
    backups
        .create(
            &post,
            &object("EtcdBackup", &ns.name, "nightly", json!({"clusterName": "db", "storage": {"file": {"path": dir.0.display().to_string()}}})),
        )
        .await
        .expect("a backup inside the backup directory is admitted");
    wait_for_backup_phase(&backups, "nightly", "Succeeded").await;

    // An index the backup does not have.
    assert_refused_at_admission(
        restores
            .create(
                &post,
                &object("EtcdRestore", &ns.name, "second", json!({"clusterName": "db", "source": {"backup": {"name": "nightly", "index": 1}}})),
            )
            .await,
        &[
            "spec.source.backup.index: EtcdBackup nightly has 1 recorded backup(s); index 1 does not exist",
        ],
    );

    // Paused, the cluster takes no restore on: restore `back` pins and
    // marks the cluster, and holds there.
    let params = PatchParams::default();
    clusters
        .patch(
            "db",
            &params,
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    let back = json!({"clusterName": "db", "source": {"backup": {"name": "nightly"}}});
    restores
        .create(
            &post,
            &object("EtcdRestore", &ns.name, "back", back.clone()),
        )
        .await
        .expect("a restore of an existing record is admitted");
    wait_for_restore_phase(&restores, "back", "Running").await;

    // Mid-restore: no second restore, no size change, no upgrade.
    assert_refused_at_admission(
        restores
            .create(&post, &object("EtcdRestore", &ns.name, "again", back))
            .await,
        &["spec.clusterName: EtcdCluster db already has a restore in flight, EtcdRestore back"],
    );
    assert_refused_at_admission(
        clusters
            .patch("db", &params, &Patch::Merge(json!({"spec": {"size": 3}})))
            .await,
        &["spec.size: EtcdCluster db is being restored by EtcdRestore back, and its size stays 1"],
    );
    assert_refused_at_admission(
        clusters
            .patch(
                "db",
                &params,
                &Patch::Merge(json!({"spec": {"version": "3.6.16"}})),
            )
            .await,
        &[
            "spec.version: EtcdCluster db is being restored by EtcdRestore back, and its version stays 3.5.35",
        ],
    );

    // Resumed, the restore finishes, and the size change is admitted.
    clusters
        .patch(
            "db",
            &params,
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .expect("resume");
    wait_for_restore_phase(&restores, "back", "Succeeded").await;
    wait_until(
        "a size change to be admitted once the restore has finished",
        DEADLINE,
        POLL,
        || async {
            Ok(clusters
                .patch("db", &params, &Patch::Merge(json!({"spec": {"size": 3}})))
                .await
                .is_ok())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn operator_replicas(deployments: &Api<Deployment>) -> i32 {
    deployments
        .get(OPERATOR_DEPLOYMENT)
        .await
        .expect("the operator's Deployment")
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

async fn scale(deployments: &Api<Deployment>, replicas: i32) {
    deployments
        .patch(
            OPERATOR_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap_or_else(|e| panic!("scaling the operator to {replicas}: {e}"));
}

/// Scales the operator back to `replicas` when dropped (also when the test
/// fails): the other tests need it. The test's runtime is blocked in the
/// drop, so the scale runs on a thread of its own with its own runtime and
/// client (the test's client runs on the test's runtime).
struct ScaledBack {
    kubeconfig: std::path::PathBuf,
    replicas: i32,
}

impl Drop for ScaledBack {
    fn drop(&mut self) {
        let (kubeconfig, replicas) = (self.kubeconfig.clone(), self.replicas);
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let client = bosun_devcluster::cluster::client_from(&kubeconfig)
                    .await
                    .map_err(|e| e.to_string())?;
                scale(&Api::namespaced(client, OPERATOR_NAMESPACE), replicas).await;
                Ok::<(), String>(())
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = outcome.map_err(|_| "the scale thread panicked".to_string()) {
            eprintln!("scaling the operator back to {}: {e}", self.replicas);
        }
    }
}

fn pod_spec() -> Value {
    json!({"containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "IfNotPresent"}]})
}

fn from_json<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("an object")
}

/// Invariant: the webhook never blocks the cluster. With no operator at all
/// (scaled to zero), Kubernetes' own objects are created as ever, and the
/// etcd API fails closed with a message that says which webhook could not
/// be reached: nothing of bosun's is stored unchecked. Then the operator
/// is scaled back and serves again. Runs alone (.config/nextest.toml):
/// every other test's EtcdClusters would be refused meanwhile.
#[tokio::test]
async fn with_the_operator_scaled_to_zero_pods_are_created_and_etcd_objects_refused() {
    let cluster = TestCluster::connect().await;
    assert_webhooks_installed(&cluster).await;
    let ns = cluster.namespace("operator-at-zero").await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    let replicas = operator_replicas(&deployments).await;
    let restore = ScaledBack {
        kubeconfig: cluster.kubeconfig.clone(),
        replicas,
    };
    scale(&deployments, 0).await;
    wait_until("the operator's pods to be gone", DEADLINE, POLL, || async {
        cluster.operator_pods().await.map(|pods| pods.is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let post = PostParams::default();
    let labels = json!({"app": "plain"});
    Api::<Pod>::namespaced(cluster.client.clone(), &ns.name)
        .create(
            &post,
            &from_json(json!({"metadata": {"name": "plain"}, "spec": pod_spec()})),
        )
        .await
        .expect("a Pod is created without the operator");
    Api::<Deployment>::namespaced(cluster.client.clone(), &ns.name)
        .create(
            &post,
            &from_json(json!({"metadata": {"name": "plain"}, "spec": {
                "replicas": 1, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec()},
            }})),
        )
        .await
        .expect("a Deployment is created without the operator");
    Api::<StatefulSet>::namespaced(cluster.client.clone(), &ns.name)
        .create(
            &post,
            &from_json(json!({"metadata": {"name": "plain"}, "spec": {
                "replicas": 1, "serviceName": "plain", "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec()},
            }})),
        )
        .await
        .expect("a StatefulSet is created without the operator");
    // Their controllers still make pods.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_until(
        "the Deployment's and StatefulSet's pods",
        DEADLINE,
        POLL,
        || async {
            let list = pods
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list.items.len() >= 3)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let clusters: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let spec = json!({"size": 1, "storage": {"size": "256Mi"}});
    // The API server cannot reach the webhook and, failing closed, says so.
    let message = match clusters
        .create(&post, &object("EtcdCluster", &ns.name, "db", spec.clone()))
        .await
    {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!(
            "an EtcdCluster without an operator: {:?}",
            other.map(|c| c.meta().name.clone())
        ),
    };
    for needle in [
        "failed calling webhook",
        "validate-etcd-bosun-dev-v1alpha1-etcdcluster.etcd.bosun.dev",
        "bosun-operator-webhook.bosun-system.svc",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
    eprintln!("without an operator: {message}");
    assert!(
        clusters.get_opt("db").await.expect("get").is_none(),
        "the EtcdCluster was stored unchecked"
    );

    // Back: the replicas are ready (which needs their certificate trusted),
    // and the webhook admits again.
    drop(restore);
    cluster
        .wait_for_operator_replicas(replicas, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the webhook to admit an EtcdCluster again",
        DEADLINE,
        POLL,
        || async {
            Ok(clusters
                .create(
                    &dry_run(),
                    &object("EtcdCluster", &ns.name, "db", spec.clone()),
                )
                .await
                .is_ok())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
