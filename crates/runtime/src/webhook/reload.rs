//! Every replica's side of the certificates, in both modes (self-managed
//! and brought by the user): watch the Secret and serve its current
//! `tls.crt`/`tls.key` without a restart, and report ready only while the
//! served certificate's CA is in every webhook's `caBundle`.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::published::{ConfigurationNames, PublishedBundle, read_published, serving_is_trusted};
use super::secret::SecretContents;
use super::tls::ServingCertificate;
use crate::health::Health;

/// The name of the readiness check [`WebhookReadiness::register`] adds.
pub const READINESS_CHECK: &str = "webhook-certificate";

/// How often a replica reads the `caBundle`s for its readiness.
const BUNDLE_POLL: Duration = Duration::from_secs(5);

/// Loads the Secret's serving certificate into `serving` whenever the
/// Secret changes, until `stop` is cancelled. A Secret without a usable
/// certificate leaves the one being served in place.
pub async fn watch_secret(
    client: Client,
    namespace: String,
    name: String,
    serving: ServingCertificate,
    stop: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).boxed();
    let mut loaded: Option<(String, String)> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => event,
        };
        let secret = match event {
            Some(Ok(Event::Apply(secret) | Event::InitApply(secret))) => secret,
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                // The watcher backs off and resumes by itself.
                warn!(%error, secret = %name, "watching the webhook certificate Secret");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        let contents = SecretContents::from_secret(&secret);
        let (Some(cert), Some(key)) = (contents.tls_cert, contents.tls_key) else {
            continue;
        };
        if loaded.as_ref() == Some(&(cert.clone(), key.clone())) {
            continue;
        }
        match serving.set(cert.as_bytes(), key.as_bytes()) {
            Ok(()) => {
                info!(secret = %name, "serving the webhook certificate from the Secret");
                loaded = Some((cert, key));
            }
            Err(error) => {
                warn!(%error, secret = %name, "the Secret's webhook certificate cannot be served; keeping the current one");
            }
        }
    }
}

/// One replica's readiness: it serves a certificate and every webhook of
/// the named configurations trusts its CA. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct WebhookReadiness {
    serving: ServingCertificate,
    published: Arc<RwLock<Option<Vec<PublishedBundle>>>>,
}

impl WebhookReadiness {
    /// Readiness for what `serving` serves; not ready until
    /// [`WebhookReadiness::watch_bundles`] has read the bundles once.
    pub fn new(serving: ServingCertificate) -> Self {
        WebhookReadiness {
            serving,
            published: Arc::new(RwLock::new(None)),
        }
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        let published = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        serving_is_trusted(self.serving.issuer().as_deref(), published.as_deref())
    }

    /// Adds the check to `health`'s readiness, as [`READINESS_CHECK`].
    pub fn register(&self, health: &Health) {
        let this = self.clone();
        health.add_readiness_check(READINESS_CHECK, move || this.check());
    }

    /// Reads the `caBundle`s of `configurations` every few seconds until
    /// `stop` is cancelled. A failed read keeps the last one: readiness
    /// does not flap with the API server.
    pub async fn watch_bundles(
        &self,
        client: Client,
        configurations: ConfigurationNames,
        stop: CancellationToken,
    ) {
        loop {
            match read_published(&client, &configurations).await {
                Ok(bundles) => {
                    *self
                        .published
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(bundles);
                }
                Err(error) => warn!(%error, "reading the webhook configurations' caBundles"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(BUNDLE_POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::certificate::{generate_ca, issue_serving, parse_pem_bundle};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    #[test]
    fn readiness_follows_the_served_certificate_and_the_bundles() {
        let health = Health::new();
        let serving = ServingCertificate::new();
        let readiness = WebhookReadiness::new(serving.clone());
        readiness.register(&health);
        let report = health.readiness();
        assert!(!report.passed());
        assert!(
            report
                .to_string()
                .contains("[-]webhook-certificate failed: no serving certificate loaded yet"),
            "{report}"
        );

        let now = Timestamp::now();
        let until = now + SignedDuration::from_hours(1);
        let ca = generate_ca("readiness CA", now, until).expect("CA");
        let leaf = issue_serving(&ca, &["hooks.ops.svc".into()], now, until).expect("leaf");
        serving
            .set(leaf.cert.as_bytes(), leaf.key.as_bytes())
            .expect("loads");
        assert!(!health.readiness().passed(), "bundles not read yet");

        let subject = parse_pem_bundle(ca.cert.as_bytes()).expect("CA")[0]
            .subject
            .clone();
        let bundle = |cas: Vec<Vec<u8>>| PublishedBundle {
            configuration: "ValidatingWebhookConfiguration/ops".into(),
            webhook: "v.example.com".into(),
            cas,
        };
        *readiness
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(vec![bundle(vec![b"another".to_vec()])]);
        assert!(!health.readiness().passed(), "the bundle lacks the CA");
        *readiness
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(vec![bundle(vec![b"another".to_vec(), subject])]);
        assert!(health.readiness().passed(), "{}", health.readiness());
    }
}
