//! The dev cluster's default StorageClass, `local-path`, and its provisioner.
//!
//! The provisioner is a small external provisioner in the sense of the
//! Kubernetes external-provisioner protocol, like rancher's
//! local-path-provisioner, but it runs inside the `bosun dev` supervisor on
//! the host, so it makes volume directories with plain filesystem calls
//! instead of helper pods. The division of labour with the real
//! controller-manager is the standard one:
//!
//! 1. The scheduler picks a node for the first pod that uses a claim and
//!    writes it into the claim (`volume.kubernetes.io/selected-node`), because
//!    the class binds `WaitForFirstConsumer`.
//! 2. The controller-manager's PV controller sees that the class names an
//!    external provisioner and hands the claim to it
//!    (`volume.kubernetes.io/storage-provisioner`).
//! 3. We ([`provision`]) create `<volumes_dir>/pvc-<claim uid>` on the host and
//!    a PersistentVolume pre-bound to the claim; the PV controller binds them.
//! 4. When the claim is deleted the PV controller marks the volume Released;
//!    we ([`reclaim`]) remove the directory and then the PersistentVolume.
//!
//! Data therefore lives on the host from the claim's first use until the
//! claim is deleted, and survives pod deletion and dev cluster restarts.

mod host_dir;
mod provision;
mod reclaim;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

/// The name of the dev cluster's default StorageClass.
pub const STORAGE_CLASS_NAME: &str = "local-path";

/// The provisioner name the StorageClass names and the PersistentVolumes carry.
pub const PROVISIONER_NAME: &str = "bosun.dev/local-path";

/// How long one call to the API server may take before we give up on it and
/// let the controller retry; a dev cluster answers in milliseconds.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before retrying an object whose reconcile failed.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The field manager of the StorageClass we apply.
const FIELD_MANAGER: &str = "bosun-dev";

/// Why the provisioner could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Api {
        /// What we were doing.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("{what}: no answer from the API server within {}s; is the dev cluster's kube-apiserver running?", after.as_secs())]
    Timeout {
        /// What we were doing.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A filesystem operation on the host failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried, e.g. "create".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something that is not a plain directory sits where a volume directory
    /// belongs; we refuse to chmod through a symlink.
    #[error(
        "{path} exists but is not a directory (a symlink or a file); remove it by hand and the provisioner will retry"
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The node the provisioner serves is not registered.
    #[error(
        "node {node} is not registered with the API server; is the dev cluster's kubelet running?"
    )]
    NodeMissing {
        /// The node's name.
        node: String,
    },
}

/// The dev cluster's default StorageClass: volumes are host directories made
/// by [`run_provisioner`], bound when the first pod using the claim is
/// scheduled (so the node is known), and deleted with their claim.
pub fn storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS_NAME.to_owned()),
            annotations: Some(
                [(
                    "storageclass.kubernetes.io/is-default-class".to_owned(),
                    "true".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        provisioner: PROVISIONER_NAME.to_owned(),
        reclaim_policy: Some("Delete".to_owned()),
        volume_binding_mode: Some("WaitForFirstConsumer".to_owned()),
        // A host directory has no size to grow; resizing would be a lie.
        allow_volume_expansion: Some(false),
        ..StorageClass::default()
    }
}

/// Applies [`storage_class`] and runs the provisioner for the node
/// `node_name`, keeping volume directories under `volumes_dir` (created if
/// missing), until `shutdown` is cancelled.
///
/// Call it once the API server answers. It fails only at start (the volumes
/// directory or the StorageClass cannot be set up); later failures are
/// logged and retried, because a watch or a reconcile that fails now usually
/// works a moment later.
pub async fn run_provisioner(
    client: kube::Client,
    volumes_dir: PathBuf,
    node_name: String,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    // The canonical path goes into every PersistentVolume and is what the
    // reclaim guard compares against, so symlinks in the configured path
    // cannot make the two disagree.
    let volumes_dir = host_dir::prepare_volumes_dir(&volumes_dir).await?;
    apply_storage_class(&client).await?;
    tracing::info!(volumes_dir = %volumes_dir.display(), node = %node_name, "local-path provisioner started");

    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "bosun-local-path-provisioner".to_owned(),
                instance: Some(node_name.clone()),
            },
        ),
        client: client.clone(),
        volumes_dir,
        node_name,
    });

    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(provision::reconcile, error_policy, ctx.clone())
    .for_each(|result| async move { log_watch_error("PersistentVolumeClaim", result) });

    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reclaim::reconcile, error_policy, ctx)
    .for_each(|result| async move { log_watch_error("PersistentVolume", result) });

    futures::future::join(claims, volumes).await;
    tracing::info!("local-path provisioner stopped");
    Ok(())
}

