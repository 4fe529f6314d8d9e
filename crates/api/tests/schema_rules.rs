//! The CEL rules in the generated CRD schemas, evaluated client-side with
//! kube's CEL validator: each rule refuses what it should and accepts what it
//! should, so that a typo in a rule fails here and not on a user's cluster.
//! (A real API server evaluates them again in the dev-cluster tests.)

use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every bosun CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// The messages of every rule `object` (optionally replacing `old`) breaks.
fn broken_rules<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema_of::<K>(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn cluster(spec: Value) -> Value {
    json!({"apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
           "metadata": {"name": "main"}, "spec": spec})
}

fn assert_refused(broken: &[String], fragment: &str) {
    assert!(
        broken.iter().any(|m| m.contains(fragment)),
        "expected a rule saying {fragment:?}, got {broken:?}"
    );
}

#[test]
fn a_plain_cluster_passes_every_rule() {
    let object = cluster(json!({"size": 3, "version": "3.6.16", "storage": {"size": "4Gi"}}));
    assert_eq!(
        broken_rules::<EtcdCluster>(&object, None),
        Vec::<String>::new()
    );
}

#[test]
fn owned_etcd_flags_are_refused_by_the_schema() {
    let object = cluster(json!({"size": 3, "version": "3.6.16",
        "etcdOptions": {"data-dir": "/tmp", "quota-backend-bytes": "1"}}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&object, None),
        "may not set a flag the operator owns",
    );

    let dashed = cluster(json!({"size": 3, "version": "3.6.16",
        "etcdOptions": {"--snapshot-count": "1"}}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&dashed, None),
        "without leading dashes",
    );
}

#[test]
fn empty_dir_with_storage_class_is_refused_by_the_schema() {
    let object = cluster(json!({"size": 1, "version": "3.6.16",
        "storage": {"size": "1Gi", "emptyDir": true, "storageClassName": "fast"}}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&object, None),
        "storageClassName applies to PersistentVolumeClaims",
    );
}

#[test]
fn version_transitions_are_checked_by_the_schema() {
    let old = cluster(json!({"size": 3, "version": "3.6.16"}));
    let down = cluster(json!({"size": 3, "version": "3.5.35"}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&down, Some(&old)),
        "may not go down a minor version",
    );

    let skip = cluster(json!({"size": 3, "version": "3.8.0"}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&skip, Some(&old)),
        "one minor version at a time",
    );

    let major = cluster(json!({"size": 3, "version": "4.0.0"}));
    assert_refused(
        &broken_rules::<EtcdCluster>(&major, Some(&old)),
        "may not change its major version",
    );

    for allowed in ["3.6.16", "3.6.1", "3.7.3"] {
        let new = cluster(json!({"size": 3, "version": allowed}));
        assert_eq!(
            broken_rules::<EtcdCluster>(&new, Some(&old)),
            Vec::<String>::new(),
            "{allowed}"
        );
    }
}

#[test]
fn bootstrap_is_immutable_in_the_schema() {
    let source = json!({"backup": {"name": "nightly"}});
    let old = cluster(json!({"size": 3, "version": "3.6.16"}));
    let added = cluster(
        json!({"size": 3, "version": "3.6.16", "bootstrap": {"restore": {"source": source}}}),
    );
    assert_refused(
        &broken_rules::<EtcdCluster>(&added, Some(&old)),
        "spec.bootstrap is immutable",
    );
    assert_refused(
        &broken_rules::<EtcdCluster>(&old, Some(&added)),
        "spec.bootstrap is immutable",
    );
    assert_eq!(
        broken_rules::<EtcdCluster>(&added, Some(&added)),
        Vec::<String>::new()
    );
}

#[test]
fn restore_source_is_one_of_in_the_schema() {
    let object = cluster(
        json!({"size": 3, "version": "3.6.16", "bootstrap": {"restore": {"source": {
        "backup": {"name": "nightly"}, "location": {"url": "s3://b/k"}}}}}),
    );
    assert_refused(
        &broken_rules::<EtcdCluster>(&object, None),
        "exactly one of backup",
    );

    let restore = json!({"apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
        "metadata": {"name": "r"}, "spec": {"clusterName": "main", "source": {}}});
    assert_refused(
        &broken_rules::<EtcdRestore>(&restore, None),
        "exactly one of backup",
    );
}

#[test]
fn restore_spec_is_immutable_in_the_schema() {
    let restore = |name: &str| {
        json!({"apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
        "metadata": {"name": "r"}, "spec": {"clusterName": name, "source": {"backup": {"name": "nightly"}}}})
    };
    assert_refused(
        &broken_rules::<EtcdRestore>(&restore("other"), Some(&restore("main"))),
        "spec is immutable",
    );
    assert_eq!(
        broken_rules::<EtcdRestore>(&restore("main"), Some(&restore("main"))),
        Vec::<String>::new()
    );
}

fn backup(storage: Value, cluster_name: &str) -> Value {
    json!({"apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup", "metadata": {"name": "b"},
           "spec": {"clusterName": cluster_name, "storage": storage, "timeoutSeconds": 600}})
}

#[test]
fn backup_storage_is_exactly_one_destination_in_the_schema() {
    let both = backup(
        json!({"s3": {"bucket": "bosun-backups"}, "file": {"path": "/b"}}),
        "main",
    );
    assert_refused(
        &broken_rules::<EtcdBackup>(&both, None),
        "exactly one of s3, gcs, azure or file",
    );
    let none = backup(json!({}), "main");
    assert_refused(
        &broken_rules::<EtcdBackup>(&none, None),
        "exactly one of s3, gcs, azure or file",
    );
    let one = backup(json!({"file": {"path": "/b"}}), "main");
    assert_eq!(broken_rules::<EtcdBackup>(&one, None), Vec::<String>::new());
}

#[test]
fn backup_target_is_immutable_in_the_schema() {
    let old = backup(json!({"file": {"path": "/b"}}), "main");
    let moved = backup(json!({"file": {"path": "/c"}}), "main");
    assert_refused(
        &broken_rules::<EtcdBackup>(&moved, Some(&old)),
        "spec.storage is immutable",
    );
    let other = backup(json!({"file": {"path": "/b"}}), "other");
    assert_refused(
        &broken_rules::<EtcdBackup>(&other, Some(&old)),
        "spec.clusterName is immutable",
    );
}
