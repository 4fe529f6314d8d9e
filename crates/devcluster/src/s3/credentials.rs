//! The object store's one pair of S3 credentials: random, made once per
//! state directory and kept there, so that they survive `bosun dev down` and
//! `up` and differ between machines.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The letters of an access key ID after its prefix (base32, as AWS's).
const ACCESS_KEY_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The letters of a secret key: no `+` or `/`, so it can be pasted anywhere.
const SECRET_ALPHABET: &[u8; 62] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Access key IDs start with this, so that a reader knows where one is from.
const ACCESS_KEY_PREFIX: &str = "BOSUN";
/// AWS's lengths: 20 for the ID, 40 for the secret.
const ACCESS_KEY_LEN: usize = 20;
const SECRET_LEN: usize = 40;

/// An S3 access key ID and its secret key. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The access key ID, the Secret's `accessKeyID`.
    #[serde(rename = "accessKeyID")]
    pub access_key_id: String,
    /// The secret access key, the Secret's `secretAccessKey`.
    #[serde(rename = "secretAccessKey")]
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Why the credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// It cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// It holds something else.
    #[error(
        "{path} does not hold S3 credentials ({reason}); delete it and a new pair is made (the object store's data stays)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Credentials {
    /// Makes a pair from random bytes, skipping bytes that would make the
    /// secret's letters uneven; `None` when the bytes run out first.
    fn from_random(mut bytes: impl Iterator<Item = u8>) -> Option<Self> {
        let mut access_key_id = String::from(ACCESS_KEY_PREFIX);
        while access_key_id.len() < ACCESS_KEY_LEN {
            access_key_id.push(char::from(
                ACCESS_KEY_ALPHABET[usize::from(bytes.next()? % 32)],
            ));
        }
        let mut secret_access_key = String::with_capacity(SECRET_LEN);
        while secret_access_key.len() < SECRET_LEN {
            let byte = bytes.next()?;
            // 248 = 4 * 62: bytes below it map evenly onto the alphabet.
            if byte < 248 {
                secret_access_key.push(char::from(SECRET_ALPHABET[usize::from(byte % 62)]));
            }
        }
        Some(Credentials {
            access_key_id,
            secret_access_key,
        })
    }

    /// A new random pair, from the kernel's random source.
    fn generate() -> io::Result<Self> {
        let mut random = vec![0u8; 256];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        // 256 bytes hold far more than the 55 needed: the chance that
        // rejections exhaust them is below 10^-100.
        Credentials::from_random(random.into_iter())
            .ok_or_else(|| io::Error::other("the random source gave too few usable bytes"))
    }

    /// Checks that both keys are plain letters and digits of a sane length.
    fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("accessKeyID", &self.access_key_id),
            ("secretAccessKey", &self.secret_access_key),
        ] {
            if !(16..=128).contains(&value.len())
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!("{name} must be 16 to 128 letters and digits"));
            }
        }
        Ok(())
    }

    /// The credentials kept at `path`, made and written there (mode 0600)
    /// first if the file does not exist. Callers serialize: two processes
    /// making a file at once would each keep their own pair.
    pub fn load_or_create(path: &Path) -> Result<Self, CredentialsError> {
        let io_error = |source| CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let credentials = match std::fs::read(path) {
            Ok(text) => serde_json::from_slice::<Credentials>(&text).map_err(|e| {
                CredentialsError::Invalid {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let credentials = Credentials::generate().map_err(io_error)?;
                write_private(path, &credentials).map_err(io_error)?;
                tracing::info!(path = %path.display(), "made new S3 credentials");
                credentials
            }
            Err(e) => return Err(io_error(e)),
        };
        credentials
            .check()
            .map_err(|reason| CredentialsError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(credentials)
    }
}

/// Writes the credentials to a private temporary file and renames it into
/// place, so that `path` is either absent or complete.
fn write_private(path: &Path, credentials: &Credentials) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(credentials).map_err(io::Error::other)?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn random_bytes_make_aws_shaped_keys() {
        let credentials = Credentials::from_random((0..=255u8).cycle()).expect("enough bytes");
        assert_eq!(credentials.access_key_id.len(), 20);
        assert!(credentials.access_key_id.starts_with("BOSUN"));
        assert_eq!(credentials.secret_access_key.len(), 40);
        assert!(credentials.check().is_ok());
        // Bytes at or above 248 are skipped for the secret, not folded onto
        // its first letters.
        let skipping = Credentials::from_random(
            std::iter::repeat_n(0u8, 15).chain([250, 251, 1].into_iter().cycle()),
        )
        .expect("enough bytes");
        assert_eq!(skipping.secret_access_key, "B".repeat(40));
        assert!(Credentials::from_random([1u8; 30].into_iter()).is_none());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let credentials = Credentials {
            access_key_id: "BOSUNAAAAAAAAAAAAAAA".into(),
            secret_access_key: "topsecret".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("BOSUNAAAAAAAAAAAAAAA") && !shown.contains("topsecret"));
    }

    #[test]
    fn credentials_are_made_once_and_then_kept() {
        let dir = std::env::temp_dir().join(format!("bosun-s3-credentials-{}", std::process::id()));
        let path = dir.join("data").join("s3-credentials.json");
        let first = Credentials::load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            Credentials::load_or_create(&path).expect("read back"),
            first
        );

        std::fs::write(
            &path,
            "{\"accessKeyID\": \"x\", \"secretAccessKey\": \"y\"}",
        )
        .expect("write");
        let err = Credentials::load_or_create(&path).expect_err("too short");
        assert!(err.to_string().contains("delete it"), "{err}");
        std::fs::write(&path, "not json").expect("write");
        assert!(matches!(
            Credentials::load_or_create(&path),
            Err(CredentialsError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
