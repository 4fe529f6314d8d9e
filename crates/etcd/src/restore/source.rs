//! Where a restore's snapshot comes from: an EtcdBackup's recorded backup
//! (newest, or by index) or an explicit location; and the check, done by
//! the operator before anything is created or wiped, that the snapshot is
//! there and whole.

use bosun_api::EtcdBackup;
use bosun_api::backup::{BackupRecord, BackupStorage};
use bosun_api::restore::{BackupReference, RestoreSource, SnapshotLocation};
use kube::{Api, Client};

use crate::backup::digest::Summary;
use crate::backup::policy::StoragePolicy;
use crate::backup::reconcile::{credentials_for, credentials_secret};
use crate::backup::{service_address, snapshot, store};

/// A source made concrete.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSource {
    /// The snapshot, with endpoint, region and credentials Secret.
    pub location: SnapshotLocation,
    /// The revision the backup recorded, if it came from one.
    pub revision: Option<i64>,
}

/// Why a source is not usable; the message goes into a condition.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// Condition reason.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

impl SourceError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        SourceError {
            reason,
            message: message.into(),
        }
    }
}

/// Reason: the source names nothing restorable.
pub const SOURCE_UNAVAILABLE: &str = "RestoreSourceUnavailable";
/// Reason: the snapshot failed its checks.
pub const SNAPSHOT_CORRUPT: &str = "SnapshotCorrupt";

/// The location of a storage spec's object at `url`.
fn location_in(storage: &BackupStorage, url: &str, sha256: &str) -> SnapshotLocation {
    SnapshotLocation {
        url: url.to_string(),
        credentials_secret: credentials_secret(storage).map(str::to_string),
        endpoint: storage.s3.as_ref().and_then(|s| s.endpoint.clone()),
        region: storage.s3.as_ref().and_then(|s| s.region.clone()),
        sha256: Some(sha256.to_string()),
    }
}

/// Reason: the operator's storage policy refuses the source.
pub const SOURCE_REFUSED: &str = "RestoreSourceRefused";

/// Makes a source concrete, reading the EtcdBackup it names, and checks it
/// against the operator's storage policy (no file outside its backup
/// directories, no object store with its own identity unless allowed).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    source: &RestoreSource,
    policy: &StoragePolicy,
) -> Result<ResolvedSource, SourceError> {
    let resolved = resolve_unchecked(client, namespace, source).await?;
    policy.check_location(&resolved.location).map_err(|why| {
        SourceError::new(SOURCE_REFUSED, format!("{}: {why}", resolved.location.url))
    })?;
    Ok(resolved)
}

async fn resolve_unchecked(
    client: &Client,
    namespace: &str,
    source: &RestoreSource,
) -> Result<ResolvedSource, SourceError> {
    if let Some(location) = &source.location {
        return Ok(ResolvedSource {
            location: location.clone(),
            revision: None,
        });
    }
    let Some(reference) = &source.backup else {
        return Err(SourceError::new(
            SOURCE_UNAVAILABLE,
            "the restore source names neither a backup nor a location",
        ));
    };
    let backups: Api<EtcdBackup> = Api::namespaced(client.clone(), namespace);
    let backup = backups
        .get_opt(&reference.name)
        .await
        .map_err(|e| {
            SourceError::new(
                SOURCE_UNAVAILABLE,
                format!("reading EtcdBackup {}: {e}", reference.name),
            )
        })?
        .ok_or_else(|| {
            SourceError::new(
                SOURCE_UNAVAILABLE,
                format!(
                    "EtcdBackup {} does not exist in namespace {namespace}",
                    reference.name
                ),
            )
        })?;
    let record = recorded_backup(&backup, reference)
        .map_err(|message| SourceError::new(SOURCE_UNAVAILABLE, message))?;
    Ok(ResolvedSource {
        location: location_in(&backup.spec.storage, &record.location, &record.sha256),
        revision: Some(record.revision),
    })
}

/// The record of `backup` that `reference` names (its index, 0 the
/// newest); the error says how many there are. The restore controller
/// resolves a source with it, and the admission webhook refuses an
/// EtcdRestore with it.
pub fn recorded_backup<'a>(
    backup: &'a EtcdBackup,
    reference: &BackupReference,
) -> Result<&'a BackupRecord, String> {
    let records = backup
        .status
        .as_ref()
        .map(|s| s.backups.as_slice())
        .unwrap_or_default();
    let index = usize::try_from(reference.index.unwrap_or(0)).unwrap_or(usize::MAX);
    records.get(index).ok_or_else(|| {
        let index = reference.index.unwrap_or(0);
        format!(
            "EtcdBackup {} has {} recorded backup(s); index {index} does not exist (0 is the newest{})",
            reference.name,
            records.len(),
            match records.len() {
                0 => String::new(),
                n => format!(", {} the oldest", n - 1),
            }
        )
    })
}

/// Streams the snapshot once and checks it: present, etcd's hash intact,
/// and the recorded SHA-256 when there is one. Returns its figures; the
/// caller pins the restore to the SHA-256 checked here.
pub async fn verify(
    client: &Client,
    namespace: &str,
    source: &ResolvedSource,
) -> Result<Summary, SourceError> {
    let location = &source.location;
    let credentials = credentials_for(client, namespace, location.credentials_secret.as_deref())
        .await
        .map_err(|m| SourceError::new(SOURCE_UNAVAILABLE, m))?;
    let endpoint = match &location.endpoint {
        Some(endpoint) => Some(service_address::reachable_url(client, endpoint).await),
        None => None,
    };
    let redact = |text: String| match &credentials {
        Some(c) => c.redact(&text),
        None => text,
    };
    let (destination, path) = store::location(location, credentials.as_ref(), endpoint.as_deref())
        .map_err(|e| SourceError::new(SOURCE_UNAVAILABLE, redact(e.to_string())))?;
    let summary = snapshot::digest_stored(&destination, &path, None)
        .await
        .map_err(|e| {
            SourceError::new(
                SOURCE_UNAVAILABLE,
                redact(format!("reading {}: {e}", location.url)),
            )
        })?;
    snapshot::check_restorable(&summary, location.sha256.as_deref())
        .map_err(|e| SourceError::new(SNAPSHOT_CORRUPT, format!("{}: {e}", location.url)))?;
    Ok(summary)
}
