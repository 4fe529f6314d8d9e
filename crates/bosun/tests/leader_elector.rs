//! End-to-end tests of `bosun leader-elector` on the dev cluster.
//!
//! As processes: three of the built binary, on their own loopback ports,
//! campaign for one Lease with the token of the example's ServiceAccount
//! (so the example's Role is proven to be enough: the API server enforces
//! RBAC). Exactly one says it leads and all name it; with
//! `--ready-only-when-leader` only its `/readyz` succeeds; SIGTERM of the
//! leader hands over within a retry period thanks to the release, `kill -9`
//! within the lease duration.
//!
//! In pods: the example's `ready-only-when-leader` Deployment, three
//! replicas of the image under the example's RBAC. Every pod's `/leader`
//! (asked on the pod's IP) names one leader, which alone says it leads, is
//! the one Ready pod (the Deployment shows 1/3) and holds the Lease; a
//! graceful delete of its pod moves the Lease to another running pod (a
//! standby, or the replacement if it runs first), and the Deployment
//! returns to 1/3 with the new leader Ready.
//!
//! The example manifests pass the API server's dry run.
//!
//! Durations are short (3 s lease, 2 s renew deadline, 0.3 s retry period),
//! in the pods too; every wait has a deadline derived from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

const LEASE: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(300);
/// client-go's jitter: a candidate waits up to 2.2 retry periods.
const LONGEST_RETRY: Duration = Duration::from_millis(660);
/// Room for a few API round trips on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(500);
/// How long a freshly spawned process may take to serve.
const STARTUP: Duration = Duration::from_secs(20);
const LEASE_NAME: &str = "sidecar";

/// The flags that give an elector the durations above.
fn timing_flags() -> [String; 3] {
    [
        format!("--lease-duration={}s", LEASE.as_secs()),
        format!("--renew-deadline={}s", RENEW_DEADLINE.as_secs()),
        format!("--retry-period={}ms", RETRY.as_millis()),
    ]
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/leader-election")
}

/// A kubeconfig that authenticates as the example's ServiceAccount, removed
/// when dropped.
struct ServiceAccountKubeconfig {
    path: PathBuf,
}

impl Drop for ServiceAccountKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Applies the example's RBAC in `ns` and returns a kubeconfig with a
/// token of its ServiceAccount.
fn service_account_kubeconfig(cluster: &TestCluster, ns: &str) -> ServiceAccountKubeconfig {
    let rbac = examples_dir().join("rbac.yaml");
    cluster.kubectl_ok(&["apply", "-n", ns, "-f", &rbac.to_string_lossy()]);
    let path = std::env::temp_dir().join(format!("bosun-test-{ns}.kubeconfig"));
    std::fs::write(
        &path,
        cluster.service_account_kubeconfig(ns, "leader-elector"),
    )
    .expect("write the kubeconfig");
    ServiceAccountKubeconfig { path }
}

/// A port on loopback that nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One `bosun leader-elector` process.
struct Elector {
    identity: String,
    addr: SocketAddr,
    child: Child,
}

impl Elector {
    fn spawn(kubeconfig: &Path, ns: &str, identity: &str, extra: &[&str]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_bosun"))
            .arg("leader-elector")
            .args(["--lease-name", LEASE_NAME, "--lease-namespace", ns])
            .args(["--identity", identity])
            .arg(format!("--listen={addr}"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(timing_flags())
            .args(extra)
            .env("RUST_LOG", "info,bosun_runtime=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("bosun runs");
        Elector {
            identity: identity.to_string(),
            addr,
            child,
        }
    }

    /// Its identity and where it serves, as `agreed_leader` asks them.
    fn candidate(&self) -> (&str, SocketAddr) {
        (&self.identity, self.addr)
    }

    async fn leader(&self) -> Result<LeaderAnswer, String> {
        leader_answer(self.addr).await
    }

    async fn status(&self, path: &str) -> u16 {
        get(self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.identity))
            .0
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("the process runs");
        kill(Pid::from_raw(i32::try_from(pid).expect("pid")), signal).expect("signal sent");
    }

    async fn exited(mut self, within: Duration) -> ExitStatus {
        timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.identity))
            .expect("wait for the process")
    }
}

/// The answer of `/leader`, every field required.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaderAnswer {
    leader: Option<String>,
    is_leader: bool,
    lease_transitions: i32,
    renew_time: Option<String>,
}

