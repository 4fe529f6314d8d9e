//! The CEL rules of the generated Memcached schema, evaluated client-side
//! with kube's CEL validator, so that a typo in a rule fails here and not
//! on a user's cluster.

use bosun_memcached::Memcached;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = Memcached::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

fn broken_rules(object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(), object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn memcached(spec: Value) -> Value {
    json!({"apiVersion": "cache.bosun.dev/v1alpha1", "kind": "Memcached",
           "metadata": {"name": "cache"}, "spec": spec})
}

#[test]
fn a_plain_memcached_passes_every_rule() {
    let object = memcached(json!({"size": 3, "version": "1.6.18",
        "podTemplate": {"labels": {"team": "web"}}}));
    assert_eq!(broken_rules(&object), Vec::<String>::new());
}

#[test]
fn pod_labels_may_not_take_the_selector_labels_in_the_schema() {
    for key in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
    ] {
        let object = memcached(json!({"size": 3, "podTemplate": {"labels": {key: "x"}}}));
        let broken = broken_rules(&object);
        assert!(
            broken
                .iter()
                .any(|m| m.contains("the operator selects its pods by them")),
            "{key}: {broken:?}"
        );
    }
}
