//! Admission webhooks against the dev cluster's real API server, which
//! calls servers in the test process on loopback:
//!
//! - self-managed certificates through a CA rotation forced by a shortened
//!   schedule, while a client applies objects continuously: not one call
//!   fails (a failed call would be ignored by the fail-open policy and let
//!   a forbidden object through, which the client counts), every
//!   `caBundle` holds old and new CA together during the overlap, and the
//!   replica stays ready;
//! - certificates provided in a Secret: served, reloaded when renewed,
//!   never written;
//! - a webhook that never answers: Pods and ConfigMaps are still created,
//!   each within the webhook's timeout.
//!
//! The configurations reach only a namespace of the test's own (Pods only
//! by dry run), are owned by that namespace, and are deleted when the test
//! ends, also when it fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_runtime::metrics::Metrics;
use bosun_runtime::webhook::certificate::{PemPair, generate_ca, issue_serving};
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, with_ca_bundle_mutating, with_ca_bundle_validating,
};
use bosun_runtime::webhook::published::{CA_BUNDLE_FIELD_MANAGER, read_published};
use bosun_runtime::webhook::{
    AdmissionServer, ConfigurationNames, Endpoint, RotationPolicy, WebhookCertificates,
    WebhookConfigurations, mutated,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const FORBIDDEN_MESSAGE: &str = "data key \"forbidden\" is not allowed";

fn validate(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
    let forbidden = request
        .object
        .as_ref()
        .and_then(|o| o.data.as_ref())
        .is_some_and(|d| d.contains_key("forbidden"));
    if forbidden {
        AdmissionResponse::from(request).deny(FORBIDDEN_MESSAGE)
    } else {
        AdmissionResponse::from(request)
    }
}

fn default_label(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
    let Some(before) = request.object.clone() else {
        return AdmissionResponse::from(request);
    };
    let mut after = before.clone();
    after
        .metadata
        .labels
        .get_or_insert_default()
        .insert("defaulted".into(), "true".into());
    mutated(request, &before, &after)
}

/// Deletes the test's webhook configurations when dropped, so that a
/// failed test leaves nothing that intercepts calls.
struct ConfigurationsGuard<'a> {
    cluster: &'a TestCluster,
    name: String,
}

impl Drop for ConfigurationsGuard<'_> {
    fn drop(&mut self) {
        // The API server may be restarting: try for a minute.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cluster.kubectl(&[
                "delete",
                "validatingwebhookconfiguration,mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ]);
            if out.status.success() {
                return;
            }
            if std::time::Instant::now() > deadline {
                eprintln!(
                    "deleting the webhook configurations {} (their namespace owns them): {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ConfigMap::default()
    }
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// One probe of both webhooks: `Err` says what went wrong.
async fn probe(config_maps: &Api<ConfigMap>, n: u64) -> Result<(), String> {
    let forbidden = config_map(&format!("forbidden-{n}"), &[("forbidden", "1")]);
    match config_maps.create(&dry_run(), &forbidden).await {
        Err(kube::Error::Api(status)) if status.message.contains(FORBIDDEN_MESSAGE) => {}
        Err(error) => return Err(format!("the forbidden ConfigMap: {error}")),
        Ok(_) => {
            return Err(
                "a forbidden ConfigMap was admitted: the validating call failed and was ignored"
                    .into(),
            );
        }
    }
    let allowed = config_map(&format!("allowed-{n}"), &[("a", "1")]);
    match config_maps.create(&dry_run(), &allowed).await {
        Ok(created) => {
            let labels = created.metadata.labels.unwrap_or_default();
            if labels.get("defaulted").map(String::as_str) != Some("true") {
                return Err(
                    "an allowed ConfigMap was not defaulted: the mutating call failed and was ignored"
                        .into(),
                );
            }
        }
        Err(error) => return Err(format!("the allowed ConfigMap: {error}")),
    }
    Ok(())
}

/// Polls `done` every 200 ms until it holds, through the cluster
/// fixture's [`wait_until`]; panics with the last observation at `within`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    wait_until(what, within, Duration::from_millis(200), || {
        let check = done();
        async move { check.await.map(|()| true) }
    })
    .await
    .unwrap_or_else(|timeout| panic!("{timeout}"));
}

async fn ca_subjects(client: &Client, names: &ConfigurationNames) -> Vec<Vec<Vec<u8>>> {
    read_published(client, names)
        .await
        .expect("reading the caBundles")
        .into_iter()
        .map(|bundle| bundle.cas)
        .collect()
}

