//! The objects a Memcached owns, computed from its spec: a StatefulSet of
//! memcached servers, the headless Service that names them, and a
//! PodDisruptionBudget. Pure functions: no client, no I/O; the reconciler
//! applies what they return, whole, with server-side apply, so that any
//! change of the spec reaches the pods.
//!
//! Why a StatefulSet and not the tutorial's Deployment: memcached clients
//! shard keys by hashing them onto the list of servers they are given.
//! With a Deployment, a restarted pod comes back with a new name and IP,
//! the list changes, and a consistent-hash client moves that server's slots
//! elsewhere (cold misses on a healthy cache). A StatefulSet's pods are
//! `<name>-<ordinal>` and keep their DNS names
//! `<name>-<ordinal>.<name>.<namespace>.svc` across restarts, so the list
//! clients hash on (`status.servers`) only changes when the size does.
//!
//! Every object carries `app.kubernetes.io/name: memcached`,
//! `app.kubernetes.io/instance: <name>` and `app.kubernetes.io/managed-by:
//! bosun`; pods are selected by name and instance, so several Memcached
//! objects in one namespace each own exactly their pods (the tutorial's
//! selector, without the instance, made them fight over each other's).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, ExecAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::{DEFAULT_IMAGE_REPOSITORY, Memcached, MemcachedSpec};

/// The port memcached serves on.
pub const PORT: i32 = 11211;
/// The name of that port (IANA's service name for 11211).
pub const PORT_NAME: &str = "memcache";
/// The name of the memcached container.
pub const CONTAINER: &str = "memcached";

/// `app.kubernetes.io/name`: always [`APP_NAME`] here.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the Memcached's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by`: always [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`NAME_LABEL`].
pub const APP_NAME: &str = "memcached";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "bosun";
/// The labels a user's pod labels may not set.
pub const RESERVED_LABELS: [&str; 3] = [NAME_LABEL, INSTANCE_LABEL, MANAGED_BY_LABEL];

/// The field manager the operator applies objects and status as.
pub const FIELD_MANAGER: &str = "bosun-memcached-operator";

/// The user and group memcached runs as: the images' `nonroot`
/// (memcached refuses to run as root anyway).
pub const RUN_AS: i64 = 65532;

/// Memory the container may use beyond `-m` that a user's own limit must
/// at least leave: memcached's threads, connection buffers and hash table
/// live outside the item memory `-m` bounds.
pub const MIN_OVERHEAD_MIB: i32 = 16;

/// The readiness probe's command: memcached must answer `version` on its
/// port, not merely accept connections. `quit` makes memcached close the
/// connection, which is what ends busybox's `nc` (it does not stop when its
/// input ends); `-w 1` bounds the connect.
pub const READINESS_COMMAND: &str =
    "printf 'version\\r\\nquit\\r\\n' | nc -w 1 127.0.0.1 11211 | grep -q '^VERSION '";

/// Why a Memcached's objects cannot be built.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The object lacks what its owned objects need (it was not read from
    /// the API server).
    #[error("Memcached {name} has no {missing}: it must be read from the API server")]
    Identity {
        /// The Memcached's name.
        name: String,
        /// `namespace` or `uid`.
        missing: &'static str,
    },
}

/// Who the objects belong to: the Memcached's name, namespace and the
/// controller reference every owned object carries (so that deleting the
/// Memcached deletes them, and their changes wake its controller).
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The Memcached's name: also the StatefulSet's, the Service's and the
    /// PodDisruptionBudget's.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    owner: OwnerReference,
}

impl Instance {
    /// The owner of `memcached`'s objects.
    pub fn of(memcached: &Memcached) -> Result<Self, ObjectError> {
        let name = memcached.name_any();
        let missing = |missing| ObjectError::Identity {
            name: name.clone(),
            missing,
        };
        let namespace = memcached.namespace().ok_or_else(|| missing("namespace"))?;
        let owner = memcached
            .controller_owner_ref(&())
            .ok_or_else(|| missing("uid"))?;
        Ok(Instance {
            name,
            namespace,
            owner,
        })
    }

    fn metadata(&self, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The labels pods are selected by: what runs and which Memcached.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), APP_NAME.to_string()),
        (INSTANCE_LABEL.to_string(), name.to_string()),
    ])
}

/// The labels of every owned object: the selector's and who manages it.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

