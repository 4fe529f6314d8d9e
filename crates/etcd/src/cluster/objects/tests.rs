//! Unit tests of the object builders, through their public functions.

use std::collections::{BTreeMap, BTreeSet};

use bosun_api::cluster::{MemberPodTemplate, StorageSpec};
use bosun_api::{EtcdCluster, EtcdClusterSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSecurityContext, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use super::*;

fn cluster_with(spec: EtcdClusterSpec) -> EtcdCluster {
    let mut cluster = EtcdCluster::new("main", spec);
    cluster.metadata.namespace = Some("db".to_string());
    cluster.metadata.uid = Some("0b1c2d3e".to_string());
    cluster
}

fn cluster() -> EtcdCluster {
    cluster_with(EtcdClusterSpec::default())
}

fn version(s: &str) -> EtcdVersion {
    s.parse().expect("test version parses")
}

fn params(cluster: &EtcdCluster, member: &str, others: &[&str]) -> MemberPodParams {
    let initial_cluster = std::iter::once(member)
        .chain(others.iter().copied())
        .map(|m| (m.to_string(), peer_url(cluster, m)))
        .collect();
    MemberPodParams {
        member: member.to_string(),
        initial_cluster,
        start: PodStart::Bootstrap,
        version: version("3.6.16"),
        image: None,
    }
}

fn pod_of(cluster: &EtcdCluster) -> Pod {
    member_pod(cluster, &params(cluster, "main-abcde", &[]))
}

fn spec_of(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("pod has a spec")
}

fn etcd_container(pod: &Pod) -> &Container {
    let spec = spec_of(pod);
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].name, ETCD_CONTAINER);
    &spec.containers[0]
}

