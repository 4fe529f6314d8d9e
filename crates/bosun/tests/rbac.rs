//! The operator's RBAC in `deploy/operator/` keeps to what the code does.
//!
//! - The tables below list every (apiGroup, resource, verb) the operator's
//!   code uses, each with the call site that needs it; the ClusterRole and
//!   the leader-election Role must grant exactly those, no more, no less.
//!   A scan of the operator's sources fails when the code starts to use a
//!   Kubernetes type the tables do not know.
//! - On the dev cluster (whose API server enforces RBAC): every manifest of
//!   `deploy/` passes the API server's dry run; a copy of the RBAC, under
//!   names of this test, bound to a ServiceAccount of a test namespace,
//!   allows every entry of the tables and refuses neighbours that are not
//!   in them (`kubectl auth can-i`); and the operator's own calls (leader
//!   election, the events recorder, server-side apply of Services and the
//!   PDB, reading credentials, creating pods and volumes, the Controllers'
//!   list and watch) succeed with that ServiceAccount's token.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bosun_api::{EtcdBackup, EtcdCluster, EtcdClusterSpec, EtcdRestore};
use bosun_devcluster::fixture::TestCluster;
use bosun_etcd::cluster::objects;
use bosun_runtime::leader_election::{ElectionConfig, LeaderElector};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// What the operator does in every namespace: (apiGroup, resource, verb).
/// Each entry names the code that needs it.
const CLUSTER_ROLE: &[(&str, &str, &str)] = &[
    // cluster/reconcile.rs `run`: Controller::new(Api::<EtcdCluster>::all);
    // `forget_deleted_clusters`: api.list_metadata.
    ("etcd.bosun.dev", "etcdclusters", "list"),
    ("etcd.bosun.dev", "etcdclusters", "watch"),
    // backup/reconcile.rs `take_backup`: clusters.get_opt(cluster_name);
    // restore/reconcile.rs `reconcile`: clusters.get_opt(cluster_name);
    // cluster/reconcile/in_place_restore.rs `remove_restore_mark`: api.get_opt.
    ("etcd.bosun.dev", "etcdclusters", "get"),
    // restore/reconcile.rs `reconcile`: clusters.patch (sets the restore
    // annotation); cluster/reconcile/in_place_restore.rs
    // `remove_restore_mark`: api.patch.
    ("etcd.bosun.dev", "etcdclusters", "patch"),
    // cluster/reconcile.rs `write_status` and in_place_restore.rs
    // `write_acknowledgement`: api.patch_status.
    ("etcd.bosun.dev", "etcdclusters/status", "patch"),
    // cluster/objects.rs `owner_reference`: blockOwnerDeletion on pods,
    // volumes, Services and the PDB; the OwnerReferencesPermissionEnforcement
    // admission plugin, where enabled, asks for update on the owner's
    // finalizers before it lets such a reference be set.
    ("etcd.bosun.dev", "etcdclusters/finalizers", "update"),
    // backup/reconcile.rs `run`: Controller::new(Api::<EtcdBackup>::all).
    ("etcd.bosun.dev", "etcdbackups", "list"),
    ("etcd.bosun.dev", "etcdbackups", "watch"),
    // backup/reconcile.rs `reconcile`: api.get_opt (reads its object fresh);
    // restore/source.rs `resolve`: backups.get_opt(reference.name).
    ("etcd.bosun.dev", "etcdbackups", "get"),
    // backup/reconcile.rs `write_status`: api.patch_status.
    ("etcd.bosun.dev", "etcdbackups/status", "patch"),
    // restore/reconcile.rs `run`: Controller::new(Api::<EtcdRestore>::all);
    // backup/reconcile.rs `reconcile`: restores.list (a restore holds backups).
    ("etcd.bosun.dev", "etcdrestores", "list"),
    ("etcd.bosun.dev", "etcdrestores", "watch"),
    // cluster/reconcile/in_place_restore.rs `restore_in_place`:
    // restores.get_opt(restore_name); restore/reconcile.rs `mark_is_live`.
    ("etcd.bosun.dev", "etcdrestores", "get"),
    // restore/reconcile.rs `write_status`: api.patch_status.
    ("etcd.bosun.dev", "etcdrestores/status", "patch"),
    // cluster/reconcile.rs `run`: .owns(Api::<Pod>::all) (list, watch);
    // `observe` and `restore_in_place`: self.pods.list; backup/reconcile.rs
    // `pick_member`: pods.list.
    ("", "pods", "list"),
    ("", "pods", "watch"),
    // cluster/reconcile.rs `create_pod`: self.pods.create.
    ("", "pods", "create"),
    // cluster/adopt.rs `adopt_legacy_members`: api.patch (a label), also
    // over all namespaces' pods and volumes (list).
    ("", "pods", "patch"),
    // cluster/reconcile.rs `delete_member_objects`, `restore_in_place` and
    // the member replacement in `carry_out`: self.pods.delete.
    ("", "pods", "delete"),
    // cluster/reconcile.rs `run`: .owns(Api::<PersistentVolumeClaim>::all);
    // `observe` and `restore_in_place`: self.pvcs.list.
    ("", "persistentvolumeclaims", "list"),
    ("", "persistentvolumeclaims", "watch"),
    // cluster/reconcile.rs `ensure_volume`: self.pvcs.create.
    ("", "persistentvolumeclaims", "create"),
    // cluster/reconcile.rs `delete_member_objects`, `restore_in_place`:
    // self.pvcs.delete.
    ("", "persistentvolumeclaims", "delete"),
    // cluster/reconcile.rs `record_held_volumes`: self.pvcs.patch (an
    // annotation on a volume a member ran on); cluster/adopt.rs: a label.
    ("", "persistentvolumeclaims", "patch"),
    // cluster/reconcile.rs `apply_services` and memcached reconcile.rs
    // `apply_all`: services.patch(Patch::Apply); an apply that creates the
    // object is also authorized as create (the API server refuses it
    // without; the end-to-end test below fails).
    ("", "services", "patch"),
    ("", "services", "create"),
    // memcached reconcile.rs `run`: .owns(Service), .owns(PodDisruptionBudget).
    ("", "services", "list"),
    ("", "services", "watch"),
    // cluster/reconcile.rs `apply_services`: pdbs.patch(Patch::Apply), the
    // same; memcached `apply_all` too.
    ("policy", "poddisruptionbudgets", "patch"),
    ("policy", "poddisruptionbudgets", "create"),
    ("policy", "poddisruptionbudgets", "list"),
    ("policy", "poddisruptionbudgets", "watch"),
    // memcached reconcile.rs `run`: Controller::new(Memcached).
    ("cache.bosun.dev", "memcacheds", "list"),
    ("cache.bosun.dev", "memcacheds", "watch"),
    // memcached reconcile.rs `write_status`: api.patch_status(Patch::Apply).
    ("cache.bosun.dev", "memcacheds/status", "patch"),
    // memcached objects.rs: controller_owner_ref (blockOwnerDeletion).
    ("cache.bosun.dev", "memcacheds/finalizers", "update"),
    // memcached reconcile.rs `run`: .owns(StatefulSet); `reconcile`:
    // sets.get_opt; `apply_all`: patch(Patch::Apply), create the first time.
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "list"),
    ("apps", "statefulsets", "watch"),
    ("apps", "statefulsets", "patch"),
    ("apps", "statefulsets", "create"),
    // backup/reconcile.rs `credentials_for` (also through restore/source.rs
    // `verify`): secrets.get_opt(name).
    ("", "secrets", "get"),
    // kube-runtime's Recorder::publish, called by the `event` functions of
    // all three reconcilers: create, and patch for a repeat of an event.
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// What the operator does in its own namespace, on its Lease only (except
/// create, which RBAC cannot limit to a name).
const LEADER_ELECTION_ROLE: &[(&str, &str, &str)] = &[
    // runtime leader_election/lock.rs `get`: api.get_opt(name).
    ("coordination.k8s.io", "leases", "get"),
    // lock.rs `create`: api.create, when there is no Lease yet.
    ("coordination.k8s.io", "leases", "create"),
    // lock.rs `freed`: watcher::watch_object(api, name), a list and a
    // watch with the field selector metadata.name=<the Lease>.
    ("coordination.k8s.io", "leases", "list"),
    ("coordination.k8s.io", "leases", "watch"),
    // lock.rs `update`: api.replace over the resourceVersion read (renew,
    // take over, release on shutdown).
    ("coordination.k8s.io", "leases", "update"),
];

