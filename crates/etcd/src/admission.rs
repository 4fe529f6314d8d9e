//! The admission webhooks of the etcd API: EtcdCluster, EtcdBackup and
//! EtcdRestore are checked at `kubectl apply` time by the same functions
//! the controllers call before they act ([`bosun_api::validation`] and the
//! operator's [`StoragePolicy`]), so that a user hears about a mistake from
//! the API server rather than from a condition minutes later.
//!
//! The schema and its CEL rules refuse what they can see on their own;
//! these handlers add what they cannot: transitions the rules do not cover
//! (`spec.storage.emptyDir` is immutable), quantities and text the schema's
//! patterns let through, what this build ships (an etcd image per version),
//! the operator's own settings (the directories a `file` backup may use,
//! whether ambient cloud credentials are lent), and other objects: a
//! restore of a cluster that already has one in flight, a backup index that
//! does not exist, a size change or upgrade of a cluster mid-restore.
//!
//! Other objects are read from caches ([`Lookups`]) that watches keep, so
//! that a handler stays a computation on memory. The settings and the
//! caches are the operator's: a namespace outside its `--watch-namespace`
//! belongs to another operator, which judges it by its own settings, so
//! there only the rules of the spec itself are checked.
//!
//! There is no mutating webhook: every default of the etcd API is in the
//! schema, where the API server applies it before admission.
//!
//! Handlers are pure functions over the admission request; [`server`]
//! registers them and [`configurations`] builds the webhook configurations
//! that send the API server's calls to them.

use bosun_api::restore::BackupReference;
use bosun_api::validation::{self, ValidationErrors};
use bosun_api::version::SHIPPED_ETCD_VERSIONS;
use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use bosun_runtime::webhook::configuration::{
    CREATE_UPDATE, ConfigurationError, Endpoint, WebhookConfigurations,
};
use bosun_runtime::webhook::{AdmissionServer, ConfigurationNames};
use futures::{FutureExt, StreamExt};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::backup::policy::StoragePolicy;
use crate::cluster::objects;
use crate::controller::Scope;
use crate::restore::reconcile::{finished, live_pin};
use crate::restore::source::recorded_backup;

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

/// The admission server with the etcd API's handlers, judging by `judge`.
pub fn server(judge: Judge) -> AdmissionServer {
    let (backups, restores) = (judge.clone(), judge.clone());
    AdmissionServer::new()
        .validate::<EtcdCluster>(move |request| validate_cluster(&judge, request))
        .validate::<EtcdBackup>(move |request| validate_backup(&backups, request))
        .validate::<EtcdRestore>(move |request| validate_restore(&restores, request))
}

/// What the handlers judge by besides the request: the operator's settings
/// and what it knows of other objects.
#[derive(Clone)]
pub struct Judge {
    /// The operator's `--backup-dir` and `--allow-ambient-credentials`.
    pub policy: StoragePolicy,
    /// The operator's `--watch-namespace`: the namespaces whose objects
    /// are judged by its settings and caches.
    pub scope: Scope,
    /// Caches of the objects the checks across objects read.
    pub lookups: Lookups,
}

impl Judge {
    /// Whether objects of `namespace` are this operator's to judge fully.
    fn owns(&self, namespace: Option<&str>) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }

    /// The caches, once both hold what the API server lists: a check that
    /// reads a cache still filling would refuse on what it has not seen
    /// yet. Until then those checks are skipped (and the controllers still
    /// make them when they act).
    fn lookups(&self) -> Option<&Lookups> {
        let ready = |ready: Option<Result<(), reflector::store::WriterDropped>>| {
            ready.is_some_and(|r| r.is_ok())
        };
        (ready(self.lookups.restores.wait_until_ready().now_or_never())
            && ready(self.lookups.backups.wait_until_ready().now_or_never()))
        .then_some(&self.lookups)
    }
}

/// The EtcdRestores and EtcdBackups a handler may look at, as a watch has
/// last seen them (a few milliseconds behind the API server).
#[derive(Clone)]
pub struct Lookups {
    /// EtcdRestores: restores in flight, and the restore a cluster's mark
    /// names.
    pub restores: Store<EtcdRestore>,
    /// EtcdBackups: the records a restore names by index.
    pub backups: Store<EtcdBackup>,
}

impl Lookups {
    /// Caches of the EtcdRestores and EtcdBackups in `scope`, and the
    /// future that keeps them (run it until `stop`).
    pub fn watch(
        client: &Client,
        scope: &Scope,
        stop: CancellationToken,
    ) -> (Lookups, impl Future<Output = ()> + Send + 'static) {
        let (restores, restores_writer) = reflector::store();
        let (backups, backups_writer) = reflector::store();
        let restores_watch = reflector::reflector(
            restores_writer,
            watcher(scope.restores(client.clone()), watcher::Config::default()).default_backoff(),
        )
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "watching EtcdRestores for the admission webhooks");
            }
            futures::future::ready(())
        });
        let backups_watch = reflector::reflector(
            backups_writer,
            watcher(scope.backups(client.clone()), watcher::Config::default()).default_backoff(),
        )
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "watching EtcdBackups for the admission webhooks");
            }
            futures::future::ready(())
        });
        let run = async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = futures::future::join(restores_watch, backups_watch) => {}
            }
        };
        (Lookups { restores, backups }, run)
    }
}

