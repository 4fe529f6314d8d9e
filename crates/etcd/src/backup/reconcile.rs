//! The EtcdBackup reconciler: decides whether a run is due (one-shot, or by
//! its cron schedule), takes a snapshot from a healthy member straight into
//! the store, verifies it, writes its manifest, applies retention and
//! records the outcome in status and events.
//!
//! A run interrupted by an operator restart leaves phase `Running`; the
//! next pass runs again. Its partial upload never completed (multipart) or
//! has no manifest, and retention deletes such debris. The upload's id is
//! in `status.upload` from before its first part, and the next run (or the
//! run itself, after a timeout) aborts it, so its parts do not stay in the
//! bucket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bosun_api::backup::{
    BackupPhase, BackupRecord, BackupStorage, EtcdBackupStatus, MAX_RECORDED_BACKUPS,
    UploadInProgress,
};
use bosun_api::conditions::{COMPLETE, FAILED, reasons};
use bosun_api::validation::{parse_schedule, validate_backup};
use bosun_api::{EtcdBackup, EtcdCluster, EtcdRestore};
use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{BackupLabels, Telemetry};

use super::policy::StoragePolicy;
use super::schedule::{self, Due};
use super::snapshot::{self, Manifest, SnapshotError};
use super::store::{self, Credentials, Destination};
use super::{retention, service_address};
use crate::cluster::objects;
use crate::controller::{self, Settings};
use crate::members;
use crate::status::{from_time, set_condition, to_time};

/// The name the backup controller publishes events as.
pub const MANAGER: &str = "bosun-etcd-backup";

/// Reasons of the backup conditions.
pub mod backup_reasons {
    /// The snapshot was stored and verified.
    pub const SUCCEEDED: &str = "BackupSucceeded";
    /// The store refused the credentials.
    pub const CREDENTIALS_REFUSED: &str = "CredentialsRefused";
    /// The bucket or container does not exist.
    pub const NOT_FOUND: &str = "StorageNotFound";
    /// The cluster had no member to take a snapshot from.
    pub const CLUSTER_UNHEALTHY: &str = "ClusterUnhealthy";
    /// The run took longer than `spec.timeoutSeconds`.
    pub const TIMEOUT: &str = "Timeout";
    /// The snapshot did not verify.
    pub const CORRUPT: &str = "SnapshotCorrupt";
    /// The operator's storage policy refuses the destination (a directory
    /// it was not installed with, or no credentials Secret).
    pub const STORAGE_REFUSED: &str = "StorageRefused";
    /// Anything else.
    pub const FAILED: &str = "BackupFailed";
}

/// What the reconciler needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on EtcdBackups.
    pub recorder: Recorder,
    /// The etcd series of `/metrics`.
    pub metrics: crate::telemetry::EtcdMetrics,
    /// What a backup's destination may be.
    pub storage: StoragePolicy,
}

/// Why a pass failed; the controller retries with back-off. A failed
/// backup run is not an error of the pass: it is recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Why a backup run failed: a reason for the condition and a message that
/// carries no credential.
#[derive(Debug)]
pub struct RunFailure {
    /// Condition reason.
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

impl RunFailure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        RunFailure {
            reason,
            message: message.into(),
        }
    }

    fn from_snapshot(error: SnapshotError, credentials: Option<&Credentials>) -> Self {
        let reason = match &error {
            SnapshotError::Credentials(_) => backup_reasons::CREDENTIALS_REFUSED,
            SnapshotError::NotFound(_) => backup_reasons::NOT_FOUND,
            SnapshotError::Corrupt(_) => backup_reasons::CORRUPT,
            SnapshotError::Etcd(_) => backup_reasons::CLUSTER_UNHEALTHY,
            _ => backup_reasons::FAILED,
        };
        let message = error.to_string();
        RunFailure::new(
            reason,
            credentials.map_or(message.clone(), |c| c.redact(&message)),
        )
    }
}