fn args(pod: &Pod) -> Vec<String> {
    etcd_container(pod).args.clone().expect("etcd has args")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expected_owner() -> OwnerReference {
    OwnerReference {
        api_version: "etcd.bosun.dev/v1alpha1".to_string(),
        kind: "EtcdCluster".to_string(),
        name: "main".to_string(),
        uid: "0b1c2d3e".to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[test]
fn member_names_are_cluster_dash_suffix() {
    assert_eq!(member_name("main", "x7k2p"), "main-x7k2p");
}

#[test]
fn random_suffixes_are_five_lowercase_alphanumerics_and_differ() {
    let suffixes: Vec<String> = (0..1000).map(|_| random_suffix()).collect();
    for s in &suffixes {
        assert_eq!(s.len(), SUFFIX_LEN, "{s}");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{s}"
        );
    }
    let distinct: BTreeSet<&String> = suffixes.iter().collect();
    // 27^5 possible suffixes: a handful of collisions in 1000 would be a
    // broken generator, not bad luck.
    assert!(distinct.len() >= 995, "{} distinct", distinct.len());
}

#[test]
fn members_are_selected_by_labels_only_bosun_sets() {
    let c = cluster();
    assert_eq!(
        selector_labels(&c),
        map(&[
            ("app.kubernetes.io/managed-by", "bosun"),
            ("etcd.bosun.dev/cluster-uid", "0b1c2d3e"),
        ])
    );
    assert_eq!(
        member_selector(&c),
        "app.kubernetes.io/managed-by=bosun,etcd.bosun.dev/cluster-uid=0b1c2d3e"
    );
    assert_eq!(
        label_selector("main"),
        "app.kubernetes.io/instance=main,app.kubernetes.io/managed-by=bosun,app.kubernetes.io/name=etcd"
    );
    assert_eq!(
        member_labels(&c, "main-abcde"),
        map(&[
            ("app.kubernetes.io/name", "etcd"),
            ("app.kubernetes.io/instance", "main"),
            ("app.kubernetes.io/managed-by", "bosun"),
            ("etcd.bosun.dev/cluster-uid", "0b1c2d3e"),
            ("etcd.bosun.dev/member", "main-abcde"),
        ])
    );
}

#[test]
fn only_objects_with_the_clusters_labels_and_owner_are_ours() {
    let c = cluster();
    let ours = member_pvc(&c, "main-abcde", None).metadata;
    assert!(is_ours(&ours, &c));
    // A retained volume has no owner; its labels are the evidence.
    let mut retained = ours.clone();
    retained.owner_references = None;
    assert!(is_ours(&retained, &c));
    // Another release's pod with the recommended labels only.
    let mut foreign = ours.clone();
    if let Some(labels) = foreign.labels.as_mut() {
        labels.remove(CLUSTER_UID_LABEL);
        labels.insert(MANAGED_BY_LABEL.into(), "Helm".into());
    }
    assert!(!is_ours(&foreign, &c));
    // Our labels copied onto an object something else controls.
    let mut copied = ours.clone();
    if let Some(owners) = copied.owner_references.as_mut() {
        owners[0].uid = "someone-else".into();
    }
    assert!(!is_ours(&copied, &c));
}

#[test]
fn urls_and_endpoint_use_the_service_dns_names() {
    let c = cluster();
    assert_eq!(
        peer_url(&c, "main-abcde"),
        "http://main-abcde.main.db.svc:2380"
    );
    assert_eq!(
        client_url(&c, "main-abcde"),
        "http://main-abcde.main.db.svc:2379"
    );
    assert_eq!(client_endpoint(&c), "main-client.db.svc:2379");
}

#[test]
fn identity_check_wants_namespace_and_uid() {
    assert!(check_identity(&cluster()).is_ok());

    let mut no_uid = cluster();
    no_uid.metadata.uid = None;
    let err = check_identity(&no_uid).expect_err("no uid");
    assert!(err.to_string().contains("db/main has no uid"), "{err}");

    let no_namespace = EtcdCluster::new("main", EtcdClusterSpec::default());
    let err = check_identity(&no_namespace).expect_err("no namespace");
    assert!(err.to_string().contains("has no namespace"), "{err}");
}

#[test]
fn peer_service_is_headless_publishes_unready_pods_and_serves_both_ports() {
    let service = peer_service(&cluster());
    assert_eq!(
        serde_json::to_value(&service).expect("serializes"),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "main",
                "namespace": "db",
                "labels": {
                    "app.kubernetes.io/name": "etcd",
                    "app.kubernetes.io/instance": "main",
                    "app.kubernetes.io/managed-by": "bosun",
                    "etcd.bosun.dev/cluster-uid": "0b1c2d3e",
                },
                "ownerReferences": [{
                    "apiVersion": "etcd.bosun.dev/v1alpha1",
                    "kind": "EtcdCluster",
                    "name": "main",
                    "uid": "0b1c2d3e",
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {
                    "app.kubernetes.io/managed-by": "bosun",
                    "etcd.bosun.dev/cluster-uid": "0b1c2d3e",
                },
                "ports": [
                    {"name": "client", "port": 2379, "targetPort": 2379, "protocol": "TCP"},
                    {"name": "peer", "port": 2380, "targetPort": 2380, "protocol": "TCP"},
                ],
            },
        })
    );
}

#[test]
fn client_service_is_a_cluster_ip_on_the_client_port() {
    let service = client_service(&cluster());
    assert_eq!(service.metadata.name.as_deref(), Some("main-client"));
    assert_eq!(service.metadata.namespace.as_deref(), Some("db"));
    assert_eq!(
        service.metadata.owner_references,
        Some(vec![expected_owner()])
    );
    assert_eq!(service.metadata.labels, Some(cluster_labels(&cluster())));
    let spec = service.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.cluster_ip, None);
    assert_eq!(spec.publish_not_ready_addresses, None);
    assert_eq!(spec.selector, Some(selector_labels(&cluster())));
    let ports = spec.ports.expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("client"));
    assert_eq!(ports[0].port, 2379);
    assert_eq!(ports[0].target_port, Some(IntOrString::Int(2379)));
}

#[test]
fn disruption_budget_allows_one_member_down() {
    let pdb = pod_disruption_budget(&cluster());
    assert_eq!(pdb.metadata.name.as_deref(), Some("main"));
    assert_eq!(pdb.metadata.namespace.as_deref(), Some("db"));
    assert_eq!(pdb.metadata.owner_references, Some(vec![expected_owner()]));
    let spec = pdb.spec.expect("spec");
    assert_eq!(spec.max_unavailable, None);
    assert_eq!(spec.min_available, Some(IntOrString::Int(2)));
    assert_eq!(
        spec.selector.and_then(|s| s.match_labels),
        Some(selector_labels(&cluster()))
    );
}

