//! Container images built on this machine, without a registry or a Docker
//! daemon, and imported into the dev cluster's containerd.
//!
//! Each image is one OCI image-layout archive (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) with a single layer, named with the fully qualified
//! name users know (`gcr.io/etcd-development/etcd:v3.6.16`), so that the same
//! pod specs run here and on any cluster. [`build_all`] writes the archives
//! from the programs `scripts/build-tools.sh` built and from Debian packages,
//! rebuilding an image only when its inputs change; [`import`] loads them
//! into containerd's `k8s.io` namespace, where the kubelet finds them. Pods
//! must use `imagePullPolicy: IfNotPresent` (or `Never`): nothing can be
//! pulled. What goes into each image is described in `images/README.md`.

mod archive;
mod cache;
mod containerd;
mod debian;
mod recipe;

use std::path::{Path, PathBuf};

pub use archive::{
    Compression, Entry, EntryKind, ImageConfig, ImageSpec, WrittenArchive, write_archive,
};
pub use cache::{build_cached, safe_file_name};
pub use containerd::import;

use crate::tools::{Tools, ToolsError};

/// The sandbox ("pause") image containerd starts for every pod.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// The repository of the CoreDNS image; the tag is the CoreDNS version.
pub const COREDNS_IMAGE_REPOSITORY: &str = "registry.k8s.io/coredns/coredns";

/// The repository of etcd images, as etcd publishes them.
pub const ETCD_IMAGE_REPOSITORY: &str = "gcr.io/etcd-development/etcd";

/// The bosun operator image.
pub const BOSUN_IMAGE: &str = "bosun.dev/bosun:dev";

/// The repository of the memcached image; the tag is memcached's upstream version.
pub const MEMCACHED_IMAGE_REPOSITORY: &str = "bosun.dev/memcached";

/// The repository of the redis image; the tag is redis's upstream version.
pub const REDIS_IMAGE_REPOSITORY: &str = "bosun.dev/redis";

/// The repository of the SeaweedFS image (the dev cluster's object store);
/// the tag is SeaweedFS's version.
pub const SEAWEEDFS_IMAGE_REPOSITORY: &str = "bosun.dev/seaweedfs";

/// The image of one etcd version: `etcd_image("3.6.16")` =
/// `gcr.io/etcd-development/etcd:v3.6.16`.
pub fn etcd_image(version: &str) -> String {
    format!(
        "{ETCD_IMAGE_REPOSITORY}:v{}",
        version.trim_start_matches('v')
    )
}

/// The CoreDNS image of a version: `coredns_image("v1.15.0")` =
/// `registry.k8s.io/coredns/coredns:v1.15.0`.
pub fn coredns_image(version: &str) -> String {
    format!("{COREDNS_IMAGE_REPOSITORY}:{version}")
}

/// The SeaweedFS image of a version: `seaweedfs_image("4.48")` =
/// `bosun.dev/seaweedfs:4.48`.
pub fn seaweedfs_image(version: &str) -> String {
    format!("{SEAWEEDFS_IMAGE_REPOSITORY}:{version}")
}

/// An image archive on disk, ready to import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The fully qualified name, e.g. `gcr.io/etcd-development/etcd:v3.6.16`.
    pub name: String,
    /// The OCI image-layout tar.
    pub archive: PathBuf,
    /// The manifest digest (`sha256:…`), as `ctr images ls` shows it.
    pub digest: String,
}

/// Why an image could not be built or imported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A built program is missing.
    #[error(transparent)]
    Tools(#[from] ToolsError),
    /// An input file is missing.
    #[error("{path} is missing or not a file; it should be {what}")]
    MissingInput {
        /// What the file should be.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// An image name cannot be written into an archive.
    #[error("image name {name:?} cannot be used: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// A layer entry is invalid.
    #[error("image {image}: entry {path:?}: {reason}")]
    InvalidEntry {
        /// The image.
        image: String,
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A host command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it did not run.
        message: String,
    },
    /// A Debian package could not be fetched.
    #[error("Debian package {package}: {message}")]
    Package {
        /// The package.
        package: String,
        /// What went wrong.
        message: String,
    },
    /// A binary links a library that is neither on the host nor in the
    /// fetched packages.
    #[error(
        "{binary} needs {library}, which ldd finds neither on this host nor in the fetched Debian packages"
    )]
    MissingLibrary {
        /// The binary.
        binary: PathBuf,
        /// The library's soname.
        library: String,
    },
    /// Building one image failed.
    #[error("cannot build image {image}: {source}")]
    Build {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: Box<ImageError>,
    },
    /// `ctr` failed to import an image.
    #[error("cannot import image {image} from {archive} into containerd: {message}")]
    Import {
        /// The image.
        image: String,
        /// The archive.
        archive: PathBuf,
        /// ctr's exit status and stderr, or why it did not run.
        message: String,
    },
    /// After import, containerd does not hold the image that was imported.
    #[error("after import, containerd has {found} for image {image}, not {expected}")]
    ImportMismatch {
        /// The image.
        image: String,
        /// The digest imported.
        expected: String,
        /// What containerd lists for the name.
        found: String,
    },
    /// containerd's images could not be listed.
    #[error("cannot list containerd's images: {message}")]
    List {
        /// ctr's exit status and stderr, or why it did not run.
        message: String,
    },
}

