//! The EtcdRestore reconciler: brings an existing EtcdCluster back to a
//! backup, keeping the EtcdCluster object and its spec.
//!
//! The hand-off to the cluster controller is a protocol, each step safe to
//! interrupt:
//! 1. **Pin.** Resolve `spec.source` once, verify that object (present,
//!    etcd's hash intact, the recorded SHA-256), and record location,
//!    SHA-256, size and revision in `status.pinned`. A snapshot that fails
//!    fails the restore; the cluster is not touched. From here on the
//!    restore uses exactly the pinned object, and the cluster's backups and
//!    retention are held until the restore ends.
//! 2. **Mark.** Annotate the EtcdCluster (`etcd.bosun.dev/restore:
//!    <name>/<uid>`) guarded by the resourceVersion read, so two restores
//!    cannot both mark it; a restore that finds another one in flight is
//!    refused. Only then is the phase Running.
//! 3. **Acknowledge.** The cluster controller takes the restore on only for
//!    a live, pinned, unfinished EtcdRestore (a stale mark wipes nothing),
//!    writes `status.restore` (this uid, InProgress) before it wipes, and
//!    Succeeded once the cluster holds the snapshot at full size; then it
//!    removes the mark.
//! 4. **Succeed** only on that acknowledgement.
use std::sync::Arc;
use std::time::Duration;

use bosun_api::cluster::RestoreOutcome;
use bosun_api::conditions::{COMPLETE, FAILED, PROGRESSING, reasons};
use bosun_api::restore::{EtcdRestoreStatus, PinnedSnapshot, RestorePhase};
use bosun_api::validation::validate_restore;
use bosun_api::{EtcdCluster, EtcdRestore};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Telemetry;

use super::source;
use crate::backup::policy::StoragePolicy;
use crate::cluster::objects;
use crate::controller::{self, Settings};
use crate::status::set_condition;

/// The name the restore controller publishes events as.
pub const MANAGER: &str = "bosun-etcd-restore";

/// What the reconciler needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on EtcdRestores.
    pub recorder: Recorder,
    /// What a restore's source may be.
    pub storage: StoragePolicy,
}

/// Why a pass failed; the controller retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the EtcdRestore controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
    telemetry: Telemetry,
) {
    let scope = settings.scope;
    let context = Arc::new(Context {
        recorder: controller::recorder(&client, MANAGER),
        client: client.clone(),
        storage: settings.storage,
    });
    let restores = Controller::new(scope.restores(client), watcher::Config::default());
    controller::drive(
        restores,
        shutdown,
        telemetry,
        reconcile,
        error_policy,
        context,
    )
    .await;
}

