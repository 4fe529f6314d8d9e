//! What the operator refuses to do: nothing changes while `spec.paused` is
//! set, nothing changes when the spec is invalid (a rule only the operator
//! checks), and a version change that skips a minor version is refused —
//! each reported in a condition with the message.

mod common;

use std::collections::BTreeSet;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use common::{member_pods, wait_for_condition, wait_for_members};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

async fn pod_uids(cluster: &TestCluster, ns: &str, name: &str) -> BTreeSet<String> {
    member_pods(cluster, ns, name)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect()
}

fn merge(value: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(value)
}

#[tokio::test]
async fn paused_invalid_and_skipping_specs_leave_the_running_cluster_alone() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-guards").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "guarded", "namespace": ns.name},
        "spec": {"size": 1, "version": "3.5.35", "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "guarded", 1).await;
    let pods_before = pod_uids(&cluster, &ns.name, "guarded").await;
    let params = PatchParams::default();

    // Paused: a scale-up is not carried out, and the condition says why.
    api.patch(
        "guarded",
        &params,
        &merge(serde_json::json!({"spec": {"paused": true, "size": 3}})),
    )
    .await
    .expect("pause and scale");
    let message = wait_for_condition(&api, "guarded", "Progressing", "False", "Paused").await;
    assert!(message.contains("paused"), "{message}");
    assert_eq!(pod_uids(&cluster, &ns.name, "guarded").await, pods_before);

    // Invalid (a rule of the operator's, not of the schema): ETCD_* variables.
    api.patch(
        "guarded",
        &params,
        &merge(serde_json::json!({"spec": {"paused": false, "podTemplate": {"env": [{"name": "ETCD_NAME", "value": "x"}]}}})),
    )
    .await
    .expect("invalid patch is stored");
    let message = wait_for_condition(&api, "guarded", "Degraded", "True", "InvalidSpec").await;
    assert!(
        message.contains("spec.podTemplate.env[0].name"),
        "{message}"
    );
    let phase = api
        .get("guarded")
        .await
        .expect("get")
        .status
        .and_then(|s| s.phase);
    assert_eq!(phase, Some(bosun_api::cluster::ClusterPhase::Invalid));
    assert_eq!(pod_uids(&cluster, &ns.name, "guarded").await, pods_before);

    // Back to valid, size 1; then two minor versions ahead of what runs
    // (each spec step is one minor, as the schema demands, but the members
    // still run 3.5): refused, members keep 3.5.
    api.patch(
        "guarded",
        &params,
        &merge(serde_json::json!({"spec": {"podTemplate": null, "size": 1, "paused": true}})),
    )
    .await
    .expect("valid again, paused");
    api.patch(
        "guarded",
        &params,
        &merge(serde_json::json!({"spec": {"version": "3.6.16"}})),
    )
    .await
    .expect("one minor up");
    api.patch(
        "guarded",
        &params,
        &merge(serde_json::json!({"spec": {"version": "3.7.3", "paused": false}})),
    )
    .await
    .expect("another minor up");
    let message =
        wait_for_condition(&api, "guarded", "Degraded", "True", "VersionChangeRefused").await;
    assert!(message.contains("skips a minor version"), "{message}");
    assert_eq!(pod_uids(&cluster, &ns.name, "guarded").await, pods_before);
}