/// What every replica does with the webhooks' certificate Secret in its own
/// namespace, on that Secret only (except create).
const WEBHOOK_ROLE: &[(&str, &str, &str)] = &[
    // runtime webhook/reload.rs `watch_secret`: watcher::watch_object, a
    // list and a watch with the field selector metadata.name=<the Secret>.
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    // webhook/self_managed.rs `step` (the Lease holder): secrets.get_opt,
    // then create when there is none, or replace over the version read.
    ("", "secrets", "get"),
    ("", "secrets", "create"),
    ("", "secrets", "update"),
];

/// What the operator does with the etcd API's webhook configuration, by name.
const WEBHOOK_CLUSTER_ROLE: &[(&str, &str, &str)] = &[
    // runtime webhook/published.rs `read_published` (every replica, for
    // readiness) and `publish`: validating.get_opt(name).
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "get",
    ),
    // published.rs `publish` (the Lease holder): validating.patch(Patch::Apply)
    // of the caBundle; a configuration that is not there is skipped, never
    // created.
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "patch",
    ),
    // The same two for the Memcached API's mutating configuration.
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "get",
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
    ),
];

/// The webhook configurations and Secret `bosun operator` uses by default.
const WEBHOOK_CONFIGURATIONS: &[&str] = &["bosun-etcd", "bosun-memcached"];
const WEBHOOK_SECRET: &str = "bosun-operator-webhook-tls";

