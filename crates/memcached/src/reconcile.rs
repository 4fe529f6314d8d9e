//! The Memcached controller: each pass validates the spec, applies the
//! StatefulSet, headless Service and PodDisruptionBudget whole with
//! server-side apply ([`crate::objects`]), observes the StatefulSet and its
//! pods, and writes the status ([`crate::status`]) when it changed, with an
//! Event for each change a user would want to hear of.
//!
//! No finalizer: everything a Memcached makes lives in the cluster and
//! carries its owner reference, so the garbage collector removes it with
//! the Memcached.
//!
//! [`run`] has the shape of the etcd controllers' `run`, so `bosun
//! operator` adds it to its manager as one more controller.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bosun_runtime::metrics::ReconcileMetrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::api::Memcached;
use crate::objects::{
    self, APP_NAME, FIELD_MANAGER, INSTANCE_LABEL, Instance, MANAGED_BY, MANAGED_BY_LABEL,
    NAME_LABEL, ObjectError,
};
use crate::status::{self, Observed, Outcome};
use crate::validation::validate_memcached;

/// The name the controller's reconcile series and Events report as.
pub const CONTROLLER: &str = "memcached";

/// How soon a settled Memcached is looked at again without any watch
/// event: a safety net, since every change of its objects wakes it.
const RESYNC: Duration = Duration::from_secs(300);

/// The longest wait between retries of a failing Memcached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a pass needs: no globals.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on Memcacheds.
    pub recorder: Recorder,
    /// Failed passes in a row, per Memcached, for the back-off.
    failures: Mutex<HashMap<ObjectRef<Memcached>, u32>>,
}

impl Context {
    /// A context reporting Events as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more failure of `key`; returns how many in a row.
    fn failed(&self, key: ObjectRef<Memcached>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(key).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded(&self, key: &ObjectRef<Memcached>) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// Why a pass failed; [`error_policy`] retries it with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Memcached lacks a namespace or uid.
    #[error(transparent)]
    Identity(#[from] ObjectError),
    /// The API server refused an object the pass applied.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// The object's kind.
        kind: String,
        /// Its name.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
    /// Reading the StatefulSet or the pods failed.
    #[error("reading the {what} of Memcached {name}: {source}")]
    Observe {
        /// What was read.
        what: &'static str,
        /// The Memcached's name.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status of Memcached {name}: {source}")]
    Status {
        /// The Memcached's name.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
}

/// Runs the Memcached controller until `stop` is cancelled: Memcacheds of
/// `namespace` (every namespace when `None`), the objects they own, and
/// their pods; every pass timed into `metrics` (from
/// `Metrics::controller(CONTROLLER)`).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    stop: CancellationToken,
    metrics: ReconcileMetrics,
) {
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context::new(client.clone(), reporter));
    let owned = watcher::Config::default().labels(&format!(
        "{NAME_LABEL}={APP_NAME},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ));
    // Pods are the StatefulSet's, not the Memcached's: they are mapped back
    // by their instance label, so that a pod turning ready or failing wakes
    // its Memcached.
    let pod_owner = |pod: Pod| {
        let name = pod.labels().get(INSTANCE_LABEL)?.clone();
        Some(ObjectRef::<Memcached>::new(&name).within(&pod.namespace()?))
    };
    Controller::new(
        scoped::<Memcached>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(scoped::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(scoped::<Service>(&client, &namespace), owned.clone())
    .owns(
        scoped::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
    )
    .watches(scoped::<Pod>(&client, &namespace), owned, pod_owner)
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(
        move |memcached, context| {
            let metrics = metrics.clone();
            async move { metrics.observe(reconcile(memcached, context)).await }
        },
        error_policy,
        context,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!("memcached reconcile: {e}");
        }
    })
    .await;
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Retries a failed pass after [`backoff`] of its failures in a row.
pub fn error_policy(memcached: Arc<Memcached>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failed(ObjectRef::from_obj(memcached.as_ref()));
    let wait = backoff(failures);
    tracing::warn!(memcached = %memcached.name_any(), failures, "reconcile failed: {error}; retrying in {wait:?}");
    Action::requeue(wait)
}

/// The wait after `failures` failed passes in a row: 1 s, doubling, at
/// most [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// One pass over one Memcached.
#[tracing::instrument(skip_all, fields(namespace = memcached.namespace().unwrap_or_default(), name = memcached.name_any()))]
pub async fn reconcile(memcached: Arc<Memcached>, ctx: Arc<Context>) -> Result<Action, Error> {
    let instance = Instance::of(&memcached)?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &instance.namespace);
    let observe = |what| {
        let name = instance.name.clone();
        move |source| Error::Observe { what, name, source }
    };
    let before = sets
        .get_opt(&instance.name)
        .await
        .map_err(observe("StatefulSet"))?;

    let (outcome, applied, failure) = match validate_memcached(&instance.name, &memcached.spec) {
        Err(errors) => (Outcome::InvalidSpec(errors.to_string()), None, None),
        Ok(()) => match apply_all(&ctx.client, &instance, &memcached).await {
            Ok(set) => (Outcome::Applied, Some(set), None),
            Err(e) => (Outcome::ApplyFailed(e.to_string()), None, Some(e)),
        },
    };
    if let (Some(after), Outcome::Applied) = (&applied, &outcome)
        && let Some((reason, note)) = stateful_set_change(before.as_ref(), after)
    {
        publish(&ctx.recorder, &memcached, EventType::Normal, reason, &note).await;
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &instance.namespace);
    let pods = pods
        .list(&ListParams::default().labels(&objects::label_selector(&instance.name)))
        .await
        .map_err(observe("pods"))?
        .items;
    let observed = Observed {
        stateful_set: applied.as_ref().or(before.as_ref()),
        pods: &pods,
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(&memcached, observed, &outcome, &now);
    let stored = memcached.status.clone().unwrap_or_default();
    if memcached.status.as_ref() != Some(&status) {
        write_status(&ctx.client, &instance, &status).await?;
        for told in status::announcements(&stored.conditions, &status.conditions) {
            let type_ = if told.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(&ctx.recorder, &memcached, type_, &told.reason, &told.note).await;
        }
    }

    if let Some(error) = failure {
        return Err(error);
    }
    ctx.succeeded(&ObjectRef::from_obj(memcached.as_ref()));
    Ok(match outcome {
        Outcome::InvalidSpec(_) => Action::await_change(),
        _ => Action::requeue(RESYNC),
    })
}

/// Applies the three objects, the StatefulSet last (so that its pods'
/// names resolve as soon as they are ready); returns the StatefulSet as
/// the API server stored it.
async fn apply_all(
    client: &Client,
    instance: &Instance,
    memcached: &Memcached,
) -> Result<StatefulSet, Error> {
    let ns = &instance.namespace;
    apply(
        &Api::namespaced(client.clone(), ns),
        &objects::headless_service(instance),
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &objects::pod_disruption_budget(instance),
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), ns),
        &objects::stateful_set(instance, &memcached.spec),
    )
    .await
}

/// Server-side applies the whole of `object` as [`FIELD_MANAGER`], taking
/// over fields another manager set (the operator owns these objects).
async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).to_string(),
        name,
        source,
    })
}

