//! `EtcdCluster`: an etcd cluster of `size` members, each a pod on its own
//! persistent volume, managed by the bosun operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, PodSecurityContext, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::restore::RestoreSource;
use crate::version::{VERSION_PATTERN, default_etcd_version};

/// The smallest cluster size.
pub const MIN_SIZE: i32 = 1;
/// The largest cluster size: etcd recommends at most 7 voters; 9 leaves room
/// for a larger failure budget and nothing beyond is sensible.
pub const MAX_SIZE: i32 = 9;
/// The size a cluster gets when its spec names none: tolerates one failure.
pub const DEFAULT_SIZE: i32 = 3;
/// The volume size of a member when its spec names none. etcd's default
/// backend quota is 2 GiB; the WAL and snapshot files need room beside it.
pub const DEFAULT_STORAGE_SIZE: &str = "4Gi";

/// etcd flags the operator sets itself and a user may not override through
/// `spec.etcdOptions`: they carry member identity, membership, addresses and
/// data placement, and a wrong value would split or wipe the cluster.
pub const OPERATOR_OWNED_ETCD_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "wal-dir",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-advertise-peer-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "discovery",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-endpoints",
    "discovery-token",
    "force-new-cluster",
    "config-file",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "auto-tls",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "peer-auto-tls",
];

/// At most this many `etcdOptions` (the schema says so too, which keeps the
/// API server's CEL cost estimate for the owned-flag rule within budget).
pub const MAX_ETCD_OPTIONS: usize = 32;

/// The pattern an `etcdOptions` key must match: a long flag name without the
/// leading dashes.
pub const ETCD_FLAG_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";

/// An etcd cluster managed by bosun.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etcd.bosun.dev",
    version = "v1alpha1",
    kind = "EtcdCluster",
    plural = "etcdclusters",
    namespaced,
    shortname = "etcd",
    category = "bosun",
    status = "EtcdClusterStatus",
    derive = "PartialEq",
    doc = "An etcd cluster whose members run as pods on persistent volumes, created, scaled, healed and upgraded by the bosun operator.",
    scale(
        spec_replicas_path = ".spec.size",
        status_replicas_path = ".status.readyMembers"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.size",
        description = "Members the cluster should have"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyMembers",
        description = "Members that are healthy"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.currentVersion",
        description = "etcd version every member runs"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.bootstrap) ? !has(self.bootstrap) : (has(self.bootstrap) && self.bootstrap == oldSelf.bootstrap)"
).message("spec.bootstrap is immutable: it only describes how the cluster was first created"))]
#[x_kube(validation = Rule::new(
    "int(self.version.split('.')[0]) != int(oldSelf.version.split('.')[0]) || int(self.version.split('.')[1]) >= int(oldSelf.version.split('.')[1])"
).message("spec.version may not go down a minor version: etcd cannot run on data written by a newer minor version; restore a backup into a new cluster instead"))]
#[x_kube(validation = Rule::new(
    "int(self.version.split('.')[0]) != int(oldSelf.version.split('.')[0]) || int(self.version.split('.')[1]) <= int(oldSelf.version.split('.')[1]) + 1"
).message("spec.version may go up one minor version at a time (for example 3.5.x to 3.6.x, then 3.7.x)"))]
#[x_kube(validation = Rule::new(
    "int(self.version.split('.')[0]) == int(oldSelf.version.split('.')[0])"
).message("spec.version may not change its major version"))]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterSpec {
    /// Number of voting members, 1 to 9. Odd sizes make the most of each
    /// member: 3 survives one failure, 5 survives two. `kubectl scale` changes it.
    #[serde(default = "default_size")]
    #[schemars(range(min = 1, max = 9))]
    pub size: i32,

    /// etcd version (MAJOR.MINOR.PATCH, e.g. "3.6.5"). Defaults to the newest
    /// version bosun ships an image for. Changing it rolls the members one at a
    /// time; only one minor version up at a time, never down a minor version.
    #[serde(default = "default_version")]
    #[schemars(pattern(VERSION_PATTERN))]
    pub version: String,

    /// Image repository for members, overriding the default
    /// (gcr.io/etcd-development/etcd). The tag is always "v" + version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), pattern(r"^[^:@\s]+(:[0-9]+)?(/[^:@\s]+)*$"))]
    pub image: Option<String>,

    /// Stops every change the operator would make to the cluster while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// How long a member's new pod may take to become ready before the
    /// operator gives the change up (default 300): an upgraded member that
    /// never ran the new version goes back to the version that last ran on
    /// its volume, and the upgrade stops; a new learner that never started
    /// is removed, and the scale-up stops. Either waits for the next spec
    /// change (status.halted says which and why). Neither takes anything
    /// from quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub member_start_deadline_seconds: Option<i32>,

    /// Where members keep their data: a PersistentVolumeClaim each (default),
    /// or an emptyDir for throw-away clusters.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Pod settings merged into every member pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<MemberPodTemplate>,

    /// Extra etcd flags, by long name without dashes, e.g.
    /// {"quota-backend-bytes": "8589934592", "auto-compaction-retention": "1h"}.
    /// Flags the operator owns (name, data-dir, initial-cluster, URLs, TLS files, ...)
    /// are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Bounded so that the API server's CEL cost estimate stays in budget.
    #[schemars(extend("maxProperties" = MAX_ETCD_OPTIONS))]
    #[x_kube(validation = Rule::new(
        "self.all(k, k.matches('^[a-z0-9][a-z0-9-]*$'))"
    ).message("spec.etcdOptions keys are etcd flag names without leading dashes, such as quota-backend-bytes"))]
    #[x_kube(validation = Rule::new(
        "self.all(k, !(k in ['name', 'data-dir', 'wal-dir', 'initial-cluster', 'initial-cluster-state', 'initial-cluster-token', 'initial-advertise-peer-urls', 'advertise-client-urls', 'listen-peer-urls', 'listen-client-urls', 'listen-metrics-urls', 'discovery', 'discovery-srv', 'discovery-srv-name', 'discovery-endpoints', 'discovery-token', 'force-new-cluster', 'config-file', 'cert-file', 'key-file', 'trusted-ca-file', 'client-cert-auth', 'auto-tls', 'peer-cert-file', 'peer-key-file', 'peer-trusted-ca-file', 'peer-client-cert-auth', 'peer-auto-tls']))"
    ).message("spec.etcdOptions may not set a flag the operator owns (member names, data directories, cluster membership, URLs, TLS files)"))]
    pub etcd_options: BTreeMap<String, String>,

    /// TLS for client and peer traffic. Reserved: not yet supported, and
    /// setting it has no effect yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// How the cluster is first created. Absent: an empty cluster. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

