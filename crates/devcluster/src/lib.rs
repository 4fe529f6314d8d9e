//! `bosun dev`: a real single-node Kubernetes on the local machine, made of
//! upstream components (kube-apiserver, controller-manager, scheduler,
//! kubelet, kube-proxy, CoreDNS, containerd, runc, CNI) that it supervises as
//! host processes, with the certificates, kubeconfigs and locally built
//! images they need; and the test fixture other crates' tests use to reach it.
//!
//! Nothing lives here yet; it arrives with the dev-cluster issue.
