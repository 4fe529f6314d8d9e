//! `bosun restore-member`: the init container of a restored cluster's seed
//! member. It downloads the snapshot into the member's volume, checks it
//! (the SHA-256 the operator verified, and etcd's own hash), and runs etcd's
//! own `etcdutl snapshot restore` into the data directory with a new
//! cluster token. Nothing is written to the data directory unless every
//! check passed, and a volume that already holds a member is left alone, so
//! a restarted pod never restores twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bosun_api::restore::SnapshotLocation;

use crate::backup::snapshot::{self, SnapshotError};
use crate::backup::store::{self, Credentials};

/// Where the operator mounts the credentials Secret in the init container.
pub const CREDENTIALS_DIR: &str = "/var/run/bosun/credentials";

/// How far a restore moves etcd's revision beyond the snapshot's: the
/// figure etcd's documentation suggests, more writes than any cluster makes
/// between a backup and its restore.
pub const REVISION_BUMP: i64 = 1_000_000_000;

/// What to restore, and as which member.
#[derive(Clone, Debug)]
pub struct RestoreMember {
    /// The snapshot's location.
    pub source: SnapshotLocation,
    /// A directory holding the credentials Secret's keys as files, if any.
    pub credentials_dir: Option<PathBuf>,
    /// etcd's `--data-dir`.
    pub data_dir: PathBuf,
    /// The member's name.
    pub name: String,
    /// Its peer URL.
    pub peer_url: String,
    /// The new cluster token.
    pub cluster_token: String,
    /// The `etcdutl` to run (of the cluster's etcd version).
    pub etcdutl: PathBuf,
}

/// What happened.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The data directory already holds a member: nothing was done.
    AlreadyRestored,
    /// The snapshot was restored.
    Restored {
        /// Bytes downloaded.
        size: u64,
    },
}

/// Why the restore failed; the message is what the pod's termination
/// message (and so the operator's condition) says.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The source could not be opened.
    #[error("{0}")]
    Source(String),
    /// Downloading or checking the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// etcdutl failed.
    #[error("etcdutl snapshot restore failed: {0}")]
    Etcdutl(String),
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> RestoreError {
    RestoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// Reads a credentials directory (a mounted Secret: one file per key).
pub fn read_credentials(dir: &Path) -> Result<Credentials, RestoreError> {
    let mut values = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io("reading", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A mounted Secret also holds `..data` links and a timestamped directory.
        if name.starts_with("..") || !entry.path().is_file() {
            continue;
        }
        let value =
            std::fs::read_to_string(entry.path()).map_err(|e| io("reading", &entry.path(), e))?;
        values.insert(name, value.trim_end_matches('\n').to_string());
    }
    Ok(Credentials::new(values))
}

/// Runs the restore.
pub async fn run(options: &RestoreMember) -> Result<Outcome, RestoreError> {
    if options.data_dir.join("member").exists() {
        return Ok(Outcome::AlreadyRestored);
    }
    let volume = options.data_dir.parent().ok_or_else(|| {
        RestoreError::Io(format!(
            "{} has no parent directory",
            options.data_dir.display()
        ))
    })?;
    let work = volume.join(format!("restore-{}", options.cluster_token));
    // A previous attempt may have left a partial download or restore.
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| io("removing", &work, e))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| io("creating", &work, e))?;
    let result = restore_into(options, &work).await;
    // Whatever happened, the download goes; on success its data moved out.
    if let Err(e) = std::fs::remove_dir_all(&work) {
        tracing::warn!("removing {}: {e}", work.display());
    }
    result
}

async fn restore_into(options: &RestoreMember, work: &Path) -> Result<Outcome, RestoreError> {
    let credentials = match &options.credentials_dir {
        Some(dir) if dir.exists() => Some(read_credentials(dir)?),
        _ => None,
    };
    let (destination, path) = store::location(&options.source, credentials.as_ref(), None)
        .map_err(|e| RestoreError::Source(redact(credentials.as_ref(), &e.to_string())))?;

    let download = work.join("snapshot.db");
    let mut file = tokio::fs::File::create(&download)
        .await
        .map_err(|e| io("creating", &download, e))?;
    let summary = snapshot::digest_stored(&destination, &path, Some((&download, &mut file)))
        .await
        .map_err(|e| RestoreError::Source(redact(credentials.as_ref(), &e.to_string())))?;
    drop(file);
    snapshot::check_restorable(&summary, options.source.sha256.as_deref())?;
    tracing::info!(
        "downloaded {} ({} bytes, sha256 {}); restoring as member {}",
        options.source.url,
        summary.size,
        summary.sha256,
        options.name
    );

    let restored = work.join("data");
    let output = Command::new(&options.etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(&download)
        .arg(format!("--data-dir={}", restored.display()))
        .arg(format!("--name={}", options.name))
        .arg(format!(
            "--initial-cluster={}={}",
            options.name, options.peer_url
        ))
        .arg(format!(
            "--initial-advertise-peer-urls={}",
            options.peer_url
        ))
        .arg(format!("--initial-cluster-token={}", options.cluster_token))
        // etcd's restore guidance: move the revision past any the old
        // cluster could have reached since the snapshot, and mark what lies
        // between as compacted, so a watcher that resumes at a revision it
        // saw before the restore gets ErrCompacted and re-lists instead of
        // silently missing events.
        .arg(format!("--bump-revision={REVISION_BUMP}"))
        .arg("--mark-compacted")
        .output()
        .map_err(|e| {
            RestoreError::Etcdutl(format!("running {}: {e}", options.etcdutl.display()))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_lines: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(RestoreError::Etcdutl(
            last_lines.into_iter().rev().collect::<Vec<_>>().join(" | "),
        ));
    }
    // The data directory appears whole, in one rename, or not at all.
    if options.data_dir.exists() {
        std::fs::remove_dir_all(&options.data_dir)
            .map_err(|e| io("removing", &options.data_dir, e))?;
    }
    std::fs::rename(&restored, &options.data_dir)
        .map_err(|e| io("moving the restored data to", &options.data_dir, e))?;
    Ok(Outcome::Restored { size: summary.size })
}

fn redact(credentials: Option<&Credentials>, text: &str) -> String {
    credentials.map_or_else(|| text.to_string(), |c| c.redact(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_a_mounted_secret_skipping_its_links() {
        let dir = std::env::temp_dir().join(format!("bosun-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_11_25")).expect("mkdir");
        std::fs::write(dir.join("accessKeyID"), "AKID\n").expect("write");
        std::fs::write(dir.join("secretAccessKey"), "s3cr3t").expect("write");
        let credentials = read_credentials(&dir).expect("read");
        assert_eq!(credentials.get("accessKeyID"), Some("AKID"));
        assert_eq!(credentials.get("secretAccessKey"), Some("s3cr3t"));
        assert_eq!(credentials.get("..2026_11_25"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_volume_that_holds_a_member_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("bosun-restored-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data/member")).expect("mkdir");
        let options = RestoreMember {
            source: SnapshotLocation {
                url: "file:///nonexistent/x.db".into(),
                credentials_secret: None,
                endpoint: None,
                region: None,
                sha256: None,
            },
            credentials_dir: None,
            data_dir: dir.join("data"),
            name: "m".into(),
            peer_url: "http://m:2380".into(),
            cluster_token: "t".into(),
            etcdutl: "/nonexistent/etcdutl".into(),
        };
        assert_eq!(
            run(&options).await.expect("no-op"),
            Outcome::AlreadyRestored
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
