//! The Kubernetes objects an `EtcdCluster` owns, computed from its spec: the
//! headless peer Service, the client Service, the PodDisruptionBudget, and per
//! member a pod and (unless the cluster runs on emptyDir) a
//! PersistentVolumeClaim. Pure functions: no client, no I/O; the reconciler
//! applies what they return.
//!
//! A member's name is also its pod's name, its PVC's name and its etcd
//! `--name`: `<cluster>-<suffix>`. Members find each other by the DNS names
//! the headless Service gives their pods, `<member>.<cluster>.<ns>.svc`.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bosun_api::cluster::OPERATOR_OWNED_ETCD_FLAGS;
use bosun_api::restore::SnapshotLocation;
use bosun_api::version::DEFAULT_ETCD_IMAGE_REPOSITORY;
use bosun_api::{EtcdCluster, EtcdVersion};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, HostPathVolumeSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSpec, Probe, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

/// The port clients reach etcd on.
pub const CLIENT_PORT: i32 = 2379;
/// The port members talk raft on.
pub const PEER_PORT: i32 = 2380;
/// The port etcd serves `/metrics` (and `/health`) on.
pub const METRICS_PORT: i32 = 2381;

/// `app.kubernetes.io/name`: what runs; always [`APP_NAME`] here.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the EtcdCluster's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by`: always [`MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label on every object of a cluster with the EtcdCluster's uid: with
/// [`MANAGED_BY_LABEL`], what the operator selects its objects by.
pub const CLUSTER_UID_LABEL: &str = "etcd.bosun.dev/cluster-uid";
/// The label on member pods and PVCs that names their member.
pub const MEMBER_LABEL: &str = "etcd.bosun.dev/member";
/// The value of [`NAME_LABEL`].
pub const APP_NAME: &str = "etcd";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGER: &str = "bosun";

/// The annotation on an EtcdCluster that an EtcdRestore is bringing it
/// back to a backup: `<EtcdRestore name>/<its uid>`. Set by the restore
/// controller once the snapshot is verified; removed by the cluster
/// controller when the restored cluster has its full size.
pub const RESTORE_ANNOTATION: &str = "etcd.bosun.dev/restore";
/// The annotation on member pods and PVCs made during an in-place restore:
/// the EtcdRestore's uid. What lacks it predates the restore and is wiped.
pub const RESTORE_ID_ANNOTATION: &str = "etcd.bosun.dev/restore-id";

/// The in-place restore an EtcdCluster is marked for, as `(name, uid)` of
/// the EtcdRestore. A mark is a request, not a fact: the cluster controller
/// acts on it only for a live, pinned EtcdRestore of that uid.
pub fn restore_in_progress(cluster: &EtcdCluster) -> Option<(String, String)> {
    let (name, uid) = parse_restore_mark(cluster.annotations().get(RESTORE_ANNOTATION)?)?;
    Some((name.to_string(), uid.to_string()))
}

/// The value of [`RESTORE_ANNOTATION`] for an EtcdRestore: `<name>/<uid>`.
pub fn restore_mark(name: &str, uid: &str) -> String {
    format!("{name}/{uid}")
}

/// `(name, uid)` of a [`restore_mark`]; `None` for anything else.
pub fn parse_restore_mark(mark: &str) -> Option<(&str, &str)> {
    let (name, uid) = mark.split_once('/')?;
    (!name.is_empty() && !uid.is_empty()).then_some((name, uid))
}

/// The annotation on a PVC made for a restore: the [`RestoreIntent`] (as
/// JSON) its seed restores from. Every pod started on the volume restores
/// from exactly that source until the data is there, so a seed lost in the
/// middle of its restore never comes back empty.
pub const RESTORE_SOURCE_ANNOTATION: &str = "etcd.bosun.dev/restore-source";
/// The annotation on a PVC that a member has run on (`"true"`): from then
/// on the volume must hold that member's data, and a pod started on it
/// refuses to start without it.
pub const HELD_MEMBER_ANNOTATION: &str = "etcd.bosun.dev/held-member";

/// What a volume made for a restore is restored from: the snapshot pinned
/// when the restore was decided (with the SHA-256 that was verified) and
/// the restored cluster's token.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreIntent {
    /// The snapshot.
    pub source: SnapshotLocation,
    /// The restored cluster's `--initial-cluster-token`.
    pub cluster_token: String,
}