/// Types the runtime builds an `Api` of that bosun's operator never calls,
/// and why.
const NEVER_CALLED: &[(&str, &str)] = &[];

/// Modules of the runtime that only installers call (`bosun install`,
/// `bosun dev`) and the operator never does, and why; the guard below
/// checks that the operator's code does not name them.
const NOT_OPERATOR_CODE: &[(&str, &str)] = &[(
    "apply",
    "the manifest applier: it applies and deletes what an installer gives \
     it, with the installer's credentials",
)];

/// The Lease `bosun operator` elects on by default.
const LEASE: &str = "bosun-operator";

/// Calls the code makes that the ClusterRole deliberately does not allow,
/// and why.
const NOT_GRANTED: &[(&str, &str, &str, &str)] = &[(
    "",
    "services",
    "get",
    "backup/service_address.rs `reachable_url` reads a Service only when the \
     operator runs outside the cluster (`bosun operator` on a host); in a pod \
     it returns before the call",
)];

/// The Kubernetes types the operator's code builds an `Api` of, with the
/// resource the tables list them under.
const KNOWN_TYPES: &[(&str, &str, &str)] = &[
    ("EtcdCluster", "etcd.bosun.dev", "etcdclusters"),
    ("EtcdBackup", "etcd.bosun.dev", "etcdbackups"),
    ("EtcdRestore", "etcd.bosun.dev", "etcdrestores"),
    ("Pod", "", "pods"),
    ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
    ("Service", "", "services"),
    ("PodDisruptionBudget", "policy", "poddisruptionbudgets"),
    ("Secret", "", "secrets"),
    ("Lease", "coordination.k8s.io", "leases"),
    (
        "ValidatingWebhookConfiguration",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    (
        "MutatingWebhookConfiguration",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    ("Memcached", "cache.bosun.dev", "memcacheds"),
    ("StatefulSet", "apps", "statefulsets"),
];

type Grant = (String, String, String);

fn grants(table: &[(&str, &str, &str)]) -> BTreeSet<Grant> {
    table
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest<T: DeserializeOwned>(file: &str) -> T {
    let path = repo().join("deploy/operator").join(file);
    let text = std::fs::read_to_string(&path).expect("the manifest is there");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every (apiGroup, resource, verb) the rules grant, refusing what cannot be
/// reasoned about this way: wildcards and non-resource URLs.
fn granted(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for list in [&groups, &resources, &rule.verbs] {
            assert!(
                !list.iter().any(|s| s.contains('*')),
                "wildcard in {rule:?}"
            );
            assert!(!list.is_empty(), "an empty list grants nothing: {rule:?}");
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    set.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    set
}

fn assert_same(what: &str, granted: &BTreeSet<Grant>, needed: &BTreeSet<Grant>) {
    let extra: Vec<_> = granted.difference(needed).collect();
    let missing: Vec<_> = needed.difference(granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what} differs from what the code uses:\n  granted but not used: {extra:?}\n  used but not granted: {missing:?}"
    );
}

#[test]
fn the_cluster_role_grants_exactly_what_the_code_uses() {
    let role: ClusterRole = manifest("cluster-role.yaml");
    assert!(role.aggregation_rule.is_none());
    let rules = role.rules.expect("rules");
    for rule in &rules {
        assert!(
            rule.resource_names.is_none(),
            "the operator acts on objects users name: {rule:?}"
        );
    }
    let granted = granted(&rules);
    assert_same(
        "deploy/operator/cluster-role.yaml",
        &granted,
        &grants(CLUSTER_ROLE),
    );
    for (group, resource, verb, why) in NOT_GRANTED {
        let grant = (group.to_string(), resource.to_string(), verb.to_string());
        assert!(!granted.contains(&grant), "{grant:?} is granted, but {why}");
    }
}

#[test]
fn the_leader_election_role_grants_the_lease_and_nothing_else() {
    let role: Role = manifest("leader-election-role.yaml");
    assert_eq!(role.metadata.namespace.as_deref(), Some("bosun-system"));
    let rules = role.rules.expect("rules");
    assert_same(
        "deploy/operator/leader-election-role.yaml",
        &granted(&rules),
        &grants(LEADER_ELECTION_ROLE),
    );
    // Everything but create is limited to the operator's Lease.
    for rule in &rules {
        let names = rule.resource_names.clone().unwrap_or_default();
        if rule.verbs == ["create"] {
            assert!(
                names.is_empty(),
                "create cannot be limited by name: {rule:?}"
            );
        } else {
            assert_eq!(names, [LEASE], "{rule:?}");
        }
    }
}

/// Every rule names the one object it is for, except create, which RBAC
/// cannot limit to a name.
fn assert_named(rules: &[PolicyRule], names: &[&str]) {
    for rule in rules {
        let named = rule.resource_names.clone().unwrap_or_default();
        if rule.verbs == ["create"] {
            assert!(
                named.is_empty(),
                "create cannot be limited by name: {rule:?}"
            );
        } else {
            assert!(
                !named.is_empty() && named.iter().all(|n| names.contains(&n.as_str())),
                "{rule:?} must name only some of {names:?}"
            );
        }
    }
}

#[test]
fn the_webhook_roles_grant_the_secret_and_the_configuration_by_name() {
    let role: Role = manifest("webhook-role.yaml");
    assert_eq!(role.metadata.namespace.as_deref(), Some("bosun-system"));
    let rules = role.rules.expect("rules");
    assert_same(
        "deploy/operator/webhook-role.yaml",
        &granted(&rules),
        &grants(WEBHOOK_ROLE),
    );
    assert_named(&rules, &[WEBHOOK_SECRET]);

    let role: ClusterRole = manifest("webhook-cluster-role.yaml");
    let rules = role.rules.expect("rules");
    assert_same(
        "deploy/operator/webhook-cluster-role.yaml",
        &granted(&rules),
        &grants(WEBHOOK_CLUSTER_ROLE),
    );
    assert_named(&rules, WEBHOOK_CONFIGURATIONS);
}

#[test]
fn both_roles_go_to_the_service_account_the_deployment_runs_as() {
    let account: ServiceAccount = manifest("service-account.yaml");
    let deployment: Deployment = manifest("deployment.yaml");
    let runs_as = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.service_account_name);
    assert_eq!(runs_as, account.metadata.name);
    let subject = |subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        let subjects = subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        let s = &subjects[0];
        (s.kind.clone(), s.name.clone(), s.namespace.clone())
    };
    let expected = (
        "ServiceAccount".to_string(),
        account.metadata.name.clone().expect("name"),
        account.metadata.namespace.clone(),
    );

    let binding: ClusterRoleBinding = manifest("cluster-role-binding.yaml");
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "bosun-operator")
    );
    assert_eq!(subject(binding.subjects), expected);

    for (binding, role) in [
        (
            "leader-election-role-binding.yaml",
            "leader-election-role.yaml",
        ),
        ("webhook-role-binding.yaml", "webhook-role.yaml"),
    ] {
        let binding: RoleBinding = manifest(binding);
        let role: Role = manifest(role);
        assert_eq!(binding.metadata.namespace, role.metadata.namespace);
        assert_eq!(
            (binding.role_ref.kind.as_str(), Some(&binding.role_ref.name)),
            ("Role", role.metadata.name.as_ref())
        );
        assert_eq!(subject(binding.subjects), expected);
    }

    let binding: ClusterRoleBinding = manifest("webhook-cluster-role-binding.yaml");
    let role: ClusterRole = manifest("webhook-cluster-role.yaml");
    assert_eq!(
        (binding.role_ref.kind.as_str(), Some(&binding.role_ref.name)),
        ("ClusterRole", role.metadata.name.as_ref())
    );
    assert_eq!(subject(binding.subjects), expected);
}

