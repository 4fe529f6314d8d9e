//! Checksums of an etcd snapshot computed while it streams past, so that a
//! snapshot is never held whole in memory or on disk.
//!
//! An etcd snapshot as the maintenance API sends it (and as `etcdctl
//! snapshot save` writes it) is the bbolt database followed by the 32-byte
//! SHA-256 of the database: etcd's own integrity hash, which `etcdutl
//! snapshot restore` checks. [`SnapshotDigest`] checks that trailer and
//! also computes the SHA-256 of the whole stream, which is what bosun
//! records and compares with the stored object.

use sha2::{Digest, Sha256};

/// Length of etcd's trailing hash.
pub const TRAILER_LEN: usize = 32;

/// The figures of a finished stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Bytes in the stream, trailer included.
    pub size: u64,
    /// SHA-256 of the whole stream, lowercase hex.
    pub sha256: String,
    /// Whether the last 32 bytes are the SHA-256 of the bytes before them.
    pub etcd_hash_ok: bool,
}

/// Feeds on a snapshot chunk by chunk. Each byte is hashed once: the
/// hash of the whole stream is the database's hash state fed the trailer.
pub struct SnapshotDigest {
    database: Sha256,
    /// The newest bytes seen: not yet known to be database rather than trailer.
    tail: Vec<u8>,
    size: u64,
}

impl Default for SnapshotDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotDigest {
    /// An empty digest.
    pub fn new() -> Self {
        SnapshotDigest {
            database: Sha256::new(),
            tail: Vec::with_capacity(2 * TRAILER_LEN),
            size: 0,
        }
    }

    /// Adds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        // Everything but the newest 32 bytes is certainly database.
        if self.tail.len() > TRAILER_LEN {
            let settled = self.tail.len() - TRAILER_LEN;
            self.database.update(&self.tail[..settled]);
            self.tail.drain(..settled);
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The figures of the whole stream.
    pub fn finish(self) -> Summary {
        let SnapshotDigest {
            mut database,
            tail,
            size,
        } = self;
        let etcd_hash_ok =
            tail.len() == TRAILER_LEN && database.clone().finalize().as_slice() == tail;
        database.update(&tail);
        Summary {
            size,
            sha256: hex(&database.finalize()),
            etcd_hash_ok,
        }
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_of(database: &[u8]) -> Vec<u8> {
        let mut bytes = database.to_vec();
        bytes.extend_from_slice(&Sha256::digest(database));
        bytes
    }

    fn digest_in_chunks(bytes: &[u8], chunk: usize) -> Summary {
        let mut digest = SnapshotDigest::new();
        for part in bytes.chunks(chunk) {
            digest.update(part);
        }
        digest.finish()
    }

    #[test]
    fn a_well_formed_snapshot_passes_whatever_the_chunking() {
        let bytes = snapshot_of(&vec![7u8; 10_000]);
        let expected = hex(&Sha256::digest(&bytes));
        for chunk in [1, 5, 31, 32, 33, 4096, 20_000] {
            let summary = digest_in_chunks(&bytes, chunk);
            assert!(summary.etcd_hash_ok, "chunk size {chunk}");
            assert_eq!(summary.size, 10_032);
            assert_eq!(summary.sha256, expected);
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_etcd_hash() {
        let mut bytes = snapshot_of(&[1, 2, 3, 4, 5, 6, 7, 8]);
        bytes[3] ^= 0x40;
        assert!(!digest_in_chunks(&bytes, 3).etcd_hash_ok);
    }

    #[test]
    fn a_truncated_snapshot_fails_the_etcd_hash() {
        let bytes = snapshot_of(&[9u8; 1000]);
        assert!(!digest_in_chunks(&bytes[..bytes.len() - 100], 64).etcd_hash_ok);
        assert!(!digest_in_chunks(&bytes[..20], 64).etcd_hash_ok);
        assert!(!digest_in_chunks(&[], 64).etcd_hash_ok);
    }
}