/// `/leader` of the elector serving on `addr`, as JSON, or why not.
async fn leader_answer(addr: SocketAddr) -> Result<LeaderAnswer, String> {
    let (status, body) = get(addr, "/leader").await?;
    if status != 200 {
        return Err(format!("/leader on {addr} answered {status}: {body}"));
    }
    serde_json::from_str(&body)
        .map_err(|e| format!("/leader on {addr} is not the JSON expected: {e}: {body}"))
}

/// A minimal HTTP/1.1 GET: status and body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within 5 s"))?
}

/// Who leads, when every candidate (identity, address) answers, all name
/// the same leader, that leader is one of them, and exactly that one says
/// it leads.
async fn agreed_leader(candidates: &[(&str, SocketAddr)]) -> Result<String, String> {
    let mut named = Vec::new();
    for (identity, addr) in candidates {
        let answer = leader_answer(*addr)
            .await
            .map_err(|e| format!("{identity}: {e}"))?;
        named.push((*identity, answer));
    }
    let leader = named[0].1.leader.clone().ok_or("nobody leads yet")?;
    if !named.iter().any(|(identity, _)| *identity == leader) {
        return Err(format!("{leader} is named, which is not among them"));
    }
    for (identity, answer) in &named {
        if answer.leader.as_deref() != Some(leader.as_str()) {
            return Err(format!(
                "{identity} names {:?}, not {leader}",
                answer.leader
            ));
        }
        if answer.is_leader != (*identity == leader) {
            return Err(format!("{identity} says isLeader {}", answer.is_leader));
        }
    }
    Ok(leader)
}

/// Polls `probe` every 20 ms until it answers `Ok`, failing the test with
/// its last error after `within`. Returns the answer and when it came.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> (T, Instant)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(answer) => return (answer, Instant::now()),
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last: {last}"
            ),
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// The holder and transitions of Lease `name` in `ns`.
async fn lease_holder(
    cluster: &TestCluster,
    ns: &str,
    name: &str,
) -> (Option<String>, Option<i32>) {
    let lease = Api::<Lease>::namespaced(cluster.client.clone(), ns)
        .get(name)
        .await
        .expect("the Lease exists");
    let spec = lease.spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions)
}

