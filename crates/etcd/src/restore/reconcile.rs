//! The EtcdRestore reconciler: brings an existing EtcdCluster back to a
//! backup, keeping the EtcdCluster object and its spec.
//!
//! It checks the snapshot first (present, etcd's hash intact, the recorded
//! SHA-256): a snapshot that fails fails the restore, and the cluster is
//! not touched. Only then does it mark the cluster (annotation
//! `etcd.bosun.dev/restore`); the cluster controller stops the members,
//! wipes their volumes, seeds from the snapshot and grows the cluster back,
//! then removes the mark. The restore succeeds when the mark is gone and
//! the cluster is Available at full size.

use std::sync::Arc;
use std::time::Duration;

use bosun_api::conditions::{COMPLETE, FAILED, PROGRESSING, reasons};
use bosun_api::restore::{EtcdRestoreStatus, RestorePhase};
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
use crate::cluster::objects;
use crate::controller;
use crate::status::set_condition;

/// The name the restore controller publishes events as.
pub const MANAGER: &str = "bosun-etcd-restore";

/// What the reconciler needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on EtcdRestores.
    pub recorder: Recorder,
}

/// Why a pass failed; the controller retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the EtcdRestore controller until `shutdown` is cancelled.
pub async fn run(client: Client, shutdown: CancellationToken, telemetry: Telemetry) {
    let context = Arc::new(Context {
        recorder: controller::recorder(&client, MANAGER),
        client: client.clone(),
    });
    let restores = Controller::new(Api::<EtcdRestore>::all(client), watcher::Config::default());
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
    let mark = format!(
        "{}/{}",
        restore.name_any(),
        restore.uid().unwrap_or_default()
    );

    match status.phase {
        Some(RestorePhase::Succeeded | RestorePhase::Failed) => Ok(Action::await_change()),
        Some(RestorePhase::Running) => {
            let Some(cluster) = clusters.get_opt(cluster_name).await? else {
                fail(
                    &ctx,
                    &restore,
                    status,
                    "ClusterGone",
                    &format!("EtcdCluster {cluster_name} was deleted during the restore"),
                )
                .await?;
                return Ok(Action::await_change());
            };
            let still_marked =
                cluster.annotations().get(objects::RESTORE_ANNOTATION) == Some(&mark);
            let cluster_status = cluster.status.clone().unwrap_or_default();
            let available = cluster_status
                .conditions
                .iter()
                .any(|c| c.type_ == bosun_api::conditions::AVAILABLE && c.status == "True");
            if still_marked || !available || cluster_status.ready_members < cluster.spec.size {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let mut status = status;
            status.phase = Some(RestorePhase::Succeeded);
            let message = format!(
                "EtcdCluster {cluster_name} is restored and Available with {} members",
                cluster_status.ready_members
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
            event(&ctx, &restore, EventType::Normal, "Restored", &message).await;
            write_status(&ctx, &restore, &status).await?;
            Ok(Action::await_change())
        }
        Some(RestorePhase::Pending) | None => {
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
                fail(
                    &ctx,
                    &restore,
                    status,
                    "ClusterNotFound",
                    &format!("EtcdCluster {cluster_name} does not exist in namespace {namespace}"),
                )
                .await?;
                return Ok(Action::await_change());
            };
            if let Some(other) = cluster.annotations().get(objects::RESTORE_ANNOTATION)
                && other != &mark
            {
                let mut status = status;
                status.phase = Some(RestorePhase::Pending);
                let message =
                    format!("waiting: EtcdCluster {cluster_name} is being restored by {other}");
                set_condition(
                    &mut status.conditions,
                    PROGRESSING,
                    false,
                    "Waiting",
                    &message,
                    generation,
                );
                write_status(&ctx, &restore, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            // The gate: nothing is touched unless the snapshot checks out.
            let resolved =
                match source::resolve(&ctx.client, &namespace, &restore.spec.source).await {
                    Ok(resolved) => resolved,
                    Err(e) => {
                        fail(&ctx, &restore, status, e.reason, &e.message).await?;
                        return Ok(Action::await_change());
                    }
                };
            let summary = match source::verify(&ctx.client, &namespace, &resolved).await {
                Ok(summary) => summary,
                Err(e) => {
                    fail(
                        &ctx,
                        &restore,
                        status,
                        e.reason,
                        &format!("{}; the cluster was not touched", e.message),
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
            };
            let mut status = status;
            status.phase = Some(RestorePhase::Running);
            status.restored_revision = resolved.revision;
            let message = format!(
                "{} verified ({} bytes, sha256 {}); stopping the members of {cluster_name}, wiping their data and seeding from it",
                resolved.location.url, summary.size, summary.sha256
            );
            set_condition(
                &mut status.conditions,
                PROGRESSING,
                true,
                "Restoring",
                &message,
                generation,
            );
            write_status(&ctx, &restore, &status).await?;
            let patch = serde_json::json!({"metadata": {"annotations": {objects::RESTORE_ANNOTATION: mark}}});
            clusters
                .patch(cluster_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            event(&ctx, &restore, EventType::Normal, "Restoring", &message).await;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
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
