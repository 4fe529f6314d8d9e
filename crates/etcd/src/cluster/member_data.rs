//! `bosun check-member-data`: the init container of a member that restarts
//! on its own volume. etcd started with `--initial-cluster-state=existing`
//! on an empty data directory fetches the membership from its peers, finds
//! its own ID and rejoins with an empty log — and, as a voter, votes with
//! it (raft amnesia: an acknowledged write can be lost). This check runs
//! first and refuses: a volume that held a member must still hold its data.

use std::path::Path;

/// Why a member must not start on this volume.
#[derive(Debug, thiserror::Error)]
pub enum MemberDataError {
    /// The data directory holds no etcd member (no WAL or no backend).
    #[error(
        "{path} holds no etcd member data ({missing} is missing), although a member ran on this volume: \
         its data is lost (the volume was emptied or re-provisioned). The member is not started, \
         so it cannot rejoin with an empty log; the operator replaces it through the membership while quorum holds."
    )]
    Missing {
        /// The data directory.
        path: String,
        /// What was looked for.
        missing: &'static str,
    },
    /// The data directory could not be read.
    #[error("reading {path}: {error}")]
    Unreadable {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
}

/// Checks that `data_dir` holds an etcd member: a WAL directory with at
/// least one segment, and the backend database.
pub fn check(data_dir: &Path) -> Result<(), MemberDataError> {
    let wal = data_dir.join("member").join("wal");
    let db = data_dir.join("member").join("snap").join("db");
    let path = data_dir.display().to_string();
    let segments = match std::fs::read_dir(&wal) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(MemberDataError::Unreadable { path, error }),
    };
    if segments == 0 {
        return Err(MemberDataError::Missing {
            path,
            missing: "member/wal/*.wal",
        });
    }
    match std::fs::metadata(&db) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(MemberDataError::Missing {
            path,
            missing: "member/snap/db",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MemberDataError::Missing {
            path,
            missing: "member/snap/db",
        }),
        Err(error) => Err(MemberDataError::Unreadable { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bosun-member-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn an_empty_volume_is_refused() {
        let dir = scratch("empty");
        let error = check(&dir.join("data")).expect_err("refused");
        assert!(error.to_string().contains("member/wal"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wal_without_its_backend_is_refused() {
        let dir = scratch("wal-only");
        std::fs::create_dir_all(dir.join("member/wal")).expect("mkdir");
        std::fs::write(
            dir.join("member/wal/0000000000000000-0000000000000000.wal"),
            b"x",
        )
        .expect("write");
        let error = check(&dir).expect_err("refused");
        assert!(error.to_string().contains("member/snap/db"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_member_with_wal_and_backend_may_start() {
        let dir = scratch("whole");
        std::fs::create_dir_all(dir.join("member/wal")).expect("mkdir");
        std::fs::create_dir_all(dir.join("member/snap")).expect("mkdir");
        std::fs::write(
            dir.join("member/wal/0000000000000000-0000000000000000.wal"),
            b"x",
        )
        .expect("write");
        std::fs::write(dir.join("member/snap/db"), b"x").expect("write");
        check(&dir).expect("whole data");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