fn take(electors: &mut Vec<Elector>, identity: &str) -> Elector {
    let index = electors
        .iter()
        .position(|e| e.identity == identity)
        .expect("the leader is one of ours");
    electors.remove(index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_sidecars_leads_is_alone_ready_and_hands_over_on_sigterm() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("sidecar_hands_over_on_sigterm").await;
    let kubeconfig = service_account_kubeconfig(&cluster, &ns.name);
    let mut electors: Vec<Elector> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            Elector::spawn(
                &kubeconfig.path,
                &ns.name,
                id,
                &["--ready-only-when-leader"],
            )
        })
        .collect();

    let all: Vec<_> = electors.iter().map(Elector::candidate).collect();
    let (leader, _) = eventually("all three agree on one leader", STARTUP, || {
        agreed_leader(&all)
    })
    .await;
    println!("{leader} leads");
    for elector in &electors {
        let expected = if elector.identity == leader { 200 } else { 503 };
        assert_eq!(
            elector.status("/readyz").await,
            expected,
            "{}",
            elector.identity
        );
        assert_eq!(elector.status("/healthz").await, 200);
    }
    let (_, metrics) = get(electors[0].addr, "/metrics")
        .await
        .expect("GET /metrics");
    let gauge = format!(
        "bosun_leader_is_leader{{lease=\"{}/{LEASE_NAME}\"}} {}",
        ns.name,
        u8::from(electors[0].identity == leader)
    );
    assert!(metrics.contains(&gauge), "{gauge} in:\n{metrics}");
    let (holder, transitions_before) = lease_holder(&cluster, &ns.name, LEASE_NAME).await;
    assert_eq!(holder.as_deref(), Some(leader.as_str()));

    // SIGTERM: the leader releases the Lease and exits 0; one of the others
    // takes it on its next attempt.
    let old = take(&mut electors, &leader);
    let terminated = Instant::now();
    old.signal(Signal::SIGTERM);
    let rest: Vec<_> = electors.iter().map(Elector::candidate).collect();
    let (new_leader, took_over) =
        eventually("another sidecar leads", LEASE * 2, || agreed_leader(&rest)).await;
    let handover = took_over - terminated;
    println!("SIGTERM of {leader}: {new_leader} leads {handover:?} later");
    assert_ne!(new_leader, leader);
    assert!(
        handover < Duration::from_secs(2),
        "handover after SIGTERM took {handover:?}"
    );
    let status = old.exited(RENEW_DEADLINE + SLACK).await;
    assert!(status.success(), "a terminated sidecar exits 0: {status:?}");

    let (holder, transitions) = lease_holder(&cluster, &ns.name, LEASE_NAME).await;
    assert_eq!(holder.as_deref(), Some(new_leader.as_str()));
    assert_eq!(transitions, transitions_before.map(|t| t + 1));
    for elector in &electors {
        let expected = if elector.identity == new_leader {
            200
        } else {
            503
        };
        assert_eq!(
            elector.status("/readyz").await,
            expected,
            "{}",
            elector.identity
        );
    }
    let answer = electors
        .iter()
        .find(|e| e.identity == new_leader)
        .expect("the new leader is one of ours")
        .leader()
        .await;
    assert!(
        matches!(&answer, Ok(a) if a.renew_time.is_some() && a.lease_transitions >= 1),
        "{answer:?}"
    );

    for elector in electors {
        elector.signal(Signal::SIGTERM);
        assert!(elector.exited(RENEW_DEADLINE + SLACK).await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leading_sidecar_hands_over_within_the_lease_duration() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("sidecar_hands_over_on_kill").await;
    let kubeconfig = service_account_kubeconfig(&cluster, &ns.name);
    let mut electors: Vec<Elector> = ["a", "b", "c"]
        .iter()
        .map(|id| Elector::spawn(&kubeconfig.path, &ns.name, id, &[]))
        .collect();
    let all: Vec<_> = electors.iter().map(Elector::candidate).collect();
    let (leader, _) = eventually("all three agree on one leader", STARTUP, || {
        agreed_leader(&all)
    })
    .await;
    for elector in &electors {
        assert_eq!(
            elector.status("/readyz").await,
            200,
            "without --ready-only-when-leader every sidecar is ready"
        );
    }

    let old = take(&mut electors, &leader);
    let killed = Instant::now();
    old.signal(Signal::SIGKILL);
    let rest: Vec<_> = electors.iter().map(Elector::candidate).collect();
    let (new_leader, took_over) = eventually(
        "another sidecar leads",
        LEASE + LONGEST_RETRY * 2 + SLACK * 2,
        || agreed_leader(&rest),
    )
    .await;
    let handover = took_over - killed;
    println!("kill -9 of {leader}: {new_leader} leads {handover:?} later");
    assert_ne!(new_leader, leader);
    // Nothing was released: the others waited for the Lease to expire,
    // counted from their last sight of a renewal (at most a retry period
    // before the kill).
    assert!(
        handover > LEASE - RETRY - SLACK,
        "took over after {handover:?}, before the lease could expire"
    );
    assert!(
        handover < LEASE + LONGEST_RETRY * 2 + SLACK,
        "handover took {handover:?}"
    );
    let status = old.exited(SLACK).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    let (holder, _) = lease_holder(&cluster, &ns.name, LEASE_NAME).await;
    assert_eq!(holder.as_deref(), Some(new_leader.as_str()));

    for elector in electors {
        elector.signal(Signal::SIGTERM);
        assert!(elector.exited(RENEW_DEADLINE + SLACK).await.success());
    }
}

/// Every document of the example's manifests.
fn example_documents() -> Vec<(String, Value)> {
    let mut paths: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples/leader-election exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            docs.push((path.display().to_string(), value));
        }
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_manifests_pass_the_api_servers_dry_run() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("leader_election_example").await;
    let out = cluster.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-n",
        &ns.name,
        "-f",
        &examples_dir().to_string_lossy(),
    ]);
    for object in [
        "serviceaccount/leader-elector",
        "role.rbac.authorization.k8s.io/leader-elector",
        "rolebinding.rbac.authorization.k8s.io/leader-elector",
        "deployment.apps/leader-elector-sidecar",
        "deployment.apps/leader-elector-ready",
    ] {
        assert!(
            out.contains(&format!("{object} created (server dry run)")),
            "{object} in:\n{out}"
        );
    }

    // What the README promises of them.
    let docs = example_documents();
    let role = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Role")
        .map(|(_, d)| d)
        .expect("a Role");
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update"],
        }]),
        "exactly the Lease verbs the elector uses"
    );
    let deployments: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(deployments.len(), 2);
    let mut ready_only_when_leader = 0;
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(deployment["spec"]["replicas"], 3, "{name}");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "leader-elector", "{name}");
        let containers = pod["containers"]
            .as_array()
            .into_iter()
            .chain(pod["initContainers"].as_array())
            .flatten();
        let mut electors = 0;
        for container in containers {
            assert_eq!(container["image"], "bosun.dev/bosun:dev", "{name}");
            assert_eq!(container["imagePullPolicy"], "Never", "{name}");
            if container["args"][0] != "leader-elector" {
                continue;
            }
            electors += 1;
            for (variable, field) in [
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
            ] {
                let from_downward_api = container["env"].as_array().is_some_and(|env| {
                    env.iter().any(|e| {
                        e["name"] == variable && e["valueFrom"]["fieldRef"]["fieldPath"] == field
                    })
                });
                assert!(from_downward_api, "{name}: {variable} from {field}");
            }
            if container["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == "--ready-only-when-leader"))
            {
                ready_only_when_leader += 1;
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
            }
        }
        assert_eq!(electors, 1, "{name} runs one elector");
    }
    assert_eq!(ready_only_when_leader, 1, "one Deployment of each mode");
}

