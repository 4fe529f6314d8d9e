//! End-to-end tests of `bosun leader-elector` on the dev cluster: three
//! processes of the built binary, on their own loopback ports, campaign for
//! one Lease with the token of the example's ServiceAccount (so the
//! example's Role is proven to be enough: the API server enforces RBAC).
//! Exactly one says it leads and all name it; with
//! `--ready-only-when-leader` only its `/readyz` succeeds; SIGTERM of the
//! leader hands over within a retry period thanks to the release, `kill -9`
//! within the lease duration. The example manifests pass the API server's
//! dry run.
//!
//! Durations are short (3 s lease, 2 s renew deadline, 0.3 s retry period);
//! every wait has a deadline derived from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
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
    let token = cluster.kubectl_ok(&[
        "create",
        "token",
        "leader-elector",
        "-n",
        ns,
        "--duration=1h",
    ]);
    let admin = std::fs::read_to_string(&cluster.kubeconfig).expect("admin kubeconfig");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&admin).expect("admin kubeconfig is YAML");
    let users = config
        .get_mut("users")
        .and_then(|u| u.as_sequence_mut())
        .expect("kubeconfig users");
    for user in users {
        let mut credentials = serde_yaml_ng::Mapping::new();
        credentials.insert("token".into(), token.trim().into());
        user["user"] = serde_yaml_ng::Value::Mapping(credentials);
    }
    let path = std::env::temp_dir().join(format!("bosun-test-{ns}.kubeconfig"));
    std::fs::write(
        &path,
        serde_yaml_ng::to_string(&config).expect("kubeconfig serialises"),
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
            .args(["--lease-duration", "3s", "--renew-deadline", "2s"])
            .args(["--retry-period", "300ms"])
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

    /// `/leader` as JSON, or why not.
    async fn leader(&self) -> Result<LeaderAnswer, String> {
        let (status, body) = get(self.addr, "/leader").await?;
        if status != 200 {
            return Err(format!("/leader answered {status}: {body}"));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("/leader is not the JSON expected: {e}: {body}"))
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

/// Who leads, when every elector answers, all name the same leader, that
/// leader is one of them, and exactly that one says it leads.
async fn agreed_leader(electors: &[&Elector]) -> Result<String, String> {
    let mut named = Vec::new();
    for elector in electors {
        let answer = elector.leader().await?;
        named.push((elector.identity.as_str(), answer));
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

async fn lease_holder(cluster: &TestCluster, ns: &str) -> (Option<String>, Option<i32>) {
    let lease = Api::<Lease>::namespaced(cluster.client.clone(), ns)
        .get(LEASE_NAME)
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

    let all: Vec<&Elector> = electors.iter().collect();
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
    let (holder, transitions_before) = lease_holder(&cluster, &ns.name).await;
    assert_eq!(holder.as_deref(), Some(leader.as_str()));

    // SIGTERM: the leader releases the Lease and exits 0; one of the others
    // takes it on its next attempt.
    let old = take(&mut electors, &leader);
    let terminated = Instant::now();
    old.signal(Signal::SIGTERM);
    let rest: Vec<&Elector> = electors.iter().collect();
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

    let (holder, transitions) = lease_holder(&cluster, &ns.name).await;
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
    let all: Vec<&Elector> = electors.iter().collect();
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
    let rest: Vec<&Elector> = electors.iter().collect();
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
    let (holder, _) = lease_holder(&cluster, &ns.name).await;
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
            "verbs": ["get", "create", "update"],
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
