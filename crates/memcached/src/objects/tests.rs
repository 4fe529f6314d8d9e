//! Unit and property tests of the object builders.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::api::{
    MAX_MAX_CONNECTIONS, MAX_MEMORY_LIMIT_MIB, MIN_MAX_CONNECTIONS, MIN_MEMORY_LIMIT_MIB,
    PodTemplateOverrides,
};
use crate::validation::validate_memcached;

fn memcached(name: &str, spec: MemcachedSpec) -> Memcached {
    let mut memcached = Memcached::new(name, spec);
    memcached.metadata.namespace = Some("web".to_string());
    memcached.metadata.uid = Some(format!("uid-{name}"));
    memcached
}

fn instance(name: &str) -> Instance {
    Instance::of(&memcached(name, MemcachedSpec::with_size(3))).expect("identity")
}

fn template_labels(set: &StatefulSet) -> BTreeMap<String, String> {
    set.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn match_labels(selector: Option<&LabelSelector>) -> BTreeMap<String, String> {
    selector
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

/// Whether `selector` selects an object with `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn only_container(set: &StatefulSet) -> Container {
    let pod = set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

#[test]
fn an_instance_needs_a_namespace_and_a_uid() {
    let mut unsaved = Memcached::new("cache", MemcachedSpec::with_size(1));
    unsaved.metadata.namespace = Some("web".into());
    assert_eq!(
        Instance::of(&unsaved),
        Err(ObjectError::Identity {
            name: "cache".into(),
            missing: "uid"
        })
    );
    let owner = instance("cache").owner;
    assert_eq!(owner.kind, "Memcached");
    assert_eq!(owner.api_version, "cache.bosun.dev/v1alpha1");
    assert_eq!(owner.controller, Some(true));
}

#[test]
fn every_object_is_named_labelled_and_owned_like_its_memcached() {
    let instance = instance("sessions");
    let set = stateful_set(&instance, &MemcachedSpec::with_size(3));
    let service = headless_service(&instance);
    let pdb = pod_disruption_budget(&instance);
    for meta in [&set.metadata, &service.metadata, &pdb.metadata] {
        assert_eq!(meta.name.as_deref(), Some("sessions"));
        assert_eq!(meta.namespace.as_deref(), Some("web"));
        assert_eq!(meta.labels.as_ref(), Some(&labels("sessions")));
        let owners = meta.owner_references.as_ref().expect("owned");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "uid-sessions");
    }
    assert_eq!(
        labels("sessions"),
        BTreeMap::from([
            (NAME_LABEL.to_string(), "memcached".to_string()),
            (INSTANCE_LABEL.to_string(), "sessions".to_string()),
            (MANAGED_BY_LABEL.to_string(), "bosun".to_string()),
        ])
    );
}

#[test]
fn the_stateful_set_names_its_pods_through_the_headless_service() {
    let instance = instance("sessions");
    let set = stateful_set(&instance, &MemcachedSpec::with_size(4));
    let spec = set.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(4));
    assert_eq!(spec.service_name.as_deref(), Some("sessions"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    let service = headless_service(&instance);
    let service_spec = service.spec.as_ref().expect("spec");
    assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(service_spec.publish_not_ready_addresses, Some(false));
    assert_eq!(
        service_spec.selector.as_ref(),
        spec.selector.match_labels.as_ref()
    );
    let port = &service_spec.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.name.as_deref()), (PORT, Some(PORT_NAME)));
}

#[test]
fn the_budget_lets_one_server_go_at_a_time() {
    let pdb = pod_disruption_budget(&instance("sessions"));
    let spec = pdb.spec.as_ref().expect("spec");
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(
        match_labels(spec.selector.as_ref()),
        selector_labels("sessions")
    );
}

