//! Helpers shared by the EtcdCluster end-to-end tests.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use bosun_api::{EtcdBackup, EtcdCluster};
use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_etcd::cluster::objects;
use etcd_client::{Client as EtcdClient, GetOptions};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

pub const DEADLINE: Duration = Duration::from_secs(180);
pub const POLL: Duration = Duration::from_millis(250);

pub fn example_cluster(namespace: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/etcd-cluster.yaml"
    );
    let text = std::fs::read_to_string(path).expect("examples/etcd-cluster.yaml");
    let mut value: serde_json::Value = serde_yaml_ng::from_str(&text).expect("example parses");
    value["metadata"]["namespace"] = namespace.into();
    serde_json::to_string(&value).expect("json")
}

pub async fn wait_for_members(api: &Api<EtcdCluster>, name: &str, voters: usize) {
    let outcome = wait_until(
        &format!("{name} to be Available with {voters} healthy voters"),
        DEADLINE,
        POLL,
        || async move {
            let cluster = api.get(name).await.map_err(|e| e.to_string())?;
            let Some(status) = cluster.status.clone() else {
                return Ok(false);
            };
            let available = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let healthy_voters = status
                .members
                .iter()
                .filter(|m| m.ready && !m.learner)
                .count();
            // The status alone can be stale right after a fault: the pods
            // must agree (one Ready, non-terminating pod per member).
            let pods: Api<Pod> = Api::namespaced(
                api.clone().into_client(),
                &cluster.namespace().unwrap_or_default(),
            );
            let ready_pods = pods
                .list(&ListParams::default().labels(&objects::label_selector(name)))
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                .count();
            Ok(available
                && status.ready_members as usize == voters
                && status.members.len() == voters
                && healthy_voters == voters
                && ready_pods == voters
                && status.observed_generation == cluster.metadata.generation)
        },
    )
    .await;
    if let Err(e) = outcome {
        // What the operator last said, for whoever reads the failure.
        let cluster = api.get(name).await.ok();
        let annotations = cluster.as_ref().map(|c| c.annotations().clone());
        let status = cluster.and_then(|c| c.status);
        panic!("{e}\nannotations: {annotations:?}\nlast status: {status:#?}");
    }
}

pub async fn member_pods(cluster: &TestCluster, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    pods.list(&ListParams::default().labels(&objects::label_selector(name)))
        .await
        .expect("list pods")
        .items
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A client of the cluster through its Ready member pods (a pod being
/// deleted may still list an address nobody answers on).
pub async fn etcd_client(cluster: &TestCluster, ns: &str, name: &str) -> EtcdClient {
    let endpoints: Vec<String> = member_pods(cluster, ns, name)
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("http://{ip}:2379"))
        .collect();
    EtcdClient::connect(endpoints, None)
        .await
        .expect("connect to etcd")
}

pub async fn count_keys(etcd: &mut EtcdClient, prefix: &str) -> i64 {
    etcd.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .expect("count keys")
    .count()
}

/// Waits until an EtcdBackup reaches `phase` (`Succeeded`, `Failed`, ...).
pub async fn wait_for_backup_phase(api: &Api<EtcdBackup>, name: &str, phase: &str) -> EtcdBackup {
    wait_until(
        &format!("EtcdBackup {name} to reach phase {phase}"),
        DEADLINE,
        POLL,
        || async move {
            let backup = api.get(name).await.map_err(|e| e.to_string())?;
            let current = backup
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"));
            Ok(current.as_deref() == Some(phase))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    api.get(name).await.expect("get backup")
}

/// One condition of an EtcdBackup.
pub fn backup_condition<'a>(
    backup: &'a EtcdBackup,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    backup
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The condition `type_` if the operator has written it for the current generation.
pub async fn current_condition(
    api: &Api<EtcdCluster>,
    name: &str,
    type_: &str,
) -> Result<Option<Condition>, String> {
    let cluster = api.get(name).await.map_err(|e| e.to_string())?;
    let generation = cluster.metadata.generation;
    Ok(cluster.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.observed_generation == generation)
    }))
}

/// Waits until the operator has looked at the current generation and set
/// condition `type_` to `status` with `reason`; returns its message.
pub async fn wait_for_condition(
    api: &Api<EtcdCluster>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    wait_until(
        &format!("{type_}={status} ({reason})"),
        DEADLINE,
        POLL,
        || async move {
            let condition = current_condition(api, name, type_).await?;
            Ok(condition.is_some_and(|c| c.status == status && c.reason == reason))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    current_condition(api, name, type_)
        .await
        .ok()
        .flatten()
        .map(|c| c.message)
        .unwrap_or_default()
}

/// How long a "nothing changed" check holds.
pub const UNCHANGED_WINDOW: Duration = Duration::from_secs(5);

/// Asserts that `observe` returns `expected` at every sample over `window`
/// (every [`POLL`]): a "nothing changed" claim held over time, not one look.
pub async fn assert_unchanged_for<T, F, Fut>(
    what: &str,
    expected: &T,
    window: Duration,
    mut observe: F,
) where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    while started.elapsed() < window {
        let seen = observe().await;
        assert_eq!(
            &seen,
            expected,
            "{what} changed after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Each member pod's own answer, read from etcd (not the operator): the
/// version of every non-terminating member pod that answers its status call
/// within 2 s without errors, by pod name; `None` for one that does not. (A
/// leader is not required: during a leader hand-over every member may
/// briefly know none, and that is no member down.)
pub async fn member_health(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
) -> Vec<(String, Option<String>)> {
    let mut health = vec![];
    for pod in member_pods(cluster, ns, name).await {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let answer = match ip {
            Some(ip) => tokio::time::timeout(Duration::from_secs(2), async move {
                let mut etcd = EtcdClient::connect([format!("http://{ip}:2379")], None)
                    .await
                    .ok()?;
                let status = etcd.status().await.ok()?;
                status
                    .errors()
                    .is_empty()
                    .then(|| status.version().to_string())
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        health.push((pod.name_any(), answer));
    }
    health
}

/// etcd's own member IDs, sorted, as the member `etcd` is connected to lists them.
pub async fn member_ids(etcd: &mut EtcdClient) -> Vec<u64> {
    let mut ids: Vec<u64> = etcd
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| m.id())
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether the etcd API's admission webhooks are installed (`bosun dev up`
/// installs them with the operator; `--operator host` and `none` do not).
/// Where they are, the API server refuses what the controllers would
/// otherwise report in a condition.
pub async fn admission_webhooks_installed(cluster: &TestCluster) -> bool {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    Api::<ValidatingWebhookConfiguration>::all(cluster.client.clone())
        .get_opt(bosun_etcd::admission::CONFIGURATION_NAME)
        .await
        .expect("read the webhook configuration")
        .is_some()
}

/// Asserts that the API server refused a write at admission, with a
/// message holding every one of `needles`; returns the message.
pub fn assert_refused_at_admission<T: Debug>(
    result: Result<T, kube::Error>,
    needles: &[&str],
) -> String {
    match result {
        Err(kube::Error::Api(e)) => {
            assert!(
                e.message.contains("denied the request"),
                "not an admission refusal: {e:?}"
            );
            for needle in needles {
                assert!(
                    e.message.contains(needle),
                    "{needle:?} not in: {}",
                    e.message
                );
            }
            e.message
        }
        other => panic!("expected an admission refusal naming {needles:?}, got {other:?}"),
    }
}
