//! The Memcached operator: the `cache.bosun.dev/v1alpha1` `Memcached`
//! resource and its controller, built on bosun's runtime the way an
//! operator-sdk tutorial builds one on controller-runtime, without the
//! tutorial's faults (labels without the instance, a reconcile that only
//! sets replicas, no Service).
//!
//! - [`api`]: the resource, its defaults and bounds (mirrored in the
//!   schema), and [`api::crd`];
//! - [`validation`]: the rules the schema cannot check, in one place, called
//!   by the webhook and the controller;
//! - [`objects`]: the StatefulSet, headless Service and PodDisruptionBudget
//!   a Memcached owns, as pure functions of its spec;
//! - [`status`]: the status computed from what is observed, pure;
//! - [`reconcile`]: the controller that applies the objects and writes the
//!   status, run under the runtime's manager;
//! - [`admission`]: the defaulting and validating webhooks and their
//!   configuration.

// kube's derive takes one `printcolumn(...)` per column with the same keys,
// which clippy mistakes for repeated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod admission;
pub mod api;
pub mod objects;
pub mod reconcile;
pub mod status;
pub mod validation;

pub use api::{Memcached, MemcachedSpec, MemcachedStatus, crd};