#[test]
fn the_container_runs_memcached_hardened_with_the_spec_flags() {
    let spec = MemcachedSpec {
        memory_limit_mib: 512,
        max_connections: 4096,
        version: "1.6.21".into(),
        ..MemcachedSpec::with_size(1)
    };
    let set = stateful_set(&instance("c"), &spec);
    let container = only_container(&set);
    assert_eq!(
        container.image.as_deref(),
        Some("bosun.dev/memcached:1.6.21")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        container.args.as_deref().expect("args"),
        ["-p", "11211", "-U", "0", "-m", "512", "-c", "4096"]
    );
    let security = container.security_context.expect("security context");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let pod = set.spec.and_then(|s| s.template.spec).expect("pod spec");
    let pod_security = pod.security_context.expect("pod security context");
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn readiness_asks_memcached_for_its_version() {
    let probe = readiness_probe();
    let command = probe.exec.and_then(|e| e.command).expect("exec probe");
    assert_eq!(command[..2], ["sh", "-c"]);
    assert!(
        command[2].contains("version\\r\\nquit\\r\\n"),
        "{}",
        command[2]
    );
    assert!(command[2].contains("nc -w 1 127.0.0.1 11211"));
    assert!(command[2].ends_with("grep -q '^VERSION '"));
    assert!(
        probe.timeout_seconds.is_some(),
        "a hung nc must not hang the probe"
    );
}

#[test]
fn an_image_override_keeps_the_version_as_tag() {
    let spec = MemcachedSpec {
        image: Some("registry.example.com:5000/cache/memcached".into()),
        ..MemcachedSpec::with_size(1)
    };
    assert_eq!(
        image(&spec),
        "registry.example.com:5000/cache/memcached:1.6.18"
    );
}

#[test]
fn resources_are_derived_from_the_item_memory_unless_given() {
    let spec = MemcachedSpec {
        memory_limit_mib: 1024,
        max_connections: 1024,
        ..MemcachedSpec::with_size(1)
    };
    // 1024 + 1024/8 + 1024/64
    assert_eq!(container_memory_mib(&spec), 1024 + 128 + 16);
    let derived = resources(&spec);
    let memory = Quantity("1168Mi".to_string());
    assert_eq!(
        derived.limits.as_ref().and_then(|l| l.get("memory")),
        Some(&memory)
    );
    assert_eq!(
        derived.requests.as_ref().and_then(|r| r.get("memory")),
        Some(&memory)
    );
    assert_eq!(derived.limits.as_ref().and_then(|l| l.get("cpu")), None);

    let small = MemcachedSpec::with_size(1);
    assert_eq!(
        container_memory_mib(&small),
        64 + 32 + 16,
        "at least 32 MiB of overhead"
    );

    let given = ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("2Gi".into()),
        )])),
        ..ResourceRequirements::default()
    };
    let overridden = MemcachedSpec {
        pod_template: Some(PodTemplateOverrides {
            resources: Some(given.clone()),
            ..PodTemplateOverrides::default()
        }),
        ..spec
    };
    assert_eq!(resources(&overridden), given);
}

#[test]
fn user_pod_settings_reach_the_pods_and_cannot_take_the_selector() {
    let spec = MemcachedSpec {
        pod_template: Some(PodTemplateOverrides {
            labels: BTreeMap::from([
                (INSTANCE_LABEL.to_string(), "other".to_string()),
                ("team".to_string(), "web".to_string()),
            ]),
            annotations: BTreeMap::from([("a".to_string(), "b".to_string())]),
            node_selector: BTreeMap::from([("pool".to_string(), "cache".to_string())]),
            priority_class_name: Some("high".into()),
            ..PodTemplateOverrides::default()
        }),
        ..MemcachedSpec::with_size(1)
    };
    let set = stateful_set(&instance("c"), &spec);
    let labels = template_labels(&set);
    assert_eq!(labels.get(INSTANCE_LABEL).map(String::as_str), Some("c"));
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    let template = set.spec.expect("spec").template;
    assert_eq!(
        template.metadata.and_then(|m| m.annotations),
        Some(BTreeMap::from([("a".to_string(), "b".to_string())]))
    );
    let pod = template.spec.expect("pod");
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([("pool".to_string(), "cache".to_string())]))
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    assert_eq!(pod.tolerations, None, "nothing given, nothing applied");
}

#[test]
fn a_changed_version_or_flag_changes_the_template() {
    let instance = instance("c");
    let base = MemcachedSpec::with_size(3);
    let template = |spec: &MemcachedSpec| stateful_set(&instance, spec).spec.map(|s| s.template);
    let changes = [
        MemcachedSpec {
            version: "1.6.21".into(),
            ..base.clone()
        },
        MemcachedSpec {
            memory_limit_mib: 128,
            ..base.clone()
        },
        MemcachedSpec {
            max_connections: 2048,
            ..base.clone()
        },
        MemcachedSpec {
            image: Some("example.com/memcached".into()),
            ..base.clone()
        },
    ];
    for changed in &changes {
        assert_ne!(template(changed), template(&base), "{changed:?}");
    }
    let scaled = MemcachedSpec {
        size: 5,
        ..base.clone()
    };
    assert_eq!(
        template(&scaled),
        template(&base),
        "a scale leaves the pods alone"
    );
}

