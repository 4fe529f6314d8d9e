//! The `caBundle`s of the webhook configurations: reading which CAs each
//! webhook trusts, and writing the bundle into all of them with
//! server-side apply under a field manager of its own, so that the
//! installer (which leaves `caBundle` out) and the certificate writer never
//! fight over a field.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::certificate::parse_pem_bundle;

/// The field manager that owns every `caBundle` the runtime writes.
pub const CA_BUNDLE_FIELD_MANAGER: &str = "bosun-webhook-ca-bundle";

/// The webhook configurations whose `caBundle`s hold the webhook CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigurationNames {
    /// Names of `ValidatingWebhookConfiguration`s.
    pub validating: Vec<String>,
    /// Names of `MutatingWebhookConfiguration`s.
    pub mutating: Vec<String>,
}

impl ConfigurationNames {
    /// Whether no configuration is named.
    pub fn is_empty(&self) -> bool {
        self.validating.is_empty() && self.mutating.is_empty()
    }
}

/// The CAs one webhook of one configuration trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedBundle {
    /// `Validating…/<name>` or `Mutating…/<name>`.
    pub configuration: String,
    /// The webhook's name.
    pub webhook: String,
    /// The subjects (DER) of the CAs in its `caBundle`; an unreadable
    /// bundle trusts nothing.
    pub cas: Vec<Vec<u8>>,
}

fn subjects(bundle: Option<&ByteString>) -> Vec<Vec<u8>> {
    bundle
        .and_then(|b| parse_pem_bundle(&b.0).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|ca| ca.subject)
        .collect()
}

/// The bundles of every webhook of the named configurations that exist
/// (one that does not exist yet receives no calls, and is left out).
pub async fn read_published(
    client: &Client,
    names: &ConfigurationNames,
) -> Result<Vec<PublishedBundle>, kube::Error> {
    let mut bundles = Vec::new();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for name in &names.validating {
        if let Some(configuration) = validating.get_opt(name).await? {
            for webhook in configuration.webhooks.unwrap_or_default() {
                bundles.push(PublishedBundle {
                    configuration: format!("ValidatingWebhookConfiguration/{name}"),
                    webhook: webhook.name,
                    cas: subjects(webhook.client_config.ca_bundle.as_ref()),
                });
            }
        }
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for name in &names.mutating {
        if let Some(configuration) = mutating.get_opt(name).await? {
            for webhook in configuration.webhooks.unwrap_or_default() {
                bundles.push(PublishedBundle {
                    configuration: format!("MutatingWebhookConfiguration/{name}"),
                    webhook: webhook.name,
                    cas: subjects(webhook.client_config.ca_bundle.as_ref()),
                });
            }
        }
    }
    Ok(bundles)
}

/// The server-side apply body that sets `caBundle` on each named webhook
/// and nothing else.
fn ca_bundle_patch(
    api_version: &str,
    kind: &str,
    name: &str,
    webhooks: &[String],
    bundle: &[u8],
) -> serde_json::Value {
    let ca_bundle = ByteString(bundle.to_vec());
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": webhooks
            .iter()
            .map(|webhook| json!({"name": webhook, "clientConfig": {"caBundle": ca_bundle}}))
            .collect::<Vec<_>>(),
    })
}

/// Writes `bundle` into the `caBundle` of every webhook of the named
/// configurations that exist. Forced: this field manager is the one writer
/// of `caBundle`, and takes it back from anyone who set it.
pub async fn publish(
    client: &Client,
    names: &ConfigurationNames,
    bundle: &[u8],
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(CA_BUNDLE_FIELD_MANAGER).force();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for name in &names.validating {
        let Some(configuration) = validating.get_opt(name).await? else {
            continue;
        };
        let webhooks: Vec<String> = configuration
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.name)
            .collect();
        let patch = ca_bundle_patch(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            name,
            &webhooks,
            bundle,
        );
        validating
            .patch(name, &params, &Patch::Apply(patch))
            .await?;
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for name in &names.mutating {
        let Some(configuration) = mutating.get_opt(name).await? else {
            continue;
        };
        let webhooks: Vec<String> = configuration
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.name)
            .collect();
        let patch = ca_bundle_patch(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            name,
            &webhooks,
            bundle,
        );
        mutating.patch(name, &params, &Patch::Apply(patch)).await?;
    }
    Ok(())
}

/// Whether the certificate being served (its issuer's name, DER) is
/// trusted by every published bundle: the readiness of one replica.
pub fn serving_is_trusted(
    served_issuer: Option<&[u8]>,
    published: Option<&[PublishedBundle]>,
) -> Result<(), String> {
    let Some(issuer) = served_issuer else {
        return Err("no serving certificate loaded yet".into());
    };
    let Some(published) = published else {
        return Err("the webhook configurations' caBundles have not been read yet".into());
    };
    let untrusting: Vec<String> = published
        .iter()
        .filter(|bundle| !bundle.cas.iter().any(|ca| ca == issuer))
        .map(|bundle| format!("{} webhook {}", bundle.configuration, bundle.webhook))
        .collect();
    if untrusting.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the CA of the served certificate is not yet in the caBundle of {}",
            untrusting.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(webhook: &str, cas: &[&[u8]]) -> PublishedBundle {
        PublishedBundle {
            configuration: "ValidatingWebhookConfiguration/ops".into(),
            webhook: webhook.into(),
            cas: cas.iter().map(|c| c.to_vec()).collect(),
        }
    }

    #[test]
    fn ready_only_when_every_webhook_trusts_the_served_ca() {
        assert!(serving_is_trusted(None, Some(&[])).is_err());
        assert!(serving_is_trusted(Some(b"ca-1"), None).is_err());
        assert_eq!(serving_is_trusted(Some(b"ca-1"), Some(&[])), Ok(()));
        let both = [bundle("a", &[b"ca-1", b"ca-2"]), bundle("b", &[b"ca-2"])];
        assert_eq!(serving_is_trusted(Some(b"ca-2"), Some(&both)), Ok(()));
        let why = serving_is_trusted(Some(b"ca-1"), Some(&both))
            .err()
            .unwrap_or_default();
        assert!(
            why.contains("webhook b") && !why.contains("webhook a"),
            "{why}"
        );
    }

    #[test]
    fn the_apply_body_sets_only_ca_bundles() {
        let patch = ca_bundle_patch(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "ops",
            &["a.example.com".into()],
            b"PEM",
        );
        assert_eq!(
            patch,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "ops"},
                "webhooks": [{"name": "a.example.com", "clientConfig": {"caBundle": "UEVN"}}]
            })
        );
    }
}
