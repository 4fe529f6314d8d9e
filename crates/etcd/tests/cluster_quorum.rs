//! Losing a majority: with their volumes intact every member comes back and
//! every key with them; with their volumes gone the operator changes no
//! membership and says that a restore from backup is needed.

mod common;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_etcd::cluster::objects;
use common::{
    DEADLINE, POLL, UNCHANGED_WINDOW, assert_unchanged_for, count_keys, etcd_client, member_pods,
    wait_for_condition, wait_for_members,
};
use etcd_client::Client as EtcdClient;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

async fn create(api: &Api<EtcdCluster>, ns: &str, name: &str) {
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": 3, "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    wait_for_members(api, name, 3).await;
}

/// etcd's own member IDs, sorted, as the first member pod that answers
/// lists them (serializable: a member without quorum still answers). Read
/// through pod IPs, Ready or not: without quorum no member is Ready.
async fn etcd_member_ids(cluster: &TestCluster, ns: &str, name: &str) -> Option<Vec<u64>> {
    for pod in member_pods(cluster, ns, name).await {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            let mut etcd = EtcdClient::connect([format!("http://{ip}:2379")], None)
                .await
                .ok()?;
            Some(common::member_ids(&mut etcd).await)
        })
        .await;
        if let Ok(Some(ids)) = answer {
            return Some(ids);
        }
    }
    None
}

async fn set_paused(api: &Api<EtcdCluster>, paused: bool) {
    api.patch(
        "lost",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"paused": paused}})),
    )
    .await
    .expect("pause or resume");
}

#[tokio::test]
async fn majority_of_pods_lost_with_volumes_intact_recovers_every_key() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-majority-pods").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&api, &ns.name, "majority").await;
    let mut etcd = etcd_client(&cluster, &ns.name, "majority").await;
    for i in 0..200 {
        etcd.put(format!("/m/{i:03}"), "v", None)
            .await
            .expect("put");
    }
    let ids = common::member_ids(&mut etcd).await;

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    for pod in member_pods(&cluster, &ns.name, "majority")
        .await
        .iter()
        .take(2)
    {
        let name = pod.metadata.name.clone().expect("name");
        pods.delete(&name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    wait_for_members(&api, "majority", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "majority").await;
    assert_eq!(
        common::member_ids(&mut etcd).await,
        ids,
        "the same members came back, by etcd's own list"
    );
    assert_eq!(count_keys(&mut etcd, "/m/").await, 200);
}

#[tokio::test]
async fn majority_of_members_lost_with_their_volumes_reports_degraded_and_changes_nothing() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-majority-data").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    create(&api, &ns.name, "lost").await;
    let ids = etcd_member_ids(&cluster, &ns.name, "lost").await;
    assert!(ids.as_ref().is_some_and(|ids| ids.len() == 3), "{ids:?}");

    // Both members go while the operator is paused, so that it finds the
    // majority lost at once. Between two separate losses it would, rightly,
    // replace the first member while the other two still had quorum.
    set_paused(&api, true).await;
    wait_for_condition(&api, "lost", "Progressing", "False", "Paused").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    for pod in member_pods(&cluster, &ns.name, "lost").await.iter().take(2) {
        let name = pod.metadata.name.clone().expect("name");
        pvcs.delete(&name, &DeleteParams::default())
            .await
            .expect("delete pvc");
        pods.delete(&name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    wait_until("the two member pods to be gone", DEADLINE, POLL, || async {
        Ok(member_pods(&cluster, &ns.name, "lost").await.len() == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    set_paused(&api, false).await;
    let message = wait_for_condition(&api, "lost", "Degraded", "True", "QuorumLost").await;
    assert!(message.contains("restore"), "{message}");
    assert_unchanged_for(
        "etcd's member list without quorum",
        &ids,
        UNCHANGED_WINDOW,
        || etcd_member_ids(&cluster, &ns.name, "lost"),
    )
    .await;
    // No pod and no volume is created for a member whose data is gone, and
    // the one member left keeps its pod and volume: read from the API
    // server over a window, not once.
    let survivors = || async {
        let pods: Vec<String> = member_pods(&cluster, &ns.name, "lost")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid)
            .collect();
        let volumes: Vec<String> = pvcs
            .list(&ListParams::default().labels(&objects::label_selector("lost")))
            .await
            .expect("list volumes")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        (pods, volumes)
    };
    let left = survivors().await;
    assert_eq!((left.0.len(), left.1.len()), (1, 1), "{left:?}");
    assert_unchanged_for(
        "the surviving pod and volume",
        &left,
        UNCHANGED_WINDOW,
        survivors,
    )
    .await;
}
