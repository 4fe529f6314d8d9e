//! `EtcdBackup`: one-shot or scheduled snapshots of an EtcdCluster into
//! object storage, with retention.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many backups an EtcdBackup's status lists at most (newest first).
pub const MAX_RECORDED_BACKUPS: usize = 20;
/// Default and bounds of `spec.timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 600;

/// Takes snapshots of an EtcdCluster into object storage: once when
/// `schedule` is absent, on a cron schedule otherwise.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etcd.bosun.dev",
    version = "v1alpha1",
    kind = "EtcdBackup",
    plural = "etcdbackups",
    namespaced,
    category = "bosun",
    status = "EtcdBackupStatus",
    derive = "PartialEq",
    doc = "Snapshots of an EtcdCluster in object storage: one-shot or on a cron schedule, with retention, each verified before it counts.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.clusterName == oldSelf.clusterName")
    .message("spec.clusterName is immutable: create another EtcdBackup for another cluster"))]
#[x_kube(validation = Rule::new("self.storage == oldSelf.storage")
    .message("spec.storage is immutable: retention only ever deletes what this EtcdBackup wrote, so a new destination needs a new EtcdBackup"))]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupSpec {
    /// Name of the EtcdCluster, in this namespace, to back up.
    #[schemars(length(min = 1, max = 63))]
    pub cluster_name: String,
    /// Where snapshots go: exactly one of s3, gcs, azure or file.
    pub storage: BackupStorage,
    /// Cron schedule ("0 */6 * * *"; an optional leading seconds field is
    /// accepted). Absent: a single backup, taken once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub schedule: Option<String>,
    /// How many backups to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// How long one backup may take before it is abandoned and marked failed.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: i32,
}

fn default_timeout_seconds() -> i32 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Where snapshots are stored: exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.s3), has(self.gcs), has(self.azure), has(self.file)].filter(x, x).size() == 1")
    .message("spec.storage needs exactly one of s3, gcs, azure or file"))]
#[serde(rename_all = "camelCase")]
pub struct BackupStorage {
    /// An S3-compatible bucket (AWS S3, Aliyun OSS, MinIO, Ceph, SeaweedFS, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// A Google Cloud Storage bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
    /// An Azure Blob Storage container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorage>,
    /// A directory the operator can write (a mounted volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStorage>,
}

/// An S3-compatible bucket.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix for this backup's objects, e.g. "prod/etcd/".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region, e.g. "us-east-1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server, e.g. "http://s3.bosun-system:8333".
    /// Absent: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^https?://.+$"))]
    pub endpoint: Option<String>,
    /// Address buckets as endpoint/bucket (MinIO, SeaweedFS, Ceph) rather than
    /// bucket.endpoint (AWS, Aliyun OSS). Defaults to true when an endpoint is
    /// set, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Name of a Secret in this namespace with keys accessKeyID and
    /// secretAccessKey (and optionally sessionToken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// A Google Cloud Storage bucket.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    /// Object name prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Name of a Secret in this namespace with key serviceAccountKey (a JSON
    /// key). Absent: workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// An Azure Blob Storage container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorage {
    /// Storage account name.
    #[schemars(length(min = 3, max = 24))]
    pub account: String,
    /// Container name.
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    /// Blob name prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Name of a Secret in this namespace with key accessKey (or sasToken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// A directory on a volume the operator can write.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileStorage {
    /// Absolute path of the directory.
    #[schemars(pattern("^/.*$"))]
    pub path: String,
}

/// Which backups to keep.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Keep this many newest successful backups; older objects written by
    /// this EtcdBackup are deleted.
    #[schemars(range(min = 1, max = 1000))]
    pub max_backups: i32,
}

/// Where an EtcdBackup stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// A one-word summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// Conditions describing the last run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the last verified backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// When the next scheduled backup starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The scheduled time of the last run, whatever its outcome: runs are
    /// counted from it, so that times missed while the operator was down
    /// make one run, not many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// Verified backups, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub backups: Vec<BackupRecord>,
    /// A multipart upload a run began and has not finished: recorded before
    /// its first part, so that an upload cut short (the operator killed,
    /// the run timed out) is aborted by the next run instead of keeping
    /// its parts in the bucket for good. Written as null when there is none.
    #[serde(default)]
    pub upload: Option<UploadInProgress>,
}

/// A multipart upload in the EtcdBackup's store.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadInProgress {
    /// The object's path in the store.
    pub path: String,
    /// The store's id of the upload.
    pub upload_id: String,
}

/// Phase of an EtcdBackup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupPhase {
    /// Accepted; no backup taken yet.
    Pending,
    /// A snapshot is being taken.
    Running,
    /// The (one-shot) backup is stored and verified.
    Succeeded,
    /// The last backup failed; see the conditions.
    Failed,
    /// Waiting for the next scheduled run; the last one succeeded.
    Scheduled,
}

/// One verified backup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// URL of the snapshot object (s3://bucket/key, file:///path, ...).
    pub location: String,
    /// etcd revision of the snapshot.
    pub revision: i64,
    /// Size of the snapshot in bytes.
    pub size_bytes: i64,
    /// SHA-256 of the snapshot, in hex.
    pub sha256: String,
    /// etcd version of the member the snapshot was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// When the snapshot started.
    pub start_time: Time,
    /// When the snapshot was stored and verified.
    pub completion_time: Time,
}
