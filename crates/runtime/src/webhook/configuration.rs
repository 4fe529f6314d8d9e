//! The webhook configurations an operator installs, with defaults that keep
//! a cluster working when the operator is not:
//!
//! - `failurePolicy: Fail` only for resources whose API groups the operator
//!   declared its own: their controller is the operator anyway, so refusing
//!   them while it is down hides nothing. Everything else — Pods above all,
//!   and any rule with a wildcard — fails open (`Ignore`): a webhook that
//!   cannot be reached must never stop the cluster from creating the pods
//!   that would repair it. There is no way to set the policy by hand; the
//!   core group (`""`) and `*` cannot be declared owned.
//! - `sideEffects: None`, `matchPolicy: Equivalent`,
//!   `admissionReviewVersions: [v1]`, `timeoutSeconds` at most 5.
//! - a `namespaceSelector` that leaves out `kube-system`,
//!   `kube-node-lease` and the operator's own namespace.
//!
//! The `caBundle`s are left empty: the Lease holder writes them (see
//! [`super::rotation`]), or a certificate manager injects them.

use std::collections::BTreeSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::Resource;

use super::path::{HandlerKind, path_for};

/// The label the API server puts on every namespace, holding its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The longest `timeoutSeconds` allowed here: a call that takes longer
/// holds up the user's `kubectl apply` for nothing.
pub const MAX_TIMEOUT_SECONDS: i32 = 5;

/// Namespaces no webhook of an operator sees, beside its own.
pub const EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", "kube-node-lease"];

/// Why a configuration cannot be built as asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    /// The core group or a wildcard was declared owned.
    #[error(
        "API group {0:?} cannot be an operator's own: it holds Pods and the cluster's own kinds, whose webhooks must fail open"
    )]
    NotOwnable(String),
}

/// Where the API server sends admission calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The operator's Service (in cluster).
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service's port.
        port: i32,
    },
    /// An HTTPS base URL, the handler path appended (out of cluster, tests).
    Url(String),
}

/// Which operations a webhook sees.
pub const CREATE_UPDATE: [&str; 2] = ["CREATE", "UPDATE"];

#[derive(Clone, Debug)]
struct Hook {
    kind: HandlerKind,
    path: String,
    rule: RuleWithOperations,
}

/// The validating and mutating webhook configurations of one operator.
///
/// ```
/// use bosun_runtime::webhook::configuration::{CREATE_UPDATE, Endpoint, WebhookConfigurations};
/// use k8s_openapi::api::core::v1::Pod;
///
/// let endpoint = Endpoint::Service { namespace: "ops".into(), name: "webhooks".into(), port: 443 };
/// let hooks = WebhookConfigurations::new("my-operator", "example.com", "ops", endpoint)
///     .mutate::<Pod>(&["CREATE"]);
/// let mutating = hooks.mutating();
/// assert_eq!(mutating.webhooks.unwrap()[0].failure_policy.as_deref(), Some("Ignore"));
/// ```
#[derive(Clone, Debug)]
pub struct WebhookConfigurations {
    name: String,
    domain: String,
    namespace: String,
    endpoint: Endpoint,
    owned_groups: BTreeSet<String>,
    hooks: Vec<Hook>,
    timeout_seconds: i32,
    extra_namespace_selector: Vec<LabelSelectorRequirement>,
}

impl WebhookConfigurations {
    /// Configurations named `name` (both kinds), whose webhooks are named
    /// `<path>.<domain>`, for an operator running in `namespace` and
    /// reached at `endpoint`.
    pub fn new(
        name: impl Into<String>,
        domain: impl Into<String>,
        namespace: impl Into<String>,
        endpoint: Endpoint,
    ) -> Self {
        WebhookConfigurations {
            name: name.into(),
            domain: domain.into(),
            namespace: namespace.into(),
            endpoint,
            owned_groups: BTreeSet::new(),
            hooks: Vec::new(),
            timeout_seconds: MAX_TIMEOUT_SECONDS,
            extra_namespace_selector: Vec::new(),
        }
    }

