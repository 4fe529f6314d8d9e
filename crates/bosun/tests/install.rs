//! `bosun install` and `bosun uninstall` against the dev cluster, as server
//! dry runs: the dev cluster already runs an operator, and a second one
//! would fight it. The API server checks every object the binary carries
//! (with its `--image` and `--replicas`) and every deletion, and stores
//! nothing. The operator's pod, as the Deployment describes it, passes the
//! `restricted` Pod Security Standard; and the Deployment itself, run in a
//! test namespace with only its leader-election Role while the test holds
//! its Lease, becomes ready as two standbys (image, entrypoint, arguments,
//! downward API, probes and security context all work) and takes nothing
//! over: it has no permission outside its namespace anyway.

mod common;

use std::process::Command;
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

const CRDS: [&str; 3] = [
    "etcdbackups.etcd.bosun.dev",
    "etcdclusters.etcd.bosun.dev",
    "etcdrestores.etcd.bosun.dev",
];

fn bosun(cluster: &TestCluster, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .output()
        .expect("the bosun binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bosun {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The resourceVersion of an object, or `None` when it is not there: what
/// a dry run must leave as it was.
async fn version<K>(api: Api<K>, name: &str) -> Option<String>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
        .and_then(|o| o.meta().resource_version.clone())
}

/// What the dry runs must not change.
async fn snapshot(client: &Client) -> Vec<Option<String>> {
    let mut versions = vec![
        version(
            Api::<Deployment>::namespaced(client.clone(), "bosun-system"),
            "bosun-operator",
        )
        .await,
        version(Api::<ClusterRole>::all(client.clone()), "bosun-operator").await,
        version(Api::<Namespace>::all(client.clone()), "bosun-system").await,
    ];
    for crd in CRDS {
        versions.push(version(Api::<CustomResourceDefinition>::all(client.clone()), crd).await);
    }
    versions
}

#[tokio::test]
async fn install_dry_run_has_the_api_server_accept_every_object_and_store_none() {
    let cluster = TestCluster::connect().await;
    common::ensure_operator_namespace(&cluster);
    let before = snapshot(&cluster.client).await;
    let image = format!("bosun.dev/bosun:dry-run-{}", std::process::id());
    let out = bosun(
        &cluster,
        &["install", "--dry-run", "--image", &image, "--replicas", "3"],
    );
    for object in [
        "Namespace bosun-system",
        "CustomResourceDefinition etcdbackups.etcd.bosun.dev",
        "CustomResourceDefinition etcdclusters.etcd.bosun.dev",
        "CustomResourceDefinition etcdrestores.etcd.bosun.dev",
        "ServiceAccount bosun-system/bosun-operator",
        "ClusterRole bosun-operator",
        "ClusterRoleBinding bosun-operator",
        "Role bosun-system/bosun-operator-leader-election",
        "RoleBinding bosun-system/bosun-operator-leader-election",
        "Service bosun-system/bosun-operator-metrics",
    ] {
        assert!(
            out.contains(&format!("  {object}: applied (server dry run)\n")),
            "{object} in:\n{out}"
        );
    }
    assert!(
        out.contains(&format!(
            "  Deployment bosun-system/bosun-operator: applied (image {image}, 3 replicas) (server dry run)\n"
        )),
        "the Deployment in:\n{out}"
    );
    // Dependency order: the namespace and CRDs before RBAC, the Deployment last.
    let at = |needle: &str| out.find(needle).expect(needle);
    assert!(at("Namespace") < at("CustomResourceDefinition"));
    assert!(at("CustomResourceDefinition") < at("ServiceAccount"));
    assert!(at("ClusterRoleBinding") < at("Deployment"));
    assert_eq!(
        snapshot(&cluster.client).await,
        before,
        "the dry run changed the cluster"
    );
}

#[tokio::test]
async fn uninstall_dry_run_keeping_the_crds_deletes_nothing() {
    let cluster = TestCluster::connect().await;
    common::ensure_operator_namespace(&cluster);
    let before = snapshot(&cluster.client).await;
    let out = bosun(&cluster, &["uninstall", "--dry-run", "--keep-crds"]);
    assert!(out.contains("keeping the CRDs"), "{out}");
    assert!(!out.contains("CustomResourceDefinition"), "{out}");
    for object in [
        "Deployment bosun-system/bosun-operator",
        "Service bosun-system/bosun-operator-metrics",
        "RoleBinding bosun-system/bosun-operator-leader-election",
        "Role bosun-system/bosun-operator-leader-election",
        "ClusterRoleBinding bosun-operator",
        "ClusterRole bosun-operator",
        "ServiceAccount bosun-system/bosun-operator",
        "Namespace bosun-system",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  {object}: ")))
            .unwrap_or_else(|| panic!("{object} in:\n{out}"));
        assert!(
            line.ends_with(": not there")
                || line.ends_with(": deleted (server dry run)")
                || line.contains(": kept, it holds pods bosun did not install"),
            "{line}"
        );
    }
    // The Deployment goes first, the namespace last.
    let at = |needle: &str| out.find(needle).expect(needle);
    assert!(at("Deployment") < at("ClusterRole "));
    assert!(at("ServiceAccount") < at("Namespace"));
    assert_eq!(
        snapshot(&cluster.client).await,
        before,
        "the dry run changed the cluster"
    );
}

fn manifest<T: DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/operator")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the manifest is there");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn operator_pod() -> Pod {
    let deployment: Deployment = manifest("deployment.yaml");
    let template = deployment.spec.expect("spec").template;
    Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        status: None,
    }
}

