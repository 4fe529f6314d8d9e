//! Hand-over of the operator's leadership, on the running dev cluster
//! (`BOSUN_KUBECONFIG`, else the default state dir's), with client-go's
//! default election timings and with bosun's, side by side:
//!
//! - graceful: `delete pod` of the leader (SIGTERM; the leader stops its
//!   controllers and releases the Lease) until the standby holds it;
//! - `kill -9` of the leader's process (from the host) until a live process
//!   has renewed the Lease: the standby once it expires, or the killed pod's
//!   restarted container, which finds its own name in it;
//! - `kill -9` with the pod force-deleted at once (the process never comes
//!   back, as on a lost node): only the Lease's expiry hands over.
//!
//! The Lease is polled every 10 ms. Each round starts from two ready
//! replicas; a killed pod is then replaced (deleted while it does not lead)
//! so that the kubelet's crash back-off does not grow across rounds. The
//! Deployment's arguments are put back at the end.
//!
//! Run: `cargo bench -p bosun --bench operator_handover` (as root, on the
//! dev cluster's node; `BOSUN_BENCH_ROUNDS`, default 5).

use std::time::Duration;

use bosun_devcluster::fixture::{OPERATOR_NAMESPACE, TestCluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use tokio::time::Instant;

const DEPLOYMENT: &str = "bosun-operator";
const BASE_ARGS: [&str; 2] = ["operator", "--listen=0.0.0.0:8080"];
const WITHIN: Duration = Duration::from_secs(180);

/// One set of election timings.
struct Timings {
    label: &'static str,
    args: &'static [&'static str],
}

const TIMINGS: [Timings; 2] = [
    Timings {
        label: "client-go's defaults (lease 15 s, renew deadline 10 s, retry 2 s, polling only)",
        args: &[
            "--lease-duration=15s",
            "--renew-deadline=10s",
            "--retry-period=2s",
            "--watch-lease=false",
        ],
    },
    Timings {
        label: "bosun's defaults (lease 8 s, renew deadline 6 s, retry 1 s, Lease watch)",
        args: &[],
    },
];

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

async fn set_args(cluster: &TestCluster, extra: &[&str]) {
    let args: Vec<&str> = BASE_ARGS.iter().chain(extra).copied().collect();
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "operator", "args": args}
    ]}}}});
    Api::<Deployment>::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE)
        .patch(
            DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .expect("patch the operator's arguments");
}

/// Waits for two ready replicas of the current spec and no other pod.
async fn two_ready(cluster: &TestCluster) -> Vec<Pod> {
    cluster
        .wait_for_operator_replicas(2, WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Returns the hand-over time and whether the standby (rather than the
/// Deployment's replacement pod, which can be running before the old
/// leader has stopped) took the Lease.
async fn graceful_round(cluster: &TestCluster) -> (Duration, bool) {
    let pods = two_ready(cluster).await;
    let leader = name(&cluster.operator_leader(WITHIN).await.expect("a leader"));
    let standby = pods
        .iter()
        .map(name)
        .find(|n| *n != leader)
        .expect("a standby");
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    let started = Instant::now();
    api.delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader");
    loop {
        let (holder, _) = cluster.operator_lease_holder().await.expect("Lease");
        if let Some(holder) = holder.filter(|h| *h != leader) {
            return (started.elapsed(), holder == standby);
        }
        assert!(started.elapsed() < WITHIN, "no hand-over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a kill round ends the leader.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// `kill -9` of its process; the kubelet restarts the container.
    Process,
    /// `kill -9` of its process and the pod force-deleted at once: the
    /// process never comes back, as when its node is lost.
    ProcessAndPod,
}

/// Returns the hand-over time and whether the killed pod led again.
async fn kill_round(cluster: &TestCluster, kill: Kill) -> (Duration, bool) {
    two_ready(cluster).await;
    let (killed, _pid, killed_at) = cluster.kill_operator_leader().await.expect("kill -9");
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NAMESPACE);
    if kill == Kill::ProcessAndPod {
        api.delete(&killed, &DeleteParams::default().grace_period(0))
            .await
            .expect("force-delete the killed pod");
    }
    let (holder, _) = cluster
        .wait_for_operator_leader_since(killed_at, WITHIN)
        .await
        .expect("a new leader");
    // From the kill (this host's clock, which the kill was stamped with).
    let took = Timestamp::now().duration_since(killed_at).unsigned_abs();
    let same = holder == killed;
    if kill == Kill::Process && !same {
        // Replace the killed pod while it stands by, so that the kubelet's
        // crash back-off for it does not grow over the rounds.
        let _ = api.delete(&killed, &DeleteParams::default()).await;
    }
    (took, same)
}

fn summary(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    format!(
        "median {}, min {}, max {}",
        s(sorted[sorted.len() / 2]),
        s(sorted[0]),
        s(sorted[sorted.len() - 1])
    )
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let cluster = TestCluster::connect().await;
    let mut table = vec![];
    for timings in &TIMINGS {
        eprintln!("== {}", timings.label);
        set_args(&cluster, timings.args).await;
        let mut graceful = vec![];
        for round in 0..rounds {
            let (took, standby) = graceful_round(&cluster).await;
            eprintln!(
                "  delete pod, round {}: {:.3} s ({} took over)",
                round + 1,
                took.as_secs_f64(),
                if standby {
                    "the standby"
                } else {
                    "the replacement pod"
                }
            );
            graceful.push(took);
        }
        let mut killed = vec![];
        let mut relead = 0;
        for round in 0..rounds {
            let (took, same) = kill_round(&cluster, Kill::Process).await;
            eprintln!(
                "  kill -9, round {}: {:.3} s ({})",
                round + 1,
                took.as_secs_f64(),
                if same {
                    "its restarted container led again"
                } else {
                    "another pod took over"
                }
            );
            relead += usize::from(same);
            killed.push(took);
        }
        let mut lost = vec![];
        for round in 0..rounds {
            let (took, _) = kill_round(&cluster, Kill::ProcessAndPod).await;
            eprintln!(
                "  kill -9 and pod gone, round {}: {:.3} s",
                round + 1,
                took.as_secs_f64()
            );
            lost.push(took);
        }
        table.push((
            timings.label,
            summary(&graceful),
            summary(&killed),
            relead,
            summary(&lost),
        ));
    }
    set_args(&cluster, &[]).await;
    two_ready(&cluster).await;

    println!(
        "\n| election timings | delete pod (release on SIGTERM) | kill -9 (container restarts) | of which the killed pod led again | kill -9 and pod force-deleted (as a lost node) |"
    );
    println!("|---|---|---|---|---|");
    for (label, graceful, killed, relead, lost) in table {
        println!("| {label} | {graceful} | {killed} | {relead} of {rounds} | {lost} |");
    }
}