    /// Declares an API group the operator's own (its CRDs' group): its
    /// webhooks fail closed. The core group and `*` are refused.
    pub fn owning_group(mut self, group: &str) -> Result<Self, ConfigurationError> {
        if group.is_empty() || group.contains('*') {
            return Err(ConfigurationError::NotOwnable(group.to_string()));
        }
        self.owned_groups.insert(group.to_string());
        Ok(self)
    }

    /// The per-call timeout, at most [`MAX_TIMEOUT_SECONDS`] and at least 1.
    pub fn with_timeout_seconds(mut self, seconds: i32) -> Self {
        self.timeout_seconds = seconds.clamp(1, MAX_TIMEOUT_SECONDS);
        self
    }

    /// Narrows which namespaces every webhook sees, beyond the built-in
    /// exclusions (which stay).
    pub fn with_namespace_requirement(mut self, requirement: LabelSelectorRequirement) -> Self {
        self.extra_namespace_selector.push(requirement);
        self
    }

    /// A validating webhook for `K` on `operations`, at the path its
    /// handler is served at.
    pub fn validate<K: Resource<DynamicType = ()>>(self, operations: &[&str]) -> Self {
        self.hook::<K>(HandlerKind::Validating, operations)
    }

    /// A mutating webhook for `K` on `operations`.
    pub fn mutate<K: Resource<DynamicType = ()>>(self, operations: &[&str]) -> Self {
        self.hook::<K>(HandlerKind::Mutating, operations)
    }

    /// A webhook with a rule of the caller's (several resources, a
    /// subresource, wildcards), served at `path`.
    pub fn with_rule(mut self, kind: HandlerKind, path: &str, rule: RuleWithOperations) -> Self {
        self.hooks.push(Hook {
            kind,
            path: path.to_string(),
            rule,
        });
        self
    }

    fn hook<K: Resource<DynamicType = ()>>(self, kind: HandlerKind, operations: &[&str]) -> Self {
        let rule = RuleWithOperations {
            api_groups: Some(vec![K::group(&()).to_string()]),
            api_versions: Some(vec![K::version(&()).to_string()]),
            operations: Some(operations.iter().map(|o| o.to_string()).collect()),
            resources: Some(vec![K::plural(&()).to_string()]),
            scope: Some("*".into()),
        };
        let path = path_for::<K>(kind);
        self.with_rule(kind, &path, rule)
    }

