//! Rolling upgrades of each shipped etcd version to the next minor, 3.5 to
//! 3.6 and 3.6 to 3.7, while a client writes without pause: every
//! acknowledged write is readable afterwards, and at every observation at
//! least `size - 1` members are healthy. A minor downgrade is then refused
//! by the API server itself.
//!
//! The two steps run on two clusters, each born on the older version: etcd
//! 3.7.3 panics replaying the WAL of a cluster that was born on 3.5 ("unmarshal
//! should never fail"), even after the storage version reached 3.6 (see
//! docs/etcd-cluster.md).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use common::{
    DEADLINE, POLL, count_keys, etcd_client, member_health, member_ids, member_pods,
    wait_for_members,
};
use etcd_client::GetOptions;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

/// Upgrades the cluster to `version` while writing keys under `prefix`, and
/// checks that every acknowledged write is there and that at least two of
/// three members were healthy, by etcd's own status calls, at every
/// observation.
async fn upgrade_under_writes(
    cluster: &TestCluster,
    ns: &str,
    api: &Api<EtcdCluster>,
    version: &str,
    prefix: &str,
) {
    // A writer that counts acknowledged writes; failures during a member's
    // restart are expected and simply not counted (the key is retried).
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer_client = etcd_client(cluster, ns, "rolling").await;
    let writer = tokio::spawn({
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        let prefix = prefix.to_string();
        async move {
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{prefix}{next:06}");
                let put =
                    tokio::time::timeout(Duration::from_secs(2), writer_client.put(key, "v", None))
                        .await;
                if matches!(put, Ok(Ok(_))) {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
            }
        }
    });

    let started = Instant::now();
    api.patch(
        "rolling",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": version}})),
    )
    .await
    .expect("upgrade");
    let lowest_healthy = Arc::new(AtomicUsize::new(usize::MAX));
    wait_until(
        &format!("every member to run {version}"),
        DEADLINE,
        POLL,
        || {
            let lowest_healthy = lowest_healthy.clone();
            async move {
                // etcd's own word, member by member: not the operator's status.
                let health = member_health(cluster, ns, "rolling").await;
                let healthy = health.iter().filter(|(_, v)| v.is_some()).count();
                lowest_healthy.fetch_min(healthy, Ordering::Relaxed);
                Ok(health.len() == 3 && health.iter().all(|(_, v)| v.as_deref() == Some(version)))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(api, "rolling", 3).await;
    eprintln!(
        "upgrade of size 3 to {version} took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let written = acknowledged.load(Ordering::Relaxed);
    assert!(written > 0, "the writer wrote during the upgrade");
    // Keys are written in order and a key is retried until acknowledged, so
    // the acknowledged ones are exactly {prefix}000000 .. {prefix}{written - 1}.
    let mut etcd = etcd_client(cluster, ns, "rolling").await;
    let acknowledged_range = etcd
        .get(
            format!("{prefix}000000"),
            Some(
                GetOptions::new()
                    .with_range(format!("{prefix}{written:06}"))
                    .with_count_only(),
            ),
        )
        .await
        .expect("count acknowledged keys")
        .count();
    assert_eq!(
        acknowledged_range, written as i64,
        "every acknowledged write is there"
    );
    assert!(count_keys(&mut etcd, prefix).await >= written as i64);
    let lowest = lowest_healthy.load(Ordering::Relaxed);
    assert!(
        lowest >= 2,
        "at some observation only {lowest} members were healthy"
    );
    let status = api
        .get("rolling")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.current_version.as_deref(), Some(version));
}

/// Creates the size-3 cluster `rolling` at `version` and waits for it.
async fn rolling_cluster(cluster: &TestCluster, ns: &str, version: &str) -> Api<EtcdCluster> {
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), ns);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "rolling", "namespace": ns},
        "spec": {"size": 3, "version": version, "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "rolling", 3).await;
    api
}

#[tokio::test]
async fn upgrade_3_6_to_3_7_under_writes_keeps_every_acknowledged_write() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-upgrade-37").await;
    let api = rolling_cluster(&cluster, &ns.name, "3.6.16").await;
    upgrade_under_writes(&cluster, &ns.name, &api, "3.7.3", "/w37/").await;
}

#[tokio::test]
async fn upgrade_3_5_to_3_6_under_writes_keeps_every_acknowledged_write() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-upgrade").await;
    let api = rolling_cluster(&cluster, &ns.name, "3.5.35").await;

    upgrade_under_writes(&cluster, &ns.name, &api, "3.6.16", "/w36/").await;

    // Going back down a minor version is refused by the API server (CEL).
    let refused = api
        .patch(
            "rolling",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"version": "3.5.35"}})),
        )
        .await
        .expect_err("a minor downgrade is refused");
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("may not go down a minor version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected the API server's refusal, got {other}"),
    }
}

