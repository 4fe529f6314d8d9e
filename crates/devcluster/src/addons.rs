//! What a fresh dev cluster gets installed into it through the API: cluster
//! DNS (CoreDNS), the default StorageClass, and bosun's CRDs (the object
//! store, which needs more than manifests, is `s3`). Everything is applied
//! with the runtime's applier (server-side apply, as `bosun dev`'s own
//! field manager), so a restart re-applies without conflict.

use bosun_runtime::apply::{self, ApplyError, ApplyOptions};
use kube::Client;

use crate::network::Network;

/// The field manager bosun dev applies as.
pub const FIELD_MANAGER: &str = "bosun-dev";

/// The CoreDNS manifests with the image and service IP filled in.
pub fn coredns_manifests(network: &Network, image: &str) -> String {
    include_str!("../manifests/coredns.yaml")
        .replace("COREDNS_IMAGE", image)
        .replace("DNS_SERVICE_IP", &network.dns_service_ip.to_string())
}

/// Applies every object of a multi-document YAML stream, in its order;
/// `what` names the stream in messages.
pub async fn apply_yaml(client: &Client, what: &str, yaml: &str) -> Result<(), ApplyError> {
    let manifests = apply::parse(what, yaml)?;
    apply::apply_all(
        client,
        &manifests,
        &ApplyOptions::new(FIELD_MANAGER),
        |_| {},
    )
    .await
}

/// Applies a typed object (a k8s-openapi or kube-derived resource).
pub async fn apply_resource<K>(client: &Client, resource: &K) -> Result<(), ApplyError>
where
    K: serde::Serialize + kube::Resource<DynamicType = ()>,
{
    apply::apply_resource(client, resource, &ApplyOptions::new(FIELD_MANAGER)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coredns_manifests_parse_and_carry_image_and_ip() {
        let text = coredns_manifests(
            &Network::default(),
            "registry.k8s.io/coredns/coredns:v1.15.0",
        );
        // What `apply_yaml` applies, in its order.
        let manifests = apply::parse("coredns", &text).expect("the manifests parse");
        let kinds: Vec<&str> = manifests.iter().map(apply::Manifest::kind).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "Deployment",
                "Service"
            ]
        );
        assert!(text.contains("clusterIP: 10.96.0.10"));
        assert!(text.contains("image: registry.k8s.io/coredns/coredns:v1.15.0"));
    }
}
