//! The dev cluster's S3-compatible object store, so that backups can be
//! tried without a cloud account: SeaweedFS (`weed mini`) in namespace
//! `bosun-system`, its data on a `local-path` volume, the Service `s3`, the
//! bucket `bosun-backups`, and the Secret `s3-credentials` holding the only
//! credentials it accepts.
//!
//! [`ensure`] brings all of that about and returns once the bucket answers
//! to those credentials. It is idempotent: `bosun dev up` calls it on every
//! start, and tests call it against a cluster that is already running.

mod bucket;
mod credentials;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bosun_runtime::apply::ApplyError;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client};
use sha2::{Digest as _, Sha256};

pub use credentials::{Credentials, CredentialsError};

use crate::addons;
use crate::image::{self, ImageError};
use crate::layout::Layout;
use crate::readiness::{Timeout, wait_until};
use crate::tools::{Tools, ToolsError};

/// The namespace of the object store (and of bosun's own workloads).
pub const NAMESPACE: &str = "bosun-system";
/// The Service in front of the S3 port.
pub const SERVICE: &str = "s3";
/// The Secret with the credentials, for clients.
pub const SECRET: &str = "s3-credentials";
/// The key of the access key ID in [`SECRET`].
pub const ACCESS_KEY_ID_KEY: &str = "accessKeyID";
/// The key of the secret access key in [`SECRET`].
pub const SECRET_ACCESS_KEY_KEY: &str = "secretAccessKey";
/// The bucket that exists once [`ensure`] returns.
pub const BUCKET: &str = "bosun-backups";
/// The endpoint as pods name it.
pub const IN_CLUSTER_ENDPOINT: &str = "http://s3.bosun-system.svc";
/// The region clients sign for. SeaweedFS has no regions and accepts any;
/// this is the one S3 clients default to.
pub const REGION: &str = "us-east-1";

/// The Secret SeaweedFS reads its identities from (`s3.json`).
const SERVER_CONFIG_SECRET: &str = "seaweedfs-s3-config";
/// The Deployment running SeaweedFS.
const DEPLOYMENT: &str = "seaweedfs";
/// The Service's port (the container's is 8333).
const SERVICE_PORT: u16 = 80;
/// How long a pod may take to run and answer: the volume is provisioned
/// and the image unpacked first, then SeaweedFS starts in about a second.
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// How long `ensure` waits for another `ensure` of the same state
/// directory: enough for that one's first image import and pod start.
const LOCK_DEADLINE: Duration = Duration::from_secs(300);
/// How long one S3 request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the object store is and how to sign in.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    /// `http://<the Service's cluster IP>`: reachable from the dev
    /// cluster's host as well as from pods (which can also use
    /// [`IN_CLUSTER_ENDPOINT`]).
    pub endpoint: String,
    /// The credentials, as in the Secret [`SECRET`].
    pub credentials: Credentials,
}

/// Why the object store could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// A program is missing.
    #[error(transparent)]
    Tools(#[from] ToolsError),
    /// The image could not be built or imported.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The credentials file.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// An object could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A wait ran out.
    #[error("object store: {0}")]
    Wait(#[from] Timeout),
    /// The API server refused a read.
    #[error("object store: reading {what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// S3 refused a request.
    #[error("object store: {what}: S3 answered {status} {code}")]
    S3 {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The S3 error code, if any.
        code: String,
    },
    /// A local step failed (the lock, a blocking task), with what it was.
    #[error("object store: {0}")]
    Other(String),
}

/// Builds and imports the SeaweedFS image if needed, keeps or makes the
/// credentials in the state directory, applies the Secrets, volume,
/// Deployment and Service, waits until the pod is ready, and makes the
/// bucket [`BUCKET`] if it is missing. Returns once the bucket answers
/// through the Service with the credentials.
///
/// Calls for one state directory are serialized with a lock file, so
/// parallel tests can each call it. Needs root (containerd's socket).
pub async fn ensure(
    client: &Client,
    tools: &Tools,
    layout: &Layout,
) -> Result<ObjectStore, ObjectStoreError> {
    let started = Instant::now();
    let _lock = lock(layout).await?;

    let (tools_owned, images_dir) = (tools.clone(), layout.images());
    let built =
        tokio::task::spawn_blocking(move || image::build_seaweedfs(&tools_owned, &images_dir))
            .await
            .map_err(|e| ObjectStoreError::Other(format!("building the image: {e}")))??;
    let ctr = tools.bin("ctr")?;
    image::import(
        &ctr,
        &layout.containerd_socket(),
        std::slice::from_ref(&built),
    )
    .await?;

    let credentials = Credentials::load_or_create(&layout.s3_credentials())?;
    let config = server_config(&credentials);
    addons::apply_resource(client, &namespace_object()).await?;
    addons::apply_resource(client, &client_secret(&credentials)).await?;
    addons::apply_resource(client, &server_config_secret(&config)).await?;
    addons::apply_yaml(client, "seaweedfs", &manifests(&built.name, &config)).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    wait_until(
        "the object store's pod (Deployment bosun-system/seaweedfs) to be ready",
        READY_DEADLINE,
        Duration::from_millis(250),
        || {
            let deployments = deployments.clone();
            async move { deployment_ready(&deployments).await }
        },
    )
    .await?;

    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let service = services
        .get(SERVICE)
        .await
        .map_err(|source| ObjectStoreError::Api {
            what: format!("Service {NAMESPACE}/{SERVICE}"),
            source,
        })?;
    let ip: IpAddr = service
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ObjectStoreError::Other(format!("Service {NAMESPACE}/{SERVICE} has no cluster IP"))
        })?;
    let addr = SocketAddr::new(ip, SERVICE_PORT);
    ensure_bucket(addr, &credentials).await?;
    tracing::info!(endpoint = %format!("http://{ip}"), bucket = BUCKET, elapsed = ?started.elapsed(), "object store ready");
    Ok(ObjectStore {
        endpoint: format!("http://{ip}"),
        credentials,
    })
}

