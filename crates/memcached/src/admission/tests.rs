//! AdmissionReview JSON through the handlers, as the API server sends it.

use bosun_runtime::webhook::review::answer;
use serde_json::{Value, json};

use super::*;

const UID: &str = "7c1d0a2e-0000-4000-8000-000000000001";

fn review(operation: &str, object: Option<Value>, old: Option<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "cache.bosun.dev", "version": "v1alpha1", "kind": "Memcached"},
            "resource": {"group": "cache.bosun.dev", "version": "v1alpha1", "resource": "memcacheds"},
            "name": "cache",
            "namespace": "web",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old,
            "dryRun": false,
        }
    }))
    .expect("json")
}

fn memcached(spec: Value) -> Value {
    json!({
        "apiVersion": "cache.bosun.dev/v1alpha1",
        "kind": "Memcached",
        "metadata": {"name": "cache", "namespace": "web"},
        "spec": spec,
    })
}

/// The `response` of the review the validating handler answers.
fn validated(operation: &str, object: Option<Value>, old: Option<Value>) -> Value {
    let handler = |r: &AdmissionRequest<Memcached>| validate(r);
    let answer = answer(&review(operation, object, old), &handler);
    assert_eq!(answer.status, 200);
    let review: Value = serde_json::from_slice(&answer.body()).expect("a review");
    assert_eq!(review["response"]["uid"], json!(UID));
    review["response"].clone()
}

/// The `response` of the review the defaulting handler answers.
fn defaulted(operation: &str, object: Option<Value>) -> Value {
    let handler = |r: &AdmissionRequest<DynamicObject>| default_memcached(r);
    let answer = answer(&review(operation, object, None), &handler);
    assert_eq!(answer.status, 200);
    let review: Value = serde_json::from_slice(&answer.body()).expect("a review");
    review["response"].clone()
}

fn message(response: &Value) -> &str {
    assert_eq!(response["allowed"], json!(false), "{response}");
    response["status"]["message"].as_str().unwrap_or_default()
}

/// The JSON Patch of a mutating response, decoded. kube writes the patch
/// bytes as a JSON array (which the API server's decoder takes for its
/// []byte); it is read back the same way.
fn patch(response: &Value) -> Value {
    assert_eq!(response["allowed"], json!(true), "{response}");
    serde_json::from_value::<AdmissionResponse>(response.clone())
        .expect("a response")
        .patch
        .map(|bytes| serde_json::from_slice(&bytes).expect("a JSON patch"))
        .unwrap_or_else(|| json!([]))
}

#[test]
fn a_valid_memcached_is_admitted() {
    let response = validated("CREATE", Some(memcached(json!({"size": 3}))), None);
    assert_eq!(response["allowed"], json!(true), "{response}");
}

#[test]
fn size_zero_is_refused_with_what_is_allowed() {
    let response = validated("CREATE", Some(memcached(json!({"size": 0}))), None);
    assert_eq!(
        message(&response),
        "Memcached refused: spec.size: 0 is below the minimum of 1: a cache has 1 to 64 servers"
    );
}

#[test]
fn a_negative_memory_limit_is_refused_with_what_is_allowed() {
    let response = validated(
        "CREATE",
        Some(memcached(json!({"size": 1, "memoryLimitMiB": -64}))),
        None,
    );
    assert_eq!(
        message(&response),
        "Memcached refused: spec.memoryLimitMiB: -64 is below the minimum of 16: memcached's -m is 16 to 65536 MiB"
    );
}

#[test]
fn every_error_is_in_one_refusal() {
    let response = validated(
        "CREATE",
        Some(memcached(
            json!({"size": 65, "version": "latest", "maxConnections": 1}),
        )),
        None,
    );
    let text = message(&response);
    for field in ["spec.size:", "spec.version:", "spec.maxConnections:"] {
        assert!(text.contains(field), "{field} in {text}");
    }
}

#[test]
fn an_update_that_leaves_the_spec_alone_is_admitted_whatever_the_spec() {
    let stored = memcached(json!({"size": 0}));
    let mut labelled = stored.clone();
    labelled["metadata"]["labels"] = json!({"team": "web"});
    let response = validated("UPDATE", Some(labelled), Some(stored.clone()));
    assert_eq!(response["allowed"], json!(true), "{response}");

    let changed = memcached(json!({"size": 0, "memoryLimitMiB": 128}));
    let response = validated("UPDATE", Some(changed), Some(stored.clone()));
    assert!(message(&response).contains("spec.size: 0"));

    let response = validated("DELETE", None, Some(stored));
    assert_eq!(response["allowed"], json!(true), "{response}");
}

#[test]
fn a_generated_name_is_judged_with_its_suffix() {
    let mut object = memcached(json!({"size": 1}));
    object["metadata"] = json!({"generateName": "a".repeat(47), "namespace": "web"});
    assert_eq!(
        validated("CREATE", Some(object.clone()), None)["allowed"],
        json!(true)
    );
    object["metadata"]["generateName"] = json!("a".repeat(48));
    assert!(message(&validated("CREATE", Some(object), None)).contains("metadata.name"));
}

#[test]
fn a_tag_style_version_is_written_back_as_memcacheds_own() {
    let response = defaulted(
        "CREATE",
        Some(memcached(json!({"size": 3, "version": "v1.6.21"}))),
    );
    assert_eq!(
        patch(&response),
        json!([{"op": "replace", "path": "/spec/version", "value": "1.6.21"}])
    );
}

#[test]
fn defaulting_leaves_everything_else_alone_and_refuses_nothing() {
    for spec in [
        json!({"size": 3, "version": "1.6.18"}),
        json!({"size": 3, "version": "vlatest"}),
        json!({"size": "three"}),
        json!({}),
    ] {
        let response = defaulted("CREATE", Some(memcached(spec.clone())));
        assert_eq!(patch(&response), json!([]), "{spec}");
    }
}

#[test]
fn the_configurations_send_both_hooks_to_the_registered_paths_and_fail_closed() {
    let endpoint = Endpoint::Service {
        namespace: "bosun-system".into(),
        name: "bosun-operator-webhook".into(),
        port: 443,
    };
    let hooks = configurations("bosun-system", endpoint).expect("configurations");
    let server = register(AdmissionServer::new());
    let paths = server.paths();

    let validating = hooks.validating().webhooks.unwrap_or_default();
    let mutating = hooks.mutating().webhooks.unwrap_or_default();
    assert_eq!((validating.len(), mutating.len()), (1, 1));
    for (policy, path, rules) in [
        (
            validating[0].failure_policy.clone(),
            validating[0]
                .client_config
                .service
                .as_ref()
                .and_then(|s| s.path.clone()),
            validating[0].rules.clone(),
        ),
        (
            mutating[0].failure_policy.clone(),
            mutating[0]
                .client_config
                .service
                .as_ref()
                .and_then(|s| s.path.clone()),
            mutating[0].rules.clone(),
        ),
    ] {
        assert_eq!(policy.as_deref(), Some("Fail"));
        let path = path.expect("a path");
        assert!(paths.contains(&path.as_str()), "{path} in {paths:?}");
        let rule = &rules.expect("rules")[0];
        assert_eq!(rule.api_groups, Some(vec!["cache.bosun.dev".to_string()]));
        assert_eq!(rule.resources, Some(vec!["memcacheds".to_string()]));
        assert_eq!(
            rule.operations,
            Some(vec!["CREATE".to_string(), "UPDATE".to_string()])
        );
    }
    assert_eq!(
        configuration_names().mutating,
        [hooks.mutating().metadata.name.unwrap_or_default()]
    );
}
