//! The Lease holder's side of self-managed certificates: read the Secret
//! and the `caBundle`s, ask [`next_step`] what to do, do it, repeat. Run it
//! as one of the manager's controllers, so that only the leader writes and
//! it stops writing at the renew deadline. Replicas never write: they load
//! what this writes ([`super::reload`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::certificate::{CertificateError, service_dns_names};
use super::published::{ConfigurationNames, publish, read_published};
use super::rotation::{RotationPolicy, Step, next_step};
use super::secret::SecretContents;

/// How often the leader looks again when nothing is due: someone may have
/// reset a `caBundle` (a reinstall) or deleted the Secret.
const RESYNC: Duration = Duration::from_secs(60);

/// How long the leader waits after a failed step.
const RETRY: Duration = Duration::from_secs(5);

/// Why a step could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CertificateSyncError {
    /// The API server refused or could not be reached.
    #[error("webhook certificates: {0}")]
    Api(#[from] kube::Error),
    /// A certificate could not be made.
    #[error("webhook certificates: {0}")]
    Certificate(#[from] CertificateError),
}

/// What the leader keeps up to date: one Secret and the `caBundle`s of the
/// named configurations.
#[derive(Clone)]
pub struct SelfManagedCertificates {
    client: Client,
    namespace: String,
    secret: String,
    dns_names: Vec<String>,
    configurations: ConfigurationNames,
    policy: RotationPolicy,
    ca_common_name: String,
}

impl std::fmt::Debug for SelfManagedCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfManagedCertificates")
            .field("namespace", &self.namespace)
            .field("secret", &self.secret)
            .field("dns_names", &self.dns_names)
            .field("configurations", &self.configurations)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SelfManagedCertificates {
    /// Certificates for Service `service` in `namespace`, kept in Secret
    /// `secret` of the same namespace, published to `configurations`.
    pub fn new(
        client: Client,
        namespace: &str,
        secret: &str,
        service: &str,
        configurations: ConfigurationNames,
    ) -> Self {
        SelfManagedCertificates {
            client,
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            dns_names: service_dns_names(service, namespace),
            configurations,
            policy: RotationPolicy::default(),
            ca_common_name: format!("{service}.{namespace} webhook CA"),
        }
    }

    /// Replaces the serving certificate's DNS names (the Service's three
    /// forms by default).
    pub fn with_dns_names(mut self, dns_names: Vec<String>) -> Self {
        self.dns_names = dns_names;
        self
    }

    /// Replaces the rotation schedule (tests shorten it).
    pub fn with_policy(mut self, policy: RotationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reads, decides and carries out one step; returns the step.
    pub async fn step(&self, now: Timestamp) -> Result<Step, CertificateSyncError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let existing = secrets.get_opt(&self.secret).await?;
        let contents = existing
            .as_ref()
            .map(SecretContents::from_secret)
            .unwrap_or_default();
        let published: Vec<Vec<Vec<u8>>> = read_published(&self.client, &self.configurations)
            .await?
            .into_iter()
            .map(|bundle| bundle.cas)
            .collect();
        let step = next_step(
            &contents.stored(),
            &published,
            &self.dns_names,
            now,
            &self.policy,
        );
        match &step {
            Step::Wait { .. } => {}
            Step::PublishBundle => {
                let bundle = contents.ca_bundle.clone().unwrap_or_default();
                publish(&self.client, &self.configurations, bundle.as_bytes()).await?;
                info!(secret = %self.secret, "published the webhook CA bundle");
            }
            _ => {
                let next = contents.apply(
                    &step,
                    now,
                    &self.policy,
                    &self.dns_names,
                    &self.ca_common_name,
                )?;
                self.write(&secrets, existing, &next).await?;
                info!(secret = %self.secret, ?step, "updated the webhook certificates");
            }
        }
        Ok(step)
    }

    /// Writes the Secret at the version read (a 409 means someone else
    /// wrote meanwhile: the next step starts from what they wrote).
    async fn write(
        &self,
        secrets: &Api<Secret>,
        existing: Option<Secret>,
        contents: &SecretContents,
    ) -> Result<(), kube::Error> {
        match existing {
            Some(mut secret) => {
                let mut data = secret.data.take().unwrap_or_default();
                data.extend(contents.to_data());
                secret.data = Some(data);
                secrets
                    .replace(&self.secret, &PostParams::default(), &secret)
                    .await?;
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.secret.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "bosun".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(contents.to_data()),
                    ..Secret::default()
                };
                secrets.create(&PostParams::default(), &secret).await?;
            }
        }
        Ok(())
    }

    /// Carries out steps until `stop` is cancelled (also in the middle of
    /// one): at once while there is
    /// work, then at the time the decision names (at most a minute later),
    /// and a few seconds after a failure.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            // A step in flight is dropped when leadership ends: a write
            // either landed or not, and the next leader reads which.
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.step(Timestamp::now()) => result,
            };
            let pause = match result {
                Ok(Step::Wait { until }) => {
                    let until = Duration::try_from(Timestamp::now().duration_until(until))
                        .unwrap_or(Duration::ZERO);
                    until.min(RESYNC)
                }
                Ok(_) => Duration::ZERO,
                Err(error) => {
                    warn!(%error, secret = %self.secret, "webhook certificates; retrying");
                    RETRY
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