/// Runs the EtcdBackup controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
    telemetry: Telemetry,
) {
    let context = Arc::new(Context {
        metrics: telemetry.etcd.clone(),
        recorder: controller::recorder(&client, MANAGER),
        client: client.clone(),
        storage: settings.storage,
    });
    let backups = Controller::new(settings.scope.backups(client), watcher::Config::default());
    controller::drive(
        backups,
        shutdown,
        telemetry,
        reconcile,
        error_policy,
        context,
    )
    .await;
}

/// Retries a failed pass after a pause.
pub fn error_policy(backup: Arc<EtcdBackup>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(backup = %backup.name_any(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// One pass over one EtcdBackup.
#[tracing::instrument(skip_all, fields(namespace = cached.namespace().unwrap_or_default(), name = cached.name_any()))]
pub async fn reconcile(cached: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The cache may not have seen the status this controller wrote a moment
    // ago (a run's outcome, lastScheduleTime), and deciding on it would run
    // the same backup twice: read the object itself.
    let api: Api<EtcdBackup> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let Some(backup) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let backup = &backup;
    let status = backup.status.clone().unwrap_or_default();

    if let Err(errors) = validate_backup(&backup.spec) {
        return refuse_spec(&ctx, backup, status, &errors.to_string()).await;
    }

    // A restore of the cluster has pinned a snapshot: no backup runs (and
    // so no retention prunes anything) until it ends, so the pinned object
    // stays, and no backup of a half-restored cluster is recorded.
    let restores: Api<EtcdRestore> =
        Api::namespaced(ctx.client.clone(), &backup.namespace().unwrap_or_default());
    if let Some(restore) = holding_restore(
        &restores.list(&ListParams::default()).await?.items,
        &backup.spec.cluster_name,
    ) {
        let message = format!(
            "held while EtcdRestore {restore} restores EtcdCluster {}",
            backup.spec.cluster_name
        );
        tracing::info!("{message}");
        event(&ctx, backup, EventType::Normal, "BackupHeld", &message).await;
        return Ok(Action::requeue(RESTORE_HOLD_RECHECK));
    }

    let Some(schedule_text) = &backup.spec.schedule else {
        // One-shot: runs until it has an outcome; `Running` means a run was
        // interrupted, so it runs again.
        if matches!(
            status.phase,
            Some(BackupPhase::Succeeded | BackupPhase::Failed)
        ) {
            return Ok(Action::await_change());
        }
        let outcome = run_backup(&ctx, backup, status).await?;
        let mut status = outcome;
        status.phase = Some(if condition_true(&status, FAILED) {
            BackupPhase::Failed
        } else {
            BackupPhase::Succeeded
        });
        write_status(&ctx, backup, &status).await?;
        return Ok(Action::await_change());
    };

    // Validation has parsed it already.
    let Ok(cron) = parse_schedule(schedule_text) else {
        return Ok(Action::await_change());
    };
    let last = status
        .last_schedule_time
        .as_ref()
        .or(backup.meta().creation_timestamp.as_ref())
        .map(from_time)
        .unwrap_or_else(Utc::now);
    let now = Utc::now();
    match schedule::due(&cron, last, now) {
        Err(message) => refuse_spec(&ctx, backup, status, &message).await,
        Ok(Due::Later { at }) => {
            let next = to_time(at);
            if status.next_schedule_time.as_ref() != Some(&next)
                || status.phase != Some(BackupPhase::Scheduled)
            {
                let mut status = status;
                status.next_schedule_time = Some(next);
                status.phase = Some(BackupPhase::Scheduled);
                write_status(&ctx, backup, &status).await?;
            }
            let wait = (at - now).to_std().unwrap_or_default();
            Ok(Action::requeue(wait + Duration::from_millis(50)))
        }
        Ok(Due::Now { scheduled }) => {
            let mut status = run_backup(&ctx, backup, status).await?;
            status.last_schedule_time = Some(to_time(scheduled));
            status.phase = Some(BackupPhase::Scheduled);
            let now = Utc::now();
            let wait = match schedule::due(&cron, scheduled, now) {
                Ok(Due::Later { at }) => {
                    status.next_schedule_time = Some(to_time(at));
                    (at - now).to_std().unwrap_or_default()
                }
                // The next time has come already (a run longer than the period).
                _ => Duration::ZERO,
            };
            write_status(&ctx, backup, &status).await?;
            Ok(Action::requeue(wait + Duration::from_millis(50)))
        }
    }
}

/// How often a backup held by a restore looks again.
const RESTORE_HOLD_RECHECK: Duration = Duration::from_secs(5);

/// The name of a live restore of `cluster` that has pinned its snapshot
/// (see `restore::reconcile::live_pin`), if any.
fn holding_restore(restores: &[EtcdRestore], cluster: &str) -> Option<String> {
    restores
        .iter()
        .filter(|r| r.spec.cluster_name == cluster)
        .find(|r| {
            r.uid()
                .is_some_and(|uid| crate::restore::reconcile::live_pin(r, &uid).is_some())
        })
        .map(ResourceExt::name_any)
}

/// Fails an EtcdBackup whose spec cannot run, until the spec changes.
async fn refuse_spec(
    ctx: &Context,
    backup: &EtcdBackup,
    mut status: EtcdBackupStatus,
    message: &str,
) -> Result<Action, Error> {
    status.phase = Some(BackupPhase::Failed);
    set_condition(
        &mut status.conditions,
        FAILED,
        true,
        reasons::INVALID_SPEC,
        message,
        backup.meta().generation,
    );
    write_status(ctx, backup, &status).await?;
    Ok(Action::await_change())
}

fn condition_true(status: &EtcdBackupStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Runs one backup and returns the status to write (phase left to the caller).
async fn run_backup(
    ctx: &Context,
    backup: &EtcdBackup,
    mut status: EtcdBackupStatus,
) -> Result<EtcdBackupStatus, Error> {
    let generation = backup.meta().generation;
    // An upload a killed run left behind goes first; if the store cannot
    // be reached it stays recorded for the next run.
    if let Some(left) = status.upload.take()
        && !abort_upload(ctx, backup, &left).await
    {
        status.upload = Some(left);
    }
    status.phase = Some(BackupPhase::Running);
    write_status(ctx, backup, &status).await?;

    let started = Utc::now();
    let timeout = Duration::from_secs(u64::try_from(backup.spec.timeout_seconds).unwrap_or(600));
    let recorded = std::sync::Mutex::new(None);
    let outcome = tokio::time::timeout(timeout, take_backup(ctx, backup, started, &recorded)).await;
    // An upload begun and not completed (the run failed or timed out
    // mid-stream) is aborted now; the writer aborts on its own failures,
    // but a timeout drops it mid-part.
    let unfinished = recorded.lock().ok().and_then(|mut r| r.take());
    if let Some(left) = unfinished
        && !abort_upload(ctx, backup, &left).await
    {
        status.upload = Some(left);
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) => Err(RunFailure::new(
            backup_reasons::TIMEOUT,
            format!(
                "the backup did not finish within spec.timeoutSeconds ({} s)",
                timeout.as_secs()
            ),
        )),
    };
    match outcome {
        Ok((record, kept)) => {
            let message = format!(
                "stored and verified {} ({} bytes, revision {}, sha256 {})",
                record.location, record.size_bytes, record.revision, record.sha256
            );
            tracing::info!("{message}");
            let took = (from_time(&record.completion_time) - from_time(&record.start_time))
                .to_std()
                .unwrap_or_default();
            ctx.metrics.backup_succeeded(
                &BackupLabels {
                    namespace: backup.namespace().unwrap_or_default(),
                    backup: backup.name_any(),
                },
                from_time(&record.completion_time).timestamp_millis() as f64 / 1000.0,
                took.as_secs_f64(),
                record.size_bytes,
            );
            status.last_successful_time = Some(record.completion_time.clone());
            status.backups.insert(0, record);
            // The history follows the store: records of deleted objects go.
            status
                .backups
                .retain(|r| kept.iter().any(|stem| r.location.contains(stem.as_str())));
            status.backups.truncate(MAX_RECORDED_BACKUPS);
            set_condition(
                &mut status.conditions,
                COMPLETE,
                true,
                backup_reasons::SUCCEEDED,
                &message,
                generation,
            );
            set_condition(
                &mut status.conditions,
                FAILED,
                false,
                backup_reasons::SUCCEEDED,
                "",
                generation,
            );
            event(
                ctx,
                backup,
                EventType::Normal,
                backup_reasons::SUCCEEDED,
                &message,
            )
            .await;
        }
        Err(failure) => {
            tracing::warn!("backup failed: {}", failure.message);
            set_condition(
                &mut status.conditions,
                FAILED,
                true,
                failure.reason,
                &failure.message,
                generation,
            );
            set_condition(
                &mut status.conditions,
                COMPLETE,
                false,
                failure.reason,
                &failure.message,
                generation,
            );
            event(
                ctx,
                backup,
                EventType::Warning,
                failure.reason,
                &failure.message,
            )
            .await;
        }
    }
    Ok(status)
}

/// The credentials a storage spec names, from a Secret in `namespace`.
pub async fn credentials_for(
    client: &Client,
    namespace: &str,
    secret: Option<&str>,
) -> Result<Option<Credentials>, String> {
    let Some(name) = secret else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?
        .ok_or_else(|| format!("Secret {name} does not exist in namespace {namespace}"))?;
    let mut values = BTreeMap::new();
    for (key, value) in secret.data.unwrap_or_default() {
        let text = String::from_utf8(value.0)
            .map_err(|_| format!("Secret {name} key {key} is not UTF-8"))?;
        values.insert(key, text.trim_end_matches('\n').to_string());
    }
    for (key, value) in secret.string_data.unwrap_or_default() {
        values.insert(key, value);
    }
    Ok(Some(Credentials::new(values)))
}

/// The Secret a storage spec names.
pub fn credentials_secret(storage: &BackupStorage) -> Option<&str> {
    storage
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret.as_deref())
        .or(storage
            .gcs
            .as_ref()
            .and_then(|s| s.credentials_secret.as_deref()))
        .or(storage
            .azure
            .as_ref()
            .and_then(|s| s.credentials_secret.as_deref()))
}

/// The store of an EtcdBackup, with its credentials.
pub async fn open_destination(
    client: &Client,
    namespace: &str,
    storage: &BackupStorage,
) -> Result<(Destination, Option<Credentials>), RunFailure> {
    let credentials = credentials_for(client, namespace, credentials_secret(storage))
        .await
        .map_err(|m| RunFailure::new(backup_reasons::CREDENTIALS_REFUSED, m))?;
    let endpoint = match storage.s3.as_ref().and_then(|s| s.endpoint.as_deref()) {
        Some(endpoint) => Some(service_address::reachable_url(client, endpoint).await),
        None => None,
    };
    let destination = store::destination(storage, credentials.as_ref(), endpoint.as_deref())
        .map_err(|e| {
            let message = e.to_string();
            RunFailure::new(
                backup_reasons::FAILED,
                credentials
                    .as_ref()
                    .map_or(message.clone(), |c| c.redact(&message)),
            )
        })?;
    Ok((destination, credentials))
}

/// Where an EtcdBackup's objects live: `<prefix>/<namespace>/<name>/<uid>`.
/// The uid keeps a recreated EtcdBackup of the same name from deleting
/// what its predecessor wrote.
pub fn backup_dir(destination: &Destination, backup: &EtcdBackup) -> Path {
    destination.path(&[
        &backup.namespace().unwrap_or_default(),
        &backup.name_any(),
        backup.meta().uid.as_deref().unwrap_or("no-uid"),
    ])
}

/// The member to take a snapshot from: an up-to-date follower if there is
/// one (the leader is busiest), else the leader. Returns its endpoint and
/// status.
async fn pick_member(
    client: &Client,
    cluster: &EtcdCluster,
) -> Result<(String, members::MemberStatus), RunFailure> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &cluster.namespace().unwrap_or_default());
    // Only the cluster's own members: never a pod of other software that
    // carries the same recommended labels.
    let pods = pods
        .list(&ListParams::default().labels(&objects::member_selector(cluster)))
        .await
        .map_err(|e| {
            RunFailure::new(backup_reasons::FAILED, format!("listing member pods: {e}"))
        })?;
    let mut answered = Vec::new();
    for pod in pods
        .items
        .into_iter()
        .filter(|p| objects::is_ours(&p.metadata, cluster))
    {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let endpoint = format!("http://{ip}:{}", objects::CLIENT_PORT);
        if let Ok(status) = members::member_status(&endpoint).await
            && status.leader != 0
            && status.errors.is_empty()
            && !status.is_learner
        {
            answered.push((endpoint, status));
        }
    }
    let Some(newest) = answered.iter().map(|(_, s)| s.raft_index).max() else {
        return Err(RunFailure::new(
            backup_reasons::CLUSTER_UNHEALTHY,
            format!(
                "no member of EtcdCluster {} is healthy with a leader: the cluster may have lost quorum",
                cluster.name_any()
            ),
        ));
    };
    // A follower within a few entries of the newest index is up to date.
    let pick = answered
        .iter()
        .filter(|(_, s)| s.leader != s.id && s.raft_index + 16 >= newest)
        .max_by_key(|(_, s)| s.raft_index)
        .or_else(|| answered.iter().find(|(_, s)| s.leader == s.id))
        .or(answered.first())
        .cloned();
    pick.ok_or_else(|| {
        RunFailure::new(
            backup_reasons::CLUSTER_UNHEALTHY,
            "no member to take a snapshot from",
        )
    })
}

