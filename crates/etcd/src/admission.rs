//! The admission webhooks of the etcd API: EtcdCluster, EtcdBackup and
//! EtcdRestore are checked at `kubectl apply` time by the same functions
//! the controllers call before they act ([`bosun_api::validation`] and the
//! operator's [`StoragePolicy`]), so that a user hears about a mistake from
//! the API server rather than from a condition minutes later.
//!
//! The schema and its CEL rules refuse what they can see on their own;
//! these handlers add what they cannot: transitions the rules do not cover
//! (`spec.storage.emptyDir` is immutable), quantities and text the schema's
//! patterns let through, and the operator's own settings (the directories a
//! `file` backup may use, whether ambient cloud credentials are lent).
//!
//! There is no mutating webhook: every default of the etcd API is in the
//! schema, where the API server applies it before admission.
//!
//! Handlers are pure functions over the admission request; [`server`]
//! registers them and [`configurations`] builds the webhook configurations
//! that send the API server's calls to them.

use bosun_api::validation::{self, ValidationErrors};
use bosun_api::version::{DEFAULT_ETCD_IMAGE_REPOSITORY, SHIPPED_ETCD_VERSIONS};
use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, ConfigurationError, Endpoint, WebhookConfigurations,
};
use bosun_runtime::webhook::{AdmissionServer, ConfigurationNames};
use kube::Resource;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::backup::policy::StoragePolicy;

/// The name of the etcd API's ValidatingWebhookConfiguration.
pub const CONFIGURATION_NAME: &str = "bosun-etcd";

/// The suffix of every webhook's name in the configuration.
pub const WEBHOOK_DOMAIN: &str = "etcd.bosun.dev";

/// The Service the API server calls the webhooks through, as installed;
/// the self-managed serving certificate carries its names.
pub const DEFAULT_SERVICE: &str = "bosun-operator-webhook";

/// The Secret that holds the webhooks' certificate, as installed.
pub const DEFAULT_SECRET: &str = "bosun-operator-webhook-tls";

/// The configurations whose `caBundle`s the certificates are published to
/// and read back from for readiness.
pub fn configuration_names() -> ConfigurationNames {
    ConfigurationNames {
        validating: vec![CONFIGURATION_NAME.to_string()],
        mutating: vec![],
    }
}

/// The etcd API's webhook configurations for an operator running in
/// `namespace` and reached at `endpoint`: validation of the three kinds on
/// create and update, failing closed (the group is bosun's own: while the
/// operator is down nothing would act on these objects anyway).
pub fn configurations(
    namespace: &str,
    endpoint: Endpoint,
) -> Result<WebhookConfigurations, ConfigurationError> {
    Ok(
        WebhookConfigurations::new(CONFIGURATION_NAME, WEBHOOK_DOMAIN, namespace, endpoint)
            .owning_group(&EtcdCluster::group(&()))?
            .validate::<EtcdCluster>(&CREATE_UPDATE)
            .validate::<EtcdBackup>(&CREATE_UPDATE)
            .validate::<EtcdRestore>(&CREATE_UPDATE),
    )
}

/// The admission server with the etcd API's handlers, judging storage by
/// `policy` (the operator's `--backup-dir` and
/// `--allow-ambient-credentials`).
pub fn server(policy: StoragePolicy) -> AdmissionServer {
    let (backups, restores) = (policy.clone(), policy.clone());
    AdmissionServer::new()
        .validate::<EtcdCluster>(move |request| validate_cluster(&policy, request))
        .validate::<EtcdBackup>(move |request| validate_backup(&backups, request))
        .validate::<EtcdRestore>(move |request| validate_restore(&restores, request))
}

/// What a handler does with one request, before it looks at the spec.
enum Judge<'a, T> {
    /// Nothing to check: allow.
    Allow,
    /// Refuse with this message.
    Deny(String),
    /// A new object, or a changed spec (with the old one when known).
    Check { new: &'a T, old: Option<&'a T> },
}

/// Decides which requests are judged on their spec. Deletions are never
/// refused (a user must always be able to take an object away), and an
/// update that leaves the spec as it was is allowed whatever the spec
/// says: it is the controller adding or removing a finalizer or an
/// annotation, and an object stored before this webhook (or by an older
/// bosun with other rules) must still be able to go.
fn judge<'a, K, T: PartialEq>(
    request: &'a AdmissionRequest<K>,
    spec: impl Fn(&'a K) -> &'a T,
) -> Judge<'a, T>
where
    K: Resource,
{
    match request.operation {
        Operation::Delete | Operation::Connect => Judge::Allow,
        Operation::Create | Operation::Update => {
            let Some(new) = request.object.as_ref().map(&spec) else {
                return Judge::Deny(format!(
                    "the request to {} {} carries no object to check",
                    operation_verb(&request.operation),
                    request.kind.kind
                ));
            };
            let old = match request.operation {
                Operation::Update => request.old_object.as_ref().map(&spec),
                _ => None,
            };
            if old.is_some_and(|old| old == new) {
                return Judge::Allow;
            }
            Judge::Check { new, old }
        }
    }
}

