//! What the operator refuses to do: nothing changes while `spec.paused` is
//! set, nothing changes when the spec is invalid (a rule only the operator
//! checks: refused by the API server where the admission webhooks are
//! installed), and a version change that skips a minor version is refused —
//! each reported in a condition with the message, and held over a window;
//! and pods and volumes of other software that carry the same recommended
//! labels are never taken for members.

mod common;

use std::collections::BTreeSet;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, UNCHANGED_WINDOW, admission_webhooks_installed, assert_refused_at_admission,
    assert_unchanged_for, is_ready, member_pods, wait_for_condition, wait_for_members,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};

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
    assert_unchanged_for("the member pods", &pods_before, UNCHANGED_WINDOW, || {
        pod_uids(&cluster, &ns.name, "guarded")
    })
    .await;

    // Invalid (a rule of the operator's, not of the schema): ETCD_* variables.
    // Where the admission webhooks are installed the API server refuses it;
    // where they are not, it is stored and the operator refuses to act.
    let invalid = api
        .patch(
            "guarded",
            &params,
            &merge(serde_json::json!({"spec": {"paused": false, "podTemplate": {"env": [{"name": "ETCD_NAME", "value": "x"}]}}})),
        )
        .await;
    if admission_webhooks_installed(&cluster).await {
        assert_refused_at_admission(invalid, &["spec.podTemplate.env[0].name"]);
    } else {
        invalid.expect("invalid patch is stored");
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
        assert_unchanged_for("the member pods", &pods_before, UNCHANGED_WINDOW, || {
            pod_uids(&cluster, &ns.name, "guarded")
        })
        .await;
    }

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
    assert_unchanged_for("the member pods", &pods_before, UNCHANGED_WINDOW, || {
        pod_uids(&cluster, &ns.name, "guarded")
    })
    .await;
}

/// Invariant: the operator acts only on what is its own. Another release's
/// pod and volume carry the same recommended labels
/// (`app.kubernetes.io/name=etcd`, `instance=<the cluster's name>`), as a
/// Helm etcd chart sets them: they are never deleted, never taken for
/// members, never routed to by the cluster's Services. Judged from the API
/// server: the objects' uids over a window, and the client Service's
/// endpoints.
#[tokio::test]
async fn pods_and_volumes_of_other_software_with_the_same_labels_are_left_alone() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-foreign").await;
    let labels = serde_json::json!({
        "app.kubernetes.io/name": "etcd",
        "app.kubernetes.io/instance": "db",
        "app.kubernetes.io/managed-by": "Helm",
    });
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let foreign_pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "data-db-0", "namespace": ns.name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }))
    .expect("pvc");
    pvcs.create(&PostParams::default(), &foreign_pvc)
        .await
        .expect("create the foreign volume");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let foreign_pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-0", "namespace": ns.name, "labels": labels},
        "spec": {
            "containers": [{
                "name": "etcd", "image": "gcr.io/etcd-development/etcd:v3.6.16",
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/etcd", "--data-dir=/var/lib/etcd/data"],
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}],
        },
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &foreign_pod)
        .await
        .expect("create the foreign pod");
    wait_until("the foreign pod to run", DEADLINE, POLL, || async {
        let pod = pods.get("db-0").await.map_err(|e| e.to_string())?;
        Ok(is_ready(&pod))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let foreign_ip = pods
        .get("db-0")
        .await
        .expect("the foreign pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("an IP");

    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "db", "namespace": ns.name},
        "spec": {"size": 3, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "db", 3).await;

    let foreign = || async {
        let pod = pods.get_opt("db-0").await.expect("get pod");
        let pvc = pvcs.get_opt("data-db-0").await.expect("get pvc");
        (
            pod.filter(|p| p.metadata.deletion_timestamp.is_none())
                .and_then(|p| p.metadata.uid),
            pvc.filter(|p| p.metadata.deletion_timestamp.is_none())
                .and_then(|p| p.metadata.uid),
        )
    };
    let expected = (foreign_pod_uid(&pods).await, foreign_pvc_uid(&pvcs).await);
    assert_unchanged_for(
        "the other release's pod and volume",
        &expected,
        UNCHANGED_WINDOW,
        foreign,
    )
    .await;
    let status = api.get("db").await.expect("get").status.expect("status");
    assert!(
        status.members.iter().all(|m| m.name != "db-0"),
        "{:?}",
        status.members
    );
    // The client Service routes to the cluster's members only.
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &ns.name);
    let addresses = || async {
        let mut addresses: Vec<String> = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=db-client"))
            .await
            .expect("endpoint slices")
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .flat_map(|e| e.addresses)
            .collect();
        addresses.sort();
        addresses
    };
    wait_until(
        "the client Service to list three members",
        DEADLINE,
        POLL,
        || async { Ok(addresses().await.len() == 3) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let routed = addresses().await;
    assert!(!routed.contains(&foreign_ip), "{routed:?}");
    let member_ips: Vec<String> = member_pods(&cluster, &ns.name, "db")
        .await
        .into_iter()
        .filter_map(|p| p.status.and_then(|s| s.pod_ip))
        .collect();
    assert!(
        routed.iter().all(|a| member_ips.contains(a)),
        "{routed:?} vs {member_ips:?}"
    );
}

async fn foreign_pod_uid(pods: &Api<Pod>) -> Option<String> {
    pods.get("db-0").await.expect("pod").metadata.uid
}

async fn foreign_pvc_uid(pvcs: &Api<PersistentVolumeClaim>) -> Option<String> {
    pvcs.get("data-db-0").await.expect("pvc").metadata.uid
}
