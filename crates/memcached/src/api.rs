//! `Memcached`: a set of memcached servers of one size, version and memory
//! limit, which clients reach by stable names and shard keys over.
//!
//! Bounds and defaults are in the generated schema, so that `kubectl apply`
//! refuses a bad object before any operator sees it; what the schema cannot
//! check is in [`crate::validation`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the Memcached resource.
pub const GROUP: &str = "cache.bosun.dev";
/// The API version this crate describes.
pub const VERSION: &str = "v1alpha1";

/// The smallest `spec.size`.
pub const MIN_SIZE: i32 = 1;
/// The largest `spec.size`: a client hashes keys over every server it is
/// given, and beyond a few dozen servers a cache is better split by
/// purpose than grown.
pub const MAX_SIZE: i32 = 64;

/// The memcached version a spec gets when it names none. It is the tag of
/// the image `bosun dev` builds from Debian's `memcached` package
/// (`bosun.dev/memcached:<upstream version>`, bookworm's 1.6.18): keep it
/// in step with that image, or pods of a default spec never start on the
/// dev cluster.
pub const DEFAULT_VERSION: &str = "1.6.18";

/// The image repository pods use unless `spec.image` overrides it: the
/// one `bosun dev` builds and imports. The tag is always `spec.version`.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "bosun.dev/memcached";

/// The pattern `spec.version` must match: upstream's MAJOR.MINOR.PATCH,
/// which is also the image tag.
pub const VERSION_PATTERN: &str = r"^[0-9]+\.[0-9]+\.[0-9]+$";

/// The pattern `spec.image` must match: a repository, optionally with a
/// registry port, and neither tag nor digest.
pub const IMAGE_PATTERN: &str = r"^[^:@\s]+(:[0-9]+)?(/[^:@\s]+)*$";

/// memcached's own default for `-m`, and so ours.
pub const DEFAULT_MEMORY_LIMIT_MIB: i32 = 64;
/// The smallest `spec.memoryLimitMiB`: memcached hands out memory in 1 MiB
/// slab pages per item size class; with less than a page per class, most
/// item sizes cannot be stored at all.
pub const MIN_MEMORY_LIMIT_MIB: i32 = 16;
/// The largest `spec.memoryLimitMiB` (64 GiB): one cache server larger than
/// that is one failure away from a cold cache of that size.
pub const MAX_MEMORY_LIMIT_MIB: i32 = 65_536;

/// memcached's own default for `-c`, and so ours.
pub const DEFAULT_MAX_CONNECTIONS: i32 = 1024;
/// The smallest `spec.maxConnections`: below it, the readiness probe and a
/// handful of clients already compete for connections.
pub const MIN_MAX_CONNECTIONS: i32 = 16;
/// The largest `spec.maxConnections`: within the file descriptor limit
/// container runtimes give a process.
pub const MAX_MAX_CONNECTIONS: i32 = 65_536;

