//! The etcd operator: the EtcdCluster, EtcdBackup and EtcdRestore
//! controllers, access to etcd members over the v3 API, and object storage for
//! snapshots. Pure functions compute the desired objects from a spec; only
//! `reconcile` does I/O.
//!
//! Nothing lives here yet; it arrives with the etcd cluster controller issue.
