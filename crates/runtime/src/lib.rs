//! The reusable operator runtime on kube-rs, for bosun's operators and for any
//! Rust operator author:
//!
//! - [`manager`] runs a process's controllers under one shutdown signal, only
//!   while leading when leader election is configured;
//! - [`leader_election`] is leader election on a `coordination.k8s.io/v1`
//!   Lease with client-go's semantics;
//! - [`metrics`] is the process's Prometheus registry, with reconcile and
//!   leader-election series;
//! - [`health`] holds the liveness and readiness checks;
//! - [`http`] serves `/healthz`, `/readyz` and `/metrics`;
//! - [`webhook`] is the admission webhook server, its certificates and its
//!   webhook configurations;
//! - [`apply`] applies manifests (YAML or typed objects) with server-side
//!   apply, and deletes them.

pub mod apply;
pub mod health;
pub mod http;
pub mod leader_election;
pub mod manager;
pub mod metrics;
pub mod webhook;

/// The metrics library whose types [`metrics::Metrics::register`] takes, so
/// that operator code uses the same version as the runtime.
pub use prometheus_client;
