//! `EtcdRestore`: bring an existing EtcdCluster back to the contents of a
//! backup, and `RestoreSource`, the way both a restore and a new cluster's
//! bootstrap name the backup they start from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Restores an existing EtcdCluster in place from a backup: the operator stops
/// the members, restores the seed member from the snapshot (after verifying
/// it), and regrows the cluster. The EtcdCluster object and its spec are kept.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etcd.bosun.dev",
    version = "v1alpha1",
    kind = "EtcdRestore",
    plural = "etcdrestores",
    namespaced,
    category = "bosun",
    status = "EtcdRestoreStatus",
    derive = "PartialEq",
    doc = "Restores an existing EtcdCluster in place from a backup.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.restoredRevision"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("an EtcdRestore's spec is immutable: create a new EtcdRestore to restore again"))]
#[serde(rename_all = "camelCase")]
pub struct EtcdRestoreSpec {
    /// Name of the EtcdCluster, in this namespace, to restore.
    #[schemars(length(min = 1, max = 63))]
    pub cluster_name: String,
    /// The backup to restore.
    pub source: RestoreSource,
}

/// The backup a restore starts from: exactly one of `backup` or `location`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.backup) != has(self.location)")
    .message("source needs exactly one of backup (an EtcdBackup's snapshot) or location (a snapshot URL)"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// A snapshot recorded in an EtcdBackup's status, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupReference>,
    /// A snapshot at an explicit location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<SnapshotLocation>,
}

/// A snapshot recorded by an EtcdBackup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    /// Name of the EtcdBackup.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Which of its recorded backups: 0 is the newest (the default), 1 the
    /// one before it, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub index: Option<i32>,
}

/// A snapshot at an explicit location.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotLocation {
    /// URL of the snapshot: s3://bucket/key, gs://bucket/key,
    /// azure://container/key or file:///path.
    #[schemars(length(min = 1), pattern(r"^(s3|gs|azure|file)://.+$"))]
    pub url: String,
    /// Name of a Secret in this namespace holding the store's credentials
    /// (same keys as EtcdBackup's credentialsSecret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// For s3:// URLs: the S3-compatible endpoint, when not AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// For s3:// URLs: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Expected SHA-256 of the snapshot, in hex; checked before anything is
    /// restored when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// Where an EtcdRestore stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRestoreStatus {
    /// Pending, Running, then Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// Conditions describing progress and failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The etcd revision of the restored snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_revision: Option<i64>,
    /// The snapshot this restore is pinned to: resolved once from
    /// spec.source and verified before the cluster is touched; the restore
    /// uses exactly this object, whatever happens to the backup's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinnedSnapshot>,
}

/// A snapshot a restore is pinned to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PinnedSnapshot {
    /// Where it is, with the SHA-256 that was verified.
    pub location: SnapshotLocation,
    /// Its size in bytes.
    pub size: i64,
    /// The etcd revision it holds, when a backup recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// Phase of an EtcdRestore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePhase {
    /// Accepted, not started.
    Pending,
    /// Members are being stopped, restored and regrown.
    Running,
    /// The cluster holds the snapshot's data.
    Succeeded,
    /// The restore failed; see the conditions. The cluster's data was left as it was
    /// when the failure was found before wiping.
    Failed,
}