/// How long the example's pods may take to be scheduled, started and
/// serving on a busy two-core machine.
const POD_STARTUP: Duration = Duration::from_secs(120);
/// How long a graceful delete of a pod may take to reach its container as
/// SIGTERM: the kubelet learns of it by its watch and asks the container
/// runtime to stop the container.
const KUBELET_STOP: Duration = Duration::from_secs(5);

/// The Deployment of `ready-only-when-leader.yaml`, as the test runs it.
struct ReadyOnlyWhenLeader {
    deployment: Deployment,
    namespace: String,
    /// The Lease its electors campaign for (`--lease-name`).
    lease: String,
    /// Where its electors serve (the container port `http`).
    port: u16,
    /// Its pods' label selector.
    selector: String,
}

impl ReadyOnlyWhenLeader {
    /// The example's Deployment in `ns`, with three replicas and the short
    /// durations of these tests.
    fn in_namespace(ns: &str) -> Self {
        let mut deployment = example_documents()
            .into_iter()
            .find(|(path, d)| {
                path.ends_with("ready-only-when-leader.yaml") && d["kind"] == "Deployment"
            })
            .map(|(_, d)| d)
            .expect("ready-only-when-leader.yaml has a Deployment");
        deployment["metadata"]["namespace"] = ns.into();
        deployment["spec"]["replicas"] = 3.into();
        let selector = deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("the Deployment selects by labels")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().expect("a label value")))
            .collect::<Vec<_>>()
            .join(",");
        let elector = deployment["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .and_then(|c| c.iter_mut().find(|c| c["args"][0] == "leader-elector"))
            .expect("a container runs the elector");
        let port = elector["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "http"))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .expect("the elector's port is named http");
        let args = elector["args"].as_array_mut().expect("the elector's args");
        let lease = args
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix("--lease-name="))
            .expect("the elector is given --lease-name=")
            .to_string();
        let durations = ["--lease-duration", "--renew-deadline", "--retry-period"];
        assert!(
            !args
                .iter()
                .filter_map(Value::as_str)
                .any(|a| durations.iter().any(|d| a.starts_with(d))),
            "the example sets no durations the test would contradict"
        );
        args.extend(timing_flags().map(Value::from));
        ReadyOnlyWhenLeader {
            deployment: serde_json::from_value(deployment).expect("a Deployment"),
            namespace: ns.to_string(),
            lease,
            port,
            selector,
        }
    }

    /// The Deployment, its pods and its Lease, now.
    async fn snapshot(&self, cluster: &TestCluster) -> Result<Snapshot, String> {
        let name = self.deployment.metadata.name.as_deref().expect("a name");
        let deployment = Api::<Deployment>::namespaced(cluster.client.clone(), &self.namespace)
            .get(name)
            .await
            .map_err(|e| format!("get deployment {name}: {e}"))?;
        let pods = Api::<Pod>::namespaced(cluster.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|e| format!("list pods: {e}"))?;
        let lease = Api::<Lease>::namespaced(cluster.client.clone(), &self.namespace)
            .get_opt(&self.lease)
            .await
            .map_err(|e| format!("get lease {}: {e}", self.lease))?;
        let status = deployment.status.unwrap_or_default();
        let lease = lease.and_then(|l| l.spec).unwrap_or_default();
        Ok(Snapshot {
            wanted: deployment.spec.and_then(|s| s.replicas),
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            pods: pods
                .items
                .iter()
                .map(|p| PodView::of(p, self.port))
                .collect(),
            lease: self.lease.clone(),
            holder: lease.holder_identity,
            transitions: lease.lease_transitions,
        })
    }

    /// Three pods Running, one Ready, the Deployment saying 1/3, and every
    /// pod naming the same leader, which alone says it leads.
    async fn settled(&self, cluster: &TestCluster) -> Result<(Snapshot, String), String> {
        let snapshot = self.snapshot(cluster).await?;
        let in_context = |e: String| format!("{e}\n{snapshot}");
        snapshot.one_ready_of_three().map_err(in_context)?;
        let candidates = snapshot.candidates().map_err(in_context)?;
        let leader = agreed_leader(&candidates).await.map_err(in_context)?;
        Ok((snapshot, leader))
    }
}

