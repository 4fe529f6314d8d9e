//! The admission server over real TLS on loopback: a client that trusts
//! only the generated CA and checks the Service name in the certificate
//! sends AdmissionReviews; allowed, denied, mutated and malformed calls get
//! the answers the API server expects, the metrics count them, and a
//! certificate swapped while the server runs is what the next connection
//! sees. No cluster needed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bosun_runtime::metrics::Metrics;
use bosun_runtime::webhook::certificate::{PemPair, generate_ca, issue_serving, service_dns_names};
use bosun_runtime::webhook::{AdmissionServer, ServingCertificate};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use support::admission::{default_label, validate};
use support::{parse_prometheus_text, value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SERVICE: &str = "hooks";
const NAMESPACE: &str = "ops";
const VALIDATE: &str = "/validate--v1-configmap";
const MUTATE: &str = "/mutate--v1-configmap";

/// A CA and a serving certificate for the test Service, valid now.
fn certificates(ca_name: &str) -> (PemPair, PemPair) {
    let now = Timestamp::now();
    let from = now - SignedDuration::from_hours(1);
    let until = now + SignedDuration::from_hours(24);
    let ca = generate_ca(ca_name, from, until).expect("CA");
    let leaf = issue_serving(&ca, &service_dns_names(SERVICE, NAMESPACE), from, until)
        .expect("serving certificate");
    (ca, leaf)
}

struct Server {
    addr: SocketAddr,
    certificate: ServingCertificate,
    metrics: Metrics,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(leaf: &PemPair) -> Server {
    let metrics = Metrics::new();
    let server = AdmissionServer::new()
        .validate::<ConfigMap>(validate)
        .mutate::<ConfigMap>(default_label)
        .with_metrics(&metrics);
    let certificate = ServingCertificate::new();
    certificate
        .set(leaf.cert.as_bytes(), leaf.key.as_bytes())
        .expect("serving certificate loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let certificate = certificate.clone();
        let stop = stop.clone();
        async move {
            server
                .serve(listener, certificate, stop)
                .await
                .expect("server runs");
        }
    });
    Server {
        addr,
        certificate,
        metrics,
        stop,
        task,
    }
}

/// A client that trusts only `ca`, reaches the server under the Service's
/// DNS name, and opens a new connection for every request.
fn client(ca: &PemPair, addr: SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in
        bosun_runtime::webhook::certificate::pem_certificates(ca.cert.as_bytes()).expect("CA PEM")
    {
        roots.add(der).expect("CA is a trust anchor");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve(&host(), addr)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn host() -> String {
    format!("{SERVICE}.{NAMESPACE}.svc")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{}:{}{path}", host(), addr.port())
}

fn review(uid: &str, data: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "settings",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "labels": {"app": "x"}},
                "data": data
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("a body");
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn patch_of(body: &Value) -> Value {
    let bytes: Vec<u8> =
        serde_json::from_value(body["response"]["patch"].clone()).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_calls_over_tls_get_the_answers_the_api_server_expects() {
    let (ca, leaf) = certificates("webhook-test-ca-1");
    let server = start(&leaf).await;
    let client = client(&ca, server.addr);
    let to_json = |v: Value| serde_json::to_vec(&v).expect("JSON");

    let (status, body) = post(
        &client,
        &url(server.addr, VALIDATE),
        to_json(review("u-1", json!({"a": "1"}))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(body["response"]["uid"], "u-1");
    assert_eq!(body["response"]["allowed"], true);

    let (status, body) = post(
        &client,
        &url(server.addr, VALIDATE),
        to_json(review("u-2", json!({"forbidden": "1"}))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["uid"], "u-2");
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        body["response"]["status"]["message"],
        "data key \"forbidden\" is not allowed"
    );

    let (status, body) = post(
        &client,
        &url(server.addr, MUTATE),
        to_json(review("u-3", json!({}))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(body["response"]["patchType"], "JSONPatch");
    assert_eq!(
        patch_of(&body),
        json!([{"op": "add", "path": "/metadata/labels/defaulted", "value": "true"}])
    );

    let (status, body) = post(
        &client,
        &url(server.addr, VALIDATE),
        b"{\"kind\": ".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["response"]["allowed"], false);
    let message = body["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("not JSON"), "{message}");

    let unknown = client
        .post(url(server.addr, "/validate-nothing-v1-here"))
        .body("{}")
        .send()
        .await
        .expect("an answer");
    assert_eq!(unknown.status().as_u16(), 404);

    let text = server.metrics.encode_prometheus_text().expect("metrics");
    let samples = parse_prometheus_text(&text).expect("Prometheus text");
    let requests = "controller_runtime_webhook_requests_total";
    assert_eq!(
        value(
            &samples,
            requests,
            &[("webhook", VALIDATE), ("code", "200")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            requests,
            &[("webhook", VALIDATE), ("code", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, requests, &[("webhook", MUTATE), ("code", "200")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "controller_runtime_webhook_latency_seconds_count",
            &[("webhook", VALIDATE)]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &samples,
            "controller_runtime_webhook_requests_in_flight",
            &[("webhook", VALIDATE)]
        ),
        Some(0.0)
    );

    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops on shutdown")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_is_served_to_the_next_connection() {
    let (old_ca, old_leaf) = certificates("webhook-test-ca-old");
    let (new_ca, new_leaf) = certificates("webhook-test-ca-new");
    let server = start(&old_leaf).await;
    let body = serde_json::to_vec(&review("u-1", json!({}))).expect("JSON");
    let trusts_old = client(&old_ca, server.addr);
    let trusts_new = client(&new_ca, server.addr);

    let (status, _) = post(&trusts_old, &url(server.addr, VALIDATE), body.clone()).await;
    assert_eq!(status, 200);
    assert!(
        trusts_new
            .post(url(server.addr, VALIDATE))
            .body(body.clone())
            .send()
            .await
            .is_err(),
        "a client that trusts only the new CA refuses the old certificate"
    );

    let old_issuer = server.certificate.issuer();
    server
        .certificate
        .set(new_leaf.cert.as_bytes(), new_leaf.key.as_bytes())
        .expect("the new certificate loads");
    assert_ne!(
        server.certificate.issuer(),
        old_issuer,
        "readiness sees the new issuer"
    );

    let (status, answer) = post(&trusts_new, &url(server.addr, VALIDATE), body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        trusts_old
            .post(url(server.addr, VALIDATE))
            .body(body)
            .send()
            .await
            .is_err(),
        "new connections get the new certificate"
    );

    server.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_refused_and_the_old_one_kept() {
    let (ca, leaf) = certificates("webhook-test-ca-keep");
    let server = start(&leaf).await;
    let (_, other_leaf) = certificates("webhook-test-ca-other");
    assert!(
        server
            .certificate
            .set(leaf.cert.as_bytes(), other_leaf.key.as_bytes())
            .is_err(),
        "a key that does not match the certificate"
    );
    assert!(
        server
            .certificate
            .set(b"garbage", leaf.key.as_bytes())
            .is_err()
    );
    let body = serde_json::to_vec(&review("u-1", json!({}))).expect("JSON");
    let (status, _) = post(&client(&ca, server.addr), &url(server.addr, VALIDATE), body).await;
    assert_eq!(status, 200, "still serving the good certificate");
    server.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.task).await;
}
