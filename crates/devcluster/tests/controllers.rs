//! The dev cluster's control plane does its jobs: the controller-manager's
//! Deployment and ReplicaSet controllers follow a scale, its garbage
//! collector deletes what an owner owned, and the API server serializes
//! Lease renewals by resourceVersion, as leader election relies on.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::image::PAUSE_IMAGE;
use bosun_devcluster::readiness::wait_until;
use common::POLL;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(90);

/// Scales the Deployment and waits until exactly `replicas` pods of it
/// exist (none left terminating) and the Deployment reports them Ready.
async fn scale_and_wait(deployments: &Api<Deployment>, pods: &Api<Pod>, name: &str, replicas: i32) {
    let start = Instant::now();
    deployments
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap_or_else(|e| panic!("scaling {name} to {replicas}: {e}"));
    let selector = ListParams::default().labels(&format!("app={name}"));
    let selector = &selector;
    wait_until(
        &format!("deployment {name} to have {replicas} Ready pods and no others"),
        DEADLINE,
        POLL,
        || async move {
            let listed = pods.list(selector).await.map_err(|e| e.to_string())?;
            let deployment = deployments.get(name).await.map_err(|e| e.to_string())?;
            let status = deployment.status.unwrap_or_default();
            let observed = format!(
                "{} pods ({} terminating); status replicas={:?} ready={:?}",
                listed.items.len(),
                listed
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_some())
                    .count(),
                status.replicas,
                status.ready_replicas,
            );
            if listed.items.len() == replicas as usize
                && status.replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
            {
                Ok(true)
            } else {
                Err(observed)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{name} at {replicas} pods after {:?}", start.elapsed());
}

#[tokio::test]
async fn deployment_scales_from_1_to_3_to_1_and_its_pods_follow() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("deployment_scales").await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "pause"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "pause"}},
            "template": {
                "metadata": {"labels": {"app": "pause"}},
                "spec": {
                    // The pause image sleeps as PID 1 without a SIGTERM handler;
                    // a short grace period keeps scale-down quick.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "pause",
                        "image": PAUSE_IMAGE,
                        "imagePullPolicy": "IfNotPresent"
                    }]
                }
            }
        }
    }))
    .expect("deployment object");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap_or_else(|e| panic!("creating deployment: {e}"));
    for replicas in [1, 3, 1] {
        scale_and_wait(&deployments, &pods, "pause", replicas).await;
    }
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: o.name_any(),
                    uid: o.uid().expect("a created object has a uid"),
                    block_owner_deletion: Some(true),
                    controller: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "owned".into(),
            owner.is_some().to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Creates an owner and a dependent, deletes the owner with `delete`, and
/// waits until the garbage collector has removed the dependent (and, for
/// foreground deletion, the owner after it).
async fn owner_deletion_collects_dependent(
    config_maps: &Api<ConfigMap>,
    prefix: &str,
    delete: DeleteParams,
) {
    let owner_name = format!("{prefix}-owner");
    let dependent_name = format!("{prefix}-dependent");
    let owner = config_maps
        .create(&PostParams::default(), &config_map(&owner_name, None))
        .await
        .unwrap_or_else(|e| panic!("creating {owner_name}: {e}"));
    config_maps
        .create(
            &PostParams::default(),
            &config_map(&dependent_name, Some(&owner)),
        )
        .await
        .unwrap_or_else(|e| panic!("creating {dependent_name}: {e}"));
    // The garbage collector leaves a dependent of a live owner alone.
    assert!(
        config_maps
            .get_opt(&dependent_name)
            .await
            .expect("reading the dependent")
            .is_some()
    );

    let start = Instant::now();
    let foreground = delete.propagation_policy == Some(PropagationPolicy::Foreground);
    let deleted = config_maps
        .delete(&owner_name, &delete)
        .await
        .unwrap_or_else(|e| panic!("deleting {owner_name}: {e}"));
    if foreground {
        // Foreground: the owner stays, marked, until its dependents are gone.
        let owner = deleted.left().expect("the owner waits for its dependents");
        assert!(
            owner.finalizers().iter().any(|f| f == "foregroundDeletion"),
            "finalizers of the owner: {:?}",
            owner.finalizers()
        );
    }
    let (owner_name, dependent_name) = (&owner_name, &dependent_name);
    wait_until(
        &format!("{prefix}: the garbage collector to delete {dependent_name} and {owner_name}"),
        DEADLINE,
        POLL,
        || async move {
            let dependent = config_maps
                .get_opt(dependent_name)
                .await
                .map_err(|e| e.to_string())?;
            let owner = config_maps
                .get_opt(owner_name)
                .await
                .map_err(|e| e.to_string())?;
            match (dependent, owner) {
                (None, None) => Ok(true),
                (dependent, owner) => Err(format!(
                    "dependent exists: {}, owner exists: {} (finalizers {:?})",
                    dependent.is_some(),
                    owner.is_some(),
                    owner.map(|o| o.finalizers().to_vec())
                )),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{prefix}: dependent collected after {:?}", start.elapsed());
}

#[tokio::test]
async fn dependents_are_garbage_collected_after_their_owner_is_deleted() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("dependents_are_collected").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);

    owner_deletion_collects_dependent(&config_maps, "background", DeleteParams::background()).await;
    owner_deletion_collects_dependent(&config_maps, "foreground", DeleteParams::foreground()).await;
}

#[tokio::test]
async fn lease_is_renewed_under_resource_version_and_a_stale_renewal_conflicts() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("lease_renewal").await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &ns.name);

    // The API server keeps MicroTime to the microsecond.
    let now = Timestamp::now().as_microsecond();
    let acquired = Timestamp::from_microsecond(now).expect("now is a valid time");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "leader"},
        "spec": {
            "holderIdentity": "candidate-a",
            "leaseDurationSeconds": 15,
            "acquireTime": MicroTime(acquired),
            "renewTime": MicroTime(acquired),
            "leaseTransitions": 0
        }
    }))
    .expect("lease object");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("creating lease: {e}"));
    let created_version = created
        .resource_version()
        .expect("a created object has a resourceVersion");

    // Renew as a leader elector does: read, set renewTime, write back with
    // the resourceVersion that was read as precondition.
    let renewed_at = MicroTime(acquired + Duration::from_secs(2));
    let mut renewal = created.clone();
    renewal.spec.as_mut().expect("lease spec").renew_time = Some(renewed_at.clone());
    let renewed = leases
        .replace("leader", &PostParams::default(), &renewal)
        .await
        .unwrap_or_else(|e| panic!("renewing the lease: {e}"));
    let spec = renewed.spec.as_ref().expect("lease spec");
    assert_eq!(spec.renew_time.as_ref(), Some(&renewed_at));
    assert_eq!(spec.holder_identity.as_deref(), Some("candidate-a"));
    assert_ne!(
        renewed.resource_version().as_deref(),
        Some(created_version.as_str()),
        "a renewal makes a new resourceVersion"
    );

    // A second elector that read the lease before the renewal must not win.
    let mut stale = created;
    let spec = stale.spec.as_mut().expect("lease spec");
    spec.holder_identity = Some("candidate-b".into());
    spec.renew_time = Some(MicroTime(acquired + Duration::from_secs(3)));
    match leases
        .replace("leader", &PostParams::default(), &stale)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale-resourceVersion update must conflict, got {other:?}"),
    }
    let current = leases.get("leader").await.expect("reading the lease");
    assert_eq!(
        current.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("candidate-a"),
        "the stale update changed nothing"
    );
}