/// Retries a failed pass after a pause.
pub fn error_policy(restore: Arc<EtcdRestore>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(restore = %restore.name_any(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// One pass over one EtcdRestore.
#[tracing::instrument(skip_all, fields(namespace = restore.namespace().unwrap_or_default(), name = restore.name_any()))]
pub async fn reconcile(restore: Arc<EtcdRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = restore.namespace().unwrap_or_default();
    let status = restore.status.clone().unwrap_or_default();
    let generation = restore.meta().generation;
    let clusters: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let cluster_name = &restore.spec.cluster_name;
    let uid = restore.uid().unwrap_or_default();
    let mark = objects::restore_mark(&restore.name_any(), &uid);

    if matches!(
        status.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    if let Err(errors) = validate_restore(&restore.spec) {
        fail(
            &ctx,
            &restore,
            status,
            reasons::INVALID_SPEC,
            &errors.to_string(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let Some(cluster) = clusters.get_opt(cluster_name).await? else {
        let (reason, message) = if status.phase == Some(RestorePhase::Running) {
            (
                "ClusterGone",
                format!("EtcdCluster {cluster_name} was deleted during the restore"),
            )
        } else {
            (
                "ClusterNotFound",
                format!("EtcdCluster {cluster_name} does not exist in namespace {namespace}"),
            )
        };
        fail(&ctx, &restore, status, reason, &message).await?;
        return Ok(Action::await_change());
    };

    // 4. The cluster controller's word is the only proof of success.
    let acknowledged = cluster
        .status
        .as_ref()
        .and_then(|s| s.restore.clone())
        .filter(|ack| ack.uid == uid);
    if let Some(ack) = &acknowledged {
        if ack.outcome == RestoreOutcome::Succeeded {
            succeed(&ctx, &restore, status, cluster_name, ack.revision).await?;
            return Ok(Action::await_change());
        }
        if status.phase != Some(RestorePhase::Running) {
            running(&ctx, &restore, status, cluster_name).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    let current_mark = cluster.annotations().get(objects::RESTORE_ANNOTATION);
    match current_mark {
        Some(current) if *current == mark => {
            // 2 done (perhaps by a pass that crashed before saying so).
            if status.phase != Some(RestorePhase::Running) {
                running(&ctx, &restore, status, cluster_name).await?;
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Some(other) => {
            if !mark_is_live(&ctx.client, &namespace, other).await? {
                // A stale mark (its EtcdRestore is gone or finished): the
                // cluster controller removes it without wiping anything.
                let mut status = status;
                status.phase = Some(RestorePhase::Pending);
                set_condition(
                    &mut status.conditions,
                    PROGRESSING,
                    false,
                    "Waiting",
                    &format!(
                        "waiting for the cluster controller to clear the stale restore mark {other} on EtcdCluster {cluster_name}"
                    ),
                    generation,
                );
                write_status(&ctx, &restore, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            if status.phase == Some(RestorePhase::Running) {
                // Our mark was replaced before the cluster controller took
                // the restore on: it did nothing for this restore.
                fail(
                    &ctx,
                    &restore,
                    status,
                    "RestoreSuperseded",
                    &format!(
                        "EtcdCluster {cluster_name} was marked by {other} before this restore was taken on; nothing was restored for this one"
                    ),
                )
                .await?;
                return Ok(Action::await_change());
            }
            fail(
                &ctx,
                &restore,
                status,
                RESTORE_IN_PROGRESS,
                &format!(
                    "EtcdCluster {cluster_name} is already being restored by {other}; this restore is refused and the cluster is not touched. Create a new EtcdRestore when that one has finished"
                ),
            )
            .await?;
            Ok(Action::await_change())
        }
        None if status.phase == Some(RestorePhase::Running) => {
            // Marked once, unmarked without an acknowledgement for us: the
            // mark was removed by hand (or judged stale). Say so rather
            // than claim an outcome.
            fail(
                &ctx,
                &restore,
                status,
                "RestoreAbandoned",
                &format!(
                    "the restore mark on EtcdCluster {cluster_name} was removed before the cluster controller acknowledged this restore; see the cluster's events"
                ),
            )
            .await?;
            Ok(Action::await_change())
        }
        None => match status.pinned.clone() {
            // 1. Pin: nothing is touched unless the snapshot checks out.
            None => pin(&ctx, &restore, status, &namespace).await,
            // 2. Mark, guarded by the resourceVersion just read.
            Some(pinned) => {
                let patch = serde_json::json!({"metadata": {
                    "resourceVersion": cluster.resource_version(),
                    "annotations": {objects::RESTORE_ANNOTATION: mark},
                }});
                crate::crash_point!("restore.mark.before");
                match clusters
                    .patch(cluster_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        crate::crash_point!("restore.mark.after");
                    }
                    // Someone else wrote the cluster first: read again.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                    Err(e) => return Err(e.into()),
                }
                let message = format!(
                    "{} pinned ({} bytes, sha256 {}); the cluster controller stops the members of {cluster_name}, wipes their data and seeds from it",
                    pinned.location.url,
                    pinned.size,
                    pinned.location.sha256.as_deref().unwrap_or("-"),
                );
                event(&ctx, &restore, EventType::Normal, "Restoring", &message).await;
                running(&ctx, &restore, status, cluster_name).await?;
                Ok(Action::requeue(Duration::from_secs(1)))
            }
        },
    }
}

/// The snapshot a restore may be carried out from: its pin, when `restore`
/// is the EtcdRestore of `uid` (not a namesake), pinned, and not finished.
/// Anything else named by a cluster's mark is stale and wipes nothing.
pub fn live_pin<'a>(restore: &'a EtcdRestore, uid: &str) -> Option<&'a PinnedSnapshot> {
    let status = restore.status.as_ref()?;
    (restore.uid().as_deref() == Some(uid) && !finished(restore))
        .then_some(status.pinned.as_ref())
        .flatten()
}

/// Whether a restore has ended, one way or the other: nothing more will
/// be done for it. Until then it is in flight, and a cluster takes one
/// restore at a time.
pub fn finished(restore: &EtcdRestore) -> bool {
    matches!(
        restore.status.as_ref().and_then(|s| s.phase.as_ref()),
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    )
}

/// Whether a cluster's restore mark names a live restore (see [`live_pin`]).
async fn mark_is_live(client: &Client, namespace: &str, mark: &str) -> Result<bool, Error> {
    let Some((name, uid)) = objects::parse_restore_mark(mark) else {
        return Ok(false);
    };
    let restores: Api<EtcdRestore> = Api::namespaced(client.clone(), namespace);
    Ok(restores
        .get_opt(name)
        .await?
        .is_some_and(|r| live_pin(&r, uid).is_some()))
}

/// Reason: another restore of the cluster is in flight.
pub const RESTORE_IN_PROGRESS: &str = "RestoreInProgress";

/// Resolves the source once, verifies exactly that object and pins it.
async fn pin(
    ctx: &Context,
    restore: &EtcdRestore,
    mut status: EtcdRestoreStatus,
    namespace: &str,
) -> Result<Action, Error> {
    let resolved =
        match source::resolve(&ctx.client, namespace, &restore.spec.source, &ctx.storage).await {
            Ok(resolved) => resolved,
            Err(e) => {
                fail(ctx, restore, status, e.reason, &e.message).await?;
                return Ok(Action::await_change());
            }
        };
    let summary = match source::verify(&ctx.client, namespace, &resolved).await {
        Ok(summary) => summary,
        Err(e) => {
            fail(
                ctx,
                restore,
                status,
                e.reason,
                &format!("{}; the cluster was not touched", e.message),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let mut location = resolved.location;
    location.sha256 = Some(summary.sha256.clone());
    let message = format!(
        "{} verified and pinned ({} bytes, sha256 {})",
        location.url, summary.size, summary.sha256
    );
    status.phase = Some(RestorePhase::Pending);
    status.restored_revision = resolved.revision;
    status.pinned = Some(PinnedSnapshot {
        location,
        size: i64::try_from(summary.size).unwrap_or(i64::MAX),
        revision: resolved.revision,
    });
    set_condition(
        &mut status.conditions,
        PROGRESSING,
        true,
        "Pinned",
        &message,
        restore.meta().generation,
    );
    crate::crash_point!("restore.pin.before-status");
    write_status(ctx, restore, &status).await?;
    crate::crash_point!("restore.pin.after-status");
    Ok(Action::requeue(Duration::from_millis(200)))
}

async fn running(
    ctx: &Context,
    restore: &EtcdRestore,
    mut status: EtcdRestoreStatus,
    cluster_name: &str,
) -> Result<(), Error> {
    status.phase = Some(RestorePhase::Running);
    set_condition(
        &mut status.conditions,
        PROGRESSING,
        true,
        "Restoring",
        &format!(
            "EtcdCluster {cluster_name} is marked for this restore; waiting for its controller to restore and regrow it"
        ),
        restore.meta().generation,
    );
    write_status(ctx, restore, &status).await
}

async fn succeed(
    ctx: &Context,
    restore: &EtcdRestore,
    mut status: EtcdRestoreStatus,
    cluster_name: &str,
    revision: Option<i64>,
) -> Result<(), Error> {
    let generation = restore.meta().generation;
    status.phase = Some(RestorePhase::Succeeded);
    status.restored_revision = revision.or(status.restored_revision);
    let message = format!(
        "the controller of EtcdCluster {cluster_name} acknowledged the restore: it holds the snapshot at full size"
    );
    set_condition(
        &mut status.conditions,
        COMPLETE,
        true,
        "Restored",
        &message,
        generation,
    );
    set_condition(
        &mut status.conditions,
        PROGRESSING,
        false,
        "Restored",
        &message,
        generation,
    );
    event(ctx, restore, EventType::Normal, "Restored", &message).await;
    write_status(ctx, restore, &status).await
}

async fn fail(
    ctx: &Context,
    restore: &EtcdRestore,
    mut status: EtcdRestoreStatus,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let generation = restore.meta().generation;
    status.phase = Some(RestorePhase::Failed);
    set_condition(
        &mut status.conditions,
        FAILED,
        true,
        reason,
        message,
        generation,
    );
    set_condition(
        &mut status.conditions,
        PROGRESSING,
        false,
        reason,
        message,
        generation,
    );
    event(ctx, restore, EventType::Warning, reason, message).await;
    write_status(ctx, restore, &status).await
}

async fn write_status(
    ctx: &Context,
    restore: &EtcdRestore,
    status: &EtcdRestoreStatus,
) -> Result<(), Error> {
    let api: Api<EtcdRestore> =
        Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": status});
    api.patch_status(
        &restore.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn event(ctx: &Context, restore: &EtcdRestore, type_: EventType, reason: &str, note: &str) {
    controller::publish(&ctx.recorder, restore, type_, reason, "Restore", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_api::restore::SnapshotLocation;

    /// An EtcdRestore of cluster `db` with uid `uid`, in `phase`, pinned or not.
    fn restore(uid: &str, phase: Option<RestorePhase>, pinned: bool) -> EtcdRestore {
        let mut restore: EtcdRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
            "metadata": {"name": "back", "namespace": "ns", "uid": uid},
            "spec": {"clusterName": "db", "source": {"backup": {"name": "b"}}},
        }))
        .expect("restore");
        restore.status = Some(EtcdRestoreStatus {
            phase,
            pinned: pinned.then(|| PinnedSnapshot {
                location: SnapshotLocation {
                    url: "s3://b/k".into(),
                    credentials_secret: None,
                    endpoint: None,
                    region: None,
                    sha256: Some("ab".repeat(32)),
                },
                size: 10,
                revision: Some(7),
            }),
            ..EtcdRestoreStatus::default()
        });
        restore
    }

    #[test]
    fn only_a_live_pinned_restore_of_that_uid_may_be_carried_out() {
        let running = restore("u1", Some(RestorePhase::Running), true);
        assert_eq!(live_pin(&running, "u1").and_then(|p| p.revision), Some(7));
        // A namesake (the mark came with an exported object), unpinned,
        // or finished: stale, wipes nothing.
        assert!(live_pin(&running, "u2").is_none());
        assert!(live_pin(&restore("u1", Some(RestorePhase::Pending), false), "u1").is_none());
        for phase in [RestorePhase::Succeeded, RestorePhase::Failed] {
            assert!(live_pin(&restore("u1", Some(phase), true), "u1").is_none());
        }
        assert!(live_pin(&restore("u1", Some(RestorePhase::Pending), true), "u1").is_some());
    }
}
