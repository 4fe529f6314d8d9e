//! An etcd member whose data lives on a PersistentVolumeClaim of the dev
//! cluster's default StorageClass keeps its keys when its process is killed
//! (the kubelet restarts the container in place) and when its pod is
//! deleted and created again on the same claim.

mod common;

use std::time::Instant;

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::fixture::kill_container_from_host;
use common::{
    Etcdctl, POD_DEADLINE, client_endpoint, create_pod, delete_pod_and_wait, describe, is_ready,
    pod_ip, restart_count, single_member_pod, wait_for_pod, wait_ready,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::PostParams;

/// The name of the PersistentVolume bound to `claim`, once it is Bound.
async fn bound_volume(claims: &Api<PersistentVolumeClaim>, claim: &str) -> String {
    let claim = claims
        .get(claim)
        .await
        .unwrap_or_else(|e| panic!("reading claim {claim}: {e}"));
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    assert_eq!(
        phase,
        Some("Bound"),
        "claim of a Ready pod: {:?}",
        claim.status
    );
    claim
        .spec
        .and_then(|s| s.volume_name)
        .expect("a Bound claim names its volume")
}

#[tokio::test]
async fn killed_etcd_restarts_in_place_and_its_keys_survive_on_the_volume_and_pod_recreation() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("killed_etcd_keeps_keys").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let etcdctl = Etcdctl::new(&cluster);

    // No storageClassName: the default class (local-path) provisions it.
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "etcd-data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .expect("claim object");
    claims
        .create(&PostParams::default(), &claim)
        .await
        .unwrap_or_else(|e| panic!("creating claim: {e}"));
    let member = single_member_pod("etcd-0", "etcd", Some("etcd-data"));
    create_pod(&pods, &member).await;
    let pod = wait_ready(&pods, "etcd-0").await;
    let volume = bound_volume(&claims, "etcd-data").await;
    let endpoints = vec![client_endpoint(
        &pod_ip(&pod).expect("a Ready pod has an IP"),
    )];
    etcdctl
        .put(&endpoints, "/survivor", "written before the crash")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A crash, not a shutdown: SIGKILL gives etcd no chance to flush or
    // close anything, so only what it had committed to disk can survive.
    let start = Instant::now();
    let pid = kill_container_from_host(&pod, "etcd").unwrap_or_else(|e| panic!("{e}"));
    eprintln!("killed etcd (host PID {pid})");
    let pod = wait_for_pod(
        &pods,
        "etcd-0",
        "to be Ready again after one restart",
        POD_DEADLINE,
        |p| restart_count(p, "etcd") >= 1 && is_ready(p),
    )
    .await;
    eprintln!("etcd restarted and Ready after {:?}", start.elapsed());
    assert_eq!(restart_count(&pod, "etcd"), 1, "{}", describe(&pod));
    let last = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("the restarted container's last state is terminated");
    assert_eq!(last.exit_code, 137, "killed by SIGKILL: {last:?}");
    let endpoints = vec![client_endpoint(
        &pod_ip(&pod).expect("a Ready pod has an IP"),
    )];
    assert_eq!(
        etcdctl.get(&endpoints, "/survivor").await,
        Ok(Some("written before the crash".to_string())),
        "the key outlived the crash"
    );

    // A new pod on the same claim is a new sandbox with a new IP and the
    // same volume: the member comes back with its data.
    delete_pod_and_wait(&pods, "etcd-0").await;
    let start = Instant::now();
    create_pod(&pods, &member).await;
    let pod = wait_ready(&pods, "etcd-0").await;
    eprintln!("recreated pod Ready after {:?}", start.elapsed());
    assert_eq!(restart_count(&pod, "etcd"), 0, "{}", describe(&pod));
    assert_eq!(
        bound_volume(&claims, "etcd-data").await,
        volume,
        "the claim is still bound to the same volume"
    );
    let endpoints = vec![client_endpoint(
        &pod_ip(&pod).expect("a Ready pod has an IP"),
    )];
    assert_eq!(
        etcdctl.get(&endpoints, "/survivor").await,
        Ok(Some("written before the crash".to_string())),
        "the key outlived the pod"
    );
}