/// What both reconcilers need.
struct Context {
    client: kube::Client,
    recorder: Recorder,
    /// Canonical, absolute directory holding one directory per volume.
    volumes_dir: PathBuf,
    /// The only node this provisioner can make directories on.
    node_name: String,
}

impl Context {
    /// Publishes an event about `obj`; a lost event must not fail the
    /// reconcile, so failures are only logged.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        let reference = obj.object_ref(&());
        let publish = self.recorder.publish(&event, &reference);
        if let Err(err) = api_call(format!("publishing event {reason}"), publish).await {
            tracing::warn!(error = %err, "cannot publish event");
        }
    }
}

/// Retries a failed reconcile after a pause; the failure is logged here,
/// once, with the object it concerns.
fn error_policy<K: ResourceExt>(
    obj: Arc<K>,
    err: &StorageError,
    _ctx: Arc<Context>,
) -> controller::Action {
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        error = %err,
        "reconcile failed; retrying in {}s",
        RETRY_AFTER.as_secs()
    );
    controller::Action::requeue(RETRY_AFTER)
}

/// Logs what the controller stream reports besides reconcile failures (which
/// [`error_policy`] logs): mostly watch errors, which the watcher retries
/// with back-off.
fn log_watch_error<K, E, W>(
    kind: &str,
    result: Result<
        (kube::runtime::reflector::ObjectRef<K>, controller::Action),
        controller::Error<E, W>,
    >,
) where
    K: Resource,
    E: std::error::Error,
    W: std::error::Error,
{
    match result {
        Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(obj)) => {
            tracing::debug!(%obj, "{kind} gone before it was reconciled");
        }
        Err(err) => tracing::warn!(error = %err, "{kind} watch failed; retrying"),
    }
}

/// Server-side applies [`storage_class`], forcing our fields so that a
/// class edited by hand is put back.
async fn apply_storage_class(client: &kube::Client) -> Result<(), StorageError> {
    let classes = Api::<StorageClass>::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let class = storage_class();
    // The provisioner, reclaim policy and binding mode are immutable: if a
    // class of this name was made by something else, the API server says so
    // and the message below tells the user what to do.
    api_call(
        format!(
            "applying StorageClass {STORAGE_CLASS_NAME} (if it exists with another provisioner, delete it with `kubectl delete storageclass {STORAGE_CLASS_NAME}`)"
        ),
        classes.patch(STORAGE_CLASS_NAME, &params, &Patch::Apply(&class)),
    )
    .await?;
    Ok(())
}

/// Reads the `kubernetes.io/hostname` label of our node: that, not the node
/// name, is what PersistentVolume node affinity matches, and the kubelet
/// may have been told to use a different hostname.
async fn node_hostname(ctx: &Context) -> Result<String, StorageError> {
    let nodes = Api::<Node>::all(ctx.client.clone());
    let node = api_call(
        format!("reading Node {}", ctx.node_name),
        nodes.get_opt(&ctx.node_name),
    )
    .await?
    .ok_or_else(|| StorageError::NodeMissing {
        node: ctx.node_name.clone(),
    })?;
    Ok(node
        .labels()
        .get(provision::HOSTNAME_LABEL)
        .cloned()
        .unwrap_or_else(|| ctx.node_name.clone()))
}

/// Runs one API call under [`API_TIMEOUT`].
async fn api_call<T>(
    what: String,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(StorageError::Api { what, source }),
        Err(_elapsed) => Err(StorageError::Timeout {
            what,
            after: API_TIMEOUT,
        }),
    }
}

/// Whether `err` is the API server saying the object already exists.
fn is_already_exists(err: &StorageError) -> bool {
    matches!(err, StorageError::Api { source: kube::Error::Api(status), .. } if status.is_already_exists())
}

/// Whether `err` is the API server saying the object does not exist.
fn is_not_found(err: &StorageError) -> bool {
    matches!(err, StorageError::Api { source: kube::Error::Api(status), .. } if status.is_not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_class_is_the_default_and_waits_for_the_first_consumer() {
        let class = storage_class();
        assert_eq!(class.metadata.name.as_deref(), Some(STORAGE_CLASS_NAME));
        assert_eq!(
            class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(class.provisioner, PROVISIONER_NAME);
        assert_eq!(
            class.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    }

    #[test]
    fn storage_class_serializes_with_its_kind_for_server_side_apply() {
        let value = serde_json::to_value(storage_class()).expect("a StorageClass serializes");
        assert_eq!(value["apiVersion"], "storage.k8s.io/v1");
        assert_eq!(value["kind"], "StorageClass");
        assert_eq!(value["volumeBindingMode"], "WaitForFirstConsumer");
    }
}
