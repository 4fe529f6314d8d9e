//! etcd's alarms reported for what they are, and NOSPACE cleared where
//! that is safe. A member whose backend reaches its quota raises NOSPACE
//! and refuses writes; it still serves reads, deletes and compaction, and
//! quorum is intact. The operator must say exactly that — not "quorum
//! lost, restore from a backup", which would throw away every write since
//! — keep the member behind the client Service, and win the space back
//! (compact, defragment one member at a time, disarm) without losing a
//! key, but never disarm while the live data itself fills the quota.
//! Every outcome is read from etcd itself.

mod common;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, UNCHANGED_WINDOW, assert_unchanged_for, etcd_client, member_ids, member_pods,
    wait_for_condition, wait_for_members,
};
use etcd_client::{AlarmAction, AlarmType, Client as EtcdClient, GetOptions};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// The backend quota of the test's cluster: small, so that a few
/// megabytes of writes reach it.
const QUOTA_BYTES: u64 = 4 * 1024 * 1024;

/// How long the operator is watched not clearing an alarm it must not
/// clear: longer than its re-check period (10 s) of a blocked NOSPACE.
const NOT_CLEARED_WINDOW: Duration = Duration::from_secs(15);

/// A 64 KiB value, distinct per `i`.
fn big_value(i: u64) -> String {
    format!("{i:08}{}", "x".repeat(64 * 1024 - 8))
}

/// Creates an EtcdCluster of `size` with the small quota; waits for it.
async fn create_small_quota_cluster(api: &Api<EtcdCluster>, ns: &str, name: &str, size: u32) {
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": size, "storage": {"size": "256Mi"},
                 "etcdOptions": {"quota-backend-bytes": QUOTA_BYTES.to_string()}},
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(api, name, size as usize).await;
}

/// Writes 20 small keys the test later checks value by value.
async fn write_keepers(etcd: &mut EtcdClient) -> BTreeMap<String, String> {
    let mut keep = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("/keep/{i:02}"), format!("value-{i}"));
        etcd.put(key.clone(), value.clone(), None)
            .await
            .expect("put");
        keep.insert(key, value);
    }
    keep
}

/// What filling to the quota left: the last write etcd acknowledged, the
/// refusal, and the refused write, which is in doubt: etcd applies the
/// write that crosses the quota and only then answers "database space
/// exceeded" (its quota check at apply time), so the refused value may be
/// stored.
struct Filled {
    acknowledged: Option<(String, String)>,
    refusal: String,
    in_doubt: (String, String),
}

/// Puts `key_of(i)` = a 64 KiB value for i = 0, 1, ... until etcd refuses
/// (bounded).
async fn fill_until_refused(etcd: &mut EtcdClient, key_of: impl Fn(u64) -> String) -> Filled {
    let mut acknowledged = None;
    for i in 0..(4 * QUOTA_BYTES / (64 * 1024)) {
        let (key, value) = (key_of(i), big_value(i));
        match etcd.put(key.clone(), value.clone(), None).await {
            Ok(_) => acknowledged = Some((key, value)),
            Err(e) => {
                return Filled {
                    acknowledged,
                    refusal: e.to_string(),
                    in_doubt: (key, value),
                };
            }
        }
    }
    panic!("etcd never refused a write at its quota");
}

/// The value etcd holds for `key`, if any.
async fn value_of(etcd: &mut EtcdClient, key: &str) -> Option<String> {
    etcd.get(key, None)
        .await
        .expect("get")
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap_or_default().to_string())
}

/// Whether etcd itself lists a NOSPACE alarm.
async fn nospace_raised(etcd: &mut EtcdClient) -> bool {
    etcd.alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list")
        .alarms()
        .iter()
        .any(|a| a.alarm() == AlarmType::Nospace)
}

