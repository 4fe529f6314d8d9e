//! The OCI image-layout archive writer: one image with one layer, written as
//! the tar that `ctr images import` reads (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), without a container engine.
//!
//! The output is a pure function of the spec and the bytes of its input
//! files: entries are sorted, every timestamp is the epoch and owners are
//! numeric, so the same inputs always give the same manifest digest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// The `created` time of every image, so that builds are reproducible.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// The `PATH` an image gets unless its spec sets one.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image to write: its name, its runtime configuration and the files of
/// its single layer.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The fully qualified name with a tag, e.g. `gcr.io/etcd-development/etcd:v3.6.16`.
    pub name: String,
    /// What the container runs and as whom.
    pub config: ImageConfig,
    /// The files, directories and symlinks of the layer. Missing parent
    /// directories are added (mode 0755, owned by root).
    pub entries: Vec<Entry>,
    /// How the layer is stored in the archive.
    pub compression: Compression,
}

/// The runtime part of an OCI image configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// The command that always runs (`ENTRYPOINT`).
    pub entrypoint: Vec<String>,
    /// Its default arguments (`CMD`).
    pub cmd: Vec<String>,
    /// `KEY=value` pairs; a default `PATH` is added unless one is given.
    pub env: Vec<String>,
    /// The working directory; empty means `/`.
    pub working_dir: String,
    /// `uid`, `uid:gid` or a user name; empty means root.
    pub user: String,
    /// Image labels, e.g. `org.opencontainers.image.version`.
    pub labels: BTreeMap<String, String>,
}

/// How a layer is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar: fastest to write and to unpack, largest on disk.
    None,
    /// A gzip-compressed tar at the fastest level.
    Gzip,
}

/// One path in the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The absolute path in the image, e.g. `/usr/local/bin/etcd`.
    pub path: String,
    /// What is at that path.
    pub kind: EntryKind,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What an [`Entry`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file copied from a host path (symlinks on the host are followed).
    File(PathBuf),
    /// A regular file with these bytes.
    Contents(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A directory.
    Dir,
}

impl Entry {
    /// A file copied from `source` on the host, owned by root.
    pub fn file(source: impl Into<PathBuf>, path: impl Into<String>, mode: u32) -> Self {
        Self::root_owned(path, EntryKind::File(source.into()), mode)
    }

    /// A file with the given bytes, owned by root.
    pub fn contents(data: impl Into<Vec<u8>>, path: impl Into<String>, mode: u32) -> Self {
        Self::root_owned(path, EntryKind::Contents(data.into()), mode)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::root_owned(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A directory, owned by root.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self::root_owned(path, EntryKind::Dir, mode)
    }

    /// The same entry owned by `uid:gid`.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn root_owned(path: impl Into<String>, kind: EntryKind, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// What [`write_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenArchive {
    /// The manifest digest, `sha256:<hex>`: what containerd lists for the image.
    pub digest: String,
    /// The size of the archive in bytes.
    pub size: u64,
}

/// Writes `spec` as an OCI image-layout tar at `dest`.
///
/// The layer is streamed through a temporary file next to `dest` while its
/// digests are computed, then copied into the archive; the archive itself is
/// written to a temporary name and renamed, so `dest` is never half written.
pub fn write_archive(spec: &ImageSpec, dest: &Path) -> Result<WrittenArchive, ImageError> {
    let tag = image_tag(&spec.name)?;
    let entries = normalized_entries(&spec.name, &spec.entries)?;

    // Unique names: two builds of the same image may run at once (parallel
    // tests); each writes its own temporaries and the last rename wins with
    // the same bytes.
    let unique = unique_suffix();
    let layer_tmp = sibling(dest, &format!(".{unique}.layer.tmp"));
    let archive_tmp = sibling(dest, &format!(".{unique}.tmp"));
    let result = write_with_temporaries(spec, tag, &entries, dest, &layer_tmp, &archive_tmp);
    // Best effort: the temporaries are garbage whether or not the write worked.
    let _ = std::fs::remove_file(&layer_tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&archive_tmp);
    }
    result
}

fn write_with_temporaries(
    spec: &ImageSpec,
    tag: &str,
    entries: &BTreeMap<String, Entry>,
    dest: &Path,
    layer_tmp: &Path,
    archive_tmp: &Path,
) -> Result<WrittenArchive, ImageError> {
    let layer = write_layer(entries, spec.compression, layer_tmp)?;

    let config = config_json(&spec.config, &layer.diff_id);
    let config_blob = Blob::new(MEDIA_CONFIG, to_json(&config));
    let layer_media = match spec.compression {
        Compression::None => MEDIA_LAYER_TAR,
        Compression::Gzip => MEDIA_LAYER_GZIP,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [{ "mediaType": layer_media, "digest": layer.digest, "size": layer.size }],
    });
    let manifest_blob = Blob::new(MEDIA_MANIFEST, to_json(&manifest));
    let mut manifest_descriptor = manifest_blob.descriptor();
    manifest_descriptor["annotations"] = json!({
        "io.containerd.image.name": spec.name,
        "org.opencontainers.image.ref.name": tag,
    });
    manifest_descriptor["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [manifest_descriptor],
    });

    let file = File::create(archive_tmp).map_err(ImageError::io("create", archive_tmp))?;
    let mut out = tar::Builder::new(CountingWriter::new(BufWriter::new(file)));

    let mut blobs: Vec<(String, BlobSource<'_>)> = vec![
        (
            hex_of(&layer.digest).to_string(),
            BlobSource::File(layer_tmp, layer.size),
        ),
        (
            hex_of(&config_blob.digest).to_string(),
            BlobSource::Bytes(&config_blob.data),
        ),
        (
            hex_of(&manifest_blob.digest).to_string(),
            BlobSource::Bytes(&manifest_blob.data),
        ),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);

    let write = |out: &mut tar::Builder<_>| -> io::Result<()> {
        append_dir(out, "blobs/")?;
        append_dir(out, "blobs/sha256/")?;
        for (hex, source) in &blobs {
            let path = format!("blobs/sha256/{hex}");
            match source {
                BlobSource::Bytes(data) => append_bytes(out, &path, data, 0o644)?,
                BlobSource::File(file, size) => {
                    let reader = File::open(file)?.take(*size);
                    let mut header = regular_header(*size, 0o644, 0, 0);
                    out.append_data(&mut header, &path, reader)?;
                }
            }
        }
        append_bytes(out, "index.json", &to_json(&index), 0o644)?;
        append_bytes(
            out,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        )?;
        Ok(())
    };
    write(&mut out).map_err(ImageError::io("write", archive_tmp))?;
    let counting = out
        .into_inner()
        .map_err(ImageError::io("write", archive_tmp))?;
    let size = counting.count;
    let file = counting
        .inner
        .into_inner()
        .map_err(|e| ImageError::io("write", archive_tmp)(e.into_error()))?;
    file.sync_all()
        .map_err(ImageError::io("write", archive_tmp))?;
    drop(file);
    std::fs::rename(archive_tmp, dest).map_err(ImageError::io("rename into", dest))?;

    Ok(WrittenArchive {
        digest: manifest_blob.digest,
        size,
    })
}