/// The restore a PVC was made for: `None` without the annotation, an error
/// when the annotation is there but unreadable (the volume must then not be
/// started at all: it was made for a restore nobody can carry out).
pub fn restore_intent_of(pvc: &PersistentVolumeClaim) -> Option<Result<RestoreIntent, String>> {
    let text = pvc.annotations().get(RESTORE_SOURCE_ANNOTATION)?;
    Some(serde_json::from_str(text).map_err(|e| {
        format!(
            "volume {}: annotation {RESTORE_SOURCE_ANNOTATION} is not a restore source: {e}",
            pvc.name_any()
        )
    }))
}

/// Whether a member has run on a PVC.
pub fn held_member(pvc: &PersistentVolumeClaim) -> bool {
    pvc.annotations()
        .get(HELD_MEMBER_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The annotation on a member pod with the etcd version it runs.
pub const VERSION_ANNOTATION: &str = "etcd.bosun.dev/version";
/// The annotation on a member pod with the `--initial-cluster-state` it was
/// started with (`new` or `existing`).
pub const INITIAL_STATE_ANNOTATION: &str = "etcd.bosun.dev/initial-state";

/// The readiness probe's path: etcd's health, less the NOSPACE alarm.
pub const READINESS_PATH: &str = "/health?exclude=NOSPACE";

/// The name of the etcd container in a member pod.
pub const ETCD_CONTAINER: &str = "etcd";
/// The name of the data volume in a member pod.
pub const DATA_VOLUME: &str = "data";
/// Where the data volume is mounted.
pub const DATA_MOUNT_PATH: &str = "/var/lib/etcd";
/// etcd's `--data-dir`: a directory inside the volume, so that what a
/// filesystem keeps at its root (`lost+found`) is not in etcd's way.
pub const DATA_DIR: &str = "/var/lib/etcd/data";

/// Length of the random part of a member name.
pub const SUFFIX_LEN: usize = 5;

/// Characters of a member name's suffix: Kubernetes' own alphabet for
/// generated names (`k8s.io/apimachinery/pkg/util/rand`), lowercase
/// alphanumerics without vowels and look-alikes, so that no suffix spells a
/// word or reads ambiguously.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Why objects cannot be computed for an EtcdCluster.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The cluster has no namespace: it did not come from the API server.
    #[error(
        "EtcdCluster {name:?} has no namespace: members' DNS names need one; read the object from the API server"
    )]
    MissingNamespace {
        /// The cluster's name.
        name: String,
    },
    /// The cluster has no uid, so nothing can name it as owner.
    #[error(
        "EtcdCluster {namespace}/{name} has no uid: owned objects could not be garbage-collected with it; read the object from the API server"
    )]
    MissingUid {
        /// The cluster's namespace.
        namespace: String,
        /// The cluster's name.
        name: String,
    },
}

/// Checks that `cluster` has what every builder here relies on: a namespace
/// (for DNS names) and a uid (for owner references and the cluster token).
/// Objects read from the API server always have both; call this once before
/// building, since the builders themselves cannot fail.
pub fn check_identity(cluster: &EtcdCluster) -> Result<(), ObjectError> {
    let name = cluster.name_any();
    let Some(namespace) = cluster.namespace() else {
        return Err(ObjectError::MissingNamespace { name });
    };
    if cluster.uid().is_none() {
        return Err(ObjectError::MissingUid { namespace, name });
    }
    Ok(())
}

/// The name of a member, its pod and its PVC: `<cluster>-<suffix>`.
pub fn member_name(cluster: &str, suffix: &str) -> String {
    format!("{cluster}-{suffix}")
}

/// A fresh random member-name suffix of [`SUFFIX_LEN`] characters from
/// `[a-z0-9]`.
///
/// Unpredictable enough that names of removed members are not reused by
/// chance, not cryptographic: std's per-process randomly keyed SipHash over
/// the clock, a counter and the process id. The caller still checks the
/// name against the members that exist.
pub fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    let base = SUFFIX_ALPHABET.len() as u64;
    (0..SUFFIX_LEN)
        .map(|_| {
            let c = SUFFIX_ALPHABET[(bits % base) as usize];
            bits /= base;
            char::from(c)
        })
        .collect()
}

