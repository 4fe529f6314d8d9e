//! `bosun crds` prints CRDs a Kubernetes API server accepts: parsed back into
//! `CustomResourceDefinition` objects, their schemas are structural, and the
//! printer columns, subresources and CEL rules users rely on are there. The
//! generated files in `deploy/crds/` must match what the binary prints.

use std::path::Path;
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use serde::Deserialize;
use serde_json::Value;

fn bosun(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(args)
        .output()
        .expect("the bosun binary runs");
    assert!(
        output.status.success(),
        "bosun {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("bosun prints UTF-8")
}

fn printed_crds() -> Vec<CustomResourceDefinition> {
    let yaml = bosun(&["crds"]);
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("each document is a CRD"))
        .collect()
}

fn crd<'a>(
    crds: &'a [CustomResourceDefinition],
    kind: &str,
) -> &'a CustomResourceDefinitionVersion {
    let crd = crds
        .iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    assert_eq!(crd.spec.group, "etcd.bosun.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["bosun".to_string()][..])
    );
    assert_eq!(crd.spec.versions.len(), 1);
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    version
}

fn schema(version: &CustomResourceDefinitionVersion) -> Value {
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the version has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

fn columns(version: &CustomResourceDefinitionVersion) -> Vec<(String, String)> {
    version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.to_uppercase(), c.json_path.clone()))
        .collect()
}

fn column_list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// Checks the rules of a structural schema that the API server enforces: every
/// node says its type (or is int-or-string / preserves unknown fields), and
/// there are no references or JSON-Schema features Kubernetes refuses.
fn assert_structural(node: &Value, path: &str) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema node is not an object"));
    for forbidden in [
        "$ref",
        "$schema",
        "definitions",
        "$defs",
        "oneOf",
        "allOf",
        "not",
    ] {
        assert!(!obj.contains_key(forbidden), "{path}: has {forbidden}");
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(
        obj.contains_key("type") || int_or_string || preserves,
        "{path}: no type"
    );
    if obj.contains_key("properties") {
        assert!(
            !obj.contains_key("additionalProperties"),
            "{path}: properties and additionalProperties together"
        );
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, child) in props {
            assert_structural(child, &format!("{path}.{name}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

fn rules(schema: &Value) -> Vec<String> {
    let mut found = vec![];
    collect_rules(schema, &mut found);
    found
}

fn collect_rules(node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                found.extend(
                    list.iter()
                        .filter_map(|r| r["rule"].as_str().map(String::from)),
                );
            }
            map.values().for_each(|v| collect_rules(v, found));
        }
        Value::Array(list) => list.iter().for_each(|v| collect_rules(v, found)),
        _ => {}
    }
}

#[test]
fn bosun_crds_prints_every_crd_with_a_structural_schema() {
    let crds = printed_crds();
    let kinds: Vec<&str> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["EtcdCluster", "EtcdBackup", "EtcdRestore", "Memcached"]
    );
    for crd in &crds {
        for version in &crd.spec.versions {
            assert_structural(&schema(version), &crd.spec.names.kind);
        }
    }
}

#[test]
fn etcd_cluster_has_short_name_columns_and_scale_subresource() {
    let crds = printed_crds();
    let cluster = crds
        .iter()
        .find(|c| c.spec.names.kind == "EtcdCluster")
        .expect("EtcdCluster CRD");
    assert_eq!(
        cluster.spec.names.short_names.as_deref(),
        Some(&["etcd".to_string()][..])
    );
    let version = crd(&crds, "EtcdCluster");
    assert_eq!(
        columns(version),
        column_list(&[
            ("SIZE", ".spec.size"),
            ("READY", ".status.readyMembers"),
            ("VERSION", ".status.currentVersion"),
            ("PHASE", ".status.phase"),
            ("AGE", ".metadata.creationTimestamp"),
        ])
    );
    let subresources = version.subresources.as_ref().expect("subresources");
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.size");
    assert_eq!(scale.status_replicas_path, ".status.readyMembers");

    let schema = schema(version);
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["size"]["minimum"], 1.0);
    assert_eq!(spec["size"]["maximum"], 9.0);
    assert_eq!(spec["size"]["default"], 3);
    assert!(spec["version"]["pattern"].is_string());
    let status = &schema["properties"]["status"]["properties"];
    for field in [
        "phase",
        "conditions",
        "observedGeneration",
        "members",
        "readyMembers",
        "currentVersion",
        "targetVersion",
        "clientEndpoint",
    ] {
        assert!(status.get(field).is_some(), "status.{field} missing");
    }
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    let rules = rules(&schema);
    for fragment in [
        "oldSelf.bootstrap",
        "oldSelf.version",
        "self.all(k,",
        "self.emptyDir",
    ] {
        assert!(
            rules.iter().any(|r| r.contains(fragment)),
            "no rule with {fragment}: {rules:?}"
        );
    }
}

#[test]
fn etcd_backup_has_columns_and_one_of_rule() {
    let crds = printed_crds();
    let version = crd(&crds, "EtcdBackup");
    assert_eq!(
        columns(version),
        column_list(&[
            ("CLUSTER", ".spec.clusterName"),
            ("SCHEDULE", ".spec.schedule"),
            ("LAST SUCCESS", ".status.lastSuccessfulTime"),
            ("PHASE", ".status.phase"),
            ("AGE", ".metadata.creationTimestamp"),
        ])
    );
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let schema = schema(version);
    let storage = &schema["properties"]["spec"]["properties"]["storage"]["properties"];
    for backend in ["s3", "gcs", "azure", "file"] {
        assert!(storage.get(backend).is_some(), "storage.{backend} missing");
    }
    let rules = rules(&schema);
    assert!(
        rules
            .iter()
            .any(|r| r.contains("has(self.s3), has(self.gcs)")),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("oldSelf.storage")),
        "{rules:?}"
    );
}

#[test]
fn etcd_restore_has_immutable_spec_and_phase_enum() {
    let crds = printed_crds();
    let version = crd(&crds, "EtcdRestore");
    let schema = schema(version);
    let phases = &schema["properties"]["status"]["properties"]["phase"]["enum"];
    assert_eq!(
        phases,
        &serde_json::json!(["Pending", "Running", "Succeeded", "Failed"])
    );
    let rules = rules(&schema);
    assert!(rules.iter().any(|r| r == "self == oldSelf"), "{rules:?}");
    assert!(
        rules
            .iter()
            .any(|r| r.contains("has(self.backup) != has(self.location)")),
        "{rules:?}"
    );
}

#[test]
fn deploy_crds_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let fresh = tempdir();
    bosun(&[
        "crds",
        "--out-dir",
        fresh.to_str().expect("utf-8 temp path"),
    ]);
    for entry in std::fs::read_dir(&fresh).expect("generated dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let generated = std::fs::read_to_string(entry.path()).expect("generated file");
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            generated == committed,
            "deploy/crds/{} is stale: run `cargo run -p bosun -- crds --out-dir deploy/crds`",
            name.to_string_lossy()
        );
    }
    let committed = std::fs::read_dir(&dir).expect("deploy/crds exists").count();
    let generated = std::fs::read_dir(&fresh).expect("generated dir").count();
    assert_eq!(
        committed, generated,
        "deploy/crds holds files bosun no longer generates"
    );
    std::fs::remove_dir_all(&fresh).expect("remove temp dir");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bosun-crds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