/// The type names in `Api<T>` and `Api::<T>` in one source file.
fn api_types(text: &str) -> Vec<String> {
    let mut found = vec![];
    for marker in ["Api<", "Api::<"] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            let end = rest.find('>').unwrap_or(rest.len());
            let name = rest[..end].rsplit("::").next().unwrap_or_default();
            found.push(name.trim().to_string());
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A guard on the tables above: every `Api` of a type the tables do not
/// know, in the code the operator runs, fails this test, so that a new
/// call site cannot slip past the review of the ClusterRole. (Calls on a
/// known type with a new verb are the reviewer's to catch.)
#[test]
fn the_tables_know_every_kubernetes_type_the_operator_code_uses() {
    let mut files = vec![];
    for dir in [
        "crates/etcd/src",
        "crates/memcached/src",
        "crates/runtime/src",
    ] {
        rust_files(&repo().join(dir), &mut files);
    }
    for (module, _) in NOT_OPERATOR_CODE {
        let excluded = repo().join(format!("crates/runtime/src/{module}.rs"));
        files.retain(|f| *f != excluded);
        for file in &files {
            let text = std::fs::read_to_string(file).expect("a source file");
            for path in [
                format!("bosun_runtime::{module}"),
                format!("crate::{module}"),
            ] {
                assert!(
                    !text.contains(&path),
                    "{} uses {path}: the operator runs it now, so the Apis it builds \
                     belong in the tables of this test",
                    file.display()
                );
            }
        }
    }
    let tables: BTreeSet<(String, String)> = CLUSTER_ROLE
        .iter()
        .chain(LEADER_ELECTION_ROLE)
        .chain(WEBHOOK_ROLE)
        .chain(WEBHOOK_CLUSTER_ROLE)
        .map(|(g, r, _)| (g.to_string(), r.to_string()))
        .collect();
    let mut used = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        for name in api_types(&text) {
            if NEVER_CALLED.iter().any(|(t, _)| *t == name) {
                continue;
            }
            // A generic helper's `Api<K>`: the kinds it is used with are
            // named where its callers build or annotate their `Api`s.
            if name.len() == 1 && name.chars().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let Some((_, group, resource)) = KNOWN_TYPES.iter().find(|(t, _, _)| *t == name) else {
                panic!(
                    "{} builds an Api<{name}>: add what it does with it to the tables of \
                     this test and to deploy/operator's RBAC",
                    file.display()
                );
            };
            used.insert((group.to_string(), resource.to_string()));
        }
        if text.contains("Recorder::new(") {
            used.insert(("events.k8s.io".into(), "events".into()));
        }
    }
    let listed: BTreeSet<(String, String)> = tables
        .into_iter()
        .filter(|(_, resource)| !resource.contains('/'))
        .collect();
    assert_eq!(
        used, listed,
        "the resources the code reaches and those the tables list differ"
    );
}