/// The labels that select a cluster's members: `managed-by: bosun` and the
/// cluster's uid — labels only bosun sets. The recommended `name` and
/// `instance` labels are on every object too, for people and tools, but
/// other software sets them as well (a Helm etcd release of the same name),
/// so nothing is ever selected, deleted or routed to by them.
pub fn selector_labels(cluster: &EtcdCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
        (CLUSTER_UID_LABEL.to_string(), uid_of(cluster)),
    ])
}

/// [`selector_labels`] as a label selector string: what the operator lists
/// a cluster's pods and volumes with.
pub fn member_selector(cluster: &EtcdCluster) -> String {
    selector_string(&selector_labels(cluster))
}

/// A selector for the member pods and volumes of the cluster named `name`,
/// by its recommended labels and `managed-by: bosun`: what a person types
/// with kubectl, and what tests use. The operator itself selects by uid
/// ([`member_selector`]).
pub fn label_selector(name: &str) -> String {
    selector_string(&BTreeMap::from([
        (NAME_LABEL.to_string(), APP_NAME.to_string()),
        (INSTANCE_LABEL.to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ]))
}

fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's uid; empty only for a cluster [`check_identity`] refuses.
fn uid_of(cluster: &EtcdCluster) -> String {
    cluster.uid().unwrap_or_default()
}

/// The labels on every object a cluster owns: the recommended `name`,
/// `instance` and `managed-by`, and the cluster's uid.
pub fn cluster_labels(cluster: &EtcdCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(NAME_LABEL.to_string(), APP_NAME.to_string());
    labels.insert(INSTANCE_LABEL.to_string(), cluster.name_any());
    labels
}

/// The labels on a member's pod and PVC: [`cluster_labels`] and the member.
pub fn member_labels(cluster: &EtcdCluster, member: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_labels(cluster);
    labels.insert(MEMBER_LABEL.to_string(), member.to_string());
    labels
}

/// Whether an object is one of `cluster`'s: it carries the cluster's
/// [`selector_labels`], and its controller, if it names one, is the
/// cluster. (A retained volume, `storage.retainOnDelete`, has no owner.)
/// Checked before anything is deleted, whatever selected the object.
pub fn is_ours(meta: &ObjectMeta, cluster: &EtcdCluster) -> bool {
    let labels = meta.labels.as_ref();
    let labelled = selector_labels(cluster)
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    labelled && controller.is_none_or(|o| o.uid == uid_of(cluster) && o.kind == "EtcdCluster")
}

/// The member a pod belongs to, from its [`MEMBER_LABEL`].
pub fn member_of_pod(pod: &Pod) -> Option<String> {
    pod.labels().get(MEMBER_LABEL).cloned()
}

/// The etcd version a member pod was built to run, from its
/// [`VERSION_ANNOTATION`]; `None` when absent or not a version.
pub fn version_of_pod(pod: &Pod) -> Option<EtcdVersion> {
    pod.annotations().get(VERSION_ANNOTATION)?.parse().ok()
}

/// The initial cluster state a member pod was started with, from its
/// [`INITIAL_STATE_ANNOTATION`].
pub fn initial_state_of_pod(pod: &Pod) -> Option<InitialState> {
    InitialState::parse(pod.annotations().get(INITIAL_STATE_ANNOTATION)?)
}

/// The name of the headless Service that gives members their DNS names: the
/// cluster's name (it is the pods' `subdomain`).
pub fn peer_service_name(cluster: &str) -> String {
    cluster.to_string()
}

/// The name of the Service clients use: `<cluster>-client`.
pub fn client_service_name(cluster: &str) -> String {
    format!("{cluster}-client")
}

/// The name of the PodDisruptionBudget: the cluster's name.
pub fn pod_disruption_budget_name(cluster: &str) -> String {
    cluster.to_string()
}

/// The cluster's namespace; `default` for an object that has none, which
/// [`check_identity`] refuses before it matters.
fn namespace_of(cluster: &EtcdCluster) -> String {
    cluster.namespace().unwrap_or_else(|| "default".to_string())
}

/// A member's DNS name under the headless Service: `<member>.<cluster>.<ns>.svc`.
fn member_host(cluster: &EtcdCluster, member: &str) -> String {
    format!(
        "{member}.{}.{}.svc",
        peer_service_name(&cluster.name_any()),
        namespace_of(cluster)
    )
}

/// A member's peer URL: `http://<member>.<cluster>.<ns>.svc:2380`.
pub fn peer_url(cluster: &EtcdCluster, member: &str) -> String {
    format!("http://{}:{PEER_PORT}", member_host(cluster, member))
}

/// The client URL a member advertises: `http://<member>.<cluster>.<ns>.svc:2379`.
pub fn client_url(cluster: &EtcdCluster, member: &str) -> String {
    format!("http://{}:{CLIENT_PORT}", member_host(cluster, member))
}

/// The address clients use, for `status.clientEndpoint`:
/// `<cluster>-client.<ns>.svc:2379`.
pub fn client_endpoint(cluster: &EtcdCluster) -> String {
    format!(
        "{}.{}.svc:{CLIENT_PORT}",
        client_service_name(&cluster.name_any()),
        namespace_of(cluster)
    )
}

/// The image members of `version` run: `<spec.image or the default
/// repository>:v<version>`.
pub fn member_image(cluster: &EtcdCluster, version: &EtcdVersion) -> String {
    let repository = cluster
        .spec
        .image
        .as_deref()
        .unwrap_or(DEFAULT_ETCD_IMAGE_REPOSITORY);
    format!("{repository}:{}", version.image_tag())
}

/// The owner reference every owned object carries: the cluster, as
/// controller, blocking its deletion until the object is gone. `None` only
/// for a cluster without uid (see [`check_identity`]).
fn owner_reference(cluster: &EtcdCluster) -> Option<OwnerReference> {
    cluster
        .controller_owner_ref(&())
        .map(|owner| OwnerReference {
            block_owner_deletion: Some(true),
            ..owner
        })
}

/// Metadata of an owned object named `name` with `labels`, in the cluster's
/// namespace, owned by the cluster when `owned`.
fn owned_meta(
    cluster: &EtcdCluster,
    name: String,
    labels: BTreeMap<String, String>,
    owned: bool,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels),
        owner_references: owned
            .then(|| owner_reference(cluster))
            .flatten()
            .map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The headless Service that gives each member pod its DNS name
/// (`<member>.<cluster>.<ns>.svc`). It publishes pods before they are Ready:
/// members must find each other to form a quorum, and only then become Ready.
pub fn peer_service(cluster: &EtcdCluster) -> Service {
    let name = cluster.name_any();
    Service {
        metadata: owned_meta(
            cluster,
            peer_service_name(&name),
            cluster_labels(cluster),
            true,
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![
                service_port("client", CLIENT_PORT),
                service_port("peer", PEER_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service clients use, `<cluster>-client`: a ClusterIP over the Ready
/// members' client port.
pub fn client_service(cluster: &EtcdCluster) -> Service {
    let name = cluster.name_any();
    Service {
        metadata: owned_meta(
            cluster,
            client_service_name(&name),
            cluster_labels(cluster),
            true,
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![service_port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The votes a cluster of `size` voters needs: a majority.
pub fn quorum(size: i32) -> i32 {
    size.max(0) / 2 + 1
}

/// The PodDisruptionBudget that lets voluntary disruptions (node drains)
/// take a member only while a quorum of the spec's size stays Ready:
/// `minAvailable` is the quorum, so a cluster of 1 or 2 refuses every
/// eviction (a drain waits for the user), 3 allows one, 5 two.
pub fn pod_disruption_budget(cluster: &EtcdCluster) -> PodDisruptionBudget {
    let name = cluster.name_any();
    PodDisruptionBudget {
        metadata: owned_meta(
            cluster,
            pod_disruption_budget_name(&name),
            cluster_labels(cluster),
            true,
        ),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum(cluster.spec.size))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A member's PersistentVolumeClaim, named after the member. Owned by the
/// cluster (deleted with it) unless `spec.storage.retainOnDelete`. Not used
/// when `spec.storage.emptyDir`. A volume made for a restore carries the
/// restore's intent ([`RESTORE_SOURCE_ANNOTATION`]).
pub fn member_pvc(
    cluster: &EtcdCluster,
    member: &str,
    restore: Option<&RestoreIntent>,
) -> PersistentVolumeClaim {
    let storage = &cluster.spec.storage;
    let mut metadata = owned_meta(
        cluster,
        member.to_string(),
        member_labels(cluster, member),
        !storage.retain_on_delete,
    );
    metadata.annotations = restore.map(|intent| {
        BTreeMap::from([(
            RESTORE_SOURCE_ANNOTATION.to_string(),
            // A struct of strings always serializes.
            serde_json::to_string(intent).unwrap_or_default(),
        )])
    });
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// How a member joins: etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialState {
    /// One of the members that bootstrap a new cluster together.
    New,
    /// A member added to a running cluster (after `MemberAdd`).
    Existing,
}

impl InitialState {
    /// The flag value: `new` or `existing`.
    pub fn as_str(self) -> &'static str {
        match self {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        }
    }

    /// The state a flag value names.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "new" => Some(InitialState::New),
            "existing" => Some(InitialState::Existing),
            _ => None,
        }
    }
}

/// What a member pod is built from beyond the cluster's spec.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberPodParams {
    /// The member's name (also the pod's).
    pub member: String,
    /// Every member of the cluster this member starts into, this one
    /// included, as `(name, peer URL)`: etcd's `--initial-cluster`, in this
    /// order.
    pub initial_cluster: Vec<(String, String)>,
    /// How the member starts on its volume.
    pub start: PodStart,
    /// The etcd version to run (not `spec.version` while an upgrade rolls).
    pub version: EtcdVersion,
    /// The image to run; `None`: [`member_image`] of the version. Set only
    /// to return a member to the image that last ran on its volume.
    pub image: Option<String>,
}

/// How a member pod starts on its volume, and the init container that
/// makes that safe.
#[derive(Clone, Debug, PartialEq)]
pub enum PodStart {
    /// The first member of a new cluster, on an empty volume (`new`).
    Bootstrap,
    /// The seed of a restore: an init container restores the volume from a
    /// backup (unless the data is already there), then etcd starts `new`.
    Restore(SeedRestore),
    /// A new member's first start, joining the running cluster with an
    /// empty volume (`existing`).
    Join,
    /// A member restarting on its own data (`existing`): an init container
    /// refuses to start it on a volume without that data, so it never
    /// rejoins with an empty log under its old identity (raft amnesia).
    Resume {
        /// The image with `bosun` (`bosun check-member-data`).
        image: String,
    },
}

impl PodStart {
    /// etcd's `--initial-cluster-state` for this start.
    pub fn initial_state(&self) -> InitialState {
        match self {
            PodStart::Bootstrap | PodStart::Restore(_) => InitialState::New,
            PodStart::Join | PodStart::Resume { .. } => InitialState::Existing,
        }
    }
}

/// What the init container of a seed restored from a backup needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedRestore {
    /// The snapshot, with the SHA-256 the operator verified, and the token.
    pub intent: RestoreIntent,
    /// The image with `bosun` and etcd's `etcdutl` (one per minor version).
    pub image: String,
}

/// Why a member pod's init container (restore or data guard) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitFailure {
    /// The data guard found the volume without the member's data.
    pub data_lost: bool,
    /// The container's own message (its termination message or reason).
    pub message: String,
}

/// The failure of a member pod's restore or data-guard init container, as
/// its status reports it (now, or in the last run while it waits to be
/// restarted): `None` while it runs, succeeded, or has not run.
pub fn init_failure(pod: &Pod) -> Option<InitFailure> {
    let statuses = pod.status.as_ref()?.init_container_statuses.as_ref()?;
    statuses
        .iter()
        .filter(|s| s.name == RESTORE_CONTAINER || s.name == DATA_GUARD_CONTAINER)
        .find_map(|status| {
            let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
            let terminated = status
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| {
                    (!running)
                        .then(|| status.last_state.as_ref()?.terminated.as_ref())
                        .flatten()
                })
                .filter(|t| t.exit_code != 0)?;
            let message = terminated
                .message
                .clone()
                .filter(|m| !m.trim().is_empty())
                .or_else(|| terminated.reason.clone())
                .unwrap_or_else(|| format!("exit code {}", terminated.exit_code));
            Some(InitFailure {
                data_lost: status.name == DATA_GUARD_CONTAINER
                    && terminated.exit_code == DATA_LOST_EXIT_CODE,
                message: format!("{}: {}", status.name, message.trim()),
            })
        })
}

/// The PVC annotation naming the etcd version a member last ran healthy on
/// the volume, and the one naming its image: where an upgraded member that
/// cannot start goes back to.
pub const LAST_VERSION_ANNOTATION: &str = "etcd.bosun.dev/last-version";
/// See [`LAST_VERSION_ANNOTATION`].
pub const LAST_IMAGE_ANNOTATION: &str = "etcd.bosun.dev/last-image";

/// The image of a member pod's etcd container.
pub fn etcd_image_of(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == ETCD_CONTAINER)?
        .image
        .clone()
}

/// Whether a pod is Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a pod has not become Ready within `deadline` of its creation.
pub fn pod_overdue(
    pod: &Pod,
    deadline: std::time::Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> bool {
    let Some(created) = pod.metadata.creation_timestamp.as_ref() else {
        return false;
    };
    let age = std::time::Duration::try_from(now.duration_since(created.0)).unwrap_or_default();
    !pod_ready(pod) && age > deadline
}

/// Why a pod is not running, in its own words: its etcd container's waiting
/// reason and message (ErrImagePull, CrashLoopBackOff, ...) or why it is not
/// scheduled.
pub fn pod_trouble(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == ETCD_CONTAINER)
        .find_map(|c| c.state.as_ref()?.waiting.as_ref());
    if let Some(waiting) = waiting {
        let reason = waiting.reason.clone().unwrap_or_default();
        return Some(match waiting.message.as_deref() {
            Some(message) if !message.trim().is_empty() => format!("{reason}: {}", message.trim()),
            _ => reason,
        });
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        })
}

/// The name of the init container that refuses to start a member on a
/// volume without its data.
pub const DATA_GUARD_CONTAINER: &str = "data-guard";
/// The exit code of `bosun check-member-data` when the data is missing.
pub const DATA_LOST_EXIT_CODE: i32 = 3;

/// The name of the init container that restores a seed from a backup.
pub const RESTORE_CONTAINER: &str = "restore";
/// The volume with the restore's credentials Secret.
pub const CREDENTIALS_VOLUME: &str = "restore-credentials";
/// The volume with a `file://` snapshot's directory.
pub const SNAPSHOT_DIR_VOLUME: &str = "restore-snapshot-dir";

/// Where the bosun image keeps `etcdutl` of a version's minor release.
pub fn etcdutl_path(version: &EtcdVersion) -> String {
    format!(
        "/usr/local/bin/etcdutl-{}.{}",
        version.major(),
        version.minor()
    )
}

/// The init container that restores the seed's data from a snapshot
/// (`bosun restore-member`), and the volumes it needs besides the data.
fn restore_container(
    cluster: &EtcdCluster,
    params: &MemberPodParams,
    restore: &SeedRestore,
) -> (Container, Vec<Volume>) {
    let member = params.member.as_str();
    let source = &restore.intent.source;
    let mut args = vec![
        "restore-member".to_string(),
        format!("--source-url={}", source.url),
        format!("--data-dir={DATA_DIR}"),
        format!("--name={member}"),
        format!("--peer-url={}", peer_url(cluster, member)),
        format!("--cluster-token={}", restore.intent.cluster_token),
        format!("--etcdutl={}", etcdutl_path(&params.version)),
    ];
    args.extend(source.sha256.iter().map(|sha| format!("--sha256={sha}")));
    args.extend(source.endpoint.iter().map(|e| format!("--endpoint={e}")));
    args.extend(source.region.iter().map(|r| format!("--region={r}")));
    let mut mounts = vec![VolumeMount {
        name: DATA_VOLUME.to_string(),
        mount_path: DATA_MOUNT_PATH.to_string(),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    if let Some(secret) = &source.credentials_secret {
        args.push(format!(
            "--credentials-dir={}",
            crate::restore::member::CREDENTIALS_DIR
        ));
        mounts.push(VolumeMount {
            name: CREDENTIALS_VOLUME.to_string(),
            mount_path: crate::restore::member::CREDENTIALS_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: CREDENTIALS_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    // A `file://` snapshot is read where it lies on the node: the directory
    // must exist at the same path on the node the seed runs on (a local
    // disk on a single node, or a shared mount on every node).
    if let Some(dir) = source
        .url
        .strip_prefix("file://")
        .and_then(|path| std::path::Path::new(path).parent())
    {
        let dir = dir.to_string_lossy().into_owned();
        mounts.push(VolumeMount {
            name: SNAPSHOT_DIR_VOLUME.to_string(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: SNAPSHOT_DIR_VOLUME.to_string(),
            host_path: Some(HostPathVolumeSource {
                path: dir,
                type_: Some("Directory".to_string()),
            }),
            ..Volume::default()
        });
    }
    let container = bosun_init_container(cluster, RESTORE_CONTAINER, &restore.image, args, mounts);
    (container, volumes)
}

/// The init container of a member that restarts on its own data: `bosun
/// check-member-data` exits [`DATA_LOST_EXIT_CODE`] when the volume holds
/// no etcd member, and the pod never starts.
fn data_guard_container(cluster: &EtcdCluster, image: &str) -> Container {
    bosun_init_container(
        cluster,
        DATA_GUARD_CONTAINER,
        image,
        vec![
            "check-member-data".to_string(),
            format!("--data-dir={DATA_DIR}"),
        ],
        vec![VolumeMount {
            name: DATA_VOLUME.to_string(),
            mount_path: DATA_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        }],
    )
}

/// An init container of a member pod that runs `bosun` (restore or data
/// guard) on the member's data directory.
fn bosun_init_container(
    cluster: &EtcdCluster,
    name: &str,
    image: &str,
    args: Vec<String>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(args),
        volume_mounts: Some(mounts),
        // etcd (root in the upstream image) owns its data directory, 0700.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            ..SecurityContext::default()
        }),
        // The operator reads why it failed from here.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        resources: cluster
            .spec
            .pod_template
            .as_ref()
            .and_then(|t| t.resources.clone()),
        ..Container::default()
    }
}

/// The member's pod: etcd on its data volume, reachable under its DNS name.
///
/// The pod is named after the member, with `hostname`/`subdomain` giving it
/// the name `<member>.<cluster>.<ns>.svc`. No init container waits for that
/// name: etcd compares its advertised URL with the membership's as strings
/// (both are built by `peer_url`) and retries any resolution it needs for
/// 30 s, and its peers retry their connections; so the pod needs no shell
/// and the distroless upstream image works. The user's `podTemplate` is merged in; the operator's
/// labels, annotations, containers and volumes win.
pub fn member_pod(cluster: &EtcdCluster, params: &MemberPodParams) -> Pod {
    let cluster_name = cluster.name_any();
    let member = params.member.as_str();
    let template = cluster.spec.pod_template.clone().unwrap_or_default();
    let image = params
        .image
        .clone()
        .unwrap_or_else(|| member_image(cluster, &params.version));

    let mut labels = template.labels;
    labels.extend(member_labels(cluster, member));
    let mut annotations = template.annotations;
    annotations.extend([
        (VERSION_ANNOTATION.to_string(), params.version.to_string()),
        (
            INITIAL_STATE_ANNOTATION.to_string(),
            params.start.initial_state().as_str().to_string(),
        ),
    ]);
    let mut metadata = owned_meta(cluster, member.to_string(), labels, true);
    metadata.annotations = Some(annotations);

    // ETCD_* variables would set etcd flags behind the operator's back;
    // validation refuses them, and they are dropped here should one slip by.
    let env: Vec<_> = template
        .env
        .into_iter()
        .filter(|var| !var.name.starts_with("ETCD_"))
        .collect();

    let etcd = Container {
        name: ETCD_CONTAINER.to_string(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec!["/usr/local/bin/etcd".to_string()]),
        args: Some(etcd_args(cluster, params)),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("peer", PEER_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        env: (!env.is_empty()).then_some(env),
        resources: template.resources,
        // /health fails while the member has no leader, so the client
        // Service only sends clients to members that serve. A NOSPACE alarm
        // is excluded: reads, deletes and compaction still work, and they
        // are how the space is won back; without a Ready endpoint nobody
        // could reach the cluster to do it.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READINESS_PATH.to_string()),
                port: IntOrString::Int(CLIENT_PORT),
                scheme: Some("HTTP".to_string()),
                ..HTTPGetAction::default()
            }),
            // Every second: the operator waits for a member's readiness
            // before the next membership change, so this period adds up
            // once per member when a cluster grows.
            period_seconds: Some(1),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // No liveness probe: /livez exists only from etcd 3.6, and /health is
        // false whenever quorum is lost or a member is still catching up on a
        // large snapshot, so a liveness probe on it would restart healthy
        // members exactly when the cluster most needs them. A crashed etcd
        // exits, and restartPolicy Always brings it back.
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.to_string(),
            mount_path: DATA_MOUNT_PATH.to_string(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    let init = match &params.start {
        PodStart::Restore(restore) => Some(restore_container(cluster, params, restore)),
        PodStart::Resume { image } => Some((data_guard_container(cluster, image), vec![])),
        PodStart::Bootstrap | PodStart::Join => None,
    };
    let storage = &cluster.spec.storage;
    let data = if storage.empty_dir {
        Volume {
            name: DATA_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(storage.size.clone()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }
    } else {
        Volume {
            name: DATA_VOLUME.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: member.to_string(),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        }
    };

    Pod {
        metadata,
        spec: Some(PodSpec {
            hostname: Some(member.to_string()),
            subdomain: Some(peer_service_name(&cluster_name)),
            restart_policy: Some("Always".to_string()),
            termination_grace_period_seconds: Some(30),
            // etcd needs no Kubernetes API access, and Service environment
            // variables (ETCD_SERVICE_HOST for a Service named etcd, ...) only
            // make etcd warn about variables it does not know.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            init_containers: init.as_ref().map(|(c, _)| vec![c.clone()]),
            containers: vec![etcd],
            volumes: Some(
                std::iter::once(data)
                    .chain(init.into_iter().flat_map(|(_, volumes)| volumes))
                    .collect(),
            ),
            node_selector: (!template.node_selector.is_empty()).then_some(template.node_selector),
            affinity: template.affinity,
            tolerations: (!template.tolerations.is_empty()).then_some(template.tolerations),
            security_context: template.security_context,
            priority_class_name: template.priority_class_name,
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// The `--initial-cluster-token` of a cluster's seed: its name and uid, so
/// that members of two clusters of one name never join each other.
pub fn cluster_token(cluster: &EtcdCluster) -> String {
    let name = cluster.name_any();
    match cluster.uid() {
        Some(uid) => format!("{name}-{uid}"),
        None => name,
    }
}

/// etcd's command-line arguments: the operator's flags, then the user's
/// `etcdOptions` in key order.
fn etcd_args(cluster: &EtcdCluster, params: &MemberPodParams) -> Vec<String> {
    let member = params.member.as_str();
    let token = cluster_token(cluster);
    let initial_cluster = params
        .initial_cluster
        .iter()
        .map(|(name, url)| format!("{name}={url}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        format!("--name={member}"),
        format!("--data-dir={DATA_DIR}"),
        format!("--listen-client-urls=http://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls={}", client_url(cluster, member)),
        format!("--listen-peer-urls=http://0.0.0.0:{PEER_PORT}"),
        format!(
            "--initial-advertise-peer-urls={}",
            peer_url(cluster, member)
        ),
        format!("--initial-cluster={initial_cluster}"),
        format!(
            "--initial-cluster-state={}",
            params.start.initial_state().as_str()
        ),
        format!("--initial-cluster-token={token}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
    ];
    // Validation refuses owned flags and malformed names; skipping them here
    // too keeps a spec that slipped past it from overriding member identity.
    args.extend(
        cluster
            .spec
            .etcd_options
            .iter()
            .filter(|(key, _)| is_user_flag(key))
            .map(|(key, value)| format!("--{key}={value}")),
    );
    args
}

/// Whether `key` is a flag name a user may set: `[a-z0-9][a-z0-9-]*` and not
/// one the operator owns.
fn is_user_flag(key: &str) -> bool {
    let well_formed = key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    well_formed && !OPERATOR_OWNED_ETCD_FLAGS.contains(&key)
}

#[cfg(test)]
mod tests;