/// One pod of the Deployment, as the test sees it.
struct PodView {
    name: String,
    /// The phase, and why a container waits if one does.
    state: String,
    running: bool,
    ready: bool,
    terminating: bool,
    addr: Option<SocketAddr>,
}

impl PodView {
    fn of(pod: &Pod, port: u16) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
            .map(|w| {
                format!(
                    " ({}: {})",
                    w.reason.as_deref().unwrap_or("waiting"),
                    w.message.as_deref().unwrap_or_default()
                )
            })
            .collect::<String>();
        PodView {
            name: pod.metadata.name.clone().unwrap_or_default(),
            running: phase == "Running",
            state: format!("{phase}{waiting}"),
            ready: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            addr: status
                .pod_ip
                .and_then(|ip| ip.parse().ok())
                .map(|ip: std::net::IpAddr| SocketAddr::new(ip, port)),
        }
    }
}

/// The Deployment, its pods and its Lease at one moment; every failed wait
/// prints the last one.
struct Snapshot {
    wanted: Option<i32>,
    replicas: Option<i32>,
    ready_replicas: Option<i32>,
    pods: Vec<PodView>,
    lease: String,
    holder: Option<String>,
    transitions: Option<i32>,
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<i32>| v.unwrap_or(0);
        writeln!(
            f,
            "deployment: {} replicas wanted, {} exist, {} ready",
            n(self.wanted),
            n(self.replicas),
            n(self.ready_replicas)
        )?;
        writeln!(
            f,
            "lease {}: holder {:?}, {:?} transitions",
            self.lease, self.holder, self.transitions
        )?;
        for pod in &self.pods {
            writeln!(
                f,
                "pod {}: {}, {}{}, {}",
                pod.name,
                pod.state,
                if pod.ready { "Ready" } else { "not Ready" },
                if pod.terminating { ", terminating" } else { "" },
                pod.addr.map_or("no IP".to_string(), |a| a.ip().to_string())
            )?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// The pods that are not being deleted.
    fn live(&self) -> impl Iterator<Item = &PodView> {
        self.pods.iter().filter(|p| !p.terminating)
    }

    /// The name of the one Ready pod, when three pods run with IPs, one is
    /// Ready, and the Deployment says so (`kubectl get` shows 1/3).
    fn one_ready_of_three(&self) -> Result<String, String> {
        let live: Vec<&PodView> = self.live().collect();
        if live.len() != 3 || !live.iter().all(|p| p.running && p.addr.is_some()) {
            return Err("not three pods running with IPs".to_string());
        }
        let ready: Vec<&str> = live
            .iter()
            .filter(|p| p.ready)
            .map(|p| p.name.as_str())
            .collect();
        let [ready] = ready[..] else {
            return Err(format!("{} pods are Ready, not one", ready.len()));
        };
        if (self.wanted, self.replicas, self.ready_replicas) != (Some(3), Some(3), Some(1)) {
            return Err("the Deployment's status does not say 1/3 Ready".to_string());
        }
        Ok(ready.to_string())
    }

    /// Every live pod as a candidate of `agreed_leader`.
    fn candidates(&self) -> Result<Vec<(&str, SocketAddr)>, String> {
        self.live()
            .map(|p| {
                let addr = p.addr.ok_or_else(|| format!("{} has no IP", p.name))?;
                Ok((p.name.as_str(), addr))
            })
            .collect()
    }

    /// Asserts what the example promises of a settled Deployment: the one
    /// Ready pod is the leader that every pod names, and holds the Lease.
    fn assert_leader_alone_ready(&self, leader: &str) {
        let ready = self
            .one_ready_of_three()
            .unwrap_or_else(|e| panic!("{e}\n{self}"));
        assert_eq!(ready, leader, "the Ready pod is the leader\n{self}");
        assert_eq!(
            self.holder.as_deref(),
            Some(leader),
            "the leader holds the Lease\n{self}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_replica_deployment_has_one_ready_leader_which_moves_when_its_pod_is_deleted() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("leader_elector_deployment").await;
    let rbac = examples_dir().join("rbac.yaml");
    cluster.kubectl_ok(&["apply", "-n", &ns.name, "-f", &rbac.to_string_lossy()]);
    let example = ReadyOnlyWhenLeader::in_namespace(&ns.name);
    let started = Instant::now();
    Api::<Deployment>::namespaced(cluster.client.clone(), &ns.name)
        .create(&PostParams::default(), &example.deployment)
        .await
        .expect("create the example's Deployment");
    let (cluster, example) = (&cluster, &example);

    let ((before, leader), _) = eventually(
        "three pods run, one is Ready (1/3), all name one leader",
        POD_STARTUP,
        move || async move { example.settled(cluster).await },
    )
    .await;
    println!(
        "{leader} leads, alone Ready, {:?} after the create",
        started.elapsed()
    );
    before.assert_leader_alone_ready(&leader);
    let standbys: Vec<&str> = before
        .live()
        .map(|p| p.name.as_str())
        .filter(|p| *p != leader)
        .collect();

    // A graceful delete: the kubelet sends SIGTERM, the elector gives the
    // Lease back, and another pod takes it on its next attempt (within
    // LONGEST_RETRY). Even if the release were lost, another pod would take
    // the Lease once it expired: LEASE after the last renewal, plus up to
    // two jittered retry periods. The deadline is that bound, plus the time
    // the delete takes to reach the container.
    let handover_deadline = KUBELET_STOP + LEASE + LONGEST_RETRY * 2 + SLACK;
    let deleted = Instant::now();
    Api::<Pod>::namespaced(cluster.client.clone(), &ns.name)
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader's pod");
    let old = leader.as_str();
    let (new_leader, took_over) = eventually(
        "another running pod holds the Lease and says it leads",
        handover_deadline,
        move || async move {
            let now = example.snapshot(cluster).await?;
            let holder = now
                .holder
                .clone()
                .filter(|h| h != old)
                .ok_or_else(|| format!("the Lease has not moved\n{now}"))?;
            let pod = now
                .live()
                .find(|p| p.name == holder && p.running)
                .ok_or_else(|| format!("{holder} holds the Lease, no running pod\n{now}"))?;
            let addr = pod
                .addr
                .ok_or_else(|| format!("{holder} has no IP\n{now}"))?;
            let answer = leader_answer(addr)
                .await
                .map_err(|e| format!("{holder}: {e}\n{now}"))?;
            if !answer.is_leader || answer.leader.as_deref() != Some(holder.as_str()) {
                return Err(format!(
                    "{holder} holds the Lease but answers {answer:?}\n{now}"
                ));
            }
            Ok(holder)
        },
    )
    .await;
    let handover = took_over - deleted;
    // The replacement pod may win: it often runs before the kubelet has
    // stopped the old leader, and after the release every live pod
    // campaigns alike.
    let taker = if standbys.contains(&new_leader.as_str()) {
        "a standby"
    } else {
        "the replacement pod"
    };
    println!("delete of {leader}'s pod: {new_leader} ({taker}) leads {handover:?} later");

    let ((after, leader_after), back) = eventually(
        "the Deployment is back to one Ready pod of three",
        POD_STARTUP,
        move || async move { example.settled(cluster).await },
    )
    .await;
    println!(
        "back to 1/3 Ready {:?} after the delete; {:?} in all",
        back - deleted,
        started.elapsed()
    );
    assert_eq!(leader_after, new_leader, "leadership stayed put\n{after}");
    after.assert_leader_alone_ready(&new_leader);
    assert_eq!(
        after.transitions,
        before.transitions.map(|t| t + 1),
        "one hand-over, no flapping\n{after}"
    );
}