#[test]
fn pvc_requests_the_storage_size_and_class() {
    let c = cluster_with(EtcdClusterSpec {
        storage: StorageSpec {
            size: Quantity("8Gi".to_string()),
            storage_class_name: Some("fast".to_string()),
            ..StorageSpec::default()
        },
        ..EtcdClusterSpec::default()
    });
    let pvc = member_pvc(&c, "main-abcde", None);
    assert_eq!(pvc.metadata.name.as_deref(), Some("main-abcde"));
    assert_eq!(pvc.metadata.namespace.as_deref(), Some("db"));
    assert_eq!(
        pvc.metadata.labels,
        Some(member_labels(&cluster(), "main-abcde"))
    );
    assert_eq!(pvc.metadata.owner_references, Some(vec![expected_owner()]));
    let spec = pvc.spec.expect("spec");
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources.and_then(|r| r.requests),
        Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity("8Gi".to_string())
        )]))
    );
}

#[test]
fn pvc_uses_the_default_class_and_size_when_unset() {
    let spec = member_pvc(&cluster(), "main-abcde", None)
        .spec
        .expect("spec");
    assert_eq!(spec.storage_class_name, None);
    assert_eq!(
        spec.resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned()),
        Some(Quantity("4Gi".to_string()))
    );
}

#[test]
fn retained_pvc_has_no_owner() {
    let c = cluster_with(EtcdClusterSpec {
        storage: StorageSpec {
            retain_on_delete: true,
            ..StorageSpec::default()
        },
        ..EtcdClusterSpec::default()
    });
    let pvc = member_pvc(&c, "main-abcde", None);
    assert_eq!(pvc.metadata.owner_references, None);
    // Still labelled, so that a new cluster of the same name can find it.
    assert_eq!(
        pvc.metadata.labels,
        Some(member_labels(&cluster(), "main-abcde"))
    );
}

