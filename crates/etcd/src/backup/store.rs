//! Where snapshots live: an `object_store` client and a base path, built
//! from an EtcdBackup's `spec.storage` (or a snapshot URL) and the
//! credentials of a Secret.
//!
//! Secret keys: S3 `accessKeyID`, `secretAccessKey` (and optionally
//! `sessionToken`); GCS `serviceAccountKey` (the JSON key); Azure
//! `accountKey`. Without a Secret, each client finds credentials the way its
//! SDK does (instance roles, workload identity, environment).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bosun_api::backup::BackupStorage;
use bosun_api::restore::SnapshotLocation;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

/// Secret key of an S3 access key ID.
pub const S3_ACCESS_KEY_ID: &str = "accessKeyID";
/// Secret key of an S3 secret access key.
pub const S3_SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// Secret key of an optional S3 session token.
pub const S3_SESSION_TOKEN: &str = "sessionToken";
/// Secret key of a GCS service account key (JSON).
pub const GCS_SERVICE_ACCOUNT_KEY: &str = "serviceAccountKey";
/// Secret key of an Azure storage account key.
pub const AZURE_ACCOUNT_KEY: &str = "accountKey";

/// The values of a credentials Secret. Its `Debug` shows key names only,
/// and [`Credentials::redact`] removes every value from a text, so that no
/// secret reaches a log line, an event or a status message.
#[derive(Clone, Default)]
pub struct Credentials {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Credentials from a Secret's decoded data.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Credentials { values }
    }

    /// One value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn require(&self, key: &str) -> Result<&str, StoreError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StoreError::Config(format!("the credentials Secret has no key {key:?}")))
    }

    /// `text` with every credential value replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for value in self.values.values() {
            // Very short values would redact ordinary words; no real key is that short.
            if value.len() >= 4 {
                text = text.replace(value.as_str(), "<redacted>");
            }
        }
        text
    }
}

/// Why a store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The spec or the Secret does not describe a usable store.
    #[error("{0}")]
    Config(String),
    /// The object_store client refused the configuration.
    #[error("configuring the object store: {0}")]
    Client(#[from] object_store::Error),
}

/// A store and the path under which a backup's objects live.
#[derive(Clone)]
pub struct Destination {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The same store's multipart API, where it has one (S3, GCS, Azure):
    /// uploads whose id is known, so that an interrupted one can be aborted.
    pub multipart: Option<Arc<dyn MultipartStore>>,
    /// The URL of the store's root (`s3://bucket`, `file:///backups`, ...),
    /// to which object paths are appended for display and records.
    pub root_url: String,
    /// The configured prefix inside the store (may be empty).
    pub prefix: Path,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("store", &self.store)
            .field("multipart", &self.multipart.is_some())
            .field("root_url", &self.root_url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Destination {
    /// The URL of an object.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}/{}", self.root_url.trim_end_matches('/'), path)
    }

    /// `prefix/parts...`.
    pub fn path(&self, parts: &[&str]) -> Path {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.join(*part);
        }
        path
    }
}

/// How long a single request to a store may take, and how its retries are
/// bounded: a refused credential or a missing bucket should fail in
/// seconds, not after the client's default three minutes of retries.
fn client_options() -> (ClientOptions, RetryConfig) {
    let options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60));
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    (options, retry)
}

/// Installs ring as the process's TLS crypto provider unless one is set:
/// object_store's HTTP client (reqwest without a provider of its own, so
/// that only ring is linked, as kube uses) panics without one.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Builds the store of an EtcdBackup's `spec.storage`. `endpoint` replaces
/// the S3 endpoint of the spec when given (see
/// [`crate::backup::service_address`]).
pub fn destination(
    storage: &BackupStorage,
    credentials: Option<&Credentials>,
    endpoint: Option<&str>,
) -> Result<Destination, StoreError> {
    ensure_crypto_provider();
    let (options, retry) = client_options();
    if let Some(s3) = &storage.s3 {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&s3.bucket)
            .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
            .with_virtual_hosted_style_request(!s3.force_path_style.unwrap_or(true))
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = endpoint.or(s3.endpoint.as_deref()) {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(credentials) = credentials {
            builder = builder
                .with_access_key_id(credentials.require(S3_ACCESS_KEY_ID)?)
                .with_secret_access_key(credentials.require(S3_SECRET_ACCESS_KEY)?);
            if let Some(token) = credentials.get(S3_SESSION_TOKEN) {
                builder = builder.with_token(token);
            }
        }
        let client = Arc::new(builder.build()?);
        return Ok(Destination {
            store: client.clone(),
            multipart: Some(client),
            root_url: format!("s3://{}", s3.bucket),
            prefix: prefix_path(s3.prefix.as_deref()),
        });
    }
    if let Some(gcs) = &storage.gcs {
        let mut builder = GoogleCloudStorageBuilder::new()
            .with_bucket_name(&gcs.bucket)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(credentials) = credentials {
            builder =
                builder.with_service_account_key(credentials.require(GCS_SERVICE_ACCOUNT_KEY)?);
        }
        let client = Arc::new(builder.build()?);
        return Ok(Destination {
            store: client.clone(),
            multipart: Some(client),
            root_url: format!("gs://{}", gcs.bucket),
            prefix: prefix_path(gcs.prefix.as_deref()),
        });
    }
    if let Some(azure) = &storage.azure {
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&azure.account)
            .with_container_name(&azure.container)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(credentials) = credentials {
            builder = builder.with_access_key(credentials.require(AZURE_ACCOUNT_KEY)?);
        }
        let client = Arc::new(builder.build()?);
        return Ok(Destination {
            store: client.clone(),
            multipart: Some(client),
            root_url: format!("azure://{}/{}", azure.account, azure.container),
            prefix: prefix_path(azure.prefix.as_deref()),
        });
    }
    if let Some(file) = &storage.file {
        std::fs::create_dir_all(&file.path).map_err(|e| {
            StoreError::Config(format!("cannot create directory {}: {e}", file.path))
        })?;
        let store = LocalFileSystem::new_with_prefix(&file.path)?;
        // A local directory has no multipart API: an interrupted write
        // leaves a staging file beside the snapshot, never an object.
        return Ok(Destination {
            store: Arc::new(store),
            multipart: None,
            root_url: format!("file://{}", file.path),
            prefix: Path::default(),
        });
    }
    Err(StoreError::Config(
        "spec.storage needs exactly one of s3, gcs, azure or file".into(),
    ))
}

