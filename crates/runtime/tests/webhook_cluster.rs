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
//!   never written.
//!
//! Three replicas through a rotation are `webhook_replicas.rs`; webhooks
//! that do not answer properly are `webhook_failures.rs`. The
//! configurations reach only a namespace of the test's own, are owned by
//! that namespace, and are deleted when the test ends, also when it fails.

mod support;

use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::metrics::Metrics;
use bosun_runtime::webhook::certificate::{PemPair, generate_ca, issue_serving};
use bosun_runtime::webhook::published::CA_BUNDLE_FIELD_MANAGER;
use bosun_runtime::webhook::{AdmissionServer, ConfigurationNames, WebhookCertificates};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::admission::{
    ConfigurationsGuard, RotationWatch, ca_subjects, config_map, default_label,
    install_configurations, probe, short_rotation, validate, wait_for,
};

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

    let certificates = WebhookCertificates::self_managed(
        client.clone(),
        &operator_ns.name,
        "webhook-certificates",
        "unused",
        names.clone(),
    )
    .with_names(vec!["127.0.0.1".into()])
    .with_policy(short_rotation());
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
    let mut rotation = RotationWatch::new(&ca_subjects(&client, &names).await);
    let deadline = Instant::now() + Duration::from_secs(150);
    let (mut calls, mut failures, mut not_ready) = (0u64, Vec::new(), Vec::new());
    loop {
        assert!(
            Instant::now() < deadline,
            "no completed CA rotation within 150 s (overlap seen: {}); failures: {failures:?}",
            rotation.saw_overlap
        );
        calls += 1;
        if let Err(failure) = probe(&config_maps, calls).await {
            failures.push(failure);
        }
        if let Err(why) = readiness.check() {
            not_ready.push(why);
        }
        let bundles = ca_subjects(&client, &names).await;
        if rotation.completed(&bundles, &[serving.issuer()]) {
            break;
        }
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
