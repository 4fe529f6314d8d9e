//! Operator upgrades from a version that selected members by the
//! recommended labels (`app.kubernetes.io/name`, `instance`) alone. Those
//! member pods and volumes lack the cluster-uid label the operator now
//! selects by, so a cluster would look empty to it — and an empty cluster
//! gets a new seed. At start, before the EtcdCluster controller runs, each
//! such object that provably belongs to an existing EtcdCluster gets the
//! label; the controller does not start until that has succeeded.

use bosun_api::EtcdCluster;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::objects;
use crate::controller::Scope;

/// Member pods and volumes made by bosun without the cluster-uid label.
fn legacy_selector() -> String {
    format!(
        "{}={},{},!{}",
        objects::MANAGED_BY_LABEL,
        objects::MANAGER,
        objects::MEMBER_LABEL,
        objects::CLUSTER_UID_LABEL
    )
}

/// The uid of the EtcdCluster an unlabelled member object belongs to, when
/// that can be proven: its controller owner reference names an existing
/// EtcdCluster of its namespace, or — for a retained volume, which has no
/// owner — the EtcdCluster its `instance` label names lists its member.
/// Anything else is left alone.
pub fn legacy_owner(meta: &ObjectMeta, clusters: &[EtcdCluster]) -> Option<String> {
    let labels = meta.labels.as_ref()?;
    if labels.get(objects::MANAGED_BY_LABEL).map(String::as_str) != Some(objects::MANAGER)
        || labels.contains_key(objects::CLUSTER_UID_LABEL)
    {
        return None;
    }
    let member = labels.get(objects::MEMBER_LABEL)?;
    let in_namespace = clusters
        .iter()
        .filter(|c| c.namespace() == meta.namespace && c.uid().is_some());
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = controller {
        return in_namespace
            .filter(|_| owner.kind == "EtcdCluster")
            .find(|c| c.uid().as_deref() == Some(owner.uid.as_str()))
            .and_then(ResourceExt::uid);
    }
    let instance = labels.get(objects::INSTANCE_LABEL)?;
    in_namespace
        .filter(|c| &c.name_any() == instance)
        .find(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.members.iter().any(|m| &m.name == member))
        })
        .and_then(ResourceExt::uid)
}

/// Labels every provable legacy member pod and volume with its cluster's
/// uid. Returns how many objects were labelled.
pub async fn adopt_legacy_members(client: &Client, scope: &Scope) -> Result<usize, kube::Error> {
    let clusters = scope
        .clusters(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let selector = ListParams::default().labels(&legacy_selector());
    let mut labelled = 0;
    let pods = scope.pods(client.clone()).list(&selector).await?.items;
    for pod in pods {
        if let Some(uid) = legacy_owner(&pod.metadata, &clusters) {
            let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let result = Api::<Pod>::namespaced(client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &uid_label(&uid))
                .await;
            labelled += count_labelled(&name, result.map(drop))?;
        }
    }
    let pvcs = scope.pvcs(client.clone()).list(&selector).await?.items;
    for pvc in pvcs {
        if let Some(uid) = legacy_owner(&pvc.metadata, &clusters) {
            let (namespace, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
            let result = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &uid_label(&uid))
                .await;
            labelled += count_labelled(&name, result.map(drop))?;
        }
    }
    Ok(labelled)
}

/// The patch that labels an object with its cluster's uid.
fn uid_label(uid: &str) -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"metadata": {"labels": {objects::CLUSTER_UID_LABEL: uid}}}))
}

/// 1 for an object labelled, 0 for one gone meanwhile.
fn count_labelled(name: &str, result: Result<(), kube::Error>) -> Result<usize, kube::Error> {
    match result {
        Ok(()) => {
            tracing::info!(%name, "labelled a member object made by an earlier operator with its cluster's uid");
            Ok(1)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn cluster(name: &str, uid: &str, members: &[&str]) -> EtcdCluster {
        let mut c: EtcdCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {},
            "status": {"members": members.iter().map(|m| serde_json::json!({"name": m, "id": "1"})).collect::<Vec<_>>()},
        }))
        .expect("cluster");
        c.metadata.namespace = Some("ns".into());
        c
    }

    fn legacy(instance: &str, member: &str, owner: Option<(&str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(member.into()),
            namespace: Some("ns".into()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", "etcd"),
                    ("app.kubernetes.io/instance", instance),
                    ("app.kubernetes.io/managed-by", "bosun"),
                    ("etcd.bosun.dev/member", member),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            owner_references: owner.map(|(kind, uid)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_owned_member_object_is_adopted_by_its_owner() {
        let clusters = [cluster("db", "u1", &[])];
        assert_eq!(
            legacy_owner(
                &legacy("db", "db-a", Some(("EtcdCluster", "u1"))),
                &clusters
            ),
            Some("u1".into())
        );
        // Owned by something else, or by a cluster that no longer exists.
        assert_eq!(
            legacy_owner(
                &legacy("db", "db-a", Some(("StatefulSet", "u1"))),
                &clusters
            ),
            None
        );
        assert_eq!(
            legacy_owner(
                &legacy("db", "db-a", Some(("EtcdCluster", "u9"))),
                &clusters
            ),
            None
        );
    }

    #[test]
    fn a_retained_volume_is_adopted_only_by_the_cluster_that_lists_its_member() {
        let clusters = [cluster("db", "u1", &["db-a"])];
        assert_eq!(
            legacy_owner(&legacy("db", "db-a", None), &clusters),
            Some("u1".into())
        );
        assert_eq!(legacy_owner(&legacy("db", "db-old", None), &clusters), None);
        assert_eq!(
            legacy_owner(&legacy("other", "db-a", None), &clusters),
            None
        );
    }

    #[test]
    fn objects_bosun_did_not_make_are_never_adopted() {
        let clusters = [cluster("db", "u1", &["db-a"])];
        let mut foreign = legacy("db", "db-a", Some(("EtcdCluster", "u1")));
        if let Some(labels) = foreign.labels.as_mut() {
            labels.insert("app.kubernetes.io/managed-by".into(), "Helm".into());
        }
        assert_eq!(legacy_owner(&foreign, &clusters), None);
    }
}