#[test]
fn member_pod_identity_and_dns() {
    let pod = pod_of(&cluster());
    assert_eq!(pod.metadata.name.as_deref(), Some("main-abcde"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("db"));
    assert_eq!(pod.metadata.owner_references, Some(vec![expected_owner()]));
    assert_eq!(
        pod.metadata.labels,
        Some(member_labels(&cluster(), "main-abcde"))
    );
    assert_eq!(member_of_pod(&pod).as_deref(), Some("main-abcde"));
    let spec = spec_of(&pod);
    assert_eq!(spec.hostname.as_deref(), Some("main-abcde"));
    assert_eq!(spec.subdomain.as_deref(), Some("main"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.automount_service_account_token, Some(false));
}

#[test]
fn member_of_pod_is_none_without_the_label() {
    assert_eq!(member_of_pod(&Pod::default()), None);
}

#[test]
fn member_pod_annotations_carry_version_and_initial_state() {
    let c = cluster_with(EtcdClusterSpec {
        pod_template: Some(MemberPodTemplate {
            annotations: map(&[
                ("team", "storage"),
                ("etcd.bosun.dev/version", "9.9.9"),
                ("etcd.bosun.dev/initial-state", "bogus"),
            ]),
            ..MemberPodTemplate::default()
        }),
        ..EtcdClusterSpec::default()
    });
    let mut p = params(&c, "main-abcde", &["main-fghij"]);
    p.start = PodStart::Join;
    p.version = version("3.5.35");
    let pod = member_pod(&c, &p);
    assert_eq!(
        pod.metadata.annotations,
        Some(map(&[
            ("team", "storage"),
            ("etcd.bosun.dev/version", "3.5.35"),
            ("etcd.bosun.dev/initial-state", "existing"),
        ]))
    );
    assert_eq!(version_of_pod(&pod), Some(version("3.5.35")));
    assert_eq!(initial_state_of_pod(&pod), Some(InitialState::Existing));

    let new = pod_of(&cluster());
    assert_eq!(initial_state_of_pod(&new), Some(InitialState::New));
    assert_eq!(version_of_pod(&new), Some(version("3.6.16")));
}

#[test]
fn user_labels_are_added_but_cannot_override_the_operators() {
    let c = cluster_with(EtcdClusterSpec {
        pod_template: Some(MemberPodTemplate {
            labels: map(&[
                ("team", "storage"),
                ("app.kubernetes.io/name", "not-etcd"),
                ("app.kubernetes.io/instance", "other"),
                ("app.kubernetes.io/managed-by", "helm"),
                ("etcd.bosun.dev/member", "someone-else"),
            ]),
            ..MemberPodTemplate::default()
        }),
        ..EtcdClusterSpec::default()
    });
    let pod = pod_of(&c);
    let mut expected = member_labels(&cluster(), "main-abcde");
    expected.insert("team".to_string(), "storage".to_string());
    assert_eq!(pod.metadata.labels, Some(expected));
}

#[test]
fn member_pod_runs_the_requested_version_from_the_default_repository() {
    let pod = pod_of(&cluster());
    let spec = spec_of(&pod);
    let etcd = etcd_container(&pod);
    assert_eq!(
        etcd.image.as_deref(),
        Some("gcr.io/etcd-development/etcd:v3.6.16")
    );
    assert_eq!(etcd.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(spec.init_containers, None);
}

#[test]
fn image_override_keeps_the_version_tag() {
    let c = cluster_with(EtcdClusterSpec {
        image: Some("registry.example:5000/mirror/etcd".to_string()),
        ..EtcdClusterSpec::default()
    });
    let pod = pod_of(&c);
    assert_eq!(
        etcd_container(&pod).image.as_deref(),
        Some("registry.example:5000/mirror/etcd:v3.6.16")
    );
    assert_eq!(
        member_image(&c, &version("3.7.0-rc.0")),
        "registry.example:5000/mirror/etcd:v3.7.0-rc.0"
    );
}

#[test]
fn etcd_runs_with_the_operators_flags_in_order() {
    let c = cluster();
    let pod = member_pod(&c, &params(&c, "main-abcde", &["main-fghij", "main-klmno"]));
    assert_eq!(
        etcd_container(&pod).command,
        Some(vec!["/usr/local/bin/etcd".to_string()])
    );
    assert_eq!(
        args(&pod),
        [
            "--name=main-abcde",
            "--data-dir=/var/lib/etcd/data",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://main-abcde.main.db.svc:2379",
            "--listen-peer-urls=http://0.0.0.0:2380",
            "--initial-advertise-peer-urls=http://main-abcde.main.db.svc:2380",
            "--initial-cluster=main-abcde=http://main-abcde.main.db.svc:2380,\
             main-fghij=http://main-fghij.main.db.svc:2380,\
             main-klmno=http://main-klmno.main.db.svc:2380",
            "--initial-cluster-state=new",
            "--initial-cluster-token=main-0b1c2d3e",
            "--listen-metrics-urls=http://0.0.0.0:2381",
        ]
    );
}

#[test]
fn initial_cluster_renders_name_equals_url_pairs_in_the_given_order() {
    let c = cluster();
    let pod = member_pod(
        &c,
        &MemberPodParams {
            member: "b".to_string(),
            initial_cluster: vec![
                ("b".to_string(), "http://b:2380".to_string()),
                ("a".to_string(), "http://a:2380".to_string()),
            ],
            start: PodStart::Join,
            version: version("3.6.16"),
            image: None,
        },
    );
    let args = args(&pod);
    assert!(
        args.contains(&"--initial-cluster=b=http://b:2380,a=http://a:2380".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--initial-cluster-state=existing".to_string()),
        "{args:?}"
    );
}

#[test]
fn cluster_token_falls_back_to_the_name_without_uid() {
    let mut c = cluster();
    c.metadata.uid = None;
    let pod = pod_of(&c);
    assert!(args(&pod).contains(&"--initial-cluster-token=main".to_string()));
    assert_eq!(pod.metadata.owner_references, None);
}

#[test]
fn etcd_options_follow_the_operators_flags_in_key_order_without_owned_ones() {
    let c = cluster_with(EtcdClusterSpec {
        etcd_options: map(&[
            ("snapshot-count", "10000"),
            ("auto-compaction-retention", "1h"),
            ("name", "hijack"),
            ("data-dir", "/tmp"),
            ("initial-cluster-state", "new"),
            ("force-new-cluster", "true"),
            ("quota-backend-bytes", "8589934592"),
            ("--log-level", "debug"),
            ("Bad", "x"),
        ]),
        ..EtcdClusterSpec::default()
    });
    let args = args(&pod_of(&c));
    assert_eq!(
        &args[10..],
        [
            "--auto-compaction-retention=1h",
            "--quota-backend-bytes=8589934592",
            "--snapshot-count=10000",
        ]
    );
    assert_eq!(args.iter().filter(|a| a.starts_with("--name=")).count(), 1);
    assert!(args.contains(&"--name=main-abcde".to_string()));
    assert!(
        !args
            .iter()
            .any(|a| a.contains("hijack") || a.contains("/tmp"))
    );
    assert!(!args.iter().any(|a| a.starts_with("--force-new-cluster")));
}

#[test]
fn etcd_exposes_its_ports_and_is_ready_by_health() {
    let pod = pod_of(&cluster());
    let etcd = etcd_container(&pod);
    let ports: Vec<(Option<&str>, i32)> = etcd
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("client"), 2379),
            (Some("peer"), 2380),
            (Some("metrics"), 2381)
        ]
    );
    let probe = etcd.readiness_probe.as_ref().expect("readiness probe");
    let http = probe.http_get.as_ref().expect("httpGet");
    assert_eq!(http.path.as_deref(), Some("/health?exclude=NOSPACE"));
    assert_eq!(http.port, IntOrString::Int(2379));
    assert_eq!(probe.period_seconds, Some(1));
    assert_eq!(probe.timeout_seconds, Some(2));
    assert_eq!(probe.failure_threshold, Some(3));
    assert!(etcd.liveness_probe.is_none());
    assert_eq!(
        etcd.volume_mounts,
        Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: "/var/lib/etcd".to_string(),
            ..VolumeMount::default()
        }])
    );
}

