//! Rebuild an image only when its inputs change: `<out_dir>/<safe-name>.tar`
//! sits beside `<safe-name>.stamp`, which records a hash of the recipe and of
//! its input files and the digest the archive got.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::archive::{Compression, EntryKind, ImageSpec, hex, unique_suffix, write_archive};
use super::{BuiltImage, ImageError};

/// Bump when the archive format changes, so old archives are rebuilt.
const FORMAT: u32 = 1;

/// Files up to this size are hashed by content; larger ones by size and mtime.
const CONTENT_HASH_LIMIT: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    format: u32,
    name: String,
    inputs: String,
    digest: String,
    archive_size: u64,
}

/// Writes `spec` to `<out_dir>/<safe-name>.tar` unless the stamp there says
/// an archive of the same inputs is already written.
pub fn build_cached(spec: &ImageSpec, out_dir: &Path) -> Result<BuiltImage, ImageError> {
    let started = Instant::now();
    std::fs::create_dir_all(out_dir).map_err(|source| ImageError::Io {
        action: "create",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let safe = safe_file_name(&spec.name);
    let archive = out_dir.join(format!("{safe}.tar"));
    let stamp_path = out_dir.join(format!("{safe}.stamp"));
    let inputs = input_hash(spec)?;

    if let Some(stamp) = read_stamp(&stamp_path)
        && stamp.format == FORMAT
        && stamp.name == spec.name
        && stamp.inputs == inputs
        && std::fs::metadata(&archive).is_ok_and(|m| m.len() == stamp.archive_size)
    {
        tracing::info!(
            image = %spec.name,
            size = %ByteSize(stamp.archive_size),
            elapsed = ?started.elapsed(),
            "image up to date"
        );
        return Ok(BuiltImage {
            name: spec.name.clone(),
            archive,
            digest: stamp.digest,
        });
    }

    // A stale stamp must never vouch for a new archive: drop it first.
    let _ = std::fs::remove_file(&stamp_path);
    let written = write_archive(spec, &archive)?;
    let stamp = Stamp {
        format: FORMAT,
        name: spec.name.clone(),
        inputs,
        digest: written.digest.clone(),
        archive_size: written.size,
    };
    let text = serde_json::to_vec_pretty(&stamp).unwrap_or_default();
    let stamp_tmp = out_dir.join(format!("{safe}.stamp.{}.tmp", unique_suffix()));
    std::fs::write(&stamp_tmp, text)
        .and_then(|()| std::fs::rename(&stamp_tmp, &stamp_path))
        .map_err(|source| ImageError::Io {
            action: "write",
            path: stamp_path.clone(),
            source,
        })?;
    tracing::info!(
        image = %spec.name,
        size = %ByteSize(written.size),
        elapsed = ?started.elapsed(),
        "image built"
    );
    Ok(BuiltImage {
        name: spec.name.clone(),
        archive,
        digest: written.digest,
    })
}

fn read_stamp(path: &Path) -> Option<Stamp> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A hash over everything that decides the archive's bytes.
fn input_hash(spec: &ImageSpec) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(&FORMAT.to_le_bytes());
    field(spec.name.as_bytes());
    let config = &spec.config;
    for list in [&config.entrypoint, &config.cmd, &config.env] {
        field(&(list.len() as u64).to_le_bytes());
        list.iter().for_each(|s| field(s.as_bytes()));
    }
    field(config.working_dir.as_bytes());
    field(config.user.as_bytes());
    for (key, value) in &config.labels {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(match spec.compression {
        Compression::None => b"none",
        Compression::Gzip => b"gzip",
    });
    for entry in &spec.entries {
        field(entry.path.as_bytes());
        field(&entry.mode.to_le_bytes());
        field(&entry.uid.to_le_bytes());
        field(&entry.gid.to_le_bytes());
        match &entry.kind {
            EntryKind::Dir => field(b"dir"),
            EntryKind::Symlink(target) => {
                field(b"symlink");
                field(target.as_bytes());
            }
            EntryKind::Contents(data) => {
                field(b"contents");
                field(data);
            }
            EntryKind::File(source) => {
                field(b"file");
                field(source.as_os_str().as_encoded_bytes());
                field(file_fingerprint(source)?.as_bytes());
            }
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Size and mtime of a large file, or the hash of a small one's content.
fn file_fingerprint(path: &Path) -> Result<String, ImageError> {
    let at_path = |source| ImageError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(at_path)?;
    if !meta.is_file() {
        return Err(ImageError::MissingInput {
            what: "a regular file".to_string(),
            path: path.to_path_buf(),
        });
    }
    if meta.len() <= CONTENT_HASH_LIMIT {
        let mut data = Vec::with_capacity(meta.len() as usize);
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(at_path)?;
        return Ok(format!("sha256:{}", hex(&Sha256::digest(&data))));
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok(format!("size={} mtime={}", meta.len(), mtime.as_nanos()))
}

/// A file name for an image: `gcr.io/etcd-development/etcd:v3.6.16` →
/// `gcr.io_etcd-development_etcd_v3.6.16`.
pub fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