/// Waits until etcd lists no alarm and accepts a write again.
async fn wait_until_writable(etcd: &EtcdClient) {
    wait_until("etcd to accept writes again", DEADLINE, POLL, || async {
        let mut etcd = etcd.clone();
        Ok(!nospace_raised(&mut etcd).await && etcd.put("/probe", "ok", None).await.is_ok())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Asserts that every key of `expected` holds its value.
async fn assert_values(etcd: &mut EtcdClient, expected: &BTreeMap<String, String>) {
    for (key, value) in expected {
        let read = etcd.get(key.as_str(), None).await.expect("get");
        let found = read
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or_default().to_string());
        assert_eq!(found.as_deref(), Some(value.as_str()), "the value of {key}");
    }
}

#[tokio::test]
async fn nospace_is_reported_as_an_alarm_and_the_member_stays_reachable() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-nospace").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_small_quota_cluster(&api, &ns.name, "full", 1).await;

    // Fill the backend with live keys until etcd refuses.
    let mut etcd = etcd_client(&cluster, &ns.name, "full").await;
    let keep = write_keepers(&mut etcd).await;
    let refused = fill_until_refused(&mut etcd, |i| format!("/fill/{i:05}"))
        .await
        .refusal;
    assert!(refused.contains("space exceeded"), "{refused}");
    assert!(nospace_raised(&mut etcd).await, "etcd itself lists NOSPACE");

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

    // The live data fills the quota: compaction and defragmentation win
    // nothing, so the operator says what to do and does not disarm.
    let message = wait_until_condition_says(&api, "full", "Not cleared yet").await;
    assert!(
        message.contains("delete keys") && message.contains("quota-backend-bytes"),
        "{message}"
    );
    let watched = etcd.clone();
    assert_unchanged_for("NOSPACE raised in etcd", &true, NOT_CLEARED_WINDOW, || {
        let mut etcd = watched.clone();
        async move { nospace_raised(&mut etcd).await }
    })
    .await;

    // The user deletes what is not needed; the operator wins the space
    // back and disarms, and every kept key is still there.
    etcd.delete(
        "/fill/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("a delete under NOSPACE");
    wait_until_writable(&etcd).await;
    assert_values(&mut etcd, &keep).await;
}

/// Waits until the Degraded condition's message contains `text`.
async fn wait_until_condition_says(api: &Api<EtcdCluster>, name: &str, text: &str) -> String {
    wait_until(
        &format!("Degraded to say {text:?}"),
        DEADLINE,
        POLL,
        || async {
            let condition = common::current_condition(api, name, "Degraded").await?;
            Ok(condition.is_some_and(|c| c.message.contains(text)))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::current_condition(api, name, "Degraded")
        .await
        .ok()
        .flatten()
        .map(|c| c.message)
        .unwrap_or_default()
}

/// History alone fills the quota: one key overwritten with 64 KiB values.
/// The operator compacts, defragments every member one at a time and
/// disarms with no one's help; every current key and value is kept and no
/// member is replaced.
#[tokio::test]
async fn nospace_from_history_is_cleared_without_losing_a_key() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-nospace-history").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create_small_quota_cluster(&api, &ns.name, "history", 3).await;

    let mut etcd = etcd_client(&cluster, &ns.name, "history").await;
    let ids = member_ids(&mut etcd).await;
    let mut expected = write_keepers(&mut etcd).await;
    let filled = fill_until_refused(&mut etcd, |_| "/hot".to_string()).await;
    assert!(
        filled.refusal.contains("space exceeded"),
        "{}",
        filled.refusal
    );
    // /hot holds the last acknowledged value or the refused one (in doubt,
    // see `Filled`), and whichever it is must survive the clearing.
    let (key, acknowledged) = filled.acknowledged.expect("some writes before the quota");
    let held = value_of(&mut etcd, &key).await.expect("/hot is there");
    assert!(
        held == acknowledged || held == filled.in_doubt.1,
        "/hot holds neither the last acknowledged value nor the refused one"
    );
    expected.insert(key, held);

    wait_until_writable(&etcd).await;
    assert_values(&mut etcd, &expected).await;
    let kept = etcd
        .get(
            "/keep/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(kept, 20);
    assert_eq!(member_ids(&mut etcd).await, ids, "no member was replaced");
    // Every member's file has room again, by each member's own status.
    for pod in member_pods(&cluster, &ns.name, "history").await {
        let ip = pod.status.and_then(|s| s.pod_ip).expect("a pod IP");
        let mut member = EtcdClient::connect([format!("http://{ip}:2379")], None)
            .await
            .expect("connect");
        let status = member.status().await.expect("status");
        assert!(
            status.db_size() * 100 <= QUOTA_BYTES as i64 * 80,
            "member {ip} is still {} bytes",
            status.db_size()
        );
    }
}
