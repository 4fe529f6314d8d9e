//! The operator as `bosun dev up` installs it (`bosun install`: two
//! replicas under deploy/'s RBAC only, electing a leader on the Lease
//! `bosun-system/bosun-operator`):
//!
//! - exactly one replica holds the Lease, and the other has never
//!   reconciled anything (its `/metrics` say so: no reconcile at all, so no
//!   write);
//! - `kubectl delete pod` of the leader hands over within 2 s: the leader
//!   stops its controllers and releases the Lease, and the standby (or the
//!   Deployment's replacement pod, when it already runs) takes it on its
//!   next retry (1 s, jittered);
//! - `kill -9` of the leader's process hands over within the lease duration:
//!   the standby once the Lease expires, or the killed pod's restarted
//!   container, which finds its own name in the Lease;
//! - the leader's `/metrics` parse as Prometheus text and carry the
//!   reconcile, leader-election and etcd series with the values of a real
//!   EtcdCluster it runs, and drop that cluster's series once it is deleted.
//!
//! After each hand-over the invariants are checked again. Pods are reached
//! on their IPs from the host (the node).

#[path = "../../runtime/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::{OPERATOR_NAMESPACE, TestCluster};
use bosun_devcluster::readiness::wait_until;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use support::{Sample, get, parse_prometheus_text, value};
use tokio::time::Instant;

/// `bosun operator`'s election defaults (see `bosun operator --help`).
const LEASE_DURATION: Duration = Duration::from_secs(8);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// The target for a graceful hand-over.
const GRACEFUL_HAND_OVER: Duration = Duration::from_secs(2);
/// A dead leader's Lease is taken over once it has not changed for the
/// lease duration (counted from the standby's last look at it), on the
/// standby's next retry (up to 1.2 retry periods with jitter); 1 s more for
/// the API server's answers.
const KILL_HAND_OVER: Duration = Duration::from_millis(
    LEASE_DURATION.as_millis() as u64 + RETRY_PERIOD.as_millis() as u64 * 12 / 10 + 1000,
);
/// Pods start, and a restarted container becomes ready, within this.
const ROLLOUT: Duration = Duration::from_secs(120);
const DEADLINE: Duration = Duration::from_secs(180);

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The operator's HTTP endpoint in `pod`.
fn address(pod: &Pod) -> SocketAddr {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or_else(|| panic!("{} has no IP", name(pod)));
    SocketAddr::new(ip.parse().expect("a pod IP"), 8080)
}

async fn metrics(pod: &Pod) -> Vec<Sample> {
    let response = get(address(pod), "/metrics", None)
        .await
        .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}", name(pod)));
    assert_eq!(response.status, 200, "{}: {}", name(pod), response.body);
    parse_prometheus_text(&response.body)
        .unwrap_or_else(|e| panic!("/metrics of {} is not Prometheus text: {e}", name(pod)))
}

/// Every reconcile the process ran, whatever its controller and result.
fn reconciles(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == "bosun_reconcile_total")
        .map(|s| s.value)
        .sum()
}