/// The store and object path of a snapshot URL: `s3://bucket/key`,
/// `gs://bucket/key`, `azure://account/container/key` or `file:///dir/file`.
pub fn location(
    location: &SnapshotLocation,
    credentials: Option<&Credentials>,
    endpoint: Option<&str>,
) -> Result<(Destination, Path), StoreError> {
    let bad = || {
        StoreError::Config(format!(
            "{:?} is not a snapshot URL (s3://bucket/key, gs://bucket/key, azure://account/container/key or file:///path)",
            location.url
        ))
    };
    let (scheme, rest) = location.url.split_once("://").ok_or_else(bad)?;
    let mut storage = BackupStorage::default();
    let key = match scheme {
        "s3" => {
            let (bucket, key) = rest.split_once('/').ok_or_else(bad)?;
            storage.s3 = Some(bosun_api::backup::S3Storage {
                bucket: bucket.to_string(),
                region: location.region.clone(),
                endpoint: location.endpoint.clone(),
                credentials_secret: location.credentials_secret.clone(),
                ..Default::default()
            });
            key
        }
        "gs" => {
            let (bucket, key) = rest.split_once('/').ok_or_else(bad)?;
            storage.gcs = Some(bosun_api::backup::GcsStorage {
                bucket: bucket.to_string(),
                credentials_secret: location.credentials_secret.clone(),
                ..Default::default()
            });
            key
        }
        "azure" => {
            let mut parts = rest.splitn(3, '/');
            let (Some(account), Some(container), Some(key)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            storage.azure = Some(bosun_api::backup::AzureStorage {
                account: account.to_string(),
                container: container.to_string(),
                credentials_secret: location.credentials_secret.clone(),
                ..Default::default()
            });
            key
        }
        "file" => {
            let path = std::path::Path::new(rest);
            let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                return Err(bad());
            };
            storage.file = Some(bosun_api::backup::FileStorage {
                path: dir.to_string_lossy().into_owned(),
            });
            return Ok((
                destination(&storage, credentials, endpoint)?,
                Path::from(file.to_string_lossy().as_ref()),
            ));
        }
        _ => return Err(bad()),
    };
    if key.is_empty() {
        return Err(bad());
    }
    Ok((
        destination(&storage, credentials, endpoint)?,
        Path::from(key),
    ))
}

fn prefix_path(prefix: Option<&str>) -> Path {
    Path::from(prefix.unwrap_or_default().trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new(BTreeMap::from([
            (S3_ACCESS_KEY_ID.to_string(), "AKIDEXAMPLE".to_string()),
            (S3_SECRET_ACCESS_KEY.to_string(), "s3cr3t-value".to_string()),
        ]))
    }

    #[test]
    fn redaction_removes_every_value_and_debug_shows_only_keys() {
        let text = "denied for AKIDEXAMPLE with s3cr3t-value";
        assert_eq!(
            creds().redact(text),
            "denied for <redacted> with <redacted>"
        );
        let debug = format!("{:?}", creds());
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains(S3_SECRET_ACCESS_KEY), "{debug}");
    }

    #[test]
    fn s3_urls_name_bucket_and_key() {
        let loc = SnapshotLocation {
            url: "s3://bosun-backups/db/ns/b/1.snapshot".into(),
            credentials_secret: None,
            endpoint: Some("http://10.96.0.20:8333".into()),
            region: None,
            sha256: None,
        };
        let (dest, path) = location(&loc, Some(&creds()), None).expect("location");
        assert_eq!(dest.root_url, "s3://bosun-backups");
        assert_eq!(path.as_ref(), "db/ns/b/1.snapshot");
        assert_eq!(dest.url_of(&path), loc.url);
    }

    #[test]
    fn malformed_urls_are_refused_with_the_accepted_forms() {
        for url in [
            "s3://bucket-only",
            "ftp://x/y",
            "azure://account/container",
            "s3://b/",
        ] {
            let loc = SnapshotLocation {
                url: url.into(),
                credentials_secret: None,
                endpoint: None,
                region: None,
                sha256: None,
            };
            let err = location(&loc, None, None).expect_err(url).to_string();
            assert!(err.contains("is not a snapshot URL"), "{url}: {err}");
        }
    }

    #[test]
    fn s3_needs_both_keys_from_its_secret() {
        let storage = BackupStorage {
            s3: Some(bosun_api::backup::S3Storage {
                bucket: "b".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let only_id = Credentials::new(BTreeMap::from([(
            S3_ACCESS_KEY_ID.to_string(),
            "id".to_string(),
        )]));
        let err = destination(&storage, Some(&only_id), None)
            .expect_err("incomplete secret")
            .to_string();
        assert!(err.contains("secretAccessKey"), "{err}");
    }

    #[test]
    fn prefixes_lose_their_slashes() {
        assert_eq!(prefix_path(Some("/a/b/")).as_ref(), "a/b");
        assert_eq!(prefix_path(None).as_ref(), "");
    }
}
