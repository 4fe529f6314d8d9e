use std::path::PathBuf;

use bosun_runtime::webhook::review::answer as review_answer;
use kube::core::admission::AdmissionReview;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::*;

fn policy() -> StoragePolicy {
    StoragePolicy {
        file_dirs: vec![PathBuf::from("/var/lib/bosun/backups")],
        ambient_credentials: false,
    }
}

/// A cache that has listed `objects`, as a watch's first list fills it.
fn listed<K>(objects: Vec<Value>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        let object: K = serde_json::from_value(object).expect("an object of the cached kind");
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
    store
}

/// The operator of every namespace with [`policy`], knowing these
/// EtcdRestores and EtcdBackups.
fn judge_knowing(restores: Vec<Value>, backups: Vec<Value>) -> Judge {
    Judge {
        policy: policy(),
        scope: Scope::All,
        lookups: Lookups {
            restores: listed(restores),
            backups: listed(backups),
        },
    }
}

/// The operator of every namespace with [`policy`], in a namespace
/// without restores or backups.
fn judge() -> Judge {
    judge_knowing(vec![], vec![])
}

fn review(kind: &str, operation: &str, object: Option<Value>, old: Option<Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "4f2a0c1e-0000-4000-8000-000000000001",
            "kind": {"group": "etcd.bosun.dev", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "etcd.bosun.dev", "version": "v1alpha1", "resource": format!("{}s", kind.to_lowercase())},
            "name": "main",
            "namespace": "tenant",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old,
            "dryRun": false,
        }
    })
}

fn request<K>(
    kind: &str,
    operation: &str,
    object: Option<Value>,
    old: Option<Value>,
) -> AdmissionRequest<K>
where
    K: Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<K> =
        serde_json::from_value(review(kind, operation, object, old)).expect("a review");
    review.try_into().expect("a request")
}

fn cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "main", "namespace": "tenant"},
        "spec": spec,
    })
}

fn judge_cluster(operation: &str, new: Option<Value>, old: Option<Value>) -> AdmissionResponse {
    validate_cluster(
        &judge(),
        &request::<EtcdCluster>("EtcdCluster", operation, new, old),
    )
}

fn denial(response: &AdmissionResponse) -> &str {
    assert!(!response.allowed, "allowed: {response:?}");
    &response.result.message
}

#[test]
fn a_valid_cluster_is_admitted_on_create() {
    let response = judge_cluster(
        "CREATE",
        Some(cluster(json!({"size": 3, "version": "3.6.16"}))),
        None,
    );
    assert!(response.allowed, "{response:?}");
    assert_eq!(response.uid, "4f2a0c1e-0000-4000-8000-000000000001");
    assert_eq!(response.warnings, None);
}

#[test]
fn a_cluster_the_schema_lets_through_is_refused_on_create_with_the_field_and_the_way_out() {
    // The schema's pattern allows any number of digits; no volume is that big.
    let response = judge_cluster(
        "CREATE",
        Some(cluster(
            json!({"storage": {"size": "99999999999999999999Ei"}}),
        )),
        None,
    );
    let message = denial(&response);
    assert!(message.starts_with("EtcdCluster refused: "), "{message}");
    assert!(message.contains("spec.storage.size"), "{message}");
    assert!(message.contains("such as 4Gi"), "{message}");

    let response = judge_cluster(
        "CREATE",
        Some(cluster(
            json!({"podTemplate": {"env": [{"name": "ETCD_QUOTA_BACKEND_BYTES", "value": "1"}]}}),
        )),
        None,
    );
    let message = denial(&response);
    assert!(
        message.contains("spec.podTemplate.env[0].name"),
        "{message}"
    );
    assert!(message.contains("spec.etcdOptions"), "{message}");
}

#[test]
fn every_wrong_field_is_named_in_the_one_message() {
    let response = judge_cluster(
        "CREATE",
        Some(cluster(json!({
            "size": 0,
            "storage": {"size": "0"},
        }))),
        None,
    );
    let message = denial(&response);
    assert!(message.contains("spec.size"), "{message}");
    assert!(message.contains("spec.storage.size"), "{message}");
}