#[test]
fn data_volume_is_the_members_pvc_by_default() {
    let pod = pod_of(&cluster());
    let volumes = spec_of(&pod).volumes.clone().expect("volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "data");
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.as_str()),
        Some("main-abcde")
    );
    assert!(volumes[0].empty_dir.is_none());
}

#[test]
fn data_volume_is_a_size_limited_empty_dir_when_asked() {
    let c = cluster_with(EtcdClusterSpec {
        storage: StorageSpec {
            size: Quantity("1Gi".to_string()),
            empty_dir: true,
            ..StorageSpec::default()
        },
        ..EtcdClusterSpec::default()
    });
    let pod = pod_of(&c);
    let volumes = spec_of(&pod).volumes.clone().expect("volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "data");
    assert!(volumes[0].persistent_volume_claim.is_none());
    assert_eq!(
        volumes[0]
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.clone()),
        Some(Quantity("1Gi".to_string()))
    );
}

#[test]
fn pod_template_settings_are_merged_in() {
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".to_string()),
        )])),
        ..ResourceRequirements::default()
    };
    let toleration = Toleration {
        key: Some("dedicated".to_string()),
        operator: Some("Exists".to_string()),
        ..Toleration::default()
    };
    let security = PodSecurityContext {
        fs_group: Some(2000),
        ..PodSecurityContext::default()
    };
    let affinity: k8s_openapi::api::core::v1::Affinity = serde_json::from_value(json!({
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "main"}},
                "topologyKey": "kubernetes.io/hostname",
            }]
        }
    }))
    .expect("affinity");
    let c = cluster_with(EtcdClusterSpec {
        pod_template: Some(MemberPodTemplate {
            resources: Some(resources.clone()),
            node_selector: map(&[("disk", "ssd")]),
            affinity: Some(affinity.clone()),
            tolerations: vec![toleration.clone()],
            security_context: Some(security.clone()),
            priority_class_name: Some("critical".to_string()),
            env: vec![
                EnvVar {
                    name: "GOMAXPROCS".to_string(),
                    value: Some("2".to_string()),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "ETCD_NAME".to_string(),
                    value: Some("hijack".to_string()),
                    ..EnvVar::default()
                },
            ],
            ..MemberPodTemplate::default()
        }),
        ..EtcdClusterSpec::default()
    });
    let pod = pod_of(&c);
    let spec = spec_of(&pod);
    assert_eq!(spec.node_selector, Some(map(&[("disk", "ssd")])));
    assert_eq!(spec.affinity, Some(affinity));
    assert_eq!(spec.tolerations, Some(vec![toleration]));
    assert_eq!(spec.security_context, Some(security));
    assert_eq!(spec.priority_class_name.as_deref(), Some("critical"));
    let etcd = etcd_container(&pod);
    assert_eq!(etcd.resources, Some(resources.clone()));
    let env: Vec<&str> = etcd
        .env
        .as_ref()
        .expect("env")
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["GOMAXPROCS"]);
}