impl ImageError {
    /// A `map_err` adapter for I/O on `path` while doing `action`.
    pub(crate) fn io(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }

    /// A failed command, reported as a problem with `package`.
    fn for_package(self, package: &str) -> ImageError {
        match self {
            ImageError::Command { command, message } => ImageError::Package {
                package: package.to_string(),
                message: format!("`{command}` failed: {message}"),
            },
            other => other,
        }
    }

    fn building(self, image: &str) -> ImageError {
        ImageError::Build {
            image: image.to_string(),
            source: Box::new(self),
        }
    }
}

/// Builds (or reuses) every image the dev cluster and the tests need, in
/// `out_dir`: pause, etcd for each built version, CoreDNS, SeaweedFS, the
/// bosun operator (when `bosun_binary` is given), memcached and redis.
///
/// Downloaded Debian packages are kept in `out_dir/debian`. Needs `ldd`,
/// `dpkg-deb`, `apt-get` and `apt-cache` on the host; with every input
/// cached, nothing is downloaded.
pub fn build_all(
    tools: &Tools,
    out_dir: &Path,
    bosun_binary: Option<&Path>,
) -> Result<Vec<BuiltImage>, ImageError> {
    let packages = debian::PackageCache::new(out_dir.join("debian"));
    packages.resolve_candidates(recipe::DEBIAN_PACKAGES)?;
    let busybox = recipe::Busybox::find(&packages)?;
    let mut built = Vec::new();
    let mut build = |spec: Result<ImageSpec, ImageError>, what: &str| -> Result<(), ImageError> {
        let spec = spec.map_err(|e| e.building(what))?;
        let image = build_cached(&spec, out_dir).map_err(|e| e.building(&spec.name))?;
        built.push(image);
        Ok(())
    };

    build(Ok(recipe::pause(&busybox)), PAUSE_IMAGE)?;
    let etcd_versions = tools.etcd_versions();
    if etcd_versions.is_empty() {
        return Err(ImageError::Tools(ToolsError::Missing {
            program: "etcd (versions.env names no ETCD_VERSIONS)".to_string(),
            dir: tools.dir().to_path_buf(),
        }));
    }
    for version in &etcd_versions {
        let spec = tools
            .etcd_dir(version)
            .map(|dir| recipe::etcd(version, &dir, &busybox))
            .map_err(ImageError::from);
        build(spec, &etcd_image(version))?;
    }
    let coredns_version = tools
        .version("COREDNS_VERSION")
        .ok_or_else(|| ToolsError::Missing {
            program: "coredns (versions.env names no COREDNS_VERSION)".to_string(),
            dir: tools.dir().to_path_buf(),
        })?;
    let spec = tools
        .bin("coredns")
        .map(|binary| recipe::coredns(coredns_version, &binary))
        .map_err(ImageError::from);
    build(spec, &coredns_image(coredns_version))?;
    build(seaweedfs_spec(tools, &busybox), SEAWEEDFS_IMAGE_REPOSITORY)?;
    if let Some(binary) = bosun_binary {
        // etcdutl of the newest patch release of each minor version.
        let mut etcdutls: std::collections::BTreeMap<String, std::path::PathBuf> =
            std::collections::BTreeMap::new();
        for version in tools.etcd_versions() {
            let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
            if let Ok(dir) = tools.etcd_dir(&version) {
                etcdutls.insert(minor, dir.join("etcdutl"));
            }
        }
        let etcdutls: Vec<_> = etcdutls.into_iter().collect();
        build(recipe::bosun(binary, &busybox, &etcdutls), BOSUN_IMAGE)?;
    }
    build(
        recipe::memcached(&packages, &busybox),
        MEMCACHED_IMAGE_REPOSITORY,
    )?;
    build(recipe::redis(&packages, &busybox), REDIS_IMAGE_REPOSITORY)?;
    Ok(built)
}

/// Builds (or reuses) the SeaweedFS image alone in `out_dir`, as
/// [`build_all`] does: what the object store needs on a cluster that was
/// started before it existed.
pub fn build_seaweedfs(tools: &Tools, out_dir: &Path) -> Result<BuiltImage, ImageError> {
    let packages = debian::PackageCache::new(out_dir.join("debian"));
    let busybox = recipe::Busybox::find(&packages)?;
    let spec =
        seaweedfs_spec(tools, &busybox).map_err(|e| e.building(SEAWEEDFS_IMAGE_REPOSITORY))?;
    build_cached(&spec, out_dir).map_err(|e| e.building(&spec.name))
}

fn seaweedfs_spec(tools: &Tools, busybox: &recipe::Busybox) -> Result<ImageSpec, ImageError> {
    let (weed, version) = tools.seaweedfs()?;
    Ok(recipe::seaweedfs(version, &weed, busybox))
}

#[cfg(test)]
mod tests;