#[test]
fn an_update_is_judged_on_its_transition_from_the_old_object() {
    let old = cluster(json!({"version": "3.6.16"}));
    // emptyDir cannot change under running members; no CEL rule says so.
    let response = judge_cluster(
        "UPDATE",
        Some(cluster(
            json!({"version": "3.6.16", "storage": {"emptyDir": true}}),
        )),
        Some(old.clone()),
    );
    let message = denial(&response);
    assert!(message.contains("spec.storage.emptyDir"), "{message}");
    assert!(message.contains("immutable"), "{message}");

    // A version change is judged by check_version_change.
    for (to, says) in [
        ("3.5.35", "goes down a minor version"),
        ("3.8.0", "skips a minor version"),
        ("4.0.0", "major version"),
    ] {
        let response = judge_cluster(
            "UPDATE",
            Some(cluster(json!({"version": to}))),
            Some(old.clone()),
        );
        let message = denial(&response);
        assert!(message.contains("spec.version"), "{to}: {message}");
        assert!(message.contains(says), "{to}: {message}");
    }
    let response = judge_cluster(
        "UPDATE",
        Some(cluster(json!({"version": "3.7.3", "size": 5}))),
        Some(old),
    );
    assert!(response.allowed, "{response:?}");
}

#[test]
fn an_update_without_its_old_object_is_judged_as_the_new_spec_alone() {
    let response = judge_cluster("UPDATE", Some(cluster(json!({"version": "3.5.35"}))), None);
    assert!(response.allowed, "{response:?}");
    let response = judge_cluster("UPDATE", Some(cluster(json!({"size": 12}))), None);
    assert!(denial(&response).contains("spec.size"));
}

#[test]
fn an_update_that_leaves_the_spec_alone_is_admitted_even_when_the_spec_is_invalid() {
    // Stored before the webhook, or by a bosun with other rules: the
    // controller must still be able to take its finalizer off, and the
    // user to label it.
    let invalid = json!({"podTemplate": {"env": [{"name": "ETCD_NAME", "value": "x"}]}});
    let mut labelled = cluster(invalid.clone());
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let response = judge_cluster("UPDATE", Some(labelled), Some(cluster(invalid)));
    assert!(response.allowed, "{response:?}");
}

#[test]
fn deletions_are_never_refused() {
    let invalid = cluster(json!({"size": 0}));
    let response = judge_cluster("DELETE", None, Some(invalid));
    assert!(response.allowed, "{response:?}");
    let response = judge_cluster("DELETE", None, None);
    assert!(response.allowed, "{response:?}");
}

#[test]
fn a_create_without_an_object_is_refused_with_a_reason() {
    let response = judge_cluster("CREATE", None, None);
    let message = denial(&response);
    assert!(message.contains("carries no object"), "{message}");
    assert!(message.contains("EtcdCluster"), "{message}");
}

#[test]
fn a_malformed_object_gets_a_denied_review_with_the_uid() {
    // What the server does before the handler runs: an object the type
    // cannot hold never reaches it, and the user reads why.
    let body = review(
        "EtcdCluster",
        "CREATE",
        Some(cluster(json!({"size": "three"}))),
        None,
    );
    let handler = |r: &AdmissionRequest<EtcdCluster>| validate_cluster(&judge(), r);
    let answer = review_answer(&serde_json::to_vec(&body).expect("json"), &handler);
    let review: Value = serde_json::from_slice(&answer.body()).expect("a JSON review");
    assert_eq!(review["response"]["allowed"], json!(false), "{review}");
    assert_eq!(
        review["response"]["uid"],
        json!("4f2a0c1e-0000-4000-8000-000000000001")
    );
    let message = review["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(!message.is_empty(), "{review}");
}

#[test]
fn a_version_without_a_shipped_image_is_refused_unless_the_spec_names_an_image() {
    let response = judge_cluster("CREATE", Some(cluster(json!({"version": "3.6.0"}))), None);
    let message = denial(&response);
    assert!(
        message.contains("spec.version: this bosun ships no etcd image for 3.6.0"),
        "{message}"
    );
    for shipped in SHIPPED_ETCD_VERSIONS {
        assert!(message.contains(shipped), "{message}");
    }
    assert!(message.contains("spec.image"), "{message}");
    // An upgrade to it too.
    let response = judge_cluster(
        "UPDATE",
        Some(cluster(json!({"version": "3.6.0"}))),
        Some(cluster(json!({"version": "3.5.35"}))),
    );
    assert!(denial(&response).contains("spec.version"));
    // With an image repository of the user's own, the user knows best.
    let response = judge_cluster(
        "CREATE",
        Some(cluster(
            json!({"version": "3.6.0", "image": "registry.example.com/etcd"}),
        )),
        None,
    );
    assert!(response.allowed, "{response:?}");
    // A cluster stored with such a version (by another bosun) still scales.
    let response = judge_cluster(
        "UPDATE",
        Some(cluster(json!({"version": "3.6.0", "size": 3}))),
        Some(cluster(json!({"version": "3.6.0", "size": 1}))),
    );
    assert!(response.allowed, "{response:?}");
}

#[test]
fn a_bootstrap_restore_from_a_file_outside_the_backup_dirs_is_refused() {
    let response = judge_cluster(
        "CREATE",
        Some(cluster(
            json!({"bootstrap": {"restore": {"source": {"location": {"url": "file:///etc/passwd"}}}}}),
        )),
        None,
    );
    let message = denial(&response);
    assert!(
        message.contains("spec.bootstrap.restore.source.location.url"),
        "{message}"
    );
    assert!(message.contains("/var/lib/bosun/backups"), "{message}");
}

fn backup(spec: Value) -> Value {
    json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdBackup",
        "metadata": {"name": "nightly", "namespace": "tenant"},
        "spec": spec,
    })
}

