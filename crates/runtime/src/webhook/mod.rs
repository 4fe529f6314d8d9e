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
//! - [`rotation`]: when certificates change (a pure decision);
//! - [`configuration`]: webhook configurations with safe defaults;
//! - [`metrics`]: the `controller_runtime_webhook_*` series.

pub mod certificate;
pub mod configuration;
pub mod metrics;
pub mod path;
pub mod review;
pub mod rotation;
pub mod server;
pub mod tls;

pub use path::{HandlerKind, handler_path, path_for};
pub use review::{mutated, patch_response};
pub use server::{AdmissionServer, DEFAULT_PORT};
pub use tls::ServingCertificate;
