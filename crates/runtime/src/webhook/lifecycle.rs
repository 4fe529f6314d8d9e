//! The certificates of one operator process, in one of two modes, and what
//! each replica and the Lease holder run for them:
//!
//! - **self-managed**: the runtime makes a CA and a serving certificate,
//!   keeps them in a Secret and rotates them; only the Lease holder writes
//!   (the Secret and the `caBundle`s), every replica serves what the
//!   Secret holds;
//! - **provided**: someone else (cert-manager, an administrator) keeps a
//!   Secret with `tls.crt`, `tls.key` and `ca.crt`, and the `caBundle`s;
//!   the runtime only reads.
//!
//! In both, every replica reloads the Secret without a restart and is
//! ready only while its certificate's CA is in every webhook's `caBundle`.

use kube::Client;
use tokio_util::sync::CancellationToken;

use super::published::ConfigurationNames;
use super::reload::{WebhookReadiness, watch_secret};
use super::rotation::RotationPolicy;
use super::self_managed::SelfManagedCertificates;
use super::tls::ServingCertificate;
use crate::health::Health;

/// The webhook certificates of one process.
///
/// ```no_run
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use bosun_runtime::manager::Manager;
/// use bosun_runtime::webhook::{AdmissionServer, ConfigurationNames, WebhookCertificates};
/// use tokio_util::sync::CancellationToken;
///
/// let mut manager = Manager::new();
/// let names = ConfigurationNames {
///     validating: vec!["my-operator".into()],
///     mutating: vec!["my-operator".into()],
/// };
/// let certificates = WebhookCertificates::self_managed(
///     client, "my-operator-system", "my-operator-webhook-tls", "my-operator-webhook", names,
/// );
/// certificates.register_readiness(manager.health());
/// // Only the Lease holder writes: the writer runs as one of its controllers.
/// if let Some(writer) = certificates.leader_writer() {
///     manager.add_controller("webhook-certificates", move |stop| writer.run(stop));
/// }
/// let shutdown = CancellationToken::new();
/// // Every replica serves what the Secret holds.
/// tokio::spawn(certificates.clone().run_replica(shutdown.clone()));
/// let server = AdmissionServer::new(); // .validate::<MyKind>(validate) ...
/// let listener = tokio::net::TcpListener::bind(("0.0.0.0", 9443)).await?;
/// tokio::spawn(async move { server.serve(listener, certificates.serving(), shutdown).await });
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct WebhookCertificates {
    client: Client,
    namespace: String,
    secret: String,
    configurations: ConfigurationNames,
    writer: Option<SelfManagedCertificates>,
    serving: ServingCertificate,
    readiness: WebhookReadiness,
}

impl std::fmt::Debug for WebhookCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCertificates")
            .field("namespace", &self.namespace)
            .field("secret", &self.secret)
            .field("configurations", &self.configurations)
            .field("self_managed", &self.writer.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookCertificates {
    /// Self-managed certificates for Service `service` in `namespace`,
    /// kept in Secret `secret` there, their CA published to
    /// `configurations`.
    pub fn self_managed(
        client: Client,
        namespace: &str,
        secret: &str,
        service: &str,
        configurations: ConfigurationNames,
    ) -> Self {
        let writer = SelfManagedCertificates::new(
            client.clone(),
            namespace,
            secret,
            service,
            configurations.clone(),
        );
        Self::with_writer(client, namespace, secret, configurations, Some(writer))
    }

    /// Certificates someone else keeps in Secret `secret` of `namespace`
    /// (`tls.crt`, `tls.key`; `ca.crt` for their `caBundle`s): the runtime
    /// never writes the Secret nor the `caBundle`s of `configurations`,
    /// and reads them for readiness.
    pub fn provided(
        client: Client,
        namespace: &str,
        secret: &str,
        configurations: ConfigurationNames,
    ) -> Self {
        Self::with_writer(client, namespace, secret, configurations, None)
    }

    fn with_writer(
        client: Client,
        namespace: &str,
        secret: &str,
        configurations: ConfigurationNames,
        writer: Option<SelfManagedCertificates>,
    ) -> Self {
        let serving = ServingCertificate::new();
        WebhookCertificates {
            client,
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            configurations,
            writer,
            readiness: WebhookReadiness::new(serving.clone()),
            serving,
        }
    }

    /// Replaces the rotation schedule of self-managed certificates (no
    /// effect on provided ones).
    pub fn with_policy(mut self, policy: RotationPolicy) -> Self {
        self.writer = self.writer.map(|w| w.with_policy(policy));
        self
    }

    /// Replaces the serving certificate's names (self-managed only): for a
    /// webhook reached by URL rather than through its Service.
    pub fn with_names(mut self, names: Vec<String>) -> Self {
        self.writer = self.writer.map(|w| w.with_dns_names(names));
        self
    }

    /// The certificate to serve with ([`super::AdmissionServer::serve`]).
    pub fn serving(&self) -> ServingCertificate {
        self.serving.clone()
    }

    /// This replica's readiness.
    pub fn readiness(&self) -> &WebhookReadiness {
        &self.readiness
    }

    /// Adds this replica's readiness to `health`.
    pub fn register_readiness(&self, health: &Health) {
        self.readiness.register(health);
    }

    /// What only the Lease holder runs: `None` for provided certificates,
    /// which the runtime never writes.
    pub fn leader_writer(&self) -> Option<SelfManagedCertificates> {
        self.writer.clone()
    }

    /// What every replica runs until `stop`: loads the Secret's
    /// certificate on every change and reads the `caBundle`s for
    /// readiness.
    pub async fn run_replica(self, stop: CancellationToken) {
        let reload = watch_secret(
            self.client.clone(),
            self.namespace.clone(),
            self.secret.clone(),
            self.serving.clone(),
            stop.clone(),
        );
        let bundles =
            self.readiness
                .watch_bundles(self.client.clone(), self.configurations.clone(), stop);
        tokio::join!(reload, bundles);
    }
}