fn judge_backup(
    judge: &Judge,
    operation: &str,
    new: Option<Value>,
    old: Option<Value>,
) -> AdmissionResponse {
    validate_backup(
        judge,
        &request::<EtcdBackup>("EtcdBackup", operation, new, old),
    )
}

#[test]
fn backups_are_judged_by_the_spec_rules_and_the_operators_storage_policy() {
    let file =
        |path: &str| backup(json!({"clusterName": "main", "storage": {"file": {"path": path}}}));
    let response = judge_backup(
        &judge(),
        "CREATE",
        Some(file("/var/lib/bosun/backups/main")),
        None,
    );
    assert!(response.allowed, "{response:?}");

    let response = judge_backup(&judge(), "CREATE", Some(file("/etc")), None);
    let message = denial(&response);
    assert!(
        message.starts_with("EtcdBackup refused: spec.storage: "),
        "{message}"
    );
    assert!(message.contains("/var/lib/bosun/backups"), "{message}");

    // Ambient credentials only where the operator lends them.
    let s3 = backup(json!({"clusterName": "main", "storage": {"s3": {"bucket": "backups"}}}));
    let response = judge_backup(&judge(), "CREATE", Some(s3.clone()), None);
    assert!(denial(&response).contains("credentialsSecret"));
    let lending = Judge {
        policy: StoragePolicy {
            ambient_credentials: true,
            ..policy()
        },
        ..judge()
    };
    let response = judge_backup(&lending, "CREATE", Some(s3), None);
    assert!(response.allowed, "{response:?}");

    let response = judge_backup(
        &judge(),
        "CREATE",
        Some(backup(
            json!({"clusterName": "main", "schedule": "every day", "storage": {"file": {"path": "/var/lib/bosun/backups/x"}}}),
        )),
        None,
    );
    assert!(denial(&response).contains("spec.schedule"));
}

#[test]
fn a_backup_update_that_leaves_the_spec_alone_is_admitted() {
    let stored =
        backup(json!({"clusterName": "main", "storage": {"file": {"path": "/elsewhere"}}}));
    let response = judge_backup(&judge(), "UPDATE", Some(stored.clone()), Some(stored));
    assert!(response.allowed, "{response:?}");
}

fn restore(source: Value) -> Value {
    json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdRestore",
        "metadata": {"name": "back", "namespace": "tenant"},
        "spec": {"clusterName": "main", "source": source},
    })
}

fn judge_restore(operation: &str, new: Option<Value>) -> AdmissionResponse {
    validate_restore(
        &judge_knowing(vec![], vec![nightly(1)]),
        &request::<EtcdRestore>("EtcdRestore", operation, new, None),
    )
}

/// EtcdBackup `nightly` in namespace `tenant`, with `records` recorded
/// backups.
fn nightly(records: usize) -> Value {
    let record = json!({
        "location": "s3://backups/main/1.db", "revision": 10, "sizeBytes": 20480,
        "sha256": "00", "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:00:05Z",
    });
    json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdBackup",
        "metadata": {"name": "nightly", "namespace": "tenant"},
        "spec": {"clusterName": "main", "storage": {"s3": {"bucket": "backups", "credentialsSecret": "s3"}}},
        "status": {"backups": vec![record; records]},
    })
}