/// The tag of a fully qualified image name (`gcr.io/x/etcd:v3.6.16` → `v3.6.16`).
pub(crate) fn image_tag(name: &str) -> Result<&str, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    let Some((repository, tag)) = last_segment.rsplit_once(':') else {
        return Err(invalid(
            "it has no tag; an untagged image means `:latest`, which kubelet always pulls",
        ));
    };
    if !name.contains('/') || repository.is_empty() {
        return Err(invalid(
            "it is not fully qualified (registry/repository:tag)",
        ));
    }
    let tag_ok = tag.len() <= 128
        && tag.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphanumeric() || c == '_' || (i > 0 && (c == '.' || c == '-'))
        });
    if tag.is_empty() || !tag_ok {
        return Err(invalid(
            "its tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    let repository = &name[..name.len() - tag.len() - 1];
    if repository.contains('@') || repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid(
            "digests and upper-case repository names are not supported",
        ));
    }
    Ok(tag)
}

/// The entries keyed by their tar path (no leading `/`, directories with a
/// trailing `/` stripped for sorting), with missing parent directories added.
fn normalized_entries(
    image: &str,
    entries: &[Entry],
) -> Result<BTreeMap<String, Entry>, ImageError> {
    let invalid = |path: &str, reason: &str| ImageError::InvalidEntry {
        image: image.to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut map = BTreeMap::new();
    for entry in entries {
        let Some(relative) = entry.path.strip_prefix('/') else {
            return Err(invalid(&entry.path, "paths in an image must be absolute"));
        };
        let relative = relative.trim_end_matches('/');
        if relative.is_empty() {
            return Err(invalid(
                &entry.path,
                "the root directory cannot be an entry",
            ));
        }
        if relative
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid(
                &entry.path,
                "paths must not contain empty, `.` or `..` components",
            ));
        }
        if entry.mode > 0o7777 {
            return Err(invalid(&entry.path, "mode has bits beyond 0o7777"));
        }
        if map.insert(relative.to_string(), entry.clone()).is_some() {
            return Err(invalid(&entry.path, "the path is given twice"));
        }
    }
    let mut parents = Vec::new();
    for path in map.keys() {
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parents.push(up.to_string());
            parent = up;
        }
    }
    for parent in parents {
        match map.get(&parent) {
            Some(entry) if entry.kind != EntryKind::Dir => {
                return Err(invalid(
                    &entry.path,
                    "it has entries below it but is not a directory",
                ));
            }
            Some(_) => {}
            None => {
                map.insert(parent.clone(), Entry::dir(format!("/{parent}"), 0o755));
            }
        }
    }
    Ok(map)
}

