//! etcd's alarms reported for what they are. A member whose backend
//! reaches its quota raises NOSPACE and refuses writes; it still serves
//! reads, deletes and compaction, and quorum is intact. The operator must
//! say exactly that — not "quorum lost, restore from a backup", which
//! would throw away every write since — and the member must stay behind
//! the client Service, or nobody could reach it to win the space back.

mod common;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, UNCHANGED_WINDOW, assert_unchanged_for, etcd_client, member_pods,
    wait_for_condition, wait_for_members,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};

/// The backend quota of the test's cluster: small, so that a few
/// megabytes of writes reach it.
const QUOTA_BYTES: u64 = 4 * 1024 * 1024;

#[tokio::test]
async fn nospace_is_reported_as_an_alarm_and_the_member_stays_reachable() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-nospace").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "full", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"},
                 "etcdOptions": {"quota-backend-bytes": QUOTA_BYTES.to_string()}},
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "full", 1).await;

    // Fill the backend until etcd refuses: 64 KiB values, bounded.
    let mut etcd = etcd_client(&cluster, &ns.name, "full").await;
    let value = "x".repeat(64 * 1024);
    let mut refused = None;
    for i in 0..(2 * QUOTA_BYTES / (64 * 1024)) {
        if let Err(e) = etcd.put(format!("/fill/{i:05}"), value.clone(), None).await {
            refused = Some(e.to_string());
            break;
        }
    }
    let refused = refused.expect("etcd refused a write at its quota");
    assert!(refused.contains("space exceeded"), "{refused}");
    let alarms = etcd
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("alarm list");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == etcd_client::AlarmType::Nospace),
        "etcd itself lists NOSPACE"
    );

    let message = wait_for_condition(&api, "full", "Degraded", "True", "AlarmRaised").await;
    assert!(
        message.contains("NOSPACE") && message.contains("alarm disarm"),
        "{message}"
    );
    let available = common::current_condition(&api, "full", "Available")
        .await
        .expect("read")
        .expect("an Available condition");
    assert_eq!(available.status, "True", "{}", available.message);

    // The member stays behind the client Service and serves reads.
    let member_ip = member_pods(&cluster, &ns.name, "full")
        .await
        .remove(0)
        .status
        .and_then(|s| s.pod_ip)
        .expect("a pod IP");
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &ns.name);
    let ready_addresses = || async {
        let mut addresses: Vec<String> = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=full-client"))
            .await
            .expect("endpoint slices")
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses)
            .collect();
        addresses.sort();
        addresses
    };
    wait_until(
        "the member to be behind the client Service",
        DEADLINE,
        POLL,
        || async { Ok(ready_addresses().await == vec![member_ip.clone()]) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_unchanged_for(
        "the client Service's ready endpoints",
        &vec![member_ip.clone()],
        UNCHANGED_WINDOW,
        ready_addresses,
    )
    .await;
    let read = etcd
        .get("/fill/00000", None)
        .await
        .expect("a read under NOSPACE");
    assert_eq!(read.kvs().len(), 1);
}
