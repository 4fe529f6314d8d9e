//! Webhooks that do not answer properly, against the dev cluster's real API
//! server, which calls servers in the test process on loopback:
//!
//! - a webhook that never answers, for Pods and ConfigMaps (fail open):
//!   both are still created, each within the webhook's timeout;
//! - webhooks for a resource of the operator's own group (fail closed) that
//!   answer with garbage, a wrong uid, a server error, a patch that is not
//!   JSON Patch, or not at all: `kubectl create` fails with an error that
//!   names the webhook, returns within the webhook's timeout, and nothing
//!   is stored.
//!
//! The test servers are deliberately broken: no real webhook server can be
//! made to produce these answers on demand. Everything the test creates
//! reaches only a namespace of its own and is owned by it.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::webhook::certificate::{generate_ca, issue_serving};
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, with_ca_bundle_mutating, with_ca_bundle_validating,
};
use bosun_runtime::webhook::{Endpoint, HandlerKind, ServingCertificate, WebhookConfigurations};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use support::admission::{ConfigurationsGuard, config_map, dry_run, owned_by, wait_for};

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

/// How one broken webhook answers, by the path it is called at.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Broken {
    /// 200 with a body that is not JSON.
    NotJson,
    /// A well-formed review for another request.
    WrongUid,
    /// 500 and a plain-text body.
    ServerError,
    /// A mutating answer whose patch is not JSON Patch.
    NotAPatch,
    /// Never a byte.
    Silent,
}

impl Broken {
    const ALL: [Broken; 5] = [
        Broken::NotJson,
        Broken::WrongUid,
        Broken::ServerError,
        Broken::NotAPatch,
        Broken::Silent,
    ];

    fn path(self) -> &'static str {
        match self {
            Broken::NotJson => "/not-json",
            Broken::WrongUid => "/wrong-uid",
            Broken::ServerError => "/server-error",
            Broken::NotAPatch => "/not-a-patch",
            Broken::Silent => "/silent",
        }
    }

    /// The label value that routes a Probe to this webhook alone.
    fn label(self) -> &'static str {
        &self.path()[1..]
    }

    fn from_path(path: &str) -> Option<Broken> {
        Broken::ALL.into_iter().find(|b| b.path() == path)
    }

    /// The raw HTTP response, `None` for never answering.
    fn response(self, request_uid: &str) -> Option<String> {
        let (status, body) = match self {
            Broken::NotJson => ("200 OK", "<html>not an admission review</html>".to_string()),
            Broken::WrongUid => (
                "200 OK",
                serde_json::json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": format!("not-{request_uid}"), "allowed": true}
                })
                .to_string(),
            ),
            Broken::ServerError => ("500 Internal Server Error", "boom".to_string()),
            Broken::NotAPatch => (
                "200 OK",
                serde_json::json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {
                        "uid": request_uid,
                        "allowed": true,
                        "patchType": "JSONPatch",
                        "patch": k8s_openapi::ByteString(b"{\"not\": \"a patch\"}".to_vec()),
                    }
                })
                .to_string(),
            ),
            Broken::Silent => return None,
        };
        Some(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// Reads one HTTP/1.1 request: its path and body; `None` at the end of the
/// connection.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((path, body))
}

/// Answers every request on one connection as its path says.
async fn serve_broken(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    while let Some((path, body)) = read_request(&mut stream).await {
        let uid = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|review| review["request"]["uid"].as_str().map(str::to_string))
            .unwrap_or_default();
        let response = Broken::from_path(path.split('?').next().unwrap_or_default()).map_or(
            Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()),
            |b| b.response(&uid),
        );
        let Some(response) = response else {
            // Hold the connection open and silent until the peer gives up.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            return;
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A namespaced kind of a group of the test's own, `Probe`, served as
/// `probes.<GROUP>`; owned by the namespace `owner` names, so that it goes
/// with it.
const GROUP: &str = "failures.e2e.bosun.dev";

fn probe_crd(
    owner: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> CustomResourceDefinition {
    let mut crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("probes.{GROUP}")},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "probes", "singular": "probe", "kind": "Probe", "listKind": "ProbeList"},
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .expect("a CRD");
    crd.metadata.owner_references = Some(owner);
    crd
}