/// Takes the exclusive lock of this state directory's object store,
/// waiting up to [`LOCK_DEADLINE`] for another `ensure` to finish.
async fn lock(layout: &Layout) -> Result<nix::fcntl::Flock<std::fs::File>, ObjectStoreError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = layout.run().join("object-store.lock");
    let failed = |e: &dyn std::fmt::Display| {
        ObjectStoreError::Other(format!("locking {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    }
    let mut file = std::fs::File::create(&path).map_err(|e| failed(&e))?;
    let deadline = Instant::now() + LOCK_DEADLINE;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(failed(&format!(
                    "another process held it for more than {LOCK_DEADLINE:?}"
                )));
            }
            Err((_, e)) => return Err(failed(&e)),
        }
    }
}

/// The Deployment has seen its current spec and runs exactly one pod of
/// it, ready. An `Err` says what is missing, for the timeout message.
async fn deployment_ready(deployments: &Api<Deployment>) -> Result<bool, String> {
    let deployment = deployments
        .get_opt(DEPLOYMENT)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the Deployment does not exist")?;
    let generation = deployment.metadata.generation.unwrap_or_default();
    let status = deployment.status.unwrap_or_default();
    let current = status.observed_generation.unwrap_or_default() >= generation;
    let ready = current
        && status.replicas == Some(1)
        && status.updated_replicas == Some(1)
        && status.ready_replicas == Some(1)
        && status.available_replicas == Some(1);
    if ready {
        return Ok(true);
    }
    let conditions: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status != "True")
        .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
        .collect();
    Err(format!(
        "{} of 1 pods ready{}",
        status.ready_replicas.unwrap_or_default(),
        if conditions.is_empty() {
            String::new()
        } else {
            format!("; {}", conditions.join("; "))
        }
    ))
}

/// Waits until S3 answers for the bucket through the Service, and makes the
/// bucket if it is missing. kube-proxy may take a moment to route a new
/// pod, so any failure is retried until the deadline.
async fn ensure_bucket(
    addr: SocketAddr,
    credentials: &Credentials,
) -> Result<(), ObjectStoreError> {
    let client = bucket::http_client().map_err(ObjectStoreError::Other)?;
    let endpoint = format!("http://{addr}");
    let send = |method| {
        bucket::bucket_request(
            &client,
            &endpoint,
            BUCKET,
            method,
            credentials,
            REGION,
            REQUEST_TIMEOUT,
        )
    };
    // Right after the pod starts, S3 may answer 404 for a bucket (and for
    // its creation) before its filer is ready: both steps are retried
    // together until the bucket is there.
    let last_refusal = std::cell::RefCell::new(None);
    let ready = wait_until(
        &format!("S3 at {addr} to have bucket {BUCKET}"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            let response = send(http::Method::HEAD).await?;
            match response.status {
                200 => return Ok(true),
                404 => {}
                other => {
                    return Err(format!(
                        "HTTP {other} {}",
                        response.error_code.unwrap_or_default()
                    ));
                }
            }
            let created = send(http::Method::PUT).await?;
            match (created.status, created.error_code.as_deref()) {
                (200, _) | (409, Some("BucketAlreadyOwnedByYou")) => {
                    tracing::info!(bucket = BUCKET, "bucket created");
                    Ok(true)
                }
                (status, code) => {
                    *last_refusal.borrow_mut() =
                        Some((status, code.unwrap_or_default().to_string()));
                    Ok(false)
                }
            }
        },
    )
    .await;
    match (ready, last_refusal.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some((status, code))) => Err(ObjectStoreError::S3 {
            what: format!("creating bucket {BUCKET}"),
            status,
            code,
        }),
        (Err(e), None) => Err(e.into()),
    }
}

