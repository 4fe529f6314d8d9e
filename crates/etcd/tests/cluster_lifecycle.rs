//! The EtcdCluster controller on the real dev cluster, with real etcd pods:
//! the example cluster becomes Available with three voters, survives a scale
//! to five and back with every key intact, and leaves nothing behind when
//! it is deleted.

mod common;

use std::collections::BTreeSet;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_etcd::cluster::objects;
use common::{
    DEADLINE, POLL, count_keys, etcd_client, example_cluster, member_pods, wait_for_members,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::ListParams;

#[tokio::test]
async fn example_cluster_becomes_available_scales_3_5_3_keeping_keys_and_deletes_cleanly() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-lifecycle").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);

    let manifest = std::env::temp_dir().join(format!("{}-example.json", ns.name));
    std::fs::write(&manifest, example_cluster(&ns.name)).expect("write manifest");
    let started = std::time::Instant::now();
    cluster.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    wait_for_members(&api, "example", 3).await;
    eprintln!(
        "size 3 Available after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let table = cluster.kubectl_ok(&["get", "etcd", "-n", &ns.name]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "READY", "VERSION", "PHASE", "AGE"],
        "{table}"
    );
    assert!(
        table.lines().nth(1).is_some_and(|l| l.contains("Running")),
        "{table}"
    );

    let mut etcd = etcd_client(&cluster, &ns.name, "example").await;
    for i in 0..1000 {
        etcd.put(format!("/keys/{i:04}"), format!("value-{i}"), None)
            .await
            .expect("put");
    }

    cluster.kubectl_ok(&["scale", "etcd/example", "-n", &ns.name, "--replicas=5"]);
    wait_for_members(&api, "example", 5).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "example").await;
    assert_eq!(count_keys(&mut etcd, "/keys/").await, 1000);

    cluster.kubectl_ok(&[
        "patch",
        "etcd",
        "example",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"size":3}}"#,
    ]);
    wait_for_members(&api, "example", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "example").await;
    assert_eq!(count_keys(&mut etcd, "/keys/").await, 1000);
    let value = etcd.get("/keys/0999", None).await.expect("get");
    assert_eq!(value.kvs()[0].value_str().expect("utf-8"), "value-999");

    // Members equal pods at the end.
    let status = api
        .get("example")
        .await
        .expect("get")
        .status
        .expect("status");
    let members: BTreeSet<String> = status.members.iter().map(|m| m.name.clone()).collect();
    let pods: BTreeSet<String> = member_pods(&cluster, &ns.name, "example")
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(members, pods);

    cluster.kubectl_ok(&["delete", "etcd", "example", "-n", &ns.name, "--wait=true"]);
    let client = cluster.client.clone();
    let namespace = ns.name.clone();
    wait_until("every owned object to be gone", DEADLINE, POLL, || {
        let client = client.clone();
        let namespace = namespace.clone();
        async move {
            let selector = ListParams::default().labels(&objects::label_selector("example"));
            let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            let services = Api::<Service>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let pdbs = Api::<PodDisruptionBudget>::namespaced(client, &namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(pods.items.is_empty()
                && pvcs.items.is_empty()
                && services.items.is_empty()
                && pdbs.items.is_empty())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(manifest);
}
