//! What the three controllers share around their reconcilers: the
//! namespaces they watch, the events recorder, and running a kube-runtime
//! `Controller` until shutdown with every pass timed into the metrics.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;

use crate::telemetry::Telemetry;

/// What the operator was started with that its controllers obey.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The namespaces they watch and act in.
    pub scope: Scope,
    /// What tenants' backups and restores may make the operator touch.
    pub storage: crate::backup::policy::StoragePolicy,
}

/// Which namespaces the controllers watch and act in: every namespace (the
/// default), or one (`bosun operator --watch-namespace`, as operator-sdk's
/// `WATCH_NAMESPACE`), so that an operator can be given one tenant's
/// namespace, and tests can run operators side by side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    #[default]
    All,
    /// This namespace only.
    Namespace(String),
}

impl Scope {
    /// EtcdClusters in scope.
    pub fn clusters(&self, client: Client) -> Api<EtcdCluster> {
        match self {
            Scope::All => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }

    /// EtcdBackups in scope.
    pub fn backups(&self, client: Client) -> Api<EtcdBackup> {
        match self {
            Scope::All => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }

    /// EtcdRestores in scope.
    pub fn restores(&self, client: Client) -> Api<EtcdRestore> {
        match self {
            Scope::All => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }

    /// Pods in scope.
    pub fn pods(&self, client: Client) -> Api<Pod> {
        match self {
            Scope::All => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }

    /// PersistentVolumeClaims in scope.
    pub fn pvcs(&self, client: Client) -> Api<PersistentVolumeClaim> {
        match self {
            Scope::All => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }
}

/// A recorder that reports as `controller`, from this replica (its pod name).
pub fn recorder(client: &Client, controller: &str) -> Recorder {
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok();
    Recorder::new(
        client.clone(),
        Reporter {
            controller: controller.into(),
            instance,
        },
    )
}

/// Publishes an Event on `object`; a failure to publish is logged, not
/// fatal (the change it reports has happened).
pub async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        // The API refuses notes over 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!("publishing event {reason}: {e}");
    }
}

/// Runs `controller` until `shutdown` is cancelled, timing every pass of
/// `reconcile` into `telemetry`.
pub async fn drive<K, Ctx, E, Fut>(
    controller: Controller<K>,
    shutdown: CancellationToken,
    telemetry: Telemetry,
    reconcile: fn(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: fn(Arc<K>, &E, Arc<Ctx>) -> Action,
    context: Arc<Ctx>,
) where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Eq + Hash + Clone + Unpin,
    Ctx: Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            move |object, context| {
                let metrics = telemetry.reconcile.clone();
                async move { metrics.observe(reconcile(object, context)).await }
            },
            error_policy,
            context,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}