/// EtcdRestore `name` of cluster `main` in namespace `tenant`, with this
/// status.
fn restore_with(name: &str, uid: &str, status: Value) -> Value {
    json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdRestore",
        "metadata": {"name": name, "namespace": "tenant", "uid": uid},
        "spec": {"clusterName": "main", "source": {"backup": {"name": "nightly"}}},
        "status": status,
    })
}

#[test]
fn restores_are_judged_by_the_spec_rules_and_the_operators_storage_policy() {
    let response = judge_restore(
        "CREATE",
        Some(restore(json!({"backup": {"name": "nightly"}}))),
    );
    assert!(response.allowed, "{response:?}");
    let response = judge_restore(
        "CREATE",
        Some(restore(
            json!({"location": {"url": "file:///var/lib/bosun/backups/main/1.db"}}),
        )),
    );
    assert!(response.allowed, "{response:?}");

    let response = judge_restore(
        "CREATE",
        Some(restore(
            json!({"location": {"url": "file:///var/lib/other/1.db"}}),
        )),
    );
    let message = denial(&response);
    assert!(message.contains("spec.source.location.url"), "{message}");

    let response = judge_restore(
        "CREATE",
        Some(restore(json!({"backup": {"name": "nightly", "index": -1}}))),
    );
    assert!(denial(&response).contains("spec.source.backup.index"));
    let response = judge_restore("DELETE", None);
    assert!(response.allowed);
}

#[test]
fn a_restore_names_a_backup_record_that_exists() {
    let response = judge_restore(
        "CREATE",
        Some(restore(json!({"backup": {"name": "nightly", "index": 1}}))),
    );
    let message = denial(&response);
    assert!(
        message.contains(
            "spec.source.backup.index: EtcdBackup nightly has 1 recorded backup(s); index 1 does not exist (0 is the newest, 0 the oldest)"
        ),
        "{message}"
    );
    let response = judge_restore(
        "CREATE",
        Some(restore(json!({"backup": {"name": "weekly"}}))),
    );
    let message = denial(&response);
    assert!(
        message.contains(
            "spec.source.backup.name: EtcdBackup weekly does not exist in namespace tenant"
        ),
        "{message}"
    );
    let judge = judge_knowing(vec![], vec![nightly(0)]);
    let response = validate_restore(
        &judge,
        &request::<EtcdRestore>(
            "EtcdRestore",
            "CREATE",
            Some(restore(json!({"backup": {"name": "nightly"}}))),
            None,
        ),
    );
    assert!(denial(&response).contains("has 0 recorded backup(s)"));
}

#[test]
fn a_second_restore_of_a_cluster_is_refused_while_one_is_in_flight() {
    let create = |judge: &Judge| {
        validate_restore(
            judge,
            &request::<EtcdRestore>(
                "EtcdRestore",
                "CREATE",
                Some(restore(json!({"backup": {"name": "nightly"}}))),
                None,
            ),
        )
    };
    for status in [
        json!(null),
        json!({"phase": "Pending"}),
        json!({"phase": "Running"}),
    ] {
        let judge = judge_knowing(
            vec![restore_with("earlier", "u1", status.clone())],
            vec![nightly(1)],
        );
        let message = create(&judge).result.message;
        assert!(
            message.contains("spec.clusterName: EtcdCluster main already has a restore in flight, EtcdRestore earlier"),
            "{status}: {message}"
        );
        assert!(message.contains("Succeeded or Failed"), "{message}");
    }
    // Finished ones, and ones of other clusters, leave the way open.
    for status in [json!({"phase": "Succeeded"}), json!({"phase": "Failed"})] {
        let judge = judge_knowing(
            vec![restore_with("earlier", "u1", status)],
            vec![nightly(1)],
        );
        let response = create(&judge);
        assert!(response.allowed, "{response:?}");
    }
    let mut other = restore_with("other", "u2", json!({"phase": "Running"}));
    other["spec"]["clusterName"] = json!("other");
    let response = create(&judge_knowing(vec![other], vec![nightly(1)]));
    assert!(response.allowed, "{response:?}");
}

/// Cluster `main` as stored while EtcdRestore `back` (uid u1) restores it.
fn marked_cluster(spec: Value) -> Value {
    let mut stored = cluster(spec);
    stored["metadata"]["annotations"] = json!({objects::RESTORE_ANNOTATION: "back/u1"});
    stored
}

