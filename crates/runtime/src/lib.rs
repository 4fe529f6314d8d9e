//! The reusable operator runtime on kube-rs, for bosun's operators and for any
//! Rust operator author: running controllers under one shutdown signal,
//! leader election on a `coordination.k8s.io/v1` Lease with client-go's
//! semantics, the admission webhook server, and the metrics and health
//! endpoints.
//!
//! So far it holds [`leader_election`]; the rest arrives with the
//! operator-runtime issue.

pub mod leader_election;