#[test]
fn pod_without_template_sets_no_user_fields() {
    let pod = pod_of(&cluster());
    let spec = spec_of(&pod);
    assert_eq!(spec.node_selector, None);
    assert_eq!(spec.affinity, None);
    assert_eq!(spec.tolerations, None);
    assert_eq!(spec.security_context, None);
    assert_eq!(spec.priority_class_name, None);
    assert_eq!(etcd_container(&pod).env, None);
    assert_eq!(etcd_container(&pod).resources, None);
}

#[test]
fn member_pod_round_trips_through_json() {
    // What the reconciler sends is what it reads back: no field is lost to
    // serialization (a server-side apply body is this JSON).
    let pod = pod_of(&cluster());
    let value = serde_json::to_value(&pod).expect("serializes");
    let back: Pod = serde_json::from_value(value).expect("deserializes");
    assert_eq!(back, pod);
}

#[test]
fn initial_state_flag_values() {
    assert_eq!(InitialState::New.as_str(), "new");
    assert_eq!(InitialState::Existing.as_str(), "existing");
    assert_eq!(InitialState::parse("new"), Some(InitialState::New));
    assert_eq!(
        InitialState::parse("existing"),
        Some(InitialState::Existing)
    );
    assert_eq!(InitialState::parse("New"), None);
}

fn restoring_params(cluster: &EtcdCluster, url: &str, secret: Option<&str>) -> MemberPodParams {
    MemberPodParams {
        start: PodStart::Restore(SeedRestore {
            intent: RestoreIntent {
                source: bosun_api::restore::SnapshotLocation {
                    url: url.to_string(),
                    credentials_secret: secret.map(str::to_string),
                    endpoint: Some("http://s3.bosun-system.svc:8333".to_string()),
                    region: None,
                    sha256: Some("ab".repeat(32)),
                },
                cluster_token: "main-restore-1".to_string(),
            },
            image: "bosun.dev/bosun:dev".to_string(),
        }),
        ..params(cluster, "main-abcde", &[])
    }
}

#[test]
fn a_restoring_seed_runs_bosun_restore_member_first_with_the_verified_sha() {
    let c = cluster();
    let pod = member_pod(
        &c,
        &restoring_params(&c, "s3://bosun-backups/db/x.db", Some("s3-credentials")),
    );
    let spec = spec_of(&pod);
    let init = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1);
    let restore = &init[0];
    assert_eq!(restore.name, "restore");
    assert_eq!(restore.image.as_deref(), Some("bosun.dev/bosun:dev"));
    let args = restore.args.clone().unwrap_or_default();
    for expected in [
        "restore-member",
        "--source-url=s3://bosun-backups/db/x.db",
        "--data-dir=/var/lib/etcd/data",
        "--name=main-abcde",
        "--cluster-token=main-restore-1",
        "--etcdutl=/usr/local/bin/etcdutl-3.6",
        "--endpoint=http://s3.bosun-system.svc:8333",
        "--credentials-dir=/var/run/bosun/credentials",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    assert!(args.contains(&format!("--sha256={}", "ab".repeat(32))));
    let volumes = spec.volumes.as_ref().expect("volumes");
    let secret = volumes
        .iter()
        .find(|v| v.name == "restore-credentials")
        .and_then(|v| v.secret.as_ref())
        .expect("credentials volume");
    assert_eq!(secret.secret_name.as_deref(), Some("s3-credentials"));
    // etcd itself is unchanged: it starts from the restored data directory.
    assert!(
        etcd_container(&pod)
            .args
            .as_ref()
            .expect("args")
            .contains(&"--data-dir=/var/lib/etcd/data".to_string())
    );
}

#[test]
fn a_file_snapshot_is_mounted_read_only_from_its_directory() {
    let c = cluster();
    let pod = member_pod(&c, &restoring_params(&c, "file:///backups/ns/b/1.db", None));
    let spec = spec_of(&pod);
    let volume = spec
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == "restore-snapshot-dir"))
        .and_then(|v| v.host_path.as_ref())
        .expect("hostPath volume");
    assert_eq!(volume.path, "/backups/ns/b");
    let init = &spec.init_containers.as_ref().expect("init")[0];
    let mount = init
        .volume_mounts
        .as_ref()
        .and_then(|m| m.iter().find(|m| m.name == "restore-snapshot-dir"))
        .expect("mount");
    assert_eq!(mount.mount_path, "/backups/ns/b");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        !init
            .args
            .as_ref()
            .expect("args")
            .iter()
            .any(|a| a.starts_with("--credentials-dir"))
    );
}