fn operation_verb(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect to",
    }
}

/// The one message a refusal carries: every field that is wrong, each with
/// what is allowed.
fn refusal(kind: &str, errors: &[String]) -> String {
    format!("{kind} refused: {}", errors.join("; "))
}

fn answer(
    request_response: AdmissionResponse,
    kind: &str,
    errors: Vec<String>,
) -> AdmissionResponse {
    if errors.is_empty() {
        request_response
    } else {
        request_response.deny(refusal(kind, &errors))
    }
}

fn messages(result: Result<(), ValidationErrors>) -> Vec<String> {
    match result {
        Ok(()) => vec![],
        Err(ValidationErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// Validates an EtcdCluster: the whole spec on create
/// ([`validation::validate_cluster`]), the spec and its transition from the
/// old one on update ([`validation::validate_cluster_update`], which checks
/// the version change with [`validation::check_version_change`]); a
/// bootstrap restore's snapshot location by the operator's storage policy.
/// A version this bosun ships no image for is allowed with a warning.
pub fn validate_cluster(
    policy: &StoragePolicy,
    request: &AdmissionRequest<EtcdCluster>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let (new, old) = match judge(request, |c: &EtcdCluster| &c.spec) {
        Judge::Allow => return response,
        Judge::Deny(message) => return response.deny(message),
        Judge::Check { new, old } => (new, old),
    };
    let mut errors = messages(match old {
        Some(old) => validation::validate_cluster_update(old, new),
        None => validation::validate_cluster(new),
    });
    if let Some(location) = new
        .bootstrap
        .as_ref()
        .and_then(|b| b.restore.as_ref())
        .and_then(|r| r.source.location.as_ref())
        && let Err(why) = policy.check_location(location)
    {
        errors.push(format!("spec.bootstrap.restore.source.location.url: {why}"));
    }
    let mut response = answer(response, "EtcdCluster", errors);
    if response.allowed
        && let Some(warning) = unshipped_version_warning(new)
    {
        response.warnings = Some(vec![warning]);
    }
    response
}

/// A warning for a version this bosun builds no image for, when the members
/// would use the default repository: on a cluster that cannot pull from it
/// the members would never start. Not a refusal: where the registry is
/// reachable every upstream release works.
fn unshipped_version_warning(spec: &bosun_api::EtcdClusterSpec) -> Option<String> {
    if spec.image.is_some() || SHIPPED_ETCD_VERSIONS.contains(&spec.version.as_str()) {
        return None;
    }
    Some(format!(
        "spec.version: this bosun ships no image for {}; members will pull {DEFAULT_ETCD_IMAGE_REPOSITORY}:v{} (shipped: {})",
        spec.version,
        spec.version,
        SHIPPED_ETCD_VERSIONS.join(", ")
    ))
}

/// Validates an EtcdBackup: its spec ([`validation::validate_backup`]) and
/// whether the operator may write where it points
/// ([`StoragePolicy::check_storage`]).
pub fn validate_backup(
    policy: &StoragePolicy,
    request: &AdmissionRequest<EtcdBackup>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let new = match judge(request, |b: &EtcdBackup| &b.spec) {
        Judge::Allow => return response,
        Judge::Deny(message) => return response.deny(message),
        Judge::Check { new, .. } => new,
    };
    let mut errors = messages(validation::validate_backup(new));
    // The policy is only meaningful for a destination the spec could name.
    if !errors.iter().any(|e| e.starts_with("spec.storage:"))
        && let Err(why) = policy.check_storage(&new.storage)
    {
        errors.push(format!("spec.storage: {why}"));
    }
    answer(response, "EtcdBackup", errors)
}

/// Validates an EtcdRestore: its spec ([`validation::validate_restore`])
/// and, for a snapshot given by location, whether the operator may read it
/// ([`StoragePolicy::check_location`]). A restore from an EtcdBackup is
/// checked against the policy by the controller when it resolves the
/// backup.
pub fn validate_restore(
    policy: &StoragePolicy,
    request: &AdmissionRequest<EtcdRestore>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let new = match judge(request, |r: &EtcdRestore| &r.spec) {
        Judge::Allow => return response,
        Judge::Deny(message) => return response.deny(message),
        Judge::Check { new, .. } => new,
    };
    let mut errors = messages(validation::validate_restore(new));
    if new.source.backup.is_none()
        && let Some(location) = &new.source.location
        && let Err(why) = policy.check_location(location)
    {
        errors.push(format!("spec.source.location.url: {why}"));
    }
    answer(response, "EtcdRestore", errors)
}

#[cfg(test)]
mod tests;