/// What a handler does with one request, before it looks at the spec.
enum Verdict<'a, T> {
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
fn verdict<'a, K, T: PartialEq>(
    request: &'a AdmissionRequest<K>,
    spec: impl Fn(&'a K) -> &'a T,
) -> Verdict<'a, T>
where
    K: Resource,
{
    match request.operation {
        Operation::Delete | Operation::Connect => Verdict::Allow,
        Operation::Create | Operation::Update => {
            let Some(new) = request.object.as_ref().map(&spec) else {
                return Verdict::Deny(format!(
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
                return Verdict::Allow;
            }
            Verdict::Check { new, old }
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
/// the version change with [`validation::check_version_change`]); a version
/// this bosun ships no image for, unless the spec names its own image
/// ([`unshipped_version`]). In the operator's namespaces also: a bootstrap
/// restore's snapshot by the storage policy and its backup's records, and
/// no size change or upgrade while an EtcdRestore is restoring the cluster
/// ([`objects::restore_in_progress`], [`live_pin`]).
pub fn validate_cluster(
    judge: &Judge,
    request: &AdmissionRequest<EtcdCluster>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let (new, old) = match verdict(request, |c: &EtcdCluster| &c.spec) {
        Verdict::Allow => return response,
        Verdict::Deny(message) => return response.deny(message),
        Verdict::Check { new, old } => (new, old),
    };
    let mut errors = messages(match old {
        Some(old) => validation::validate_cluster_update(old, new),
        None => validation::validate_cluster(new),
    });
    errors.extend(unshipped_version(new, old));
    let namespace = request.namespace.as_deref();
    if !judge.owns(namespace) {
        return answer(response, "EtcdCluster", errors);
    }
    let bootstrap = new.bootstrap.as_ref().and_then(|b| b.restore.as_ref());
    if let Some(location) = bootstrap.and_then(|r| r.source.location.as_ref())
        && let Err(why) = judge.policy.check_location(location)
    {
        errors.push(format!("spec.bootstrap.restore.source.location.url: {why}"));
    }
    if let Some(lookups) = judge.lookups() {
        if request.operation == Operation::Create
            && let Some(reference) = bootstrap.and_then(|r| r.source.backup.as_ref())
            && let Err(why) = backup_record(lookups, namespace, reference)
        {
            errors.push(format!("spec.bootstrap.restore.source.{why}"));
        }
        if let (Some(old), Some(stored)) = (old, request.old_object.as_ref()) {
            errors.extend(mid_restore_changes(lookups, stored, old, new));
        }
    }
    answer(response, "EtcdCluster", errors)
}

/// A version this bosun builds no etcd image for, when the members would
/// use the default image: no node has it, and a cluster that pulls only
/// what bosun ships (as `bosun dev` does, and air-gapped clusters do) would
/// never start a member. A spec that names its own image (`spec.image`,
/// which must then hold that version) is the user's choice and allowed.
/// Judged on create and when the version or image changes, so a cluster
/// stored under another bosun's list keeps working.
fn unshipped_version(
    new: &bosun_api::EtcdClusterSpec,
    old: Option<&bosun_api::EtcdClusterSpec>,
) -> Option<String> {
    let unchanged = old.is_some_and(|old| old.version == new.version && old.image == new.image);
    if unchanged || new.image.is_some() || SHIPPED_ETCD_VERSIONS.contains(&new.version.as_str()) {
        return None;
    }
    Some(format!(
        "spec.version: this bosun ships no etcd image for {}: use one of {}, or name an image of etcd {} in spec.image",
        new.version,
        SHIPPED_ETCD_VERSIONS.join(", "),
        new.version,
    ))
}

/// What an update may not change while the stored cluster is marked for a
/// restore that is still being carried out: the size and the version (or
/// image). The members are being wiped and seeded; the change waits.
fn mid_restore_changes(
    lookups: &Lookups,
    stored: &EtcdCluster,
    old: &bosun_api::EtcdClusterSpec,
    new: &bosun_api::EtcdClusterSpec,
) -> Vec<String> {
    let Some((name, uid)) = objects::restore_in_progress(stored) else {
        return vec![];
    };
    let key = ObjectRef::new(&name).within(&stored.namespace().unwrap_or_default());
    let live = lookups
        .restores
        .get(&key)
        .is_some_and(|restore| live_pin(&restore, &uid).is_some());
    if !live {
        // A stale mark: the cluster controller removes it, wiping nothing.
        return vec![];
    }
    let restoring = format!(
        "EtcdCluster {} is being restored by EtcdRestore {name}",
        stored.name_any()
    );
    let until =
        "until that restore has finished (its phase is Succeeded or Failed); change it then";
    let mut errors = vec![];
    if new.size != old.size {
        errors.push(format!(
            "spec.size: {restoring}, and its size stays {} {until}",
            old.size
        ));
    }
    if new.version != old.version || new.image != old.image {
        let image = old
            .image
            .as_deref()
            .map(|image| format!(" (image {image})"))
            .unwrap_or_default();
        errors.push(format!(
            "spec.version: {restoring}, and its version stays {}{image} {until}",
            old.version
        ));
    }
    errors
}

/// The backup record `reference` names, as the restore controller would
/// resolve it ([`recorded_backup`]); the error starts with the field.
fn backup_record(
    lookups: &Lookups,
    namespace: Option<&str>,
    reference: &BackupReference,
) -> Result<(), String> {
    let namespace = namespace.unwrap_or_default();
    let key = ObjectRef::new(&reference.name).within(namespace);
    let Some(backup) = lookups.backups.get(&key) else {
        return Err(format!(
            "backup.name: EtcdBackup {} does not exist in namespace {namespace}; name an EtcdBackup of this namespace that has recorded a backup",
            reference.name
        ));
    };
    recorded_backup(&backup, reference)
        .map(|_| ())
        .map_err(|why| format!("backup.index: {why}"))
}

/// Validates an EtcdBackup: its spec ([`validation::validate_backup`]) and,
/// in the operator's namespaces, whether the operator may write where it
/// points ([`StoragePolicy::check_storage`]).
pub fn validate_backup(judge: &Judge, request: &AdmissionRequest<EtcdBackup>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let new = match verdict(request, |b: &EtcdBackup| &b.spec) {
        Verdict::Allow => return response,
        Verdict::Deny(message) => return response.deny(message),
        Verdict::Check { new, .. } => new,
    };
    let mut errors = messages(validation::validate_backup(new));
    // The policy is only meaningful for a destination the spec could name.
    if judge.owns(request.namespace.as_deref())
        && !errors.iter().any(|e| e.starts_with("spec.storage:"))
        && let Err(why) = judge.policy.check_storage(&new.storage)
    {
        errors.push(format!("spec.storage: {why}"));
    }
    answer(response, "EtcdBackup", errors)
}

/// Validates an EtcdRestore: its spec ([`validation::validate_restore`])
/// and, in the operator's namespaces, when it is created: whether the
/// operator may read a snapshot given by location
/// ([`StoragePolicy::check_location`]), that the EtcdBackup it names has
/// the record it asks for ([`recorded_backup`]), and that no other restore
/// of the same cluster is in flight ([`finished`]). (Its spec is immutable:
/// an update that changes it is refused by the schema.) The storage policy
/// of a backup's destination is checked by the controller when it
/// resolves the backup, as it was when the backup was written.
pub fn validate_restore(
    judge: &Judge,
    request: &AdmissionRequest<EtcdRestore>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let new = match verdict(request, |r: &EtcdRestore| &r.spec) {
        Verdict::Allow => return response,
        Verdict::Deny(message) => return response.deny(message),
        Verdict::Check { new, .. } => new,
    };
    let mut errors = messages(validation::validate_restore(new));
    let namespace = request.namespace.as_deref();
    if !judge.owns(namespace) {
        return answer(response, "EtcdRestore", errors);
    }
    if new.source.backup.is_none()
        && let Some(location) = &new.source.location
        && let Err(why) = judge.policy.check_location(location)
    {
        errors.push(format!("spec.source.location.url: {why}"));
    }
    if request.operation == Operation::Create
        && let Some(lookups) = judge.lookups()
    {
        if let Some(reference) = &new.source.backup
            && let Err(why) = backup_record(lookups, namespace, reference)
        {
            errors.push(format!("spec.source.{why}"));
        }
        let in_flight = lookups.restores.find(|other| {
            other.namespace().as_deref() == namespace
                && other.spec.cluster_name == new.cluster_name
                && other.name_any() != request.name
                && other.meta().deletion_timestamp.is_none()
                && !finished(other)
        });
        if let Some(other) = in_flight {
            errors.push(format!(
                "spec.clusterName: EtcdCluster {} already has a restore in flight, EtcdRestore {} (phase {}); a cluster is restored by one EtcdRestore at a time: create this one once that one has Succeeded or Failed, or delete it",
                new.cluster_name,
                other.name_any(),
                other
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_ref())
                    .map_or_else(|| "not started".to_string(), |p| format!("{p:?}")),
            ));
        }
    }
    answer(response, "EtcdRestore", errors)
}

#[cfg(test)]
mod tests;
