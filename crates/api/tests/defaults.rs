//! Defaults: what an object gets for the fields its author left out. serde's
//! defaults and the schema's `default`s come from the same functions; this
//! checks both say the same thing.

use bosun_api::cluster::{DEFAULT_SIZE, DEFAULT_STORAGE_SIZE};
use bosun_api::version::default_etcd_version;
use bosun_api::{EtcdBackupSpec, EtcdCluster, EtcdClusterSpec};
use kube::CustomResourceExt;
use serde_json::json;

#[test]
fn an_empty_cluster_spec_gets_the_documented_defaults() {
    let spec: EtcdClusterSpec = serde_json::from_value(json!({})).expect("empty spec parses");
    assert_eq!(spec.size, DEFAULT_SIZE);
    assert_eq!(spec.version, default_etcd_version());
    assert_eq!(spec.storage.size.0, DEFAULT_STORAGE_SIZE);
    assert!(!spec.storage.empty_dir && !spec.paused);
    assert_eq!(spec, EtcdClusterSpec::default());
}

#[test]
fn the_schema_defaults_match_serde() {
    let crd = serde_json::to_value(EtcdCluster::crd()).expect("crd serializes");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["size"]["default"], json!(DEFAULT_SIZE));
    assert_eq!(spec["version"]["default"], json!(default_etcd_version()));
    assert_eq!(
        spec["storage"]["properties"]["size"]["default"],
        json!(DEFAULT_STORAGE_SIZE)
    );
}

#[test]
fn a_backup_spec_defaults_its_timeout() {
    let spec: EtcdBackupSpec = serde_json::from_value(json!({
        "clusterName": "main", "storage": {"file": {"path": "/backups"}}
    }))
    .expect("minimal backup parses");
    assert_eq!(spec.timeout_seconds, 600);
    assert!(spec.schedule.is_none());
}