#[tokio::test]
async fn every_manifest_of_deploy_passes_the_api_servers_dry_run() {
    let cluster = TestCluster::connect().await;
    common::ensure_operator_namespace(&cluster);
    let crds = repo().join("deploy/crds");
    let operator = repo().join("deploy/operator");
    let out = cluster.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        &crds.to_string_lossy(),
        "-f",
        &operator.to_string_lossy(),
    ]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/etcdclusters.etcd.bosun.dev",
        "customresourcedefinition.apiextensions.k8s.io/etcdbackups.etcd.bosun.dev",
        "customresourcedefinition.apiextensions.k8s.io/etcdrestores.etcd.bosun.dev",
        "namespace/bosun-system",
        "serviceaccount/bosun-operator",
        "clusterrole.rbac.authorization.k8s.io/bosun-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/bosun-operator",
        "role.rbac.authorization.k8s.io/bosun-operator-leader-election",
        "rolebinding.rbac.authorization.k8s.io/bosun-operator-leader-election",
        "service/bosun-operator-metrics",
        "role.rbac.authorization.k8s.io/bosun-operator-webhook",
        "rolebinding.rbac.authorization.k8s.io/bosun-operator-webhook",
        "clusterrole.rbac.authorization.k8s.io/bosun-operator-webhook",
        "clusterrolebinding.rbac.authorization.k8s.io/bosun-operator-webhook",
        "service/bosun-operator-webhook",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/bosun-etcd",
        "deployment.apps/bosun-operator",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{object} ")) && l.ends_with("(server dry run)")),
            "{object} in:\n{out}"
        );
    }
}

/// A copy of `deploy/operator`'s RBAC under names of one test: the
/// ClusterRole and its binding (cluster-scoped, so named after the test and
/// deleted when this is dropped), and the ServiceAccount, Role and
/// RoleBinding in the test's namespace (deleted with it).
struct RbacCopy {
    name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for RbacCopy {
    fn drop(&mut self) {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .arg(format!("clusterrolebinding/{}", self.name))
            .arg(format!("clusterrole/{}", self.name))
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "deleting {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("deleting {}: {e}", self.name),
        }
    }
}