/// Writes the whole status with server-side apply, so that fields this
/// status leaves out are removed.
async fn write_status(
    client: &Client,
    instance: &Instance,
    status: &crate::api::MemcachedStatus,
) -> Result<(), Error> {
    let api: Api<Memcached> = Api::namespaced(client.clone(), &instance.namespace);
    let patch = serde_json::json!({
        "apiVersion": Memcached::api_version(&()),
        "kind": Memcached::kind(&()),
        "status": status,
    });
    api.patch_status(
        &instance.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        name: instance.name.clone(),
        source,
    })?;
    Ok(())
}

/// What an apply changed in the StatefulSet, as an Event's reason and
/// note: created, scaled, or a new pod template rolling out. `None` when
/// the apply changed nothing.
pub fn stateful_set_change(
    before: Option<&StatefulSet>,
    after: &StatefulSet,
) -> Option<(&'static str, String)> {
    let replicas = |set: &StatefulSet| set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let Some(before) = before else {
        return Some((
            "Created",
            format!(
                "created StatefulSet {} with {} servers",
                after.name_any(),
                replicas(after)
            ),
        ));
    };
    if before.metadata.generation == after.metadata.generation {
        return None;
    }
    if replicas(before) != replicas(after) {
        return Some((
            "Scaled",
            format!(
                "scaling from {} to {} servers",
                replicas(before),
                replicas(after)
            ),
        ));
    }
    let image = after
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    Some((
        "RollingOut",
        format!("the pod template changed (image {image}): replacing servers one at a time"),
    ))
}

/// Publishes an Event on `memcached`; a failure is logged, not fatal (the
/// change it reports has happened).
async fn publish(
    recorder: &Recorder,
    memcached: &Memcached,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        // The API refuses notes over 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &memcached.object_ref(&())).await {
        tracing::warn!("publishing event {reason}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(replicas: i32, generation: i64, image: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "cache", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "serviceName": "cache",
                     "template": {"spec": {"containers": [{"name": "memcached", "image": image}]}}},
        }))
        .expect("a StatefulSet")
    }

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_stateful_set_changes_are_told_apart() {
        let first = set(3, 1, "m:1.6.18");
        assert_eq!(
            stateful_set_change(None, &first),
            Some((
                "Created",
                "created StatefulSet cache with 3 servers".to_string()
            ))
        );
        assert_eq!(stateful_set_change(Some(&first), &first), None);
        assert_eq!(
            stateful_set_change(Some(&first), &set(5, 2, "m:1.6.18")).map(|c| c.0),
            Some("Scaled")
        );
        let (reason, note) =
            stateful_set_change(Some(&first), &set(3, 2, "m:1.6.21")).expect("a change");
        assert_eq!(reason, "RollingOut");
        assert!(note.contains("m:1.6.21"), "{note}");
    }
}