/// A Probe manifest routed to the webhook `broken` by its label.
fn probe_manifest(name: &str, broken: Option<Broken>) -> String {
    let labels: BTreeMap<&str, &str> = broken.map(|b| ("case", b.label())).into_iter().collect();
    serde_json::json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "Probe",
        "metadata": {"name": name, "labels": labels},
        "spec": {"n": 1}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_webhooks_of_an_own_group_fail_closed_with_a_clear_error_within_the_timeout() {
    let cluster = TestCluster::connect().await;
    let operator_ns = cluster.namespace("webhook_broken_operator").await;
    let tenant_ns = cluster.namespace("webhook_broken_tenant").await;
    let client = cluster.client.clone();
    let ns = tenant_ns.name.clone();

    // The kind of the operator's own group, which its webhooks guard.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let owner = owned_by(&client, &ns).await;
    crds.patch(
        &format!("probes.{GROUP}"),
        &PatchParams::apply("bosun-e2e").force(),
        &Patch::Apply(&probe_crd(owner.clone())),
    )
    .await
    .expect("applying the Probe CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds.clone(),
            &format!("probes.{GROUP}"),
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("the Probe CRD is Established within 30 s")
    .expect("watching the CRD");

    // The broken server, with a certificate the configurations trust.
    let now = Timestamp::now();
    let (from, until) = (
        now - SignedDuration::from_mins(5),
        now + SignedDuration::from_hours(1),
    );
    let ca = generate_ca("broken webhooks test CA", from, until).expect("CA");
    let leaf = issue_serving(&ca, &["127.0.0.1".to_string()], from, until).expect("leaf");
    let serving = ServingCertificate::new();
    serving
        .set(leaf.cert.as_bytes(), leaf.key.as_bytes())
        .expect("the leaf loads");
    let acceptor = TlsAcceptor::from(serving.server_config().expect("a TLS configuration"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_broken(tls).await;
                }
            });
        }
    });

    // One webhook per kind of breakage, each seeing only Probes labelled
    // for it, with a timeout of 3 s.
    let timeout_seconds = 3;
    let rule = RuleWithOperations {
        api_groups: Some(vec![GROUP.into()]),
        api_versions: Some(vec!["v1".into()]),
        operations: Some(CREATE_UPDATE.iter().map(|o| o.to_string()).collect()),
        resources: Some(vec!["probes".into()]),
        scope: Some("*".into()),
    };
    let name = format!("bosun-e2e-{ns}");
    let _guard = ConfigurationsGuard {
        cluster: &cluster,
        name: name.clone(),
    };
    let mut configurations = WebhookConfigurations::new(
        &name,
        "e2e.bosun.dev",
        &operator_ns.name,
        Endpoint::Url(format!("https://{addr}")),
    )
    .owning_group(GROUP)
    .expect("an ownable group")
    .with_timeout_seconds(timeout_seconds)
    .with_namespace_requirement(LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![ns.clone()]),
    });
    for broken in Broken::ALL {
        let kind = if broken == Broken::NotAPatch {
            HandlerKind::Mutating
        } else {
            HandlerKind::Validating
        };
        configurations = configurations.with_rule(kind, broken.path(), rule.clone());
    }
    let selector_for = |path: &str| {
        let label = Broken::from_path(path).expect("a broken path").label();
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("case".to_string(), label.to_string())])),
            ..LabelSelector::default()
        })
    };
    let path_of = |url: &Option<String>| {
        url.as_deref()
            .and_then(|u| u.strip_prefix(&format!("https://{addr}")))
            .expect("a URL of the broken server")
            .to_string()
    };
    let mut webhook_names = BTreeMap::new();
    let mut validating = with_ca_bundle_validating(configurations.validating(), ca.cert.as_bytes());
    for webhook in validating.webhooks.iter_mut().flatten() {
        assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
        let path = path_of(&webhook.client_config.url);
        webhook.object_selector = selector_for(&path);
        webhook_names.insert(path, webhook.name.clone());
    }
    let mut mutating = with_ca_bundle_mutating(configurations.mutating(), ca.cert.as_bytes());
    for webhook in mutating.webhooks.iter_mut().flatten() {
        assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
        let path = path_of(&webhook.client_config.url);
        webhook.object_selector = selector_for(&path);
        webhook_names.insert(path, webhook.name.clone());
    }
    validating.metadata.owner_references = Some(owner.clone());
    mutating.metadata.owner_references = Some(owner);
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .expect("creating the validating configuration");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .expect("creating the mutating configuration");

    // kubectl create of one Probe: how it ended and how long it took.
    let create = |object: &str, broken: Option<Broken>| {
        // The namespace's name is unique to this run.
        let file = std::env::temp_dir().join(format!("{ns}-{object}.json"));
        std::fs::write(&file, probe_manifest(object, broken)).expect("writing the manifest");
        let started = Instant::now();
        let out = tokio::task::block_in_place(|| {
            cluster.kubectl(&[
                "-n",
                &ns,
                "create",
                "-f",
                file.to_str().expect("a UTF-8 path"),
            ])
        });
        let took = started.elapsed();
        let _ = std::fs::remove_file(&file);
        (out, took)
    };
    let stored = |object: &str| {
        tokio::task::block_in_place(|| {
            cluster
                .kubectl(&["-n", &ns, "get", &format!("probes.{GROUP}"), object])
                .status
                .success()
        })
    };

    // A Probe no webhook sees is stored: the kind works.
    let (out, _) = create("unguarded", None);
    assert!(
        out.status.success(),
        "an unguarded Probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Duration::from_secs(timeout_seconds as u64) + Duration::from_secs(4);
    for broken in Broken::ALL {
        let webhook = &webhook_names[broken.path()];
        let expected = format!("failed calling webhook \"{webhook}\"");
        // The API server sees new configurations within moments; until it
        // does, a create is not called out to the webhook at all.
        let mut attempt = 0;
        wait_for(
            &format!("the API server calls {webhook}"),
            Duration::from_secs(30),
            || {
                attempt += 1;
                let object = format!("{}-{attempt}", broken.label());
                let (out, took) = create(&object, Some(broken));
                let stderr = String::from_utf8_lossy(&out.stderr).to_string();
                let was_stored = stored(&object);
                let expected = expected.clone();
                async move {
                    if out.status.success() || was_stored {
                        return Err(format!("{object} was stored: the webhook was not called"));
                    }
                    if !stderr.contains(&expected) {
                        panic!("{broken:?}: kubectl said {stderr:?}, which does not name the webhook ({expected})");
                    }
                    assert!(
                        took < deadline,
                        "{broken:?}: kubectl took {took:?}, past the webhook's {timeout_seconds} s timeout"
                    );
                    println!("{broken:?} after {took:?}: {}", stderr.trim());
                    Ok(())
                }
            },
        )
        .await;
    }

    // A ConfigMap in the same namespace is not the operator's: untouched.
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&dry_run(), &config_map("unrelated", &[("a", "1")]))
        .await
        .expect("a ConfigMap is created");
    server.abort();
}
