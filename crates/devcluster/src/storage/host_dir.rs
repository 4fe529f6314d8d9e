//! Volume directories on the host, and the guard that keeps the provisioner
//! from creating or removing anything outside the volumes directory.
//!
//! A PersistentVolume is an API object anyone with the right to create PVs
//! can write, so the path in it is never trusted: before we remove a
//! directory, the path must be exactly `<volumes_dir>/<pv name>`.

use std::path::{Component, Path, PathBuf};

use super::StorageError;

/// Creates `volumes_dir` if missing and returns its canonical path.
pub(super) async fn prepare_volumes_dir(volumes_dir: &Path) -> Result<PathBuf, StorageError> {
    tokio::fs::create_dir_all(volumes_dir)
        .await
        .map_err(|source| io_error("create", volumes_dir, source))?;
    tokio::fs::canonicalize(volumes_dir)
        .await
        .map_err(|source| io_error("resolve", volumes_dir, source))
}

/// The directory of the volume `pv_name`: `<volumes_dir>/<pv_name>`, refused
/// unless the name is one plain path component.
pub(super) fn volume_dir(volumes_dir: &Path, pv_name: &str) -> Result<PathBuf, String> {
    let mut components = Path::new(pv_name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) if name == pv_name => Ok(volumes_dir.join(name)),
        _ => Err(format!(
            "volume name {pv_name:?} is not a single path component"
        )),
    }
}

/// The directory the PersistentVolume `pv_name` with host path `path` may
/// have removed: only `<volumes_dir>/<pv_name>` itself, with no `..` and no
/// relative path, so a hand-made PV cannot point the provisioner at another
/// volume's data or anywhere else on the host.
pub(super) fn owned_volume_dir(
    volumes_dir: &Path,
    pv_name: &str,
    path: &str,
) -> Result<PathBuf, String> {
    let expected = volume_dir(volumes_dir, pv_name)?;
    let given = Path::new(path);
    // `Path` equality compares components, which folds `//` and `/./` but
    // not `..`; refusing `..` outright keeps the rule easy to reason about.
    let plain = given.is_absolute()
        && given
            .components()
            .all(|c| !matches!(c, Component::ParentDir));
    if plain && given == expected {
        Ok(expected)
    } else {
        Err(format!(
            "its host path {path} is not {}, so the provisioner did not make it; remove the data by hand if it should go",
            expected.display()
        ))
    }
}

/// Makes `dir` a world-writable directory. Idempotent: an existing directory
/// is kept with its contents.
///
/// 0777 because pods often run as a non-root user that the directory's owner
/// (the supervisor, root) knows nothing about; the mode is set explicitly
/// since `mkdir` applies the umask. This runs only before the volume is
/// bound, so no pod has had the chance to choose another mode.
pub(super) async fn create_volume_dir(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;

    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| io_error("create", dir, source))?;
    // `create_dir_all` accepts a symlink to a directory, and `chmod` follows
    // symlinks: check that this is a real directory before changing its mode.
    let meta = tokio::fs::symlink_metadata(dir)
        .await
        .map_err(|source| io_error("inspect", dir, source))?;
    if !meta.is_dir() {
        return Err(StorageError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .await
        .map_err(|source| io_error("chmod", dir, source))
}

/// Removes `dir` and everything in it. Idempotent: a missing directory is
/// success, so a crash between this and deleting the PersistentVolume only
/// means the next reconcile goes straight to the deletion. Symlinks are
/// removed, never followed.
pub(super) async fn remove_volume_dir(dir: &Path) -> Result<(), StorageError> {
    let meta = match tokio::fs::symlink_metadata(dir).await {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error("inspect", dir, source)),
    };
    let removed = if meta.is_dir() {
        tokio::fs::remove_dir_all(dir).await
    } else {
        tokio::fs::remove_file(dir).await
    };
    match removed {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", dir, err)),
        _ => Ok(()),
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOLUMES: &str = "/srv/volumes";

    #[test]
    fn volume_dir_is_the_name_under_the_volumes_dir() {
        assert_eq!(
            volume_dir(Path::new(VOLUMES), "pvc-1234"),
            Ok(PathBuf::from("/srv/volumes/pvc-1234"))
        );
    }

    #[test]
    fn volume_dir_refuses_names_that_are_not_one_component() {
        for name in ["", ".", "..", "a/b", "/etc", "../etc", "pvc-1/", "./pvc-1"] {
            assert!(
                volume_dir(Path::new(VOLUMES), name).is_err(),
                "{name:?} accepted"
            );
        }
    }

    #[test]
    fn owned_volume_dir_accepts_exactly_the_volume_dir() {
        let volumes = Path::new(VOLUMES);
        assert_eq!(
            owned_volume_dir(volumes, "pvc-1", "/srv/volumes/pvc-1"),
            Ok(PathBuf::from("/srv/volumes/pvc-1"))
        );
        // Spelling variations of the same path are the same directory.
        assert!(owned_volume_dir(volumes, "pvc-1", "/srv//volumes/./pvc-1/").is_ok());
    }

    #[test]
    fn owned_volume_dir_refuses_path_tricks() {
        let volumes = Path::new(VOLUMES);
        for path in [
            "/",
            "/srv/volumes",
            "/srv/volumes/",
            "/srv/volumes/pvc-2",
            "/srv/volumes/pvc-1/data",
            "/srv/volumes/pvc-1/..",
            "/srv/volumes/x/../pvc-1",
            "/srv/volumes/../volumes/pvc-1",
            "srv/volumes/pvc-1",
            "pvc-1",
            "/etc",
            "/srv/volumes-other/pvc-1",
            "",
        ] {
            assert!(
                owned_volume_dir(volumes, "pvc-1", path).is_err(),
                "{path:?} accepted"
            );
        }
        assert!(owned_volume_dir(volumes, "..", "/srv").is_err());
    }

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("bosun-storage-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn create_then_remove_is_idempotent_and_world_writable() {
        use std::os::unix::fs::PermissionsExt;

        let scratch = Scratch::new("create");
        let dir = scratch.0.join("pvc-1");
        create_volume_dir(&dir).await.expect("create");
        std::fs::write(dir.join("data"), b"kept").expect("write");
        // A second provisioning attempt (after a crash) keeps the data.
        create_volume_dir(&dir).await.expect("create again");
        assert_eq!(std::fs::read(dir.join("data")).expect("read"), b"kept");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o777);

        remove_volume_dir(&dir).await.expect("remove");
        assert!(!dir.exists());
        remove_volume_dir(&dir).await.expect("remove again");
    }

    #[tokio::test]
    async fn symlinks_are_neither_chmodded_nor_followed() {
        use std::os::unix::fs::PermissionsExt;

        let scratch = Scratch::new("symlink");
        let outside = scratch.0.join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(outside.join("precious"), b"x").expect("write");
        let link = scratch.0.join("pvc-1");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");

        assert!(matches!(
            create_volume_dir(&link).await,
            Err(StorageError::NotADirectory { .. })
        ));
        let mode = std::fs::metadata(&outside)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        remove_volume_dir(&link).await.expect("remove the link");
        assert!(!link.exists());
        assert!(outside.join("precious").exists());
    }
}
