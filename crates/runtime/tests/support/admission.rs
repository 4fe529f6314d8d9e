//! What the admission-webhook tests against the dev cluster share: a
//! validating and a mutating handler for ConfigMaps, configurations that
//! reach only a namespace of the test's own (and are deleted when the test
//! ends), a probe that tells a failed call from an answered one, and a
//! rotation schedule short enough to watch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, with_ca_bundle_mutating, with_ca_bundle_validating,
};
use bosun_runtime::webhook::published::read_published;
use bosun_runtime::webhook::{
    ConfigurationNames, Endpoint, RotationPolicy, WebhookConfigurations, mutated,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::jiff::SignedDuration;
use kube::api::PostParams;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::{Api, Client};

pub const FORBIDDEN_MESSAGE: &str = "data key \"forbidden\" is not allowed";

pub fn validate(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
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

pub fn default_label(request: &AdmissionRequest<ConfigMap>) -> AdmissionResponse {
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
pub struct ConfigurationsGuard<'a> {
    pub cluster: &'a TestCluster,
    pub name: String,
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

pub fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
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

pub fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// One probe of both webhooks: `Err` says what went wrong.
pub async fn probe(config_maps: &Api<ConfigMap>, n: u64) -> Result<(), String> {
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
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut done: F)
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

pub async fn ca_subjects(client: &Client, names: &ConfigurationNames) -> Vec<Vec<Vec<u8>>> {
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
pub async fn owned_by(client: &Client, tenant: &str) -> Vec<OwnerReference> {
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
pub async fn install_configurations(
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

/// A schedule short enough to see a CA rotation in under two minutes: the
/// CA is replaced ~50 s after it is made; changes get 15 s to propagate,
/// three times a replica's caBundle poll, so that readiness never lags the
/// certificate it serves even on a loaded machine.
pub fn short_rotation() -> RotationPolicy {
    RotationPolicy {
        ca_lifetime: SignedDuration::from_hours(1),
        ca_renew_at: 0.015,
        leaf_lifetime: SignedDuration::from_hours(1),
        leaf_renew_at: 2.0 / 3.0,
        backdate: SignedDuration::from_secs(5),
        propagation: SignedDuration::from_secs(15),
    }
}

/// Where a CA rotation stands, as the published `caBundle`s show it.
#[derive(Debug)]
pub struct RotationWatch {
    first_ca: Vec<u8>,
    /// Every bundle held the first CA and one more, at one sample.
    pub saw_overlap: bool,
}

impl RotationWatch {
    /// Starts from bundles that hold one CA each (the same one).
    pub fn new(bundles: &[Vec<Vec<u8>>]) -> Self {
        assert!(
            !bundles.is_empty() && bundles.iter().all(|cas| cas.len() == 1),
            "one CA before the rotation: {bundles:?}"
        );
        RotationWatch {
            first_ca: bundles[0][0].clone(),
            saw_overlap: false,
        }
    }

    /// Takes one sample; true once the rotation has completed: after an
    /// overlap, every bundle holds one CA, not the first, and it is the
    /// issuer of every certificate in `served`.
    pub fn completed(&mut self, bundles: &[Vec<Vec<u8>>], served: &[Option<Vec<u8>>]) -> bool {
        if bundles
            .iter()
            .all(|cas| cas.len() == 2 && cas.contains(&self.first_ca))
        {
            self.saw_overlap = true;
        }
        self.saw_overlap
            && bundles
                .iter()
                .all(|cas| cas.len() == 1 && !cas.contains(&self.first_ca))
            && served
                .iter()
                .all(|issuer| issuer.as_ref().is_some_and(|i| bundles[0].contains(i)))
    }
}
