//! The etcd operator: cluster, backup and restore controllers for the
//! `EtcdCluster`, `EtcdBackup` and `EtcdRestore` resources, access to etcd
//! members over the v3 API, and object storage for snapshots.
//!
//! Each controller is a module with one `reconcile`, one `error_policy` and a
//! `Context`; pure functions compute the desired Kubernetes objects from a
//! spec (see [`cluster::objects`]), so that only `reconcile` does I/O.

pub mod admission;
pub mod backup;
pub mod cluster;
pub mod controller;
pub mod failpoints;
pub mod members;
pub mod restore;
pub mod status;
pub mod telemetry;