fn default_size() -> i32 {
    DEFAULT_SIZE
}

fn default_version() -> String {
    default_etcd_version().to_string()
}

impl Default for EtcdClusterSpec {
    fn default() -> Self {
        EtcdClusterSpec {
            size: DEFAULT_SIZE,
            version: default_version(),
            image: None,
            paused: false,
            member_start_deadline_seconds: None,
            storage: StorageSpec::default(),
            pod_template: None,
            etcd_options: BTreeMap::new(),
            tls: None,
            bootstrap: None,
        }
    }
}

/// Member storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.emptyDir) || !self.emptyDir || !has(self.storageClassName)")
    .message("spec.storage.storageClassName applies to PersistentVolumeClaims; remove it or set emptyDir to false"))]
#[x_kube(validation = Rule::new("!has(self.emptyDir) || !has(self.retainOnDelete) || !(self.emptyDir && self.retainOnDelete)")
    .message("spec.storage.retainOnDelete applies to PersistentVolumeClaims; an emptyDir is always deleted with its pod"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume (its PersistentVolumeClaim request, or the
    /// emptyDir's size limit).
    #[serde(default = "default_storage_size")]
    #[schemars(schema_with = "volume_size_schema")]
    pub size: Quantity,

    /// StorageClass of the members' PersistentVolumeClaims; the cluster's
    /// default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub storage_class_name: Option<String>,

    /// Keep data on an emptyDir instead of a PersistentVolumeClaim. Data does
    /// not survive the loss of a member's pod: for throw-away clusters only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_dir: bool,

    /// Keep the members' PersistentVolumeClaims when the EtcdCluster is deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
}

/// The pattern of a volume size: whole bytes, or with a binary or decimal suffix.
pub const VOLUME_SIZE_PATTERN: &str = "^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// A volume size is written as a string ("4Gi"); the schema says so and checks
/// its form, so that the API server refuses "4 GB" or "-1".
fn volume_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": VOLUME_SIZE_PATTERN,
        "default": DEFAULT_STORAGE_SIZE,
    })
}

fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_string())
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            empty_dir: false,
            retain_on_delete: false,
        }
    }
}