/// The digests of a written layer.
struct LayerDigests {
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    diff_id: String,
    /// Digest of the stored blob.
    digest: String,
    /// Size of the stored blob.
    size: u64,
}

fn write_layer(
    entries: &BTreeMap<String, Entry>,
    compression: Compression,
    path: &Path,
) -> Result<LayerDigests, ImageError> {
    let io_err = |source| ImageError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_err)?;
    let stored = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let (stored, diff_id) = match compression {
        Compression::None => {
            let stored = write_layer_tar(entries, stored, path)?;
            let diff_id = stored.digest();
            (stored, diff_id)
        }
        Compression::Gzip => {
            let gzip = GzEncoder::new(stored, flate2::Compression::fast());
            let raw = write_layer_tar(entries, HashingWriter::new(gzip), path)?;
            let diff_id = raw.digest();
            let stored = raw.inner.finish().map_err(io_err)?;
            (stored, diff_id)
        }
    };
    let digest = stored.digest();
    let size = stored.count;
    let file = stored
        .inner
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(LayerDigests {
        diff_id,
        digest,
        size,
    })
}

fn write_layer_tar<W: Write>(
    entries: &BTreeMap<String, Entry>,
    out: W,
    path: &Path,
) -> Result<W, ImageError> {
    let mut tar = tar::Builder::new(out);
    for (relative, entry) in entries {
        append_entry(&mut tar, relative, entry)?;
    }
    tar.into_inner().map_err(|source| ImageError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    relative: &str,
    entry: &Entry,
) -> Result<(), ImageError> {
    let at_entry = |source| ImageError::Io {
        action: "write the layer entry",
        path: PathBuf::from(&entry.path),
        source,
    };
    match &entry.kind {
        EntryKind::Dir => {
            let mut header =
                base_header(tar::EntryType::Directory, entry.mode, entry.uid, entry.gid);
            tar.append_data(&mut header, format!("{relative}/"), io::empty())
                .map_err(at_entry)
        }
        EntryKind::Symlink(target) => {
            let mut header = base_header(tar::EntryType::Symlink, entry.mode, entry.uid, entry.gid);
            tar.append_link(&mut header, relative, target)
                .map_err(at_entry)
        }
        EntryKind::Contents(data) => {
            let mut header = regular_header(data.len() as u64, entry.mode, entry.uid, entry.gid);
            tar.append_data(&mut header, relative, data.as_slice())
                .map_err(at_entry)
        }
        EntryKind::File(source) => {
            let at_source = |e| ImageError::Io {
                action: "read",
                path: source.clone(),
                source: e,
            };
            let file = File::open(source).map_err(at_source)?;
            let size = file.metadata().map_err(at_source)?.len();
            let mut header = regular_header(size, entry.mode, entry.uid, entry.gid);
            // `take` keeps the header honest if the file grows while it is copied;
            // if it shrinks, the copy fails with an unexpected end of file.
            tar.append_data(&mut header, relative, file.take(size))
                .map_err(at_source)
        }
    }
}

fn base_header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn regular_header(size: u64, mode: u32, uid: u32, gid: u32) -> tar::Header {
    let mut header = base_header(tar::EntryType::Regular, mode, uid, gid);
    header.set_size(size);
    header
}

fn append_dir<W: Write>(out: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = base_header(tar::EntryType::Directory, 0o755, 0, 0);
    out.append_data(&mut header, path, io::empty())
}

fn append_bytes<W: Write>(
    out: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut header = regular_header(data.len() as u64, mode, 0, 0);
    out.append_data(&mut header, path, data)
}

fn config_json(config: &ImageConfig, diff_id: &str) -> serde_json::Value {
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut runtime = serde_json::Map::new();
    runtime.insert("Env".into(), json!(env));
    if !config.entrypoint.is_empty() {
        runtime.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        runtime.insert("Cmd".into(), json!(config.cmd));
    }
    if !config.working_dir.is_empty() {
        runtime.insert("WorkingDir".into(), json!(config.working_dir));
    }
    if !config.user.is_empty() {
        runtime.insert("User".into(), json!(config.user));
    }
    if !config.labels.is_empty() {
        runtime.insert("Labels".into(), json!(config.labels));
    }
    json!({
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": runtime,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": EPOCH, "created_by": "bosun devcluster image writer" }],
    })
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A small blob held in memory (config, manifest).
struct Blob {
    media_type: &'static str,
    digest: String,
    data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>) -> Self {
        Blob {
            media_type,
            digest: format!("sha256:{}", hex(&Sha256::digest(&data))),
            data,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.data.len() })
    }
}

enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` of everything written so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A writer that counts the bytes passing through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A suffix no other temporary file of this machine uses at the same time.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `dest` with `suffix` appended to its file name.
fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dest.with_file_name(name)
}