/// Takes, stores and verifies one snapshot, then applies retention.
/// Returns the record and the stems retention kept.
async fn take_backup(
    ctx: &Context,
    backup: &EtcdBackup,
    started: chrono::DateTime<Utc>,
    recorded: &std::sync::Mutex<Option<UploadInProgress>>,
) -> Result<(BackupRecord, Vec<String>), RunFailure> {
    let namespace = backup.namespace().unwrap_or_default();
    let clusters: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let cluster_name = &backup.spec.cluster_name;
    let Some(cluster) = clusters.get_opt(cluster_name).await.ok().flatten() else {
        return Err(RunFailure::new(
            backup_reasons::CLUSTER_UNHEALTHY,
            format!("EtcdCluster {cluster_name} does not exist in namespace {namespace}"),
        ));
    };
    // The operator's own rights are not the tenant's: no directory it was
    // not installed with, no cloud identity of its own unless allowed.
    ctx.storage
        .check_storage(&backup.spec.storage)
        .map_err(|why| {
            RunFailure::new(
                backup_reasons::STORAGE_REFUSED,
                format!("spec.storage {why}"),
            )
        })?;
    let (destination, credentials) =
        open_destination(&ctx.client, &namespace, &backup.spec.storage).await?;
    let dir = backup_dir(&destination, backup);
    let fail = |e: SnapshotError| RunFailure::from_snapshot(e, credentials.as_ref());
    // Fail fast, before any snapshot is taken, on a missing bucket or
    // refused credentials. Some S3-compatible servers create a missing
    // bucket on upload and list one as empty, but all of them answer a read
    // of a missing object in a missing bucket with NoSuchBucket.
    preflight(&destination, &dir).await.map_err(fail)?;
    let (endpoint, member) = pick_member(&ctx.client, &cluster).await?;

    let stem = retention::stem_of(started);
    let path = dir.clone().join(format!("{stem}.db").as_str());
    tracing::info!(
        "backing up {cluster_name} from {endpoint} to {}",
        destination.url_of(&path)
    );
    // The upload's id is recorded before any part is sent: from then on,
    // whatever stops this run, the next one can abort it.
    let upload_id = match &destination.multipart {
        Some(store) => {
            let id = store
                .create_multipart(&path)
                .await
                .map_err(|e| fail(e.into()))?;
            let upload = UploadInProgress {
                path: path.to_string(),
                upload_id: id.clone(),
            };
            if let Ok(mut slot) = recorded.lock() {
                *slot = Some(upload.clone());
            }
            record_upload(ctx, backup, &upload)
                .await
                .map_err(|e| RunFailure::new(backup_reasons::FAILED, e.to_string()))?;
            Some(id)
        }
        None => None,
    };
    crate::crash_point!("backup.upload.before");
    let target = match &upload_id {
        Some(id) => snapshot::UploadTarget::Recorded(id),
        None => snapshot::UploadTarget::Unrecorded,
    };
    let summary = snapshot::upload(&endpoint, &destination, &path, target, &|_| {})
        .await
        .map_err(fail)?;
    if let Ok(mut slot) = recorded.lock() {
        *slot = None;
    }
    snapshot::verify_stored(&destination, &path, &summary)
        .await
        .map_err(fail)?;
    let completed = Utc::now();
    let manifest = Manifest {
        cluster: format!("{namespace}/{cluster_name}"),
        backup_uid: backup.meta().uid.clone().unwrap_or_default(),
        revision: member.revision,
        size_bytes: summary.size,
        sha256: summary.sha256.clone(),
        etcd_version: member.version.clone(),
        start_time: started.to_rfc3339(),
        completion_time: completed.to_rfc3339(),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    destination
        .store
        .put(&snapshot::manifest_path(&path), manifest_json.into())
        .await
        .map_err(|e| fail(e.into()))?;

    crate::crash_point!("backup.retention.before");
    let kept = apply_retention(&destination, &dir, backup)
        .await
        .map_err(fail)?;
    crate::crash_point!("backup.retention.after");
    let record = BackupRecord {
        location: destination.url_of(&path),
        revision: member.revision,
        size_bytes: i64::try_from(summary.size).unwrap_or(i64::MAX),
        sha256: summary.sha256,
        etcd_version: Some(member.version),
        start_time: to_time(started),
        completion_time: to_time(completed),
    };
    Ok((record, kept))
}

/// Reads an object that does not exist: "not found" is the good answer;
/// a missing bucket or refused credentials fail the backup.
async fn preflight(destination: &Destination, dir: &Path) -> Result<(), SnapshotError> {
    let probe = dir.clone().join(".bosun-preflight");
    // The server's error code is in the response body, which only the
    // error's Debug form carries.
    let probe_result = destination.store.get(&probe).await;
    match probe_result {
        Ok(_) => Ok(()),
        Err(e) if format!("{e:?}").contains("NoSuchBucket") => {
            Err(SnapshotError::NotFound(format!(
                "the bucket or container of {} does not exist",
                destination.root_url
            )))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes what retention says goes, and returns the stems kept.
async fn apply_retention(
    destination: &Destination,
    dir: &Path,
    backup: &EtcdBackup,
) -> Result<Vec<String>, SnapshotError> {
    let mut names = Vec::new();
    let mut listing = destination.store.list(Some(dir));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if let Some(name) = meta.location.filename() {
            names.push(name.to_string());
        }
    }
    let keep = backup
        .spec
        .retention
        .as_ref()
        .and_then(|r| usize::try_from(r.max_backups).ok())
        .unwrap_or(usize::MAX);
    let plan = retention::plan(&names, keep);
    for name in &plan.delete {
        let path = dir.clone().join(name.as_str());
        match destination.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(plan.kept)
}

/// Records a begun upload in the EtcdBackup's status.
async fn record_upload(
    ctx: &Context,
    backup: &EtcdBackup,
    upload: &UploadInProgress,
) -> Result<(), kube::Error> {
    let api: Api<EtcdBackup> =
        Api::namespaced(ctx.client.clone(), &backup.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"upload": upload}});
    api.patch_status(
        &backup.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

/// Aborts an upload recorded in status, in the store the spec names now.
/// Returns whether it is gone (aborted, or unknown to the store); a store
/// that cannot be reached leaves it for the next run, with an Event.
async fn abort_upload(ctx: &Context, backup: &EtcdBackup, upload: &UploadInProgress) -> bool {
    let namespace = backup.namespace().unwrap_or_default();
    let result = match open_destination(&ctx.client, &namespace, &backup.spec.storage).await {
        Ok((destination, _)) => match &destination.multipart {
            Some(store) => super::multipart::abort(
                store.as_ref(),
                &Path::from(upload.path.as_str()),
                &upload.upload_id,
            )
            .await
            .map_err(|e| e.to_string()),
            // The spec moved to a store without multipart uploads: the old
            // one is out of reach.
            None => Ok(()),
        },
        Err(failure) => Err(failure.message),
    };
    match result {
        Ok(()) => {
            tracing::info!(path = %upload.path, "aborted an unfinished upload");
            true
        }
        Err(why) => {
            event(
                ctx,
                backup,
                EventType::Warning,
                backup_reasons::FAILED,
                &format!(
                    "could not abort the unfinished upload of {}: {why}; trying again next run",
                    upload.path
                ),
            )
            .await;
            false
        }
    }
}

async fn write_status(
    ctx: &Context,
    backup: &EtcdBackup,
    status: &EtcdBackupStatus,
) -> Result<(), Error> {
    let api: Api<EtcdBackup> =
        Api::namespaced(ctx.client.clone(), &backup.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": status});
    api.patch_status(
        &backup.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn event(ctx: &Context, backup: &EtcdBackup, type_: EventType, reason: &str, note: &str) {
    controller::publish(&ctx.recorder, backup, type_, reason, "Backup", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_api::restore::{EtcdRestoreStatus, RestorePhase};

    fn restore(cluster: &str, phase: RestorePhase, pinned: bool) -> EtcdRestore {
        let mut restore: EtcdRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdRestore",
            "metadata": {"name": format!("{cluster}-{phase:?}"), "namespace": "ns", "uid": "u"},
            "spec": {"clusterName": cluster, "source": {"backup": {"name": "b"}}},
        }))
        .expect("restore");
        let pinned: Option<bosun_api::restore::PinnedSnapshot> = pinned.then(|| {
            serde_json::from_value(serde_json::json!({"location": {"url": "s3://b/k"}, "size": 1}))
                .expect("pin")
        });
        restore.status = Some(EtcdRestoreStatus {
            phase: Some(phase),
            pinned,
            ..EtcdRestoreStatus::default()
        });
        restore
    }

    #[test]
    fn backups_are_held_only_by_a_live_pinned_restore_of_their_cluster() {
        let restores = [
            restore("other", RestorePhase::Running, true),
            restore("db", RestorePhase::Succeeded, true),
            restore("db", RestorePhase::Pending, false),
        ];
        assert_eq!(holding_restore(&restores, "db"), None);
        let mut restores = restores.to_vec();
        restores.push(restore("db", RestorePhase::Running, true));
        assert_eq!(
            holding_restore(&restores, "db").as_deref(),
            Some("db-Running")
        );
    }
}
