//! Every object in `examples/` parses as its bosun type and passes the same
//! validation the operator applies, so the YAML users copy first is never
//! wrong.

use std::path::Path;

use bosun_api::validation::{validate_backup, validate_cluster, validate_restore};
use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use serde::Deserialize;
use serde_json::Value;

fn example_documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut docs = vec![];
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("example readable");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            docs.push((path.display().to_string(), value));
        }
    }
    docs
}

#[test]
fn every_bosun_example_is_valid() {
    let docs = example_documents();
    let mut checked = 0;
    for (path, doc) in docs {
        if doc["apiVersion"] != "etcd.bosun.dev/v1alpha1" {
            continue;
        }
        let result = match doc["kind"].as_str() {
            Some("EtcdCluster") => {
                let obj: EtcdCluster = serde_json::from_value(doc).expect("EtcdCluster parses");
                validate_cluster(&obj.spec)
            }
            Some("EtcdBackup") => {
                let obj: EtcdBackup = serde_json::from_value(doc).expect("EtcdBackup parses");
                validate_backup(&obj.spec)
            }
            Some("EtcdRestore") => {
                let obj: EtcdRestore = serde_json::from_value(doc).expect("EtcdRestore parses");
                validate_restore(&obj.spec)
            }
            other => panic!("{path}: unknown kind {other:?}"),
        };
        assert_eq!(result, Ok(()), "{path}");
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the cluster and backup examples, checked {checked}"
    );
}