async fn wait_for_two_ready_replicas(cluster: &TestCluster) -> Vec<Pod> {
    cluster
        .wait_for_operator_replicas(2, ROLLOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Exactly one of the two replicas leads and says so; the other says it
/// does not and has reconciled nothing. Returns the leader and the standby.
async fn one_leader_and_a_quiet_standby(cluster: &TestCluster) -> (Pod, Pod) {
    let pods = wait_for_two_ready_replicas(cluster).await;
    let leader = cluster
        .operator_leader(KILL_HAND_OVER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (leaders, standbys): (Vec<Pod>, Vec<Pod>) =
        pods.into_iter().partition(|p| name(p) == name(&leader));
    assert_eq!(leaders.len(), 1, "the Lease holder is one of the replicas");
    assert_eq!(standbys.len(), 1, "{standbys:?}");
    let (leader, standby) = (leaders[0].clone(), standbys[0].clone());
    assert_eq!(
        leader
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some("bosun-operator"),
        "the operator runs under its own ServiceAccount, with deploy/'s RBAC only"
    );
    // The standby's gauge can lag its own view by nothing (it is set when
    // the elector's state changes), but the leader's may need a moment
    // after a takeover: wait for it.
    wait_until(
        "the leader's metrics to say it leads",
        DEADLINE,
        Duration::from_millis(100),
        || async { Ok(value(&metrics(&leader).await, "bosun_leader_is_leader", &[]) == Some(1.0)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let standby_metrics = metrics(&standby).await;
    assert_eq!(
        value(&standby_metrics, "bosun_leader_is_leader", &[]),
        Some(0.0),
        "{} does not lead",
        name(&standby)
    );
    assert_eq!(
        reconciles(&standby_metrics),
        0.0,
        "the standby {} reconciled (and so may have written) while another led",
        name(&standby)
    );
    (leader, standby)
}

#[tokio::test]
async fn one_replica_leads_and_hands_over_on_delete_and_on_kill_9() {
    let cluster = TestCluster::connect().await;
    let (leader, standby) = one_leader_and_a_quiet_standby(&cluster).await;

    // Graceful: the kubelet sends SIGTERM, the manager stops the
    // controllers and releases the Lease, the standby takes it.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    let started = Instant::now();
    pods.delete(&name(&leader), &DeleteParams::default())
        .await
        .expect("delete the leader's pod");
    // Usually the standby takes it; sometimes the Deployment's replacement
    // pod, which can be running before the old leader has stopped.
    let new_leader = loop {
        let (holder, _) = cluster.operator_lease_holder().await.expect("Lease");
        if let Some(holder) = holder.filter(|h| *h != name(&leader)) {
            break holder;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "nobody took the Lease over from {}",
            name(&leader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let graceful = started.elapsed();
    let successor = if new_leader == name(&standby) {
        "the standby"
    } else {
        "the replacement pod"
    };
    eprintln!(
        "delete pod {}: {new_leader} ({successor}) leads after {graceful:?}",
        name(&leader)
    );
    assert!(
        graceful < GRACEFUL_HAND_OVER,
        "graceful hand-over took {graceful:?} (target {GRACEFUL_HAND_OVER:?})"
    );
    let (leader, _) = one_leader_and_a_quiet_standby(&cluster).await;
    assert_eq!(name(&leader), new_leader);

    // kill -9: nobody releases; a live process must lead again within
    // the lease duration.
    let (killed, pid, killed_at) = cluster
        .kill_operator_leader()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (holder, took) = cluster
        .wait_for_operator_leader_since(killed_at, KILL_HAND_OVER)
        .await
        .unwrap_or_else(|e| panic!("after kill -9 of {killed} (pid {pid}): {e}"));
    eprintln!("kill -9 of {killed} (pid {pid}): {holder} leads after {took:?}");
    one_leader_and_a_quiet_standby(&cluster).await;
}

#[tokio::test]
async fn the_leaders_metrics_carry_the_reconcile_election_and_etcd_series() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("operator-metrics").await;
    let api: Api<EtcdCluster> = Api::namespaced(cluster.client.clone(), &ns.name);
    let object: EtcdCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": "observed", "namespace": ns.name},
        "spec": {"size": 1, "storage": {"size": "256Mi"}}
    }))
    .expect("cluster object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
    let labels = [("namespace", ns.name.as_str()), ("cluster", "observed")];
    // The series follow the cluster: wait until the leader reports one
    // healthy member with a database (another test may be moving the
    // leadership meanwhile, so the leader is looked up each time).
    let mut last = Vec::new();
    let outcome = wait_until(
        "the leader's metrics to show the cluster's healthy member",
        DEADLINE,
        Duration::from_millis(500),
        || async {
            let leader = cluster.operator_leader(KILL_HAND_OVER).await?;
            let samples = metrics(&leader).await;
            let healthy = value(&samples, "bosun_etcd_healthy_members", &labels);
            let members = value(&samples, "bosun_etcd_members", &labels);
            Ok(healthy == Some(1.0) && members == Some(1.0))
        },
    )
    .await;
    if let Err(e) = outcome {
        if let Ok(leader) = cluster.operator_leader(KILL_HAND_OVER).await {
            last = metrics(&leader).await;
        }
        panic!("{e}; last metrics: {last:?}");
    }
    let leader = cluster
        .operator_leader(KILL_HAND_OVER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let samples = metrics(&leader).await;
    assert_eq!(value(&samples, "bosun_leader_is_leader", &[]), Some(1.0));
    // Hand-overs this process saw: none for a process that found the Lease
    // free or its own, one or more for a former standby.
    assert!(
        value(&samples, "bosun_leader_transitions_total", &[]).is_some_and(|v| v >= 0.0),
        "the leader-transitions counter exists"
    );
    let successes = value(
        &samples,
        "bosun_reconcile_total",
        &[("controller", "etcdcluster"), ("result", "success")],
    );
    assert!(successes.is_some_and(|v| v >= 1.0), "{successes:?}");
    let durations = value(
        &samples,
        "bosun_reconcile_duration_seconds_count",
        &[("controller", "etcdcluster")],
    );
    assert!(durations.is_some_and(|v| v >= 1.0), "{durations:?}");
    let db_size = value(&samples, "bosun_etcd_db_size_bytes", &labels);
    assert!(db_size.is_some_and(|v| v > 0.0), "{db_size:?}");
    assert!(
        value(&samples, "bosun_etcd_leader_changes_total", &labels).is_some(),
        "the leader-change counter exists for the cluster"
    );

    // A deleted cluster's series go (the operator sweeps every 10 s).
    api.delete("observed", &DeleteParams::default())
        .await
        .expect("delete the cluster");
    wait_until(
        "the deleted cluster's series to be gone from the leader's metrics",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let leader = cluster.operator_leader(KILL_HAND_OVER).await?;
            let samples = metrics(&leader).await;
            Ok(!samples.iter().any(|s| {
                s.labels.get("namespace") == Some(&ns.name)
                    && s.labels.get("cluster").map(String::as_str) == Some("observed")
            }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
