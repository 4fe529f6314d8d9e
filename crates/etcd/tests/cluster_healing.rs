//! Faults of one member heal back to full size with every key: a killed
//! etcd process (restarted in place by its pod), a deleted pod (recreated on
//! its volume with the same identity) and a deleted pod with its volume
//! (the member is replaced by a new one), and a volume emptied under a
//! member (the member is replaced, never restarted empty under its old
//! identity), and a scale-up whose learner cannot start, reverted.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::{TestCluster, kill_container_from_host};
use bosun_devcluster::readiness::wait_until;
use common::{DEADLINE, POLL, count_keys, etcd_client, member_pods, wait_for_members};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

const KEYS: usize = 300;

async fn member_names(api: &Api<EtcdCluster>, name: &str) -> BTreeSet<String> {
    let cluster = api.get(name).await.expect("get cluster");
    cluster
        .status
        .map(|s| s.members.into_iter().map(|m| m.name).collect())
        .unwrap_or_default()
}

async fn assert_all_keys(cluster: &TestCluster, ns: &str) {
    let mut etcd = etcd_client(cluster, ns, "healing").await;
    assert_eq!(count_keys(&mut etcd, "/heal/").await, KEYS as i64);
}

#[tokio::test]
async fn member_faults_heal_to_full_size_with_every_key() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-healing").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "healing", "namespace": ns.name},
        "spec": {"size": 3, "storage": {"size": "1Gi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_for_members(&api, "healing", 3).await;

    let mut etcd = etcd_client(&cluster, &ns.name, "healing").await;
    for i in 0..KEYS {
        etcd.put(format!("/heal/{i:04}"), "v", None)
            .await
            .expect("put");
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);

    // 1. kill -9 of one member's etcd process.
    let victim = member_pods(&cluster, &ns.name, "healing").await.remove(0);
    let victim_name = victim.metadata.name.clone().expect("pod name");
    let started = Instant::now();
    kill_container_from_host(&victim, "etcd").unwrap_or_else(|e| panic!("{e}"));
    wait_until("the killed member to restart", DEADLINE, POLL, || {
        let pods = pods.clone();
        let victim_name = victim_name.clone();
        async move {
            let pod = pods.get(&victim_name).await.map_err(|e| e.to_string())?;
            Ok(pod
                .status
                .and_then(|s| s.container_statuses)
                .is_some_and(|c| c.iter().any(|c| c.name == "etcd" && c.restart_count >= 1)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "healing", 3).await;
    eprintln!(
        "after kill -9: full health in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_all_keys(&cluster, &ns.name).await;

    // 2. Deletion of one member pod: it comes back with the same identity.
    let before = member_names(&api, "healing").await;
    let old_uid = pods.get(&victim_name).await.expect("pod").metadata.uid;
    let started = Instant::now();
    pods.delete(&victim_name, &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_until(
        "the deleted member's pod to come back",
        DEADLINE,
        POLL,
        || {
            let pods = pods.clone();
            let victim_name = victim_name.clone();
            let old_uid = old_uid.clone();
            async move {
                let pod = pods
                    .get_opt(&victim_name)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(pod.is_some_and(|p| {
                    p.metadata.deletion_timestamp.is_none() && p.metadata.uid != old_uid
                }))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "healing", 3).await;
    eprintln!(
        "after pod deletion: full health in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        member_names(&api, "healing").await,
        before,
        "same members, no membership change"
    );
    assert_all_keys(&cluster, &ns.name).await;

    // 3. Deletion of one member pod and its PVC: the member is replaced.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let started = Instant::now();
    pvcs.delete(&victim_name, &DeleteParams::default())
        .await
        .expect("delete pvc");
    pods.delete(&victim_name, &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_until("the lost member to be replaced", DEADLINE, POLL, || {
        let api = api.clone();
        let victim_name = victim_name.clone();
        async move {
            let names = member_names(&api, "healing").await;
            Ok(names.len() == 3 && !names.contains(&victim_name))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "healing", 3).await;
    eprintln!(
        "after pod+PVC deletion: full health in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_all_keys(&cluster, &ns.name).await;
}

/// Invariant: no member restarts under its old identity on a volume that
/// lost its data (raft amnesia: it would rejoin with an empty log and vote
/// with it). The volume of one member of three is emptied on the node and
/// its pod deleted; judged by etcd's own member list and keys.
#[tokio::test]
async fn a_member_whose_volume_was_emptied_is_replaced_and_never_rejoins_empty() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-amnesia").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "amnesia", "namespace": ns.name},
        "spec": {"size": 3, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_for_members(&api, "amnesia", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "amnesia").await;
    for i in 0..KEYS {
        etcd.put(format!("/heal/{i:04}"), "v", None)
            .await
            .expect("put");
    }
    let members_before = etcd.member_list().await.expect("member list");
    let victim = member_pods(&cluster, &ns.name, "amnesia").await.remove(0);
    let victim_name = victim.metadata.name.clone().expect("pod name");
    let victim_id = members_before
        .members()
        .iter()
        .find(|m| m.name() == victim_name)
        .map(|m| m.id())
        .expect("the victim is a member");

    // Empty the volume where it lies on the node, then take the pod away,
    // as a re-provisioned or wiped disk would leave it.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pv_name = pvcs
        .get(&victim_name)
        .await
        .expect("the victim's PVC")
        .spec
        .and_then(|s| s.volume_name)
        .expect("a bound volume");
    let pv = Api::<PersistentVolume>::all(cluster.client.clone())
        .get(&pv_name)
        .await
        .expect("the PV");
    let host_dir = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .expect("a hostPath volume");
    std::fs::remove_dir_all(std::path::Path::new(&host_dir).join("data"))
        .expect("empty the volume");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    pods.delete(
        &victim_name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete the pod");

    // etcd itself must show the member replaced: its ID gone, three
    // started members, none of them the victim.
    wait_until("the emptied member to be replaced", DEADLINE, POLL, || {
        let cluster = &cluster;
        let ns = ns.name.clone();
        let victim_name = victim_name.clone();
        async move {
            let mut etcd = etcd_client(cluster, &ns, "amnesia").await;
            let list = etcd.member_list().await.map_err(|e| e.to_string())?;
            let members = list.members();
            Ok(members.len() == 3
                && members.iter().all(|m| {
                    m.id() != victim_id && m.name() != victim_name && !m.name().is_empty()
                }))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "amnesia", 3).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "amnesia").await;
    assert_eq!(count_keys(&mut etcd, "/heal/").await, KEYS as i64);
}

/// Not stuck for good: a scale-up whose new member cannot start (its pod
/// unschedulable) leaves a learner that never becomes healthy; reverting
/// the scale-up removes it, and the cluster is back to its one member —
/// judged by etcd's own member list and the pods and volumes the API
/// server lists.
#[tokio::test]
async fn a_learner_that_cannot_start_goes_when_the_scale_up_is_reverted() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-learner-stuck").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "grow", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_for_members(&api, "grow", 1).await;
    let mut etcd = etcd_client(&cluster, &ns.name, "grow").await;
    etcd.put("/grow/key", "v", None).await.expect("put");
    let seed = member_pods(&cluster, &ns.name, "grow")
        .await
        .remove(0)
        .name_any();

    // New pods can run nowhere: the learner is added, its pod stays Pending.
    api.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"size": 2, "podTemplate": {"nodeSelector": {"bosun.dev/no-such-node": "true"}}}})),
    )
    .await
    .expect("scale up");
    wait_until("a learner to be added", DEADLINE, POLL, || async {
        let list = etcd
            .clone()
            .member_list()
            .await
            .map_err(|e| e.to_string())?;
        Ok(list.members().iter().any(|m| m.is_learner()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    api.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"size": 1, "podTemplate": null}})),
    )
    .await
    .expect("revert the scale-up");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_until("the learner to be gone", DEADLINE, POLL, || async {
        let list = etcd
            .clone()
            .member_list()
            .await
            .map_err(|e| e.to_string())?;
        let pods: Vec<String> = member_pods(&cluster, &ns.name, "grow")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        let volumes = pvcs
            .list(
                &kube::api::ListParams::default()
                    .labels(&bosun_etcd::cluster::objects::label_selector("grow")),
            )
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        Ok(list.members().len() == 1 && pods == vec![seed.clone()] && volumes == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_members(&api, "grow", 1).await;
    let value = etcd.get("/grow/key", None).await.expect("get");
    assert_eq!(value.kvs().len(), 1);
}

/// Not stuck for good, with no one's help: a scale-up whose new member
/// cannot start (its pod unschedulable) is given up after
/// spec.memberStartDeadlineSeconds — the learner is removed with its pod
/// and volume and not added again — and the next spec change tries again
/// and grows the cluster. Judged by etcd's own member list and the pods
/// and volumes the API server lists.
#[tokio::test]
async fn a_learner_that_cannot_start_is_removed_after_the_deadline() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("etcd-learner-deadline").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "grow", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"}, "memberStartDeadlineSeconds": 15}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create cluster");
    wait_for_members(&api, "grow", 1).await;
    let etcd = etcd_client(&cluster, &ns.name, "grow").await;
    let seed = member_pods(&cluster, &ns.name, "grow")
        .await
        .remove(0)
        .name_any();

    api.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"size": 2, "podTemplate": {"nodeSelector": {"bosun.dev/no-such-node": "true"}}}})),
    )
    .await
    .expect("scale up");
    let learners = || async {
        etcd.clone()
            .member_list()
            .await
            .map(|l| l.members().iter().filter(|m| m.is_learner()).count())
            .unwrap_or(usize::MAX)
    };
    wait_until("a learner to be added", DEADLINE, POLL, || async {
        Ok(learners().await == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let objects = || async {
        let pods: Vec<String> = member_pods(&cluster, &ns.name, "grow")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        let volumes = pvcs
            .list(
                &kube::api::ListParams::default()
                    .labels(&bosun_etcd::cluster::objects::label_selector("grow")),
            )
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        let members = etcd
            .clone()
            .member_list()
            .await
            .map(|l| l.members().len())
            .unwrap_or(usize::MAX);
        (members, pods, volumes)
    };
    let alone = (1, vec![seed.clone()], 1);
    wait_until(
        "the learner to be gone without a spec change",
        DEADLINE,
        POLL,
        || async { Ok(objects().await == alone) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::assert_unchanged_for(
        "the membership after the halt",
        &alone,
        2 * common::UNCHANGED_WINDOW,
        objects,
    )
    .await;

    // The cause fixed, the spec changed: the scale-up is tried again.
    api.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"podTemplate": null}})),
    )
    .await
    .expect("fix the pod template");
    wait_until("two voters", DEADLINE, POLL, || async {
        let list = etcd
            .clone()
            .member_list()
            .await
            .map_err(|e| e.to_string())?;
        Ok(list.members().len() == 2 && list.members().iter().all(|m| !m.is_learner()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