    /// The `failurePolicy` a rule gets: `Fail` only when every group it
    /// names is owned and it names no wildcard resource.
    pub fn failure_policy(&self, rule: &RuleWithOperations) -> &'static str {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        let owned = !groups.is_empty()
            && groups.iter().all(|g| self.owned_groups.contains(g))
            && !resources.is_empty()
            && resources
                .iter()
                .all(|r| !r.contains('*') && r != "pods" && !r.starts_with("pods/"));
        if owned { "Fail" } else { "Ignore" }
    }

    fn client_config(&self, path: &str) -> WebhookClientConfig {
        match &self.endpoint {
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.to_string()),
                    port: Some(*port),
                }),
                ..WebhookClientConfig::default()
            },
            Endpoint::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
                ..WebhookClientConfig::default()
            },
        }
    }

    fn namespace_selector(&self) -> LabelSelector {
        let mut excluded: Vec<String> = EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).collect();
        excluded.push(self.namespace.clone());
        let mut requirements = vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(excluded),
        }];
        requirements.extend(self.extra_namespace_selector.iter().cloned());
        LabelSelector {
            match_expressions: Some(requirements),
            match_labels: None,
        }
    }

    fn webhook_name(&self, path: &str) -> String {
        format!("{}.{}", path.trim_start_matches('/'), self.domain)
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            ..ObjectMeta::default()
        }
    }

    /// The `ValidatingWebhookConfiguration`.
    pub fn validating(&self) -> ValidatingWebhookConfiguration {
        let webhooks = self
            .hooks
            .iter()
            .filter(|h| h.kind == HandlerKind::Validating)
            .map(|hook| ValidatingWebhook {
                name: self.webhook_name(&hook.path),
                client_config: self.client_config(&hook.path),
                rules: Some(vec![hook.rule.clone()]),
                failure_policy: Some(self.failure_policy(&hook.rule).into()),
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                timeout_seconds: Some(self.timeout_seconds),
                admission_review_versions: vec!["v1".into()],
                namespace_selector: Some(self.namespace_selector()),
                ..ValidatingWebhook::default()
            })
            .collect();
        ValidatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(webhooks),
        }
    }

    /// The `MutatingWebhookConfiguration`.
    pub fn mutating(&self) -> MutatingWebhookConfiguration {
        let webhooks = self
            .hooks
            .iter()
            .filter(|h| h.kind == HandlerKind::Mutating)
            .map(|hook| MutatingWebhook {
                name: self.webhook_name(&hook.path),
                client_config: self.client_config(&hook.path),
                rules: Some(vec![hook.rule.clone()]),
                failure_policy: Some(self.failure_policy(&hook.rule).into()),
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                timeout_seconds: Some(self.timeout_seconds),
                admission_review_versions: vec!["v1".into()],
                namespace_selector: Some(self.namespace_selector()),
                reinvocation_policy: Some("Never".into()),
                ..MutatingWebhook::default()
            })
            .collect();
        MutatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(webhooks),
        }
    }
}

/// Sets every webhook's `caBundle` to `pem` (bring-your-own certificates
/// whose CA the installer knows).
pub fn with_ca_bundle_validating(
    mut configuration: ValidatingWebhookConfiguration,
    pem: &[u8],
) -> ValidatingWebhookConfiguration {
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
    }
    configuration
}