/// SeaweedFS's S3 configuration: one identity, allowed everything, with the
/// given credentials. Requests signed with anything else are refused, and
/// anonymous ones too.
pub fn server_config(credentials: &Credentials) -> String {
    serde_json::json!({
        "identities": [{
            "name": "bosun",
            "credentials": [{
                "accessKey": credentials.access_key_id,
                "secretKey": credentials.secret_access_key,
            }],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]
    })
    .to_string()
}

/// The PersistentVolumeClaim, Deployment and Service, for the
/// image `image` and the server configuration `config` (whose hash goes
/// into the pod template, so that new credentials restart the pod).
pub fn manifests(image: &str, config: &str) -> String {
    let hash = Sha256::digest(config.as_bytes());
    let hash: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    include_str!("../manifests/seaweedfs.yaml")
        .replace("SEAWEEDFS_IMAGE", image)
        .replace("CONFIG_HASH", &hash)
}

fn namespace_object() -> k8s_openapi::api::core::v1::Namespace {
    k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        ..Default::default()
    }
}

fn secret(name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "seaweedfs".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The Secret clients read: [`ACCESS_KEY_ID_KEY`] and [`SECRET_ACCESS_KEY_KEY`].
pub fn client_secret(credentials: &Credentials) -> Secret {
    secret(
        SECRET,
        BTreeMap::from([
            (
                ACCESS_KEY_ID_KEY.to_string(),
                ByteString(credentials.access_key_id.clone().into_bytes()),
            ),
            (
                SECRET_ACCESS_KEY_KEY.to_string(),
                ByteString(credentials.secret_access_key.clone().into_bytes()),
            ),
        ]),
    )
}

fn server_config_secret(config: &str) -> Secret {
    secret(
        SERVER_CONFIG_SECRET,
        BTreeMap::from([(
            "s3.json".to_string(),
            ByteString(config.as_bytes().to_vec()),
        )]),
    )
}

#[cfg(test)]
mod tests {
    use kube::api::DynamicObject;
    use serde::Deserialize as _;

    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            access_key_id: "BOSUNAAAAAAAAAAAAAAA".into(),
            secret_access_key: "s".repeat(40),
        }
    }

    #[test]
    fn manifests_parse_and_carry_the_image_and_config_hash() {
        let config = server_config(&credentials());
        let text = manifests("bosun.dev/seaweedfs:4.48", &config);
        let objects: Vec<DynamicObject> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| DynamicObject::deserialize(d).expect("object"))
            .collect();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o.types.as_ref().expect("types").kind.as_str())
            .collect();
        assert_eq!(kinds, ["PersistentVolumeClaim", "Deployment", "Service"]);
        assert!(text.contains("image: bosun.dev/seaweedfs:4.48"));
        let deployment = &objects[1].data["spec"];
        assert_eq!(deployment["strategy"]["type"], "Recreate");
        let pod = &deployment["template"]["spec"];
        assert_eq!(
            pod["volumes"][1]["secret"]["secretName"],
            SERVER_CONFIG_SECRET
        );
        let args = pod["containers"][0]["args"].as_array().expect("args");
        assert!(
            args.iter()
                .any(|a| a == "-s3.config=/etc/seaweedfs/s3.json")
        );
        assert_eq!(objects[2].metadata.name.as_deref(), Some(SERVICE));
        assert_eq!(objects[2].data["spec"]["ports"][0]["port"], SERVICE_PORT);

        let hash = |c: &Credentials| {
            let text = manifests("x/y:1", &server_config(c));
            let objects: Vec<DynamicObject> = serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| DynamicObject::deserialize(d).expect("object"))
                .collect();
            objects[1].data["spec"]["template"]["metadata"]["annotations"]["bosun.dev/s3-config"]
                .as_str()
                .expect("hash")
                .to_string()
        };
        let mut other = credentials();
        other.secret_access_key = "t".repeat(40);
        assert_eq!(hash(&credentials()).len(), 16);
        assert_ne!(hash(&credentials()), hash(&other));
    }

    #[test]
    fn server_config_has_one_identity_with_the_credentials() {
        let config: serde_json::Value =
            serde_json::from_str(&server_config(&credentials())).expect("json");
        let identities = config["identities"].as_array().expect("identities");
        assert_eq!(identities.len(), 1);
        assert_eq!(
            identities[0]["credentials"][0]["accessKey"],
            "BOSUNAAAAAAAAAAAAAAA"
        );
        assert_eq!(identities[0]["credentials"][0]["secretKey"], "s".repeat(40));
    }

    #[test]
    fn the_client_secret_has_the_two_documented_keys() {
        let secret = client_secret(&credentials());
        assert_eq!(secret.metadata.name.as_deref(), Some(SECRET));
        assert_eq!(secret.metadata.namespace.as_deref(), Some(NAMESPACE));
        let data = secret.data.expect("data");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [ACCESS_KEY_ID_KEY, SECRET_ACCESS_KEY_KEY]
        );
        assert_eq!(data[ACCESS_KEY_ID_KEY].0, b"BOSUNAAAAAAAAAAAAAAA");
    }
}
