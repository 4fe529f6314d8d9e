//! Moving snapshots between etcd and a store: streamed from a member's
//! maintenance API straight into a multipart upload, read back to verify,
//! and streamed out of the store into a file for a restore. Nothing holds a
//! whole snapshot in memory.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{MultipartId, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::digest::{SnapshotDigest, Summary};
use super::multipart::PartWriter;
use super::store::Destination;

/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once: memory stays under `PART_SIZE * (this + 1)`.
const PARTS_IN_FLIGHT: usize = 2;

/// Why moving a snapshot failed. Messages say what went wrong in words a
/// user can act on; none carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// etcd could not be reached or stopped sending.
    #[error("etcd: {0}")]
    Etcd(String),
    /// The store refused the credentials.
    #[error("the object store refused the credentials: {0}")]
    Credentials(String),
    /// The bucket, container or object does not exist.
    #[error("not found in the object store: {0}")]
    NotFound(String),
    /// Another store error.
    #[error("object store: {0}")]
    Store(String),
    /// The snapshot is not what it should be.
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(String),
    /// A local file could not be written.
    #[error("writing {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

impl From<object_store::Error> for SnapshotError {
    fn from(error: object_store::Error) -> Self {
        let text = error.to_string();
        // S3 error codes are in the response body, which only Debug shows.
        let detail = format!("{error:?}");
        match error {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => SnapshotError::Credentials(text),
            object_store::Error::NotFound { .. } => SnapshotError::NotFound(text),
            _ if detail.contains("InvalidAccessKeyId")
                || detail.contains("SignatureDoesNotMatch")
                || detail.contains("AccessDenied") =>
            {
                SnapshotError::Credentials(text)
            }
            _ if detail.contains("NoSuchBucket") => SnapshotError::NotFound(text),
            _ => SnapshotError::Store(text),
        }
    }
}

/// What a verified backup records next to its snapshot, as `<name>.json`.
/// Its presence is what marks a snapshot as verified: a snapshot without
/// one was interrupted and is never restored from or counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `namespace/name` of the EtcdCluster.
    pub cluster: String,
    /// The uid of the EtcdBackup that wrote it.
    pub backup_uid: String,
    /// The cluster's revision when the snapshot began.
    pub revision: i64,
    /// Size of the snapshot object in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the snapshot object, lowercase hex.
    pub sha256: String,
    /// The etcd version of the member it was taken from.
    pub etcd_version: String,
    /// RFC 3339 times.
    pub start_time: String,
    /// RFC 3339 times.
    pub completion_time: String,
}

/// The manifest path of a snapshot path (`x.db` → `x.json`).
pub fn manifest_path(snapshot: &Path) -> Path {
    let text = snapshot.as_ref();
    Path::from(format!("{}.json", text.strip_suffix(".db").unwrap_or(text)))
}

/// Where [`upload`] writes: an upload begun with a known id (see
/// [`super::multipart`]), or for a store without a multipart API, one
/// started here.
pub enum UploadTarget<'a> {
    /// The upload `id` of the destination's multipart API.
    Recorded(&'a MultipartId),
    /// A new upload through the store's plain interface.
    Unrecorded,
}

/// Streams a snapshot from the member at `endpoint` into `path`, and
/// returns its figures. The upload is aborted on any failure, and a
/// snapshot whose etcd hash does not check out is never completed, so no
/// partial or corrupt object is left at `path`.
pub async fn upload(
    endpoint: &str,
    destination: &Destination,
    path: &Path,
    target: UploadTarget<'_>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Summary, SnapshotError> {
    // No per-call timeout: a snapshot stream runs as long as the database
    // takes; the caller bounds the whole backup.
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
    let mut client = Client::connect([endpoint], Some(options))
        .await
        .map_err(|e| SnapshotError::Etcd(format!("connecting to {endpoint}: {e}")))?;
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| SnapshotError::Etcd(format!("starting a snapshot at {endpoint}: {e}")))?;

    let mut sink = match (target, &destination.multipart) {
        (UploadTarget::Recorded(id), Some(store)) => Sink::Recorded(PartWriter::new(
            store.clone(),
            path.clone(),
            id.clone(),
            PART_SIZE,
            PARTS_IN_FLIGHT,
        )),
        _ => Sink::Plain(WriteMultipart::new_with_chunk_size(
            destination.store.put_multipart(path).await?,
            PART_SIZE,
        )),
    };
    let mut digest = SnapshotDigest::new();
    let streamed: Result<(), SnapshotError> = async {
        loop {
            let message = stream
                .message()
                .await
                .map_err(|e| SnapshotError::Etcd(format!("reading the snapshot stream: {e}")))?;
            let Some(message) = message else { break };
            digest.update(message.blob());
            sink.write(message.blob()).await?;
            progress(digest.size());
        }
        Ok(())
    }
    .await;
    let summary = digest.finish();
    let checked = streamed.and_then(|()| {
        if summary.etcd_hash_ok {
            Ok(())
        } else {
            Err(SnapshotError::Corrupt(format!(
                "etcd's hash at the end of the {} bytes received does not match them",
                summary.size
            )))
        }
    });
    if let Err(e) = checked {
        if let Err(abort) = sink.abort().await {
            tracing::warn!("aborting the upload of {path}: {abort}");
        }
        return Err(e);
    }
    sink.finish().await?;
    Ok(summary)
}