/// [`with_ca_bundle_validating`] for a mutating configuration.
pub fn with_ca_bundle_mutating(
    mut configuration: MutatingWebhookConfiguration,
    pem: &[u8],
) -> MutatingWebhookConfiguration {
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
    }
    configuration
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};

    fn service() -> Endpoint {
        Endpoint::Service {
            namespace: "ops".into(),
            name: "hooks".into(),
            port: 443,
        }
    }

    fn own_rule(resources: &[&str]) -> RuleWithOperations {
        RuleWithOperations {
            api_groups: Some(vec!["etcd.bosun.dev".into()]),
            api_versions: Some(vec!["v1alpha1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(resources.iter().map(|r| r.to_string()).collect()),
            scope: Some("*".into()),
        }
    }

    fn set() -> WebhookConfigurations {
        WebhookConfigurations::new("bosun", "bosun.dev", "ops", service())
            .owning_group("etcd.bosun.dev")
            .expect("ownable")
    }

    #[test]
    fn only_owned_resources_fail_closed() {
        let hooks = set();
        assert_eq!(hooks.failure_policy(&own_rule(&["etcdclusters"])), "Fail");
        assert_eq!(
            hooks.failure_policy(&own_rule(&["etcdclusters/status"])),
            "Fail"
        );
        assert_eq!(
            hooks.failure_policy(&own_rule(&["*"])),
            "Ignore",
            "wildcard"
        );
        let mut mixed = own_rule(&["etcdclusters"]);
        mixed.api_groups = Some(vec!["etcd.bosun.dev".into(), "".into()]);
        assert_eq!(
            hooks.failure_policy(&mixed),
            "Ignore",
            "with the core group"
        );
        let mut all_groups = own_rule(&["etcdclusters"]);
        all_groups.api_groups = Some(vec!["*".into()]);
        assert_eq!(hooks.failure_policy(&all_groups), "Ignore");
        let mut none = own_rule(&["etcdclusters"]);
        none.api_groups = None;
        assert_eq!(hooks.failure_policy(&none), "Ignore");
        assert_eq!(
            hooks.failure_policy(&own_rule(&[])),
            "Ignore",
            "no resources named"
        );
    }

    #[test]
    fn pods_always_fail_open_even_in_an_owned_group() {
        let hooks = set();
        assert_eq!(hooks.failure_policy(&own_rule(&["pods"])), "Ignore");
        assert_eq!(
            hooks.failure_policy(&own_rule(&["pods/ephemeralcontainers"])),
            "Ignore"
        );
        let built = hooks
            .mutate::<Pod>(&["CREATE"])
            .validate::<Deployment>(&CREATE_UPDATE);
        let mutating = built.mutating().webhooks.unwrap_or_default();
        assert_eq!(mutating[0].failure_policy.as_deref(), Some("Ignore"));
        let validating = built.validating().webhooks.unwrap_or_default();
        assert_eq!(validating[0].failure_policy.as_deref(), Some("Ignore"));
    }

    #[test]
    fn the_core_group_and_wildcards_cannot_be_owned() {
        let base = WebhookConfigurations::new("bosun", "bosun.dev", "ops", service());
        assert_eq!(
            base.clone().owning_group("").err(),
            Some(ConfigurationError::NotOwnable(String::new()))
        );
        assert!(base.clone().owning_group("*").is_err());
        assert!(base.owning_group("*.bosun.dev").is_err());
    }

    #[test]
    fn every_webhook_gets_the_safe_defaults() {
        let built = set()
            .validate::<ConfigMap>(&CREATE_UPDATE)
            .mutate::<ConfigMap>(&["CREATE"])
            .with_timeout_seconds(30);
        let validating = built.validating();
        let mutating = built.mutating();
        assert_eq!(validating.metadata.name.as_deref(), Some("bosun"));
        let webhook = &validating.webhooks.unwrap_or_default()[0];
        assert_eq!(webhook.name, "validate--v1-configmap.bosun.dev");
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.timeout_seconds, Some(5), "clamped");
        assert_eq!(webhook.match_policy.as_deref(), Some("Equivalent"));
        assert_eq!(webhook.admission_review_versions, ["v1"]);
        assert_eq!(webhook.client_config.ca_bundle, None);
        let service = webhook.client_config.service.clone().unwrap_or_default();
        assert_eq!(service.path.as_deref(), Some("/validate--v1-configmap"));
        let rule = &webhook.rules.clone().unwrap_or_default()[0];
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["configmaps".to_string()][..])
        );
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        let selector = webhook.namespace_selector.clone().unwrap_or_default();
        let excluded = &selector.match_expressions.unwrap_or_default()[0];
        assert_eq!(excluded.key, "kubernetes.io/metadata.name");
        assert_eq!(excluded.operator, "NotIn");
        assert_eq!(
            excluded.values.as_deref(),
            Some(
                &[
                    "kube-system".to_string(),
                    "kube-node-lease".into(),
                    "ops".into()
                ][..]
            )
        );
        let webhook = &mutating.webhooks.unwrap_or_default()[0];
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.reinvocation_policy.as_deref(), Some("Never"));
        assert_eq!(built.clone().with_timeout_seconds(0).timeout_seconds, 1);
    }

    #[test]
    fn a_url_endpoint_gets_the_path_appended() {
        let built = WebhookConfigurations::new(
            "t",
            "bosun.dev",
            "ops",
            Endpoint::Url("https://127.0.0.1:9443/".into()),
        )
        .validate::<ConfigMap>(&["CREATE"]);
        let webhook = &built.validating().webhooks.unwrap_or_default()[0];
        assert_eq!(
            webhook.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate--v1-configmap")
        );
        let bundled = with_ca_bundle_validating(built.validating(), b"PEM");
        assert_eq!(
            bundled.webhooks.unwrap_or_default()[0]
                .client_config
                .ca_bundle,
            Some(ByteString(b"PEM".to_vec()))
        );
    }
}