/// Pod settings merged into every member pod. The operator owns the
/// containers, volumes, hostname and restart policy; everything a platform
/// engineer usually tunes is here.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberPodTemplate {
    /// Labels added to member pods (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Resources of the etcd container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity of member pods (spread members over nodes and zones here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of member pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Pod security context of member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// PriorityClass of member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra environment variables of the etcd container (ETCD_* variables
    /// are refused: use etcdOptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// TLS settings. Reserved for a later release: it has no fields yet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TlsSpec {}

/// How a cluster is first created.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Create the cluster from a backup: its first member restores the
    /// snapshot, then the cluster grows to its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<BootstrapRestore>,
}

/// Seed a new cluster from a backup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRestore {
    /// The backup to restore.
    pub source: RestoreSource,
}

/// Where an EtcdCluster stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// A one-word summary of the cluster's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// Available, Progressing and Degraded conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members as etcd itself lists them, with their health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Members that are healthy voters.
    #[serde(default)]
    pub ready_members: i32,
    /// The version every member runs (the lowest, during an upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The version the operator is moving the cluster to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The address clients use: the client Service's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<String>,
    /// The cluster controller's acknowledgement of the last in-place
    /// restore (EtcdRestore) it carried out: an EtcdRestore succeeds only
    /// when this names its uid with outcome Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreAcknowledgement>,
    /// An upgrade or scale-up the operator gave up because a member did not
    /// start within spec.memberStartDeadlineSeconds. It holds for the spec
    /// generation it names: any spec change tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<HaltedChange>,
}

/// A change given up because a member could not start.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HaltedChange {
    /// What was given up.
    pub change: HaltedKind,
    /// The spec generation it was given up for.
    pub generation: i64,
    /// The member that could not start.
    pub member: String,
    /// The version an upgraded member was returned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<String>,
    /// The image it was returned to (the one that last ran on its volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_image: Option<String>,
    /// The number of voters a halted scale-up holds the cluster at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_size: Option<i32>,
    /// Why, in the pod's own words where it has them.
    pub message: String,
}

/// Which change was given up.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HaltedKind {
    /// An upgrade: the member runs the version before it again.
    #[default]
    Upgrade,
    /// A scale-up: the learner was removed.
    ScaleUp,
}

/// The default of spec.memberStartDeadlineSeconds.
pub const DEFAULT_MEMBER_START_DEADLINE_SECONDS: i32 = 300;

impl EtcdClusterSpec {
    /// How long a member's new pod may take to become ready.
    pub fn member_start_deadline(&self) -> std::time::Duration {
        let seconds = self
            .member_start_deadline_seconds
            .unwrap_or(DEFAULT_MEMBER_START_DEADLINE_SECONDS)
            .max(1);
        std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
    }
}

/// What the cluster controller says of an in-place restore it took on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreAcknowledgement {
    /// The EtcdRestore's name.
    pub name: String,
    /// The EtcdRestore's uid.
    pub uid: String,
    /// InProgress once the controller has taken the restore on (before it
    /// wipes anything), then Succeeded.
    pub outcome: RestoreOutcome,
    /// The etcd revision of the snapshot the cluster was restored to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// What the controller last said about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where the cluster controller stands with an in-place restore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Taken on: members are being stopped, restored and regrown.
    #[default]
    InProgress,
    /// The cluster holds the snapshot's data at full size.
    Succeeded,
}

/// One-word summary of an EtcdCluster's state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterPhase {
    /// The seed member is being created.
    Creating,
    /// Every member is healthy and the cluster has its size and version.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// Members are being moved to a new version.
    Upgrading,
    /// The cluster is being restored from a backup.
    Restoring,
    /// Some members are unhealthy or quorum is lost; see the Degraded condition.
    Degraded,
    /// `spec.paused` is set: the operator changes nothing.
    Paused,
    /// The spec is invalid; see the conditions.
    Invalid,
}

/// One etcd member, as etcd lists it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name (also its pod's name).
    pub name: String,
    /// etcd member ID, in hex.
    pub id: String,
    /// Peer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "peerURL")]
    pub peer_url: Option<String>,
    /// Client URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
    /// Whether the member answers its health check.
    #[serde(default)]
    pub ready: bool,
    /// Whether the member is the raft leader.
    #[serde(default)]
    pub leader: bool,
    /// Whether the member is a learner (not yet voting).
    #[serde(default)]
    pub learner: bool,
    /// etcd version the member runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