/// [`selector_labels`] as a label selector string, for listing the pods.
pub fn label_selector(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The name of server `ordinal`'s pod: `<name>-<ordinal>`.
pub fn pod_name(name: &str, ordinal: u32) -> String {
    format!("{name}-{ordinal}")
}

/// The ordinal of a pod of Memcached `name`, from its name; `None` for any
/// other name.
pub fn ordinal_of(name: &str, pod: &str) -> Option<u32> {
    let digits = pod.strip_prefix(name)?.strip_prefix('-')?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

/// Server `ordinal` as a client reaches it: its stable DNS name through the
/// headless Service, and the port.
pub fn server_address(name: &str, namespace: &str, ordinal: u32) -> String {
    format!("{}.{name}.{namespace}.svc:{PORT}", pod_name(name, ordinal))
}

/// The first `replicas` servers, in ordinal order: the list clients hash on.
pub fn servers(name: &str, namespace: &str, replicas: u32) -> Vec<String> {
    (0..replicas)
        .map(|ordinal| server_address(name, namespace, ordinal))
        .collect()
}

/// The image of the servers: the repository (spec.image or
/// [`DEFAULT_IMAGE_REPOSITORY`]) tagged with spec.version.
pub fn image(spec: &MemcachedSpec) -> String {
    let repository = spec.image.as_deref().unwrap_or(DEFAULT_IMAGE_REPOSITORY);
    format!("{repository}:{}", spec.version)
}

/// memcached's arguments (the image's entrypoint is memcached itself):
/// TCP on [`PORT`], UDP off (it carries no authentication and amplifies
/// reflection attacks), `-m` and `-c` from the spec.
pub fn memcached_args(spec: &MemcachedSpec) -> Vec<String> {
    [
        "-p",
        &PORT.to_string(),
        "-U",
        "0",
        "-m",
        &spec.memory_limit_mib.to_string(),
        "-c",
        &spec.max_connections.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The smallest memory limit a user may give the container:
/// spec.memoryLimitMiB plus [`MIN_OVERHEAD_MIB`].
pub fn memory_limit_floor_mib(spec: &MemcachedSpec) -> i32 {
    spec.memory_limit_mib.saturating_add(MIN_OVERHEAD_MIB)
}

/// The memory limit the operator gives the container, in MiB: `-m`, plus
/// an eighth of it (at least 32 MiB) for the hash table and allocator
/// slack, plus 16 KiB per allowed connection for its buffers.
pub fn container_memory_mib(spec: &MemcachedSpec) -> i32 {
    let items = spec.memory_limit_mib.max(0);
    let overhead = (items / 8).max(32);
    let connections = spec
        .max_connections
        .clamp(0, i32::MAX - 63)
        .saturating_add(63)
        / 64;
    items.saturating_add(overhead).saturating_add(connections)
}

/// The container's resources: the user's, or derived from the spec. The
/// memory request equals the limit: a cache that the node reclaims under
/// pressure loses everything it holds.
pub fn resources(spec: &MemcachedSpec) -> ResourceRequirements {
    if let Some(resources) = spec.pod_template.as_ref().and_then(|t| t.resources.clone()) {
        return resources;
    }
    let memory = Quantity(format!("{}Mi", container_memory_mib(spec)));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".to_string())),
            ("memory".to_string(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), memory)])),
        ..ResourceRequirements::default()
    }
}

/// Ready when memcached answers `version` ([`READINESS_COMMAND`]).
pub fn readiness_probe() -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".to_string(),
                "-c".to_string(),
                READINESS_COMMAND.to_string(),
            ]),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(2),
        failure_threshold: Some(2),
        ..Probe::default()
    }
}

/// Restarted only when the port stays closed for a minute: a busy server
/// that answers slowly is not made cold by a restart.
pub fn liveness_probe() -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(PORT_NAME.to_string()),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..Probe::default()
    }
}

fn container(spec: &MemcachedSpec) -> Container {
    Container {
        name: CONTAINER.to_string(),
        image: Some(image(spec)),
        image_pull_policy: Some("IfNotPresent".to_string()),
        args: Some(memcached_args(spec)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(readiness_probe()),
        liveness_probe: Some(liveness_probe()),
        resources: Some(resources(spec)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The pod template: the operator's labels over the user's, the user's
/// placement, and one hardened memcached container.
pub fn pod_template(name: &str, spec: &MemcachedSpec) -> PodTemplateSpec {
    let overrides = spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels;
    pod_labels.extend(labels(name));
    let non_empty = |map: BTreeMap<String, String>| (!map.is_empty()).then_some(map);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: non_empty(overrides.annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(spec)],
            // memcached never calls the Kubernetes API, and a Service's
            // variables would only be noise in its environment.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: non_empty(overrides.node_selector),
            tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
            affinity: overrides.affinity,
            priority_class_name: overrides.priority_class_name,
            ..PodSpec::default()
        }),
    }
}

/// The StatefulSet of the servers. Pods start and stop in parallel (a
/// cache has no bootstrap order) and are replaced one at a time on any
/// change of the template.
pub fn stateful_set(instance: &Instance, spec: &MemcachedSpec) -> StatefulSet {
    StatefulSet {
        metadata: instance.metadata(labels(&instance.name)),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.size),
            service_name: Some(instance.name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&instance.name)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy::default()),
            }),
            revision_history_limit: Some(5),
            template: pod_template(&instance.name, spec),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The headless Service that gives each ready server its DNS name. Pods
/// that are not ready are left out, so a client resolving the names never
/// gets a server that does not answer.
pub fn headless_service(instance: &Instance) -> Service {
    Service {
        metadata: instance.metadata(labels(&instance.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(&instance.name)),
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// At most one server down for voluntary disruptions (drains), so a drain
/// costs the cache one server's keys at a time. A server that is not
/// healthy anyway may always be evicted: a broken cache server must not
/// hold up a node's maintenance.
pub fn pod_disruption_budget(instance: &Instance) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: instance.metadata(labels(&instance.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&instance.name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;
