//! The admission webhooks of Memcached: a defaulting one and a validating
//! one, plain functions over kube's admission types that [`register`] adds
//! to the runtime's [`AdmissionServer`], and [`configurations`] that send
//! the API server's calls to them.
//!
//! Defaulting does only what the schema cannot: the schema's defaults are
//! applied by the API server before any webhook, but it cannot rewrite a
//! value. A version written as an image tag habitually is (`v1.6.18`) is
//! written back as memcached's own `1.6.18`, which the schema's pattern
//! then accepts. The handler reads the object as plain JSON: it runs before
//! the schema is checked, so it must not refuse what it cannot parse (the
//! schema's own message is the better one).
//!
//! Validation calls [`validate_memcached`], the function the controller
//! calls before it acts, so a user hears about a mistake from `kubectl
//! apply`: "spec.size: 0 is below the minimum of 1: a cache has 1 to 64
//! servers".

use bosun_api::ValidationErrors;
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, ConfigurationError, Endpoint, WebhookConfigurations,
};
use bosun_runtime::webhook::{AdmissionServer, ConfigurationNames, HandlerKind, mutated, path_for};
use kube::Resource;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::api::Memcached;
use crate::validation::{is_version, validate_memcached};

/// The name of the Memcached API's validating and mutating webhook
/// configurations.
pub const CONFIGURATION_NAME: &str = "bosun-memcached";

/// The suffix of every webhook's name in the configurations.
pub const WEBHOOK_DOMAIN: &str = "cache.bosun.dev";

/// The configurations whose `caBundle`s the webhook certificates are
/// published to (add them to the operator's list).
pub fn configuration_names() -> ConfigurationNames {
    ConfigurationNames {
        validating: vec![CONFIGURATION_NAME.to_string()],
        mutating: vec![CONFIGURATION_NAME.to_string()],
    }
}

/// The Memcached API's webhook configurations for an operator running in
/// `namespace` and reached at `endpoint`: defaulting and validation of
/// Memcached on create and update, failing closed (the group is bosun's
/// own: while the operator is down nothing would act on these objects).
pub fn configurations(
    namespace: &str,
    endpoint: Endpoint,
) -> Result<WebhookConfigurations, ConfigurationError> {
    Ok(
        WebhookConfigurations::new(CONFIGURATION_NAME, WEBHOOK_DOMAIN, namespace, endpoint)
            .owning_group(&Memcached::group(&()))?
            .mutate::<Memcached>(&CREATE_UPDATE)
            .validate::<Memcached>(&CREATE_UPDATE),
    )
}

/// `server` with the Memcached handlers added, at the paths
/// [`configurations`] sends calls to.
pub fn register(server: AdmissionServer) -> AdmissionServer {
    server
        .at::<DynamicObject>(
            &path_for::<Memcached>(HandlerKind::Mutating),
            default_memcached,
        )
        .validate::<Memcached>(validate)
}

/// Defaults a Memcached: a `spec.version` of `v` + a version loses the
/// `v`. Everything else is allowed unchanged.
pub fn default_memcached(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let Some(before) = request.object.as_ref() else {
        return AdmissionResponse::from(request);
    };
    let mut after = before.clone();
    if let Some(version) = after
        .data
        .get_mut("spec")
        .and_then(|spec| spec.get_mut("version"))
        && let Some(normalized) = version
            .as_str()
            .and_then(|v| v.strip_prefix('v'))
            .filter(|v| is_version(v))
    {
        *version = serde_json::Value::String(normalized.to_string());
    }
    mutated(request, before, &after)
}

/// Validates a Memcached on create, and on update when its spec changed:
/// every error of [`validate_memcached`] in one refusal. Deletions are
/// never refused, and neither is an update that leaves the spec as it was
/// (a label, an annotation, a finalizer), whatever rules a stored object
/// predates.
pub fn validate(request: &AdmissionRequest<Memcached>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(new) = request.object.as_ref() else {
        return response.deny("the request carries no Memcached to check");
    };
    if request.operation == Operation::Update
        && request
            .old_object
            .as_ref()
            .is_some_and(|old| old.spec == new.spec)
    {
        return response;
    }
    match validate_memcached(&name_of(new), &new.spec) {
        Ok(()) => response,
        Err(ValidationErrors(errors)) => {
            let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
            response.deny(format!("Memcached refused: {}", messages.join("; ")))
        }
    }
}

/// The name the object will have: its own, or for a `generateName` create
/// the prefix with the five characters the API server adds.
fn name_of(memcached: &Memcached) -> String {
    match (&memcached.metadata.name, &memcached.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}xxxxx"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