/// The two ways of writing an upload, behind one interface.
enum Sink {
    Recorded(PartWriter),
    Plain(WriteMultipart),
}

impl Sink {
    async fn write(&mut self, data: &[u8]) -> Result<(), object_store::Error> {
        match self {
            Sink::Recorded(writer) => writer.write(data).await,
            Sink::Plain(writer) => {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(data);
                Ok(())
            }
        }
    }

    async fn finish(self) -> Result<(), object_store::Error> {
        match self {
            Sink::Recorded(writer) => writer.finish().await,
            Sink::Plain(writer) => writer.finish().await.map(drop),
        }
    }

    async fn abort(self) -> Result<(), object_store::Error> {
        match self {
            Sink::Recorded(writer) => writer.abort().await,
            Sink::Plain(writer) => writer.abort().await,
        }
    }
}

/// Reads `path` back from the store and checks it against `expected`: the
/// same size, the same SHA-256, and etcd's own hash intact.
pub async fn verify_stored(
    destination: &Destination,
    path: &Path,
    expected: &Summary,
) -> Result<(), SnapshotError> {
    let actual = digest_stored(destination, path, None).await?;
    if actual.size != expected.size {
        return Err(SnapshotError::Corrupt(format!(
            "the stored object has {} bytes, {} were uploaded",
            actual.size, expected.size
        )));
    }
    if actual.sha256 != expected.sha256 {
        return Err(SnapshotError::Corrupt(format!(
            "the stored object's sha256 is {}, the upload's was {}",
            actual.sha256, expected.sha256
        )));
    }
    if !actual.etcd_hash_ok {
        return Err(SnapshotError::Corrupt(
            "etcd's hash at the end of the stored object does not match it".into(),
        ));
    }
    Ok(())
}

/// Streams `path` through a digest, and into `file` when given.
pub async fn digest_stored(
    destination: &Destination,
    path: &Path,
    mut file: Option<(&std::path::Path, &mut tokio::fs::File)>,
) -> Result<Summary, SnapshotError> {
    let mut stream = destination.store.get(path).await?.into_stream();
    let mut digest = SnapshotDigest::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        digest.update(&chunk);
        if let Some((name, file)) = file.as_mut() {
            file.write_all(&chunk)
                .await
                .map_err(|e| SnapshotError::File {
                    path: name.display().to_string(),
                    message: e.to_string(),
                })?;
        }
    }
    if let Some((name, file)) = file {
        file.sync_all().await.map_err(|e| SnapshotError::File {
            path: name.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(digest.finish())
}

/// Checks a downloaded or stored snapshot against the SHA-256 it should
/// have (when known) and etcd's own hash: the gate before any restore.
pub fn check_restorable(
    summary: &Summary,
    expected_sha256: Option<&str>,
) -> Result<(), SnapshotError> {
    if let Some(expected) = expected_sha256
        && summary.sha256 != expected
    {
        return Err(SnapshotError::Corrupt(format!(
            "its sha256 is {}, the backup recorded {expected}",
            summary.sha256
        )));
    }
    if !summary.etcd_hash_ok {
        return Err(SnapshotError::Corrupt(format!(
            "etcd's hash at the end of its {} bytes does not match them (truncated or altered)",
            summary.size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_sit_next_to_their_snapshots() {
        assert_eq!(
            manifest_path(&Path::from("p/ns/b/uid/20261125T100000Z.db")).as_ref(),
            "p/ns/b/uid/20261125T100000Z.json"
        );
    }

    #[test]
    fn restores_need_the_recorded_sha_and_an_intact_etcd_hash() {
        let good = Summary {
            size: 64,
            sha256: "ab".repeat(32),
            etcd_hash_ok: true,
        };
        assert!(check_restorable(&good, Some(&"ab".repeat(32))).is_ok());
        assert!(check_restorable(&good, None).is_ok());
        let err = check_restorable(&good, Some(&"cd".repeat(32))).expect_err("sha mismatch");
        assert!(err.to_string().contains("the backup recorded"), "{err}");
        let truncated = Summary {
            etcd_hash_ok: false,
            ..good
        };
        let err = check_restorable(&truncated, None).expect_err("etcd hash");
        assert!(err.to_string().contains("truncated or altered"), "{err}");
    }
}