#[tokio::test]
async fn the_operator_pod_passes_the_restricted_pod_security_standard() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("operator_pod_security").await;
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    cluster.kubectl_ok(&["create", "serviceaccount", "bosun-operator", "-n", &ns.name]);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // The check is live: a pod without the security context is refused.
    let mut bare = operator_pod();
    bare.metadata.name = Some("bare".into());
    if let Some(spec) = bare.spec.as_mut() {
        spec.security_context = None;
        for container in &mut spec.containers {
            container.security_context = None;
        }
    }
    match pods.create(&dry_run, &bare).await {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("PodSecurity") => {}
        other => panic!("a pod without a security context: {other:?}"),
    }

    let mut pod = operator_pod();
    pod.metadata.name = Some("bosun-operator".into());
    pods.create(&dry_run, &pod)
        .await
        .expect("the operator's pod passes the restricted standard");
}

async fn create<K>(client: &Client, ns: &str, mut object: K)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    object.meta_mut().namespace = Some(ns.to_string());
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {object:?}: {e}"));
}

#[tokio::test]
async fn the_deployment_runs_two_ready_standbys_while_another_holds_the_lease() {
    const HOLDER: &str = "the-test-holds-this-lease";
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("operator_standbys").await;
    let client = &cluster.client;
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    // The Lease, held for an hour: the replicas stay standbys.
    let now = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("bosun-operator".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(HOLDER.into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    create(client, &ns.name, lease).await;
    // The namespaced part of deploy/operator, moved into the test's namespace;
    // no ClusterRole.
    create(
        client,
        &ns.name,
        manifest::<ServiceAccount>("service-account.yaml"),
    )
    .await;
    create(
        client,
        &ns.name,
        manifest::<Role>("leader-election-role.yaml"),
    )
    .await;
    let mut binding: RoleBinding = manifest("leader-election-role-binding.yaml");
    for subject in binding.subjects.iter_mut().flatten() {
        subject.namespace = Some(ns.name.clone());
    }
    create(client, &ns.name, binding).await;
    // Webhooks off: a replica serving them is ready only once the Lease
    // holder has published its certificate's CA, and here no replica holds
    // the Lease (the installed operator proves that readiness: `bosun dev
    // up` waits for its rollout).
    let mut deployment: Deployment = manifest("deployment.yaml");
    for container in deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .map(|s| s.containers.iter_mut())
        .into_iter()
        .flatten()
    {
        container
            .args
            .get_or_insert_with(Vec::new)
            .push("--webhooks=false".into());
    }
    create(client, &ns.name, deployment).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let deployment = deployments
            .get("bosun-operator")
            .await
            .expect("the Deployment");
        let available = deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if available == 2 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            // An image older than this binary's flags shows here as a crash
            // on an unexpected argument: `bosun dev up` builds the image
            // from the bosun that starts the cluster.
            let pods = cluster.kubectl(&["describe", "pods", "-n", &ns.name]);
            let logs = cluster.kubectl(&[
                "logs",
                "-n",
                &ns.name,
                "-l",
                "app.kubernetes.io/name=bosun-operator",
                "--tail=20",
            ]);
            panic!(
                "{available} of 2 replicas available after 120 s:\n{}\n{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("app.kubernetes.io/name=bosun-operator"))
        .await
        .expect("the operator's pods");
    assert_eq!(pods.items.len(), 2);
    for pod in &pods.items {
        let restarts: i32 = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count).sum())
            .unwrap_or_default();
        assert_eq!(restarts, 0, "{:?}", pod.metadata.name);
    }
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get("bosun-operator")
        .await
        .expect("the Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(HOLDER),
        "a standby took the Lease"
    );
    // Both replicas campaign, under their pod names as the downward API
    // gives them, for the Lease in their namespace.
    let logs = cluster.kubectl_ok(&[
        "logs",
        "-n",
        &ns.name,
        "-l",
        "app.kubernetes.io/name=bosun-operator",
        "--tail=-1",
    ]);
    assert!(
        logs.contains(&format!("{}/bosun-operator", ns.name)),
        "{logs}"
    );
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().expect("a pod name");
        assert!(logs.contains(name), "{name} in:\n{logs}");
    }
}
