//! Killing the operator in the middle of an operation: after the restart it
//! finishes correctly, because every step is decided from observed state.
//! The dev cluster runs `bosun operator` as a supervised process, which is
//! what restarts it here after a `kill -9`.

mod common;

use std::time::Duration;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_devcluster::supervisor::processes_using;
use common::{DEADLINE, POLL, count_keys, etcd_client, wait_for_members};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

fn kill_operator(cluster: &TestCluster) -> i32 {
    let state_dir = cluster.kubeconfig.parent().expect("state dir");
    let (pid, _) = processes_using(state_dir)
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains(" operator --kubeconfig"))
        .expect("the dev cluster runs the operator");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    pid
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
    let pid = kill_operator(cluster);
    eprintln!("killed the operator (pid {pid}) once {what}");
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