#[test]
fn servers_are_stable_dns_names_in_ordinal_order() {
    assert_eq!(
        servers("sessions", "web", 3),
        [
            "sessions-0.sessions.web.svc:11211",
            "sessions-1.sessions.web.svc:11211",
            "sessions-2.sessions.web.svc:11211",
        ]
    );
    assert!(servers("sessions", "web", 0).is_empty());
}

#[test]
fn ordinals_are_read_only_from_this_memcacheds_pods() {
    assert_eq!(ordinal_of("cache", "cache-0"), Some(0));
    assert_eq!(ordinal_of("cache", "cache-12"), Some(12));
    assert_eq!(ordinal_of("cache", "cache-a-1"), None);
    assert_eq!(ordinal_of("cache", "cache-01"), None);
    assert_eq!(ordinal_of("cache", "cache-"), None);
    assert_eq!(ordinal_of("cache", "cache"), None);
    assert_eq!(ordinal_of("cache", "other-1"), None);
}

fn name_strategy() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn spec_strategy() -> impl Strategy<Value = MemcachedSpec> {
    (
        1..=64i32,
        (0u32..3, 0u32..20, 0u32..40),
        MIN_MEMORY_LIMIT_MIB..=MAX_MEMORY_LIMIT_MIB,
        MIN_MAX_CONNECTIONS..=MAX_MAX_CONNECTIONS,
        proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..4),
    )
        .prop_map(
            |(size, (major, minor, patch), memory, connections, labels)| MemcachedSpec {
                size,
                version: format!("{major}.{minor}.{patch}"),
                image: None,
                memory_limit_mib: memory,
                max_connections: connections,
                pod_template: Some(PodTemplateOverrides {
                    labels,
                    ..PodTemplateOverrides::default()
                }),
            },
        )
}

proptest! {
    #[test]
    fn selectors_match_their_own_pods_and_no_other_memcacheds(
        a in name_strategy(),
        b in name_strategy(),
        spec in spec_strategy(),
    ) {
        prop_assume!(a != b);
        let (ia, ib) = (instance(&a), instance(&b));
        let set_a = stateful_set(&ia, &spec);
        let set_b = stateful_set(&ib, &spec);
        let selector_a = match_labels(set_a.spec.as_ref().map(|s| &s.selector));
        let pods_a = template_labels(&set_a);
        let pods_b = template_labels(&set_b);
        prop_assert!(selects(&selector_a, &pods_a));
        prop_assert!(!selects(&selector_a, &pods_b));
        let service_selector = headless_service(&ia).spec.and_then(|s| s.selector).unwrap_or_default();
        prop_assert!(selects(&service_selector, &pods_a));
        prop_assert!(!selects(&service_selector, &pods_b));
        let pdb_selector = match_labels(pod_disruption_budget(&ia).spec.as_ref().and_then(|s| s.selector.as_ref()));
        prop_assert!(selects(&pdb_selector, &pods_a));
        prop_assert!(!selects(&pdb_selector, &pods_b));
    }

    #[test]
    fn a_valid_spec_gets_a_memory_limit_above_its_floor(spec in spec_strategy()) {
        prop_assert!(validate_memcached("c", &spec).is_ok());
        prop_assert!(container_memory_mib(&spec) >= memory_limit_floor_mib(&spec));
        let set = stateful_set(&instance("c"), &spec);
        prop_assert_eq!(set.spec.as_ref().and_then(|s| s.replicas), Some(spec.size));
    }

    #[test]
    fn every_server_is_found_again_by_its_ordinal(name in name_strategy(), replicas in 0u32..64) {
        let list = servers(&name, "ns", replicas);
        prop_assert_eq!(list.len() as u32, replicas);
        for (i, server) in list.iter().enumerate() {
            let pod = server.split('.').next().unwrap_or_default();
            prop_assert_eq!(ordinal_of(&name, pod), Some(i as u32));
        }
    }
}
