//! What a tenant's EtcdBackup or restore source may make the operator do
//! with its own rights: the operator runs with more than any tenant (host
//! directories it mounts, perhaps a cloud identity), so it must not become
//! a confused deputy. A `file://` location is allowed only below the
//! directories the operator was installed with (`--backup-dir`), and an
//! object store without a credentials Secret — which would use the
//! operator's own ambient identity — only where `--allow-ambient-credentials`
//! says so. Pure checks; the controllers call them before any I/O.

use std::path::{Component, Path, PathBuf};

use bosun_api::backup::BackupStorage;
use bosun_api::restore::SnapshotLocation;

/// The operator's limits on backup and restore storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoragePolicy {
    /// Directories below which `file` backups and `file://` restores may lie.
    pub file_dirs: Vec<PathBuf>,
    /// Whether an object store may be used without a credentials Secret,
    /// with whatever identity the operator's pod has.
    pub ambient_credentials: bool,
}

impl StoragePolicy {
    /// Checks a backup's destination.
    pub fn check_storage(&self, storage: &BackupStorage) -> Result<(), String> {
        if let Some(file) = &storage.file {
            return self.check_file(&file.path);
        }
        let secret = super::reconcile::credentials_secret(storage);
        self.check_credentials(secret)
    }

    /// Checks a restore's snapshot location.
    pub fn check_location(&self, location: &SnapshotLocation) -> Result<(), String> {
        match location.url.strip_prefix("file://") {
            Some(path) => self.check_file(path),
            None => self.check_credentials(location.credentials_secret.as_deref()),
        }
    }

    fn check_credentials(&self, secret: Option<&str>) -> Result<(), String> {
        if secret.is_some() || self.ambient_credentials {
            return Ok(());
        }
        Err("names no credentialsSecret, and this operator does not lend its own cloud identity \
             (bosun operator --allow-ambient-credentials): add a Secret with the store's credentials"
            .to_string())
    }

    fn check_file(&self, path: &str) -> Result<(), String> {
        let path = Path::new(path);
        let normal = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !normal {
            return Err(format!(
                "{} is not an absolute path without . or .. components",
                path.display()
            ));
        }
        if self
            .file_dirs
            .iter()
            .any(|dir| path.starts_with(dir) && path != dir)
        {
            return Ok(());
        }
        if self.file_dirs.is_empty() {
            return Err(format!(
                "{} is a file location, and this operator was installed without backup directories \
                 (bosun install --host-backup-dir): use an object store",
                path.display()
            ));
        }
        Err(format!(
            "{} is not below a directory this operator was installed with ({}): file backups and restores stay there",
            path.display(),
            self.file_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> StoragePolicy {
        StoragePolicy {
            file_dirs: vec![PathBuf::from("/var/lib/bosun/backups")],
            ambient_credentials: false,
        }
    }

    fn location(url: &str, secret: Option<&str>) -> SnapshotLocation {
        SnapshotLocation {
            url: url.into(),
            credentials_secret: secret.map(str::to_string),
            endpoint: None,
            region: None,
            sha256: None,
        }
    }

    #[test]
    fn file_locations_stay_below_the_installed_directories() {
        let p = policy();
        assert_eq!(
            p.check_location(&location("file:///var/lib/bosun/backups/ns/b/1.db", None)),
            Ok(())
        );
        for refused in [
            "file:///x.db",
            "file:///etc/shadow",
            "file:///var/lib/bosun/backups/../../../etc/x.db",
            "file:///var/lib/bosun/backups-other/x.db",
            "file:///var/lib/bosun/backups",
            "file://relative/x.db",
        ] {
            assert!(
                p.check_location(&location(refused, None)).is_err(),
                "{refused}"
            );
        }
        let none = StoragePolicy::default();
        let error = none
            .check_location(&location("file:///var/lib/bosun/backups/x.db", None))
            .expect_err("no directories");
        assert!(error.contains("--host-backup-dir"), "{error}");
    }

    #[test]
    fn object_stores_need_a_secret_unless_ambient_credentials_are_allowed() {
        let p = policy();
        assert_eq!(
            p.check_location(&location("s3://b/k", Some("creds"))),
            Ok(())
        );
        let error = p
            .check_location(&location("gs://b/k", None))
            .expect_err("no secret");
        assert!(error.contains("--allow-ambient-credentials"), "{error}");
        let ambient = StoragePolicy {
            ambient_credentials: true,
            ..policy()
        };
        assert_eq!(
            ambient.check_location(&location("azure://c/k", None)),
            Ok(())
        );
    }

    #[test]
    fn backups_are_checked_the_same_way() {
        let storage: BackupStorage =
            serde_json::from_value(serde_json::json!({"file": {"path": "/srv/elsewhere"}}))
                .expect("storage");
        assert!(policy().check_storage(&storage).is_err());
        let storage: BackupStorage = serde_json::from_value(
            serde_json::json!({"file": {"path": "/var/lib/bosun/backups/team-a"}}),
        )
        .expect("storage");
        assert_eq!(policy().check_storage(&storage), Ok(()));
        let storage: BackupStorage =
            serde_json::from_value(serde_json::json!({"s3": {"bucket": "b"}})).expect("storage");
        assert!(policy().check_storage(&storage).is_err());
    }
}