#[test]
fn a_cluster_being_restored_keeps_its_size_and_version_until_the_restore_ends() {
    let pinned = json!({"phase": "Running", "pinned": {"location": {"url": "s3://backups/main/1.db"}, "size": 20480}});
    let restoring = judge_knowing(vec![restore_with("back", "u1", pinned)], vec![nightly(1)]);
    let update = |judge: &Judge, new: Value| {
        validate_cluster(
            judge,
            &request::<EtcdCluster>(
                "EtcdCluster",
                "UPDATE",
                Some(marked_cluster(new)),
                Some(marked_cluster(json!({"size": 3, "version": "3.5.35"}))),
            ),
        )
    };
    let response = update(&restoring, json!({"size": 5, "version": "3.6.16"}));
    let message = denial(&response);
    assert!(
        message.contains("spec.size: EtcdCluster main is being restored by EtcdRestore back, and its size stays 3 until that restore has finished"),
        "{message}"
    );
    assert!(
        message.contains("spec.version: EtcdCluster main is being restored by EtcdRestore back, and its version stays 3.5.35 until"),
        "{message}"
    );
    // Other changes go through (pausing, for one).
    let response = update(
        &restoring,
        json!({"size": 3, "version": "3.5.35", "paused": true}),
    );
    assert!(response.allowed, "{response:?}");
    // A stale mark (the restore finished, or is another of the same name)
    // holds nothing up.
    for (uid, status) in [
        (
            "u1",
            json!({"phase": "Succeeded", "pinned": {"location": {"url": "s3://b/k"}, "size": 1}}),
        ),
        (
            "u9",
            json!({"phase": "Running", "pinned": {"location": {"url": "s3://b/k"}, "size": 1}}),
        ),
    ] {
        let stale = judge_knowing(vec![restore_with("back", uid, status)], vec![]);
        let response = update(&stale, json!({"size": 5, "version": "3.5.35"}));
        assert!(response.allowed, "{uid}: {response:?}");
    }
    let response = update(&judge(), json!({"size": 5, "version": "3.5.35"}));
    assert!(response.allowed, "{response:?}");
}

#[test]
fn checks_across_objects_wait_for_the_caches() {
    let (restores, _restores_writer) = reflector::store();
    let (backups, _backups_writer) = reflector::store();
    let judge = Judge {
        lookups: Lookups { restores, backups },
        ..judge()
    };
    let response = validate_restore(
        &judge,
        &request::<EtcdRestore>(
            "EtcdRestore",
            "CREATE",
            Some(restore(json!({"backup": {"name": "weekly"}}))),
            None,
        ),
    );
    assert!(response.allowed, "{response:?}");
}

#[test]
fn another_operators_namespace_is_judged_by_the_spec_rules_only() {
    let elsewhere = Judge {
        scope: Scope::Namespace("other".into()),
        ..judge()
    };
    let outside = backup(json!({"clusterName": "main", "storage": {"file": {"path": "/etc"}}}));
    let response = judge_backup(&elsewhere, "CREATE", Some(outside), None);
    assert!(response.allowed, "{response:?}");
    let response = validate_restore(
        &elsewhere,
        &request::<EtcdRestore>(
            "EtcdRestore",
            "CREATE",
            Some(restore(json!({"backup": {"name": "weekly"}}))),
            None,
        ),
    );
    assert!(response.allowed, "{response:?}");
    // The spec's own rules hold everywhere.
    let response = validate_cluster(
        &elsewhere,
        &request::<EtcdCluster>(
            "EtcdCluster",
            "CREATE",
            Some(cluster(json!({"version": "3.6.0"}))),
            None,
        ),
    );
    assert!(denial(&response).contains("spec.version"));
    let mine = Judge {
        scope: Scope::Namespace("tenant".into()),
        ..judge()
    };
    let outside = backup(json!({"clusterName": "main", "storage": {"file": {"path": "/etc"}}}));
    assert!(!judge_backup(&mine, "CREATE", Some(outside), None).allowed);
}

