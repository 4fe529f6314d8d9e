//! What a fresh dev cluster gets installed into it through the API: cluster
//! DNS (CoreDNS), the default StorageClass, and bosun's CRDs (the object
//! store, which needs more than manifests, is `s3`). Everything is applied
//! with server-side apply, so a restart re-applies without conflict.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::network::Network;

/// The field manager bosun dev applies as.
pub const FIELD_MANAGER: &str = "bosun-dev";

/// Why an add-on could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    /// A manifest did not parse.
    #[error("manifest {what}: {source}")]
    Parse {
        /// Which manifest.
        what: String,
        /// The parse error.
        source: serde_yaml_ng::Error,
    },
    /// A typed object did not convert to a dynamic one.
    #[error("converting {what} for apply: {source}")]
    Convert {
        /// Which object.
        what: String,
        /// The conversion error.
        source: serde_json::Error,
    },
    /// The API refused an object.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

/// The CoreDNS manifests with the image and service IP filled in.
pub fn coredns_manifests(network: &Network, image: &str) -> String {
    include_str!("../manifests/coredns.yaml")
        .replace("COREDNS_IMAGE", image)
        .replace("DNS_SERVICE_IP", &network.dns_service_ip.to_string())
}

/// Applies every object of a multi-document YAML stream.
pub async fn apply_yaml(client: &Client, what: &str, yaml: &str) -> Result<(), AddonError> {
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let object = DynamicObject::deserialize(doc).map_err(|source| AddonError::Parse {
            what: what.to_string(),
            source,
        })?;
        apply_object(client, object).await?;
    }
    Ok(())
}

/// Applies a typed object (a k8s-openapi or kube-derived resource).
pub async fn apply_resource<K>(client: &Client, resource: &K) -> Result<(), AddonError>
where
    K: serde::Serialize + kube::Resource<DynamicType = ()>,
{
    let convert_error = |source| AddonError::Convert {
        what: format!(
            "{} {}",
            K::kind(&()),
            resource.meta().name.as_deref().unwrap_or_default()
        ),
        source,
    };
    let value = serde_json::to_value(resource).map_err(convert_error)?;
    apply_object(
        client,
        serde_json::from_value(value).map_err(convert_error)?,
    )
    .await
}

/// Applies one object of any kind the API server serves.
pub async fn apply_object(client: &Client, object: DynamicObject) -> Result<(), AddonError> {
    let types = object.types.clone().unwrap_or_default();
    let name = object.name_any();
    let apply_error = |source| AddonError::Apply {
        kind: types.kind.clone(),
        name: name.clone(),
        source,
    };
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", types.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, capabilities) = pinned_kind(client, &gvk).await.map_err(apply_error)?;
    let api: Api<DynamicObject> = match (&object.metadata.namespace, capabilities.scope) {
        (Some(ns), kube::discovery::Scope::Namespaced) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(apply_error)?;
    Ok(())
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
        let kinds: Vec<String> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| {
                DynamicObject::deserialize(d)
                    .expect("object")
                    .types
                    .expect("types")
                    .kind
            })
            .collect();
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