async fn create<K>(api: &Api<K>, object: &K)
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|e| panic!("creating {object:?}: {e}"));
}

async fn copy_rbac(cluster: &TestCluster, ns: &str, test: &str) -> RbacCopy {
    let name = format!("bosun-operator-test-{}-{test}", std::process::id());
    let copy = RbacCopy {
        name: name.clone(),
        kubectl: cluster.tools.bin("kubectl").expect("kubectl is built"),
        kubeconfig: cluster.kubeconfig.clone(),
    };
    let client = cluster.client.clone();

    let mut account: ServiceAccount = manifest("service-account.yaml");
    account.metadata.namespace = Some(ns.into());
    create(&Api::namespaced(client.clone(), ns), &account).await;

    let mut role: ClusterRole = manifest("cluster-role.yaml");
    role.metadata.name = Some(name.clone());
    create(&Api::all(client.clone()), &role).await;
    let mut binding: ClusterRoleBinding = manifest("cluster-role-binding.yaml");
    binding.metadata.name = Some(name.clone());
    binding.role_ref.name = name.clone();
    for subject in binding.subjects.iter_mut().flatten() {
        subject.namespace = Some(ns.into());
    }
    create(&Api::all(client.clone()), &binding).await;

    let mut role: Role = manifest("leader-election-role.yaml");
    role.metadata.namespace = Some(ns.into());
    create(&Api::namespaced(client.clone(), ns), &role).await;
    let mut binding: RoleBinding = manifest("leader-election-role-binding.yaml");
    binding.metadata.namespace = Some(ns.into());
    for subject in binding.subjects.iter_mut().flatten() {
        subject.namespace = Some(ns.into());
    }
    create(&Api::namespaced(client, ns), &binding).await;
    copy
}

/// `kubectl auth can-i` as the copy's ServiceAccount in `ns`.
fn can_i(cluster: &TestCluster, ns: &str, verb: &str, group: &str, resource: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (resource, None),
    };
    let mut target = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    if resource == "leases" {
        target = format!("{target}/{LEASE}");
    }
    let who = format!("--as=system:serviceaccount:{ns}:bosun-operator");
    let mut args = vec!["auth", "can-i", verb, &target, "-n", ns, &who];
    let sub;
    if let Some(s) = subresource {
        sub = format!("--subresource={s}");
        args.push(&sub);
    }
    let out = cluster.kubectl(&args);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {args:?}: {other} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Neighbours of the tables' entries that the operator must not have.
const DENIED: &[(&str, &str, &str)] = &[
    ("etcd.bosun.dev", "etcdclusters", "delete"),
    ("etcd.bosun.dev", "etcdclusters", "update"),
    ("etcd.bosun.dev", "etcdclusters", "create"),
    ("etcd.bosun.dev", "etcdbackups", "patch"),
    ("etcd.bosun.dev", "etcdrestores", "delete"),
    ("etcd.bosun.dev", "etcdbackups/status", "update"),
    ("", "pods", "get"),
    ("", "pods", "update"),
    ("", "pods/exec", "create"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "create"),
    ("", "services", "get"),
    ("", "services", "delete"),
    ("policy", "poddisruptionbudgets", "delete"),
    ("", "events", "create"),
    ("apps", "deployments", "create"),
    ("", "configmaps", "get"),
    ("", "nodes", "list"),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
    ("coordination.k8s.io", "leases", "delete"),
    ("coordination.k8s.io", "leases", "patch"),
];

#[tokio::test]
async fn the_service_account_may_do_what_the_code_uses_and_no_more() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("rbac_can_i").await;
    let _copy = copy_rbac(&cluster, &ns.name, "can-i").await;

    // RBAC reaches the authorizer through its informers: wait for the first grant.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !can_i(&cluster, &ns.name, "list", "etcd.bosun.dev", "etcdclusters") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copied RBAC never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for (group, resource, verb) in CLUSTER_ROLE.iter().chain(LEADER_ELECTION_ROLE) {
        assert!(
            can_i(&cluster, &ns.name, verb, group, resource),
            "{verb} {resource} ({group:?}) is refused"
        );
    }
    for (group, resource, verb) in DENIED {
        assert!(
            !can_i(&cluster, &ns.name, verb, group, resource),
            "{verb} {resource} ({group:?}) is allowed"
        );
    }
    for (group, resource, verb, why) in NOT_GRANTED {
        assert!(
            !can_i(&cluster, &ns.name, verb, group, resource),
            "{verb} {resource} is allowed, yet {why}"
        );
    }
    // The Lease grants hold in the test's namespace only, and for the
    // operator's Lease only.
    let who = format!("--as=system:serviceaccount:{}:bosun-operator", ns.name);
    for args in [
        [
            "auth",
            "can-i",
            "get",
            "leases.coordination.k8s.io/bosun-operator",
            "-n",
            "kube-system",
            &who,
        ],
        [
            "auth",
            "can-i",
            "update",
            "leases.coordination.k8s.io/another-lease",
            "-n",
            &ns.name,
            &who,
        ],
    ] {
        let out = cluster.kubectl(&args);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "kubectl {args:?}"
        );
    }
}