/// An owner reference to namespace `tenant`: should the guard's delete not
/// reach the API server, the garbage collector removes what it owns with the
/// namespace.
async fn owned_by(client: &Client, tenant: &str) -> Vec<OwnerReference> {
    let namespace = Api::<Namespace>::all(client.clone())
        .get(tenant)
        .await
        .expect("the tenant namespace");
    vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: tenant.to_string(),
        uid: namespace.metadata.uid.unwrap_or_default(),
        ..OwnerReference::default()
    }]
}

/// Validating and mutating configurations named `name` that reach only the
/// ConfigMaps of `tenant`, calling the server at `addr`.
async fn install_configurations(
    client: &Client,
    name: &str,
    operator: &str,
    tenant: &str,
    addr: SocketAddr,
    ca_bundle: Option<&[u8]>,
) {
    let configurations = WebhookConfigurations::new(
        name,
        "e2e.bosun.dev",
        operator,
        Endpoint::Url(format!("https://{addr}")),
    )
    .with_namespace_requirement(LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![tenant.to_string()]),
    })
    .validate::<ConfigMap>(&CREATE_UPDATE)
    .mutate::<ConfigMap>(&["CREATE"]);
    let (mut validating, mut mutating) = (configurations.validating(), configurations.mutating());
    let owner = owned_by(client, tenant).await;
    validating.metadata.owner_references = Some(owner.clone());
    mutating.metadata.owner_references = Some(owner);
    if let Some(pem) = ca_bundle {
        validating = with_ca_bundle_validating(validating, pem);
        mutating = with_ca_bundle_mutating(mutating, pem);
    }
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .expect("creating the validating configuration");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .expect("creating the mutating configuration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answer_the_api_server_through_a_ca_rotation_without_a_failed_call() {
    let cluster = TestCluster::connect().await;
    let operator_ns = cluster.namespace("webhook_operator").await;
    let tenant_ns = cluster.namespace("webhook_tenant").await;
    let client = cluster.client.clone();

    // The server; it serves nothing until the Secret has a certificate.
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = AdmissionServer::new()
        .validate::<ConfigMap>(validate)
        .mutate::<ConfigMap>(default_label)
        .with_metrics(&Metrics::new());

    // Configurations that reach only the tenant namespace's ConfigMaps.
    let name = format!("bosun-e2e-{}", tenant_ns.name);
    let _guard = ConfigurationsGuard {
        cluster: &cluster,
        name: name.clone(),
    };
    install_configurations(
        &client,
        &name,
        &operator_ns.name,
        &tenant_ns.name,
        addr,
        None,
    )
    .await;
    let names = ConfigurationNames {
        validating: vec![name.clone()],
        mutating: vec![name.clone()],
    };

    // A schedule short enough to see a CA rotation in under two minutes: the CA is
    // replaced ~50 s after it is made; changes get 15 s to propagate,
    // three times the replica's caBundle poll, so that readiness never
    // lags the certificate it serves even on a loaded machine.
    let policy = RotationPolicy {
        ca_lifetime: SignedDuration::from_hours(1),
        ca_renew_at: 0.015,
        leaf_lifetime: SignedDuration::from_hours(1),
        leaf_renew_at: 2.0 / 3.0,
        backdate: SignedDuration::from_secs(5),
        propagation: SignedDuration::from_secs(15),
    };
    let certificates = WebhookCertificates::self_managed(
        client.clone(),
        &operator_ns.name,
        "webhook-certificates",
        "unused",
        names.clone(),
    )
    .with_names(vec!["127.0.0.1".into()])
    .with_policy(policy);
    let writer = certificates
        .leader_writer()
        .expect("self-managed certificates have a writer");
    let readiness = certificates.readiness().clone();
    let serving = certificates.serving();
    let server_task = tokio::spawn({
        let serving = serving.clone();
        let stop = stop.clone();
        async move { server.serve(listener, serving, stop).await }
    });
    let tasks = [
        tokio::spawn(writer.run(stop.clone())),
        tokio::spawn(certificates.clone().run_replica(stop.clone())),
    ];

    wait_for("the replica is ready", Duration::from_secs(60), || async {
        readiness.check()
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant_ns.name);
    wait_for(
        "the API server calls the webhooks",
        Duration::from_secs(30),
        || probe(&config_maps, 0),
    )
    .await;

    // A stored object carries the mutation.
    let stored = config_maps
        .create(&PostParams::default(), &config_map("stored", &[("a", "1")]))
        .await
        .expect("an allowed ConfigMap is stored");
    assert_eq!(
        stored
            .metadata
            .labels
            .unwrap_or_default()
            .get("defaulted")
            .map(String::as_str),
        Some("true")
    );

    // Through the rotation: every call answered, the replica ready.
    let initial = ca_subjects(&client, &names).await;
    assert!(
        initial.iter().all(|cas| cas.len() == 1),
        "one CA before the rotation: {initial:?}"
    );
    let first_ca = initial[0][0].clone();
    let deadline = Instant::now() + Duration::from_secs(150);
    let (mut calls, mut failures, mut not_ready) = (0u64, Vec::new(), Vec::new());
    let mut saw_overlap = false;
    let mut rotated = false;
    while !rotated {
        assert!(
            Instant::now() < deadline,
            "no completed CA rotation within 150 s (overlap seen: {saw_overlap}); failures: {failures:?}"
        );
        calls += 1;
        if let Err(failure) = probe(&config_maps, calls).await {
            failures.push(failure);
        }
        if let Err(why) = readiness.check() {
            not_ready.push(why);
        }
        let bundles = ca_subjects(&client, &names).await;
        if bundles
            .iter()
            .all(|cas| cas.len() == 2 && cas.contains(&first_ca))
        {
            saw_overlap = true;
        }
        rotated = saw_overlap
            && bundles
                .iter()
                .all(|cas| cas.len() == 1 && !cas.contains(&first_ca))
            && serving
                .issuer()
                .is_some_and(|issuer| bundles[0].contains(&issuer));
    }
    // A few more calls on the new CA alone.
    for n in 0..20 {
        calls += 1;
        if let Err(failure) = probe(&config_maps, 100_000 + n).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    // The caBundle is the certificate writer's field, and nobody else's.
    let configuration = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(&name)
        .await
        .expect("the configuration");
    let managers: Vec<String> = configuration
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.to_string().contains("f:caBundle"))
        })
        .filter_map(|entry| entry.manager)
        .collect();
    assert_eq!(managers, [CA_BUNDLE_FIELD_MANAGER], "who manages caBundle");
    assert!(
        not_ready.is_empty(),
        "the replica went unready: {not_ready:?}"
    );

    stop.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("background tasks stop")
            .expect("no panic");
    }
    tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("the server stops")
        .expect("no panic")
        .expect("the server ran");
}