/// Not stuck for good: an upgrade to an image that cannot start (pulled
/// from a registry address where nothing listens, on loopback) leaves one
/// member's pod in ImagePullBackOff; reverting the spec brings that member
/// back on the old version, with its identity and every key, judged by
/// etcd's own member list and status calls.
#[tokio::test]
async fn an_upgrade_to_an_image_that_cannot_start_is_undone_by_reverting_the_spec() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-upgrade-stuck").await;
    let api = rolling_cluster(&cluster, &ns.name, "3.6.16").await;
    let mut etcd = etcd_client(&cluster, &ns.name, "rolling").await;
    for i in 0..200 {
        etcd.put(format!("/stuck/{i:04}"), "v", None)
            .await
            .expect("put");
    }
    let ids_before = member_ids(&mut etcd).await;
    drop(etcd);

    api.patch(
        "rolling",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"version": "3.6.17", "image": "127.0.0.1:1/etcd"}}),
        ),
    )
    .await
    .expect("upgrade to an image nobody serves");
    wait_until(
        "a member's pod to fail pulling its image",
        DEADLINE,
        POLL,
        || async {
            Ok(member_pods(&cluster, &ns.name, "rolling")
                .await
                .iter()
                .any(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| {
                                c.state
                                    .as_ref()
                                    .and_then(|s| s.waiting.as_ref())
                                    .and_then(|w| w.reason.as_deref())
                                    .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
                            })
                        })
                }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    api.patch(
        "rolling",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": "3.6.16", "image": null}})),
    )
    .await
    .expect("revert");
    wait_until(
        "every member to answer on 3.6.16 again",
        DEADLINE,
        POLL,
        || async {
            let health = member_health(&cluster, &ns.name, "rolling").await;
            Ok(health.len() == 3 && health.iter().all(|(_, v)| v.as_deref() == Some("3.6.16")))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "rolling", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "rolling").await;
    let ids_after = member_ids(&mut etcd).await;
    assert_eq!(
        ids_after, ids_before,
        "the stuck member came back as itself"
    );
    assert_eq!(count_keys(&mut etcd, "/stuck/").await, 200);
}

/// Not stuck for good, with no one's help: the only member of a cluster is
/// upgraded to an image that cannot start; after spec.memberStartDeadlineSeconds
/// the operator gives the upgrade up and the member goes back to the image
/// that last ran on its volume, as itself, with every key — judged by the
/// pod the API server lists and etcd's own member list and status. It then
/// stays there (no new attempt) until the spec changes.
#[tokio::test]
async fn an_upgrade_that_cannot_start_goes_back_by_itself_after_the_deadline() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-upgrade-deadline").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "lone", "namespace": ns.name},
        "spec": {"size": 1, "version": "3.6.16", "storage": {"size": "256Mi"},
                 "memberStartDeadlineSeconds": 15}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(&api, "lone", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "lone").await;
    for i in 0..100 {
        etcd.put(format!("/lone/{i:04}"), "v", None)
            .await
            .expect("put");
    }
    let ids_before = member_ids(&mut etcd).await;
    let image_before = etcd_image(&cluster, &ns.name).await;
    // The operator records the version that ran on the volume once the
    // member is healthy; the upgrade must not start before that.
    wait_until(
        "the volume to record its version",
        DEADLINE,
        POLL,
        || async {
            let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                Api::namespaced(cluster.client.clone(), &ns.name);
            let list = pvcs
                .list(&kube::api::ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list.items.iter().any(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("etcd.bosun.dev/last-version"))
                    .is_some_and(|v| v == "3.6.16")
            }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    api.patch(
        "lone",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"version": "3.6.17", "image": "127.0.0.1:1/etcd"}}),
        ),
    )
    .await
    .expect("upgrade to an image nobody serves");
    wait_until(
        "the member's pod to be made for the unreachable image",
        DEADLINE,
        POLL,
        || async {
            Ok(etcd_image(&cluster, &ns.name)
                .await
                .starts_with("127.0.0.1:1/"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the member to answer on its old image again",
        DEADLINE,
        POLL,
        || async {
            let health = member_health(&cluster, &ns.name, "lone").await;
            let ready = member_pods(&cluster, &ns.name, "lone")
                .await
                .iter()
                .any(common::is_ready);
            Ok(etcd_image(&cluster, &ns.name).await == image_before
                && ready
                && health.len() == 1
                && health[0].1.as_deref() == Some("3.6.16"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut etcd = etcd_client(&cluster, &ns.name, "lone").await;
    assert_eq!(
        member_ids(&mut etcd).await,
        ids_before,
        "it came back as itself"
    );
    assert_eq!(count_keys(&mut etcd, "/lone/").await, 100);
    // Given up for this spec: no new attempt.
    let pod_uid = || async {
        member_pods(&cluster, &ns.name, "lone")
            .await
            .iter()
            .map(|p| p.metadata.uid.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let uids = pod_uid().await;
    common::assert_unchanged_for(
        "the member pod after the halt",
        &uids,
        2 * common::UNCHANGED_WINDOW,
        pod_uid,
    )
    .await;
    let status = api.get_status("lone").await.expect("status").status;
    let halted = status.and_then(|s| s.halted).expect("status.halted");
    assert_eq!(halted.rolled_back_to.as_deref(), Some("3.6.16"));
}

/// The image of the one member pod's etcd container, as the API server has it.
async fn etcd_image(cluster: &TestCluster, ns: &str) -> String {
    member_pods(cluster, ns, "lone")
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == "etcd")
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}
