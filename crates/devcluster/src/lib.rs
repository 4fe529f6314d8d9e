//! `bosun dev`: a real single-node Kubernetes on the local machine, made of
//! upstream components (kube-apiserver, controller-manager, scheduler,
//! kubelet, kube-proxy, CoreDNS, containerd, runc, CNI) that it supervises as
//! host processes, with the certificates, kubeconfigs and locally built
//! images they need, and an S3 object store (SeaweedFS) in it; and, with
//! the `test-support` feature, the test fixture every crate's end-to-end
//! tests use to reach it.

pub mod addons;
pub mod cluster;
pub mod components;
// Test support panics where a test cannot go on: never in what ships.
#[cfg(feature = "test-support")]
pub mod fixture;
pub mod image;
pub mod kubeconfig;
pub mod layout;
pub mod network;
pub mod pki;
pub mod readiness;
pub mod s3;
pub mod storage;
pub mod supervisor;
pub mod teardown;
pub mod tools;