#[test]
fn the_configuration_fails_closed_for_the_three_kinds_and_carries_no_ca_bundle() {
    let endpoint = Endpoint::Service {
        namespace: "bosun-system".into(),
        name: "bosun-operator-webhook".into(),
        port: 443,
    };
    let hooks = configurations("bosun-system", endpoint).expect("etcd.bosun.dev is ownable");
    let validating = hooks.validating();
    assert_eq!(
        validating.metadata.name.as_deref(),
        Some(CONFIGURATION_NAME)
    );
    let webhooks = validating.webhooks.expect("webhooks");
    let paths: Vec<String> = webhooks
        .iter()
        .filter_map(|w| w.client_config.service.as_ref()?.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/validate-etcd-bosun-dev-v1alpha1-etcdcluster",
            "/validate-etcd-bosun-dev-v1alpha1-etcdbackup",
            "/validate-etcd-bosun-dev-v1alpha1-etcdrestore",
        ]
    );
    for webhook in &webhooks {
        assert_eq!(
            webhook.failure_policy.as_deref(),
            Some("Fail"),
            "{}",
            webhook.name
        );
        assert_eq!(webhook.client_config.ca_bundle, None, "{}", webhook.name);
    }
    assert_eq!(hooks.mutating().webhooks.unwrap_or_default().len(), 0);
    // The server answers at every path the configuration sends calls to.
    let server = server(judge());
    for path in &paths {
        assert!(server.paths().contains(&path.as_str()), "{path}");
    }
}

mod generated {
    //! The handlers over generated objects: whatever the spec and the
    //! caches hold, they answer (never panic, which the server would turn
    //! into a denial that says nothing), with the request's uid, and a
    //! refusal always says why.
    use proptest::prelude::*;

    use super::*;

    fn version() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("3.5.35".to_string()),
            Just("3.6.16".to_string()),
            Just("3.7.3".to_string()),
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            ".{0,12}",
        ]
    }

    fn spec() -> impl Strategy<Value = Value> {
        (
            any::<i32>(),
            version(),
            proptest::option::of("[a-z./:0-9]{0,20}"),
            proptest::option::of(".{0,16}"),
            any::<bool>(),
        )
            .prop_map(|(size, version, image, storage, paused)| {
                let mut spec = json!({"size": size, "version": version, "paused": paused});
                if let Some(image) = image {
                    spec["image"] = json!(image);
                }
                if let Some(storage) = storage {
                    spec["storage"] = json!({"size": storage});
                }
                spec
            })
    }

    fn mark() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![Just("back/u1".to_string()), ".{0,12}"])
    }

    fn phase() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(null)),
            Just(json!({"phase": "Pending"})),
            Just(
                json!({"phase": "Running", "pinned": {"location": {"url": "s3://b/k"}, "size": 1}})
            ),
            Just(json!({"phase": "Succeeded"})),
            Just(json!({"phase": "Failed"})),
        ]
    }

    fn assert_answered(response: &AdmissionResponse) {
        assert_eq!(response.uid, "4f2a0c1e-0000-4000-8000-000000000001");
        if !response.allowed {
            assert!(!response.result.message.is_empty(), "{response:?}");
        }
    }

    proptest! {
        #[test]
        fn cluster_updates_are_always_answered(
            new in spec(),
            old in proptest::option::of(spec()),
            stored_mark in mark(),
            status in phase(),
            records in 0usize..3,
        ) {
            let judge = judge_knowing(vec![restore_with("back", "u1", status)], vec![nightly(records)]);
            let old = old.map(|spec| {
                let mut stored = cluster(spec);
                if let Some(mark) = &stored_mark {
                    stored["metadata"]["annotations"] = json!({objects::RESTORE_ANNOTATION: mark});
                }
                stored
            });
            let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
            let review = review("EtcdCluster", operation, Some(cluster(new)), old);
            // Objects the type cannot hold are the server's to refuse.
            if let Ok(review) = serde_json::from_value::<AdmissionReview<EtcdCluster>>(review) {
                let request: AdmissionRequest<EtcdCluster> = review.try_into().expect("a request");
                assert_answered(&validate_cluster(&judge, &request));
            }
        }

        #[test]
        fn restores_are_always_answered(
            name in "[a-z]{0,8}",
            index in any::<i32>(),
            status in phase(),
            records in 0usize..3,
        ) {
            let judge = judge_knowing(vec![restore_with("back", "u1", status)], vec![nightly(records)]);
            let request = request::<EtcdRestore>(
                "EtcdRestore",
                "CREATE",
                Some(restore(json!({"backup": {"name": name, "index": index}}))),
                None,
            );
            assert_answered(&validate_restore(&judge, &request));
        }
    }
}