#[test]
fn members_without_restore_have_no_init_container() {
    assert_eq!(spec_of(&pod_of(&cluster())).init_containers, None);
}

#[test]
fn a_restarting_member_checks_its_data_before_etcd_starts() {
    let c = cluster();
    let mut p = params(&c, "main-abcde", &["main-fghij"]);
    p.start = PodStart::Resume {
        image: "bosun.dev/bosun:dev".to_string(),
    };
    let pod = member_pod(&c, &p);
    let init = spec_of(&pod)
        .init_containers
        .clone()
        .expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, DATA_GUARD_CONTAINER);
    assert_eq!(
        init[0].args.clone().unwrap_or_default(),
        vec!["check-member-data", "--data-dir=/var/lib/etcd/data"]
    );
    let mount = &init[0].volume_mounts.clone().expect("mounts")[0];
    assert_eq!(mount.name, DATA_VOLUME);
    assert_eq!(mount.read_only, Some(true));
    assert!(args(&pod).contains(&"--initial-cluster-state=existing".to_string()));

    // A learner's first start and a fresh seed need no check.
    p.start = PodStart::Join;
    assert!(spec_of(&member_pod(&c, &p)).init_containers.is_none());
    assert!(spec_of(&pod_of(&c)).init_containers.is_none());
}

#[test]
fn a_restore_volume_carries_its_intent_and_reads_back() {
    let c = cluster();
    let intent = RestoreIntent {
        source: bosun_api::restore::SnapshotLocation {
            url: "s3://b/k.db".to_string(),
            credentials_secret: Some("creds".to_string()),
            endpoint: None,
            region: Some("eu".to_string()),
            sha256: Some("cd".repeat(32)),
        },
        cluster_token: "main-uid".to_string(),
    };
    let pvc = member_pvc(&c, "main-abcde", Some(&intent));
    assert_eq!(restore_intent_of(&pvc), Some(Ok(intent)));
    assert!(!held_member(&pvc));
    assert_eq!(restore_intent_of(&member_pvc(&c, "main-abcde", None)), None);

    let mut garbled = pvc.clone();
    garbled
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            RESTORE_SOURCE_ANNOTATION.to_string(),
            "{not json".to_string(),
        );
    let error = restore_intent_of(&garbled)
        .expect("annotated")
        .expect_err("unreadable");
    assert!(error.contains("main-abcde"), "{error}");
}

fn pod_with_init_status(name: &str, state: serde_json::Value, last: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m"},
        "status": {"initContainerStatuses": [{
            "name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 1,
            "state": state, "lastState": last,
        }]},
    }))
    .expect("pod")
}

#[test]
fn init_failures_are_read_from_the_container_status() {
    let lost = pod_with_init_status(
        DATA_GUARD_CONTAINER,
        serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        serde_json::json!({"terminated": {"exitCode": 3, "message": "holds no etcd member data"}}),
    );
    let failure = init_failure(&lost).expect("a failure");
    assert!(failure.data_lost);
    assert!(
        failure.message.contains("holds no etcd member data"),
        "{}",
        failure.message
    );

    let restore = pod_with_init_status(
        RESTORE_CONTAINER,
        serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "sha256 mismatch"}}),
        serde_json::json!({}),
    );
    let failure = init_failure(&restore).expect("a failure");
    assert!(!failure.data_lost);
    assert_eq!(failure.message, "restore: sha256 mismatch");

    // Running again after a failure, or succeeded: no failure to report.
    let rerun = pod_with_init_status(
        RESTORE_CONTAINER,
        serde_json::json!({"running": {}}),
        serde_json::json!({"terminated": {"exitCode": 1}}),
    );
    assert_eq!(init_failure(&rerun), None);
    let done = pod_with_init_status(
        DATA_GUARD_CONTAINER,
        serde_json::json!({"terminated": {"exitCode": 0}}),
        serde_json::json!({}),
    );
    assert_eq!(init_failure(&done), None);
}

#[test]
fn the_disruption_budget_never_allows_an_eviction_below_quorum() {
    for (size, min_available) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
        let c = cluster_with(EtcdClusterSpec {
            size,
            ..EtcdClusterSpec::default()
        });
        let spec = pod_disruption_budget(&c).spec.expect("spec");
        assert_eq!(
            spec.min_available,
            Some(IntOrString::Int(min_available)),
            "size {size}"
        );
    }
}