/// A memcached cache of `size` servers, each a pod with a stable name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cache.bosun.dev",
    version = "v1alpha1",
    kind = "Memcached",
    plural = "memcacheds",
    namespaced,
    shortname = "mc",
    category = "bosun",
    status = "MemcachedStatus",
    derive = "PartialEq",
    doc = "A memcached cache whose servers run as pods with stable names, reached through a headless Service, managed by the bosun operator.",
    scale(
        spec_replicas_path = ".spec.size",
        status_replicas_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.size",
        description = "Servers the cache should have"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Servers that answer memcached requests"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "memcached version"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every server is ready (the Ready condition)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MemcachedSpec {
    /// Number of memcached servers, 1 to 64 (`kubectl scale` changes it).
    ///
    /// Required, with no default, as in the operator-sdk tutorial: the
    /// number of servers decides how clients shard keys and how much memory
    /// the cache takes from the cluster, a choice nobody should get by
    /// accident.
    #[schemars(range(min = 1, max = 64))]
    pub size: i32,

    /// memcached version (MAJOR.MINOR.PATCH, e.g. "1.6.18"), the image's
    /// tag. Defaults to the version bosun builds an image for. Changing it
    /// replaces the servers one at a time.
    #[serde(default = "default_version")]
    #[schemars(pattern(VERSION_PATTERN))]
    pub version: String,

    /// Image repository of the servers, overriding bosun.dev/memcached; the
    /// tag is always spec.version. The image must run memcached as its
    /// entrypoint and have `sh`, `printf`, `nc` and `grep` for the
    /// readiness probe (busybox's are enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), pattern(IMAGE_PATTERN))]
    pub image: Option<String>,

    /// Memory for items per server, in MiB (memcached's `-m`), 16 to 65536.
    /// The container's memory limit is set above it, for connections and
    /// the hash table.
    #[serde(default = "default_memory_limit_mib", rename = "memoryLimitMiB")]
    #[schemars(range(min = 16, max = 65536))]
    pub memory_limit_mib: i32,

    /// Simultaneous connections per server (memcached's `-c`), 16 to 65536.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 16, max = 65536))]
    pub max_connections: i32,

    /// Pod settings merged into every server pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

fn default_memory_limit_mib() -> i32 {
    DEFAULT_MEMORY_LIMIT_MIB
}

fn default_max_connections() -> i32 {
    DEFAULT_MAX_CONNECTIONS
}

impl MemcachedSpec {
    /// A spec of `size` servers with every other field at its default.
    pub fn with_size(size: i32) -> Self {
        MemcachedSpec {
            size,
            version: default_version(),
            image: None,
            memory_limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            pod_template: None,
        }
    }
}

/// Pod settings a platform engineer tunes: where servers run, what they
/// may use, and what tags them. The operator owns the containers, the
/// probes and the security context; the labels it selects pods by cannot
/// be overridden.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Labels added to server pods. The operator's own
    /// (app.kubernetes.io/name, instance and managed-by) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new(
        "!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/instance' in self) && !('app.kubernetes.io/managed-by' in self)"
    ).message("spec.podTemplate.labels may not set app.kubernetes.io/name, app.kubernetes.io/instance or app.kubernetes.io/managed-by: the operator selects its pods by them"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to server pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Resources of the memcached container, replacing the ones derived
    /// from spec.memoryLimitMiB. A memory limit must leave room above
    /// spec.memoryLimitMiB, or the kernel kills a full cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of server pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of server pods (spread servers over nodes and zones here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Where a Memcached stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemcachedStatus {
    /// Names of the server pods that exist, in ordinal order (the
    /// tutorial's field).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The servers as `host:port`, in ordinal order: stable DNS names of
    /// the pods through the headless Service. Give clients this list in
    /// this order; a server that restarts keeps its name and its place, so
    /// consistent hashing keeps its keys on it.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Servers that answer memcached requests.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The CustomResourceDefinition of `Memcached`, generated from the types
/// so that the schema and the code can never disagree.
pub fn crd() -> CustomResourceDefinition {
    Memcached::crd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn spec_schema() -> Value {
        let crd = crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a schema");
        serde_json::to_value(schema).expect("serializes")["properties"]["spec"].clone()
    }

    #[test]
    fn the_crd_names_the_group_kind_and_short_name() {
        let crd = crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.versions[0].name, VERSION);
        assert_eq!(crd.spec.names.kind, "Memcached");
        assert_eq!(crd.spec.names.short_names, Some(vec!["mc".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(columns, ["Size", "Ready", "Version", "Status", "Age"]);
    }

    #[test]
    fn the_schema_carries_the_bounds_and_defaults_of_the_code() {
        let spec = spec_schema();
        let p = &spec["properties"];
        assert_eq!(spec["required"], json!(["size"]));
        assert_eq!(p["size"]["minimum"].as_f64(), Some(f64::from(MIN_SIZE)));
        assert_eq!(p["size"]["maximum"].as_f64(), Some(f64::from(MAX_SIZE)));
        assert_eq!(p["version"]["default"], json!(DEFAULT_VERSION));
        assert_eq!(p["version"]["pattern"], json!(VERSION_PATTERN));
        assert_eq!(p["image"]["pattern"], json!(IMAGE_PATTERN));
        let memory = &p["memoryLimitMiB"];
        assert_eq!(memory["default"], json!(DEFAULT_MEMORY_LIMIT_MIB));
        assert_eq!(
            memory["minimum"].as_f64(),
            Some(f64::from(MIN_MEMORY_LIMIT_MIB))
        );
        assert_eq!(
            memory["maximum"].as_f64(),
            Some(f64::from(MAX_MEMORY_LIMIT_MIB))
        );
        let connections = &p["maxConnections"];
        assert_eq!(connections["default"], json!(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(
            connections["minimum"].as_f64(),
            Some(f64::from(MIN_MAX_CONNECTIONS))
        );
        assert_eq!(
            connections["maximum"].as_f64(),
            Some(f64::from(MAX_MAX_CONNECTIONS))
        );
    }

    #[test]
    fn a_spec_written_with_only_its_size_gets_the_defaults() {
        let spec: MemcachedSpec = serde_json::from_value(json!({"size": 3})).expect("parses");
        assert_eq!(spec, MemcachedSpec::with_size(3));
    }

    #[test]
    fn a_spec_without_size_is_refused() {
        assert!(serde_json::from_value::<MemcachedSpec>(json!({"version": "1.6.18"})).is_err());
    }
}