/// A client that authenticates with a token of the copy's ServiceAccount.
async fn service_account_client(cluster: &TestCluster, ns: &str) -> Client {
    let text = cluster.service_account_kubeconfig(ns, "bosun-operator");
    let kubeconfig = Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

fn is_forbidden<T>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(e)) if e.code == 403)
}

/// Allowed: done, or refused for a reason other than RBAC (404 of an
/// object that is not there).
fn assert_allowed<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    assert!(!is_forbidden(&result), "{what}: {result:?}");
    if let Err(e) = &result {
        assert!(
            matches!(e, kube::Error::Api(s) if s.code == 404),
            "{what}: {e}"
        );
    }
}

#[tokio::test]
async fn the_operators_own_calls_succeed_as_its_service_account() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("rbac_calls").await;
    let _copy = copy_rbac(&cluster, &ns.name, "calls").await;
    let client = service_account_client(&cluster, &ns.name).await;

    // RBAC reaches the authorizer through its informers: wait for the first grant.
    let clusters_everywhere: Api<EtcdCluster> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while clusters_everywhere
        .list(&ListParams::default().limit(1))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copied RBAC never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The Controllers' list and watch, in every namespace.
    let watch = WatchParams::default().timeout(1);
    let list = ListParams::default().limit(1);
    assert_allowed(
        "list EtcdBackups",
        Api::<EtcdBackup>::all(client.clone()).list(&list).await,
    );
    assert_allowed(
        "list EtcdRestores",
        Api::<EtcdRestore>::all(client.clone()).list(&list).await,
    );
    assert_allowed(
        "list pods",
        Api::<Pod>::all(client.clone()).list(&list).await,
    );
    assert_allowed(
        "list volumes",
        Api::<PersistentVolumeClaim>::all(client.clone())
            .list(&list)
            .await,
    );
    assert_allowed(
        "watch EtcdClusters",
        clusters_everywhere.watch(&watch, "0").await.map(drop),
    );
    assert_allowed(
        "watch EtcdBackups",
        Api::<EtcdBackup>::all(client.clone())
            .watch(&watch, "0")
            .await
            .map(drop),
    );
    assert_allowed(
        "watch EtcdRestores",
        Api::<EtcdRestore>::all(client.clone())
            .watch(&watch, "0")
            .await
            .map(drop),
    );
    assert_allowed(
        "watch pods",
        Api::<Pod>::all(client.clone())
            .watch(&watch, "0")
            .await
            .map(drop),
    );
    assert_allowed(
        "watch volumes",
        Api::<PersistentVolumeClaim>::all(client.clone())
            .watch(&watch, "0")
            .await
            .map(drop),
    );

    // The objects of an EtcdCluster, built by the operator's own builders
    // and written the way the reconciler writes them. The cluster exists
    // only here, so that the dev cluster's operator leaves this test alone;
    // the garbage collector removes what points at it.
    let mut etcd = EtcdCluster::new("rbac-probe", EtcdClusterSpec::default());
    etcd.metadata.namespace = Some(ns.name.clone());
    etcd.metadata.uid = Some(format!(
        "00000000-0000-0000-0000-{:012x}",
        std::process::id()
    ));
    let apply = PatchParams::apply(bosun_etcd::cluster::reconcile::MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    for service in [objects::peer_service(&etcd), objects::client_service(&etcd)] {
        let name = service.metadata.name.clone().expect("name");
        services
            .patch(&name, &apply, &Patch::Apply(&service))
            .await
            .unwrap_or_else(|e| panic!("server-side apply of Service {name}: {e}"));
    }
    let pdb = objects::pod_disruption_budget(&etcd);
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .patch(
            pdb.metadata.name.as_deref().expect("name"),
            &apply,
            &Patch::Apply(&pdb),
        )
        .await
        .expect("server-side apply of the PDB");
    // Pods and volumes: created under the server's dry run (a real member
    // pod would start etcd), deleted and listed for real.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let member = objects::member_name("rbac-probe", "abcde");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    pvcs.create(&dry_run, &objects::member_pvc(&etcd, &member, None))
        .await
        .expect("create a member's volume (dry run)");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": member, "labels": objects::member_labels(&etcd, &member)},
        "spec": {"containers": [{"name": "etcd", "image": "bosun.dev/bosun:dev"}]},
    }))
    .expect("a pod");
    pods.create(&dry_run, &pod)
        .await
        .expect("create a pod (dry run)");
    let selector = ListParams::default().labels(&objects::label_selector("rbac-probe"));
    pods.list(&selector).await.expect("list member pods");
    pvcs.list(&selector).await.expect("list member volumes");
    assert_allowed(
        "label a member pod",
        pods.patch(
            &member,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {
                objects::CLUSTER_UID_LABEL: "x",
            }}})),
        )
        .await,
    );
    assert_allowed(
        "annotate a member volume",
        pvcs.patch(
            &member,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                objects::HELD_MEMBER_ANNOTATION: "true",
            }}})),
        )
        .await,
    );
    assert_allowed(
        "delete a pod",
        pods.delete(&member, &DeleteParams::default()).await,
    );
    assert_allowed(
        "delete a volume",
        pvcs.delete(&member, &DeleteParams::default()).await,
    );
    // Status and annotation patches of the custom resources.
    let merge = PatchParams::default();
    let patch = Patch::Merge(serde_json::json!({"status": {}}));
    assert_allowed(
        "patch EtcdCluster status",
        Api::<EtcdCluster>::namespaced(client.clone(), &ns.name)
            .patch_status("rbac-probe", &merge, &patch)
            .await,
    );
    assert_allowed(
        "patch EtcdBackup status",
        Api::<EtcdBackup>::namespaced(client.clone(), &ns.name)
            .patch_status("rbac-probe", &merge, &patch)
            .await,
    );
    assert_allowed(
        "patch EtcdRestore status",
        Api::<EtcdRestore>::namespaced(client.clone(), &ns.name)
            .patch_status("rbac-probe", &merge, &patch)
            .await,
    );
    assert_allowed(
        "annotate an EtcdCluster",
        Api::<EtcdCluster>::namespaced(client.clone(), &ns.name)
            .patch(
                "rbac-probe",
                &merge,
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {}}})),
            )
            .await,
    );

    // Backup credentials, read by the operator's own function.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {"accessKeyID": "AKID", "secretAccessKey": "s3cr3t"},
    }))
    .expect("a Secret");
    create(&Api::namespaced(cluster.client.clone(), &ns.name), &secret).await;
    let credentials =
        bosun_etcd::backup::reconcile::credentials_for(&client, &ns.name, Some("s3-credentials"))
            .await
            .expect("the operator reads the Secret it is named");
    assert_eq!(
        credentials.as_ref().and_then(|c| c.get("accessKeyID")),
        Some("AKID")
    );
    assert!(
        is_forbidden(
            &Api::<Secret>::namespaced(client.clone(), &ns.name)
                .list(&list)
                .await
        ),
        "the operator may list Secrets"
    );
    assert!(
        is_forbidden(&services.get("rbac-probe-client").await),
        "the operator may read Services, which it only does outside a cluster"
    );

    // Events, through kube-runtime's Recorder: the second publication of
    // the same event is a patch of the first.
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: bosun_etcd::cluster::reconcile::MANAGER.into(),
            instance: Some("rbac-test".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "RbacProbe".into(),
        note: Some("the operator's ServiceAccount publishes events".into()),
        action: "RbacProbe".into(),
        secondary: None,
    };
    for attempt in ["create", "patch"] {
        recorder
            .publish(&event, &etcd.object_ref(&()))
            .await
            .unwrap_or_else(|e| panic!("publishing an event ({attempt}): {e}"));
    }

    // Leader election on the operator's Lease: create, renew, release.
    let mut config = ElectionConfig::new(&ns.name, LEASE, "rbac-test");
    config.release_on_cancel = true;
    let elector = LeaderElector::new(client.clone(), config).expect("election config");
    let mut state = elector.subscribe();
    let stop = CancellationToken::new();
    let run = tokio::spawn(elector.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.is_leader))
        .await
        .expect("leads within 20 s")
        .expect("the elector runs");
    stop.cancel();
    run.await
        .expect("the elector does not panic")
        .expect("a clean release");
    let lease = Api::<Lease>::namespaced(cluster.client.clone(), &ns.name)
        .get(LEASE)
        .await
        .expect("the Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_eq!(holder, "", "the Lease was released");
}
