//! The rules of a Memcached, in one place: the admission webhook calls
//! [`validate_memcached`] to refuse a bad object at `kubectl apply` time, and
//! the controller calls it before it applies anything. The schema mirrors
//! the bounds and patterns (so a cluster without the webhook still refuses
//! them); the rest — the object's name as the workload's name, a memory
//! limit against `-m` — only these functions check.
//!
//! Errors are [`bosun_api`]'s, so every bosun API reports a field the same
//! way: the field, what is wrong, what is allowed.

use bosun_api::validation::parse_quantity_bytes;
use bosun_api::{FieldError, ValidationErrors};

use crate::api::{
    MAX_MAX_CONNECTIONS, MAX_MEMORY_LIMIT_MIB, MAX_SIZE, MIN_MAX_CONNECTIONS, MIN_MEMORY_LIMIT_MIB,
    MIN_SIZE, MemcachedSpec,
};
use crate::objects::{RESERVED_LABELS, memory_limit_floor_mib};

/// The longest Memcached name. The StatefulSet of that name labels each
/// pod with `controller-revision-hash: <name>-<10-character hash>`, and a
/// label value has at most 63 characters.
pub const MAX_NAME_LENGTH: usize = 52;

/// Validates a Memcached named `name` (its `metadata.name`) with `spec`:
/// every field error at once.
pub fn validate_memcached(name: &str, spec: &MemcachedSpec) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    let mut add = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    if let Err(message) = check_name(name) {
        add("metadata.name", message);
    }
    if let Err(message) = check_range(spec.size, MIN_SIZE, MAX_SIZE, "a cache has", "servers") {
        add("spec.size", message);
    }
    if !is_version(&spec.version) {
        add(
            "spec.version",
            format!(
                "{:?} is not a memcached version: write MAJOR.MINOR.PATCH such as \"1.6.18\" (no leading \"v\"); it is the image's tag",
                spec.version
            ),
        );
    }
    if let Some(image) = &spec.image
        && let Err(message) = check_image(image)
    {
        add("spec.image", message);
    }
    if let Err(message) = check_range(
        spec.memory_limit_mib,
        MIN_MEMORY_LIMIT_MIB,
        MAX_MEMORY_LIMIT_MIB,
        "memcached's -m is",
        "MiB",
    ) {
        add("spec.memoryLimitMiB", message);
    }
    if let Err(message) = check_range(
        spec.max_connections,
        MIN_MAX_CONNECTIONS,
        MAX_MAX_CONNECTIONS,
        "memcached's -c is",
        "connections",
    ) {
        add("spec.maxConnections", message);
    }
    if let Some(template) = &spec.pod_template {
        for key in template.labels.keys() {
            if RESERVED_LABELS.contains(&key.as_str()) {
                add(
                    &format!("spec.podTemplate.labels.{key}"),
                    format!(
                        "is the operator's: it selects its pods by {}; use another key",
                        RESERVED_LABELS.join(", ")
                    ),
                );
            }
        }
        let memory_limit = template
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|limits| limits.get("memory"));
        if let Some(limit) = memory_limit
            && let Err(message) = check_memory_limit(&limit.0, spec)
        {
            add("spec.podTemplate.resources.limits.memory", message);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Whether `version` is MAJOR.MINOR.PATCH in digits (the schema's
/// [`crate::api::VERSION_PATTERN`]).
pub fn is_version(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn check_range(value: i32, min: i32, max: i32, what: &str, unit: &str) -> Result<(), String> {
    if value < min {
        Err(format!(
            "{value} is below the minimum of {min}: {what} {min} to {max} {unit}"
        ))
    } else if value > max {
        Err(format!(
            "{value} is above the maximum of {max}: {what} {min} to {max} {unit}"
        ))
    } else {
        Ok(())
    }
}

/// The name becomes the StatefulSet's and the headless Service's: a
/// Service name is a DNS-1035 label (a letter first), and see
/// [`MAX_NAME_LENGTH`].
fn check_name(name: &str) -> Result<(), String> {
    let dns_label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !dns_label {
        return Err(format!(
            "{name:?} cannot name the cache's Service: use lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
        ));
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(format!(
            "{name:?} has {} characters: at most {MAX_NAME_LENGTH} are allowed, so that the pods' controller-revision-hash label fits in 63",
            name.len()
        ));
    }
    Ok(())
}

fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err(format!(
            "{image:?} is not an image repository such as registry.example.com/memcached"
        ));
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        return Err(format!(
            "{image:?} has a tag or digest: give the repository only; the tag comes from spec.version"
        ));
    }
    Ok(())
}

fn check_memory_limit(limit: &str, spec: &MemcachedSpec) -> Result<(), String> {
    let floor = memory_limit_floor_mib(spec);
    let bytes = parse_quantity_bytes(limit)?;
    if bytes < u64::from(floor.unsigned_abs()) << 20 {
        return Err(format!(
            "{limit} leaves no room above spec.memoryLimitMiB ({} MiB): memcached also needs memory for connections and its hash table, so the limit must be at least {floor}Mi; raise it or lower spec.memoryLimitMiB",
            spec.memory_limit_mib
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;
    use crate::api::PodTemplateOverrides;

    fn errors(name: &str, spec: &MemcachedSpec) -> Vec<String> {
        match validate_memcached(name, spec) {
            Ok(()) => vec![],
            Err(ValidationErrors(list)) => list.iter().map(ToString::to_string).collect(),
        }
    }

    fn with_memory_limit(spec: MemcachedSpec, limit: &str) -> MemcachedSpec {
        MemcachedSpec {
            pod_template: Some(PodTemplateOverrides {
                resources: Some(ResourceRequirements {
                    limits: Some(BTreeMap::from([(
                        "memory".to_string(),
                        Quantity(limit.to_string()),
                    )])),
                    ..ResourceRequirements::default()
                }),
                ..PodTemplateOverrides::default()
            }),
            ..spec
        }
    }

    #[test]
    fn a_default_spec_is_valid() {
        assert_eq!(
            errors("cache", &MemcachedSpec::with_size(3)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn sizes_out_of_range_say_what_is_allowed() {
        assert_eq!(
            errors("cache", &MemcachedSpec::with_size(0)),
            ["spec.size: 0 is below the minimum of 1: a cache has 1 to 64 servers"]
        );
        assert_eq!(
            errors("cache", &MemcachedSpec::with_size(65)),
            ["spec.size: 65 is above the maximum of 64: a cache has 1 to 64 servers"]
        );
    }

    #[test]
    fn every_wrong_field_is_reported_at_once() {
        let spec = MemcachedSpec {
            version: "v1.6".into(),
            image: Some("example.com/memcached:1.6".into()),
            memory_limit_mib: -1,
            max_connections: 1_000_000,
            ..MemcachedSpec::with_size(0)
        };
        let found = errors("Cache", &spec);
        let fields: Vec<&str> = found.iter().filter_map(|e| e.split(':').next()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.size",
                "spec.version",
                "spec.image",
                "spec.memoryLimitMiB",
                "spec.maxConnections"
            ],
            "{found:#?}"
        );
        assert!(
            found[4].contains("-1 is below the minimum of 16"),
            "{}",
            found[4]
        );
    }

    #[test]
    fn names_must_fit_the_service_and_the_revision_label() {
        let spec = MemcachedSpec::with_size(1);
        assert!(errors(&"a".repeat(MAX_NAME_LENGTH), &spec).is_empty());
        assert!(errors(&"a".repeat(MAX_NAME_LENGTH + 1), &spec)[0].contains("at most 52"));
        for bad in ["1cache", "cache-", "ca.che", "Cache", ""] {
            assert!(
                errors(bad, &spec)[0].starts_with("metadata.name"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn versions_are_three_numbers() {
        for good in ["1.6.18", "1.10.0", "2.0.100"] {
            assert!(is_version(good), "{good}");
        }
        for bad in ["v1.6.18", "1.6", "1.6.18-rc1", "1..0", "", "1.6.x"] {
            assert!(!is_version(bad), "{bad}");
        }
    }

    #[test]
    fn images_are_repositories_with_an_optional_registry_port() {
        let with_image = |image: &str| MemcachedSpec {
            image: Some(image.into()),
            ..MemcachedSpec::with_size(1)
        };
        assert!(errors("c", &with_image("registry:5000/team/memcached")).is_empty());
        for bad in ["memcached:1.6", "r/m@sha256:ab", "my image", ""] {
            assert!(
                errors("c", &with_image(bad))[0].starts_with("spec.image"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pod_labels_may_not_take_the_selector_labels() {
        let spec = MemcachedSpec {
            pod_template: Some(PodTemplateOverrides {
                labels: BTreeMap::from([
                    (
                        "app.kubernetes.io/instance".to_string(),
                        "other".to_string(),
                    ),
                    ("team".to_string(), "web".to_string()),
                ]),
                ..PodTemplateOverrides::default()
            }),
            ..MemcachedSpec::with_size(1)
        };
        let found = errors("c", &spec);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "spec.podTemplate.labels.app.kubernetes.io/instance: is the operator's"
            )
        );
    }

    #[test]
    fn a_memory_limit_must_leave_room_above_the_item_memory() {
        let spec = MemcachedSpec {
            memory_limit_mib: 1024,
            ..MemcachedSpec::with_size(1)
        };
        let floor = memory_limit_floor_mib(&spec);
        assert!(errors("c", &with_memory_limit(spec.clone(), &format!("{floor}Mi"))).is_empty());
        assert!(errors("c", &with_memory_limit(spec.clone(), "2Gi")).is_empty());
        let tight = errors("c", &with_memory_limit(spec.clone(), "1Gi"));
        assert!(tight[0].contains("must be at least"), "{tight:?}");
        let unreadable = errors("c", &with_memory_limit(spec, "lots"));
        assert!(unreadable[0].contains("is not a size"), "{unreadable:?}");
    }
}
