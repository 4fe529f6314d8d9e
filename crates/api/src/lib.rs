//! The API users write YAML against: bosun's custom resources in the
//! `etcd.bosun.dev/v1alpha1` group, their defaults, their validation rules and
//! the CustomResourceDefinitions generated from them.
//!
//! Everything here is pure: no I/O, no clients. The same validation functions
//! are called by the operator before it acts, by the admission webhook, and by
//! the tests, so that a rule lives in exactly one place. Rules the API server
//! can enforce by itself (bounds, patterns, one-of, immutability) are also put
//! into the CRD schema, so that `kubectl apply` refuses a bad object before any
//! operator sees it.

// kube's derive takes one `printcolumn(...)` per column with the same keys,
// which clippy mistakes for repeated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod backup;
pub mod cluster;
pub mod conditions;
pub mod crd;
pub mod restore;
pub mod validation;
pub mod version;

pub use backup::{EtcdBackup, EtcdBackupSpec, EtcdBackupStatus};
pub use cluster::{EtcdCluster, EtcdClusterSpec, EtcdClusterStatus};
pub use restore::{EtcdRestore, EtcdRestoreSpec, EtcdRestoreStatus, RestoreSource};
pub use validation::{FieldError, ValidationErrors};
pub use version::EtcdVersion;

/// The API group of every bosun etcd resource.
pub const GROUP: &str = "etcd.bosun.dev";
/// The API version this crate describes.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get <category>` name that lists every bosun resource.
pub const CATEGORY: &str = "bosun";
