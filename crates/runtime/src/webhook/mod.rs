//! Admission webhooks for operators on kube-rs: a server for validating and
//! mutating handlers written as plain functions over kube's admission
//! types, certificates the operator manages itself (or brings), webhook
//! configurations with defaults that never block a cluster, and
//! controller-runtime's metrics. `docs/webhooks.md` is the guide.
//!
//! - [`path`]: where a handler is served (`/validate-<group>-<version>-<kind>`);
//! - [`review`]: one admission call, from body to response, and JSON Patch
//!   responses for mutations;
//! - [`server`]: the HTTPS server and handler registration;
//! - [`tls`]: the serving certificate, swapped without a restart;
//! - [`certificate`]: reading and making certificates;
//! - [`published`]: the configurations' `caBundle`s, read and written;
//! - [`reload`]: every replica serves the Secret's certificate and says
//!   when it is trusted (readiness);
//! - [`rotation`]: when certificates change (a pure decision);
//! - [`secret`]: the certificate Secret's keys and how steps change them;
//! - [`self_managed`]: the Lease holder writes the Secret and the
//!   `caBundle`s;
//! - [`configuration`]: webhook configurations with safe defaults;
//! - [`lifecycle`]: the certificates of a process, self-managed or
//!   provided, and what each replica and the Lease holder run;
//! - [`metrics`]: the `controller_runtime_webhook_*` series.

pub mod certificate;
pub mod configuration;
pub mod lifecycle;
pub mod metrics;
pub mod path;
pub mod published;
pub mod reload;
pub mod review;
pub mod rotation;
pub mod secret;
pub mod self_managed;
pub mod server;
pub mod tls;

pub use configuration::{Endpoint, WebhookConfigurations};
pub use lifecycle::WebhookCertificates;
pub use path::{HandlerKind, handler_path, path_for};
pub use published::ConfigurationNames;
pub use reload::{WebhookReadiness, watch_secret};
pub use review::{mutated, patch_response};
pub use rotation::RotationPolicy;
pub use self_managed::SelfManagedCertificates;
pub use server::{AdmissionServer, DEFAULT_PORT};
pub use tls::ServingCertificate;
