//! The EtcdCluster controller: creates, scales, heals and upgrades an etcd
//! cluster whose members run as pods, each on its own volume.
//!
//! [`objects`] computes the Kubernetes objects a cluster owns (pure).

pub mod adopt;
pub mod degraded;
pub mod member_data;
pub mod objects;
pub mod plan;
pub mod reconcile;
pub mod space;