fn provided_secret(name: &str, ca: &PemPair, leaf: &PemPair) -> Secret {
    let data = [
        ("tls.crt", leaf.cert.clone()),
        ("tls.key", leaf.key.clone()),
        ("ca.crt", ca.cert.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_certificates_are_served_reloaded_and_never_written() {
    let cluster = TestCluster::connect().await;
    let operator_ns = cluster.namespace("webhook_byo_operator").await;
    let tenant_ns = cluster.namespace("webhook_byo_tenant").await;
    let client = cluster.client.clone();

    // What a certificate manager would have written.
    let now = Timestamp::now();
    let (from, until) = (
        now - SignedDuration::from_mins(5),
        now + SignedDuration::from_hours(1),
    );
    let ca = generate_ca("provided test CA", from, until).expect("CA");
    let names = vec!["127.0.0.1".to_string()];
    let first = issue_serving(&ca, &names, from, until).expect("leaf");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &operator_ns.name);
    let secret_name = "provided-tls";
    secrets
        .create(
            &PostParams::default(),
            &provided_secret(secret_name, &ca, &first),
        )
        .await
        .expect("creating the provided Secret");

    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let name = format!("bosun-e2e-{}", tenant_ns.name);
    let _guard = ConfigurationsGuard {
        cluster: &cluster,
        name: name.clone(),
    };
    install_configurations(
        &client,
        &name,
        &operator_ns.name,
        &tenant_ns.name,
        addr,
        Some(ca.cert.as_bytes()),
    )
    .await;
    let configuration_names = ConfigurationNames {
        validating: vec![name.clone()],
        mutating: vec![name.clone()],
    };

    let certificates = WebhookCertificates::provided(
        client.clone(),
        &operator_ns.name,
        secret_name,
        configuration_names.clone(),
    );
    assert!(certificates.leader_writer().is_none(), "nothing to write");
    let readiness = certificates.readiness().clone();
    let serving = certificates.serving();
    let server = AdmissionServer::new()
        .validate::<ConfigMap>(validate)
        .mutate::<ConfigMap>(default_label);
    let server_task = tokio::spawn({
        let serving = serving.clone();
        let stop = stop.clone();
        async move { server.serve(listener, serving, stop).await }
    });
    let replica = tokio::spawn(certificates.clone().run_replica(stop.clone()));

    wait_for("the replica is ready", Duration::from_secs(30), || async {
        readiness.check()
    })
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant_ns.name);
    wait_for(
        "the API server calls the webhooks",
        Duration::from_secs(30),
        || probe(&config_maps, 0),
    )
    .await;

    // The certificate manager renews the leaf: the replica serves it.
    let served_first = serving.leaf_der();
    let second = issue_serving(&ca, &names, from, until).expect("leaf");
    let renewed = secrets
        .replace(
            secret_name,
            &PostParams::default(),
            &Secret {
                metadata: secrets.get(secret_name).await.expect("the Secret").metadata,
                ..provided_secret(secret_name, &ca, &second)
            },
        )
        .await
        .expect("renewing the provided Secret");
    wait_for(
        "the renewed leaf is served",
        Duration::from_secs(30),
        || {
            let changed = serving.leaf_der() != served_first;
            async move {
                if changed {
                    Ok(())
                } else {
                    Err("still the first leaf".into())
                }
            }
        },
    )
    .await;
    probe(&config_maps, 1)
        .await
        .expect("calls work on the renewed leaf");

    // A caBundle that no longer trusts the served CA: not ready.
    let other = generate_ca("another CA", from, until).expect("CA");
    let webhooks: Vec<serde_json::Value> = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(&name)
        .await
        .expect("the configuration")
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": ByteString(other.cert.clone().into_bytes())}}))
        .collect();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply("webhook-e2e-test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": webhooks,
            })),
        )
        .await
        .expect("replacing the caBundle");
    wait_for(
        "the replica reports not ready",
        Duration::from_secs(30),
        || {
            let result = readiness.check();
            async move {
                match result {
                    Err(why) if why.contains("not yet in the caBundle") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    // Nothing of the runtime wrote the Secret.
    let after = secrets.get(secret_name).await.expect("the Secret");
    assert_eq!(
        after.metadata.resource_version, renewed.metadata.resource_version,
        "the provided Secret was written by someone other than its owner"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), replica)
        .await
        .expect("the replica stops")
        .expect("no panic");
    tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("the server stops")
        .expect("no panic")
        .expect("the server ran");
}

/// A Pod that a dry-run create would accept.
fn pod(name: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "pause:never-pulled"}]}
    }))
    .expect("a Pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_blocks_neither_pods_nor_other_kinds() {
    let cluster = TestCluster::connect().await;
    let operator_ns = cluster.namespace("webhook_dead_operator").await;
    let tenant_ns = cluster.namespace("webhook_dead_tenant").await;
    let client = cluster.client.clone();

    // A black hole: accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });

    let name = format!("bosun-e2e-{}", tenant_ns.name);
    let _guard = ConfigurationsGuard {
        cluster: &cluster,
        name: name.clone(),
    };
    let configurations = WebhookConfigurations::new(
        &name,
        "e2e.bosun.dev",
        &operator_ns.name,
        Endpoint::Url(format!("https://{addr}")),
    )
    .with_namespace_requirement(LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![tenant_ns.name.clone()]),
    })
    .mutate::<k8s_openapi::api::core::v1::Pod>(&["CREATE"])
    .validate::<ConfigMap>(&CREATE_UPDATE);
    let (mut mutating, mut validating) = (configurations.mutating(), configurations.validating());
    let owner = owned_by(&client, &tenant_ns.name).await;
    mutating.metadata.owner_references = Some(owner.clone());
    validating.metadata.owner_references = Some(owner);
    for webhook in mutating.webhooks.iter().flatten() {
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .expect("creating the mutating configuration");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .expect("creating the validating configuration");

    // Wait until the API server has the configurations: then a call takes
    // the webhook's timeout before it is ignored.
    let timeout = Duration::from_secs(5);
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), &tenant_ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant_ns.name);
    wait_for(
        "the API server calls the dead webhook",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let started = Instant::now();
                pods.create(&dry_run(), &pod("probe"))
                    .await
                    .map_err(|e| format!("a Pod was refused: {e}"))?;
                if started.elapsed() >= timeout - Duration::from_millis(500) {
                    Ok(())
                } else {
                    Err("answered at once: the webhook is not called yet".into())
                }
            }
        },
    )
    .await;

    for n in 0..3 {
        let started = Instant::now();
        pods.create(&dry_run(), &pod(&format!("p-{n}")))
            .await
            .expect("a Pod is created although its webhook never answers");
        let took = started.elapsed();
        assert!(
            took < timeout + Duration::from_secs(4),
            "a Pod create took {took:?}, past the webhook's {timeout:?} timeout"
        );
        let started = Instant::now();
        config_maps
            .create(
                &dry_run(),
                &config_map(&format!("c-{n}"), &[("forbidden", "1")]),
            )
            .await
            .expect("a ConfigMap is created although its webhook never answers");
        let took = started.elapsed();
        assert!(
            took < timeout + Duration::from_secs(4),
            "a ConfigMap create took {took:?}, past the webhook's {timeout:?} timeout"
        );
    }
    hole.abort();
}
