//! End-to-end tests of the manager with leader election on the dev
//! cluster's API server: two managers (two clients, two identities) share
//! one Lease, exactly one runs its controllers at any time, a graceful
//! shutdown of the leader hands the controllers over at once, and a leader
//! whose Lease is taken stops its controllers and fails its run.
//!
//! Durations are short (3 s lease, 2 s renew deadline, 0.3 s retry period);
//! every wait has a deadline derived from them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::leader_election::{ElectionConfig, JITTER_FACTOR, LeaderState, LostLeadership};
use bosun_runtime::manager::{Manager, ManagerError};
use bosun_runtime::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use support::{parse_prometheus_text, value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(300);
/// Room for a few API round trips on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(500);
const LEASE_NAME: &str = "manager";

/// How many controllers of all managers in one test run, and the most that
/// ever ran at once.
#[derive(Default)]
struct Running {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Running {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One manager on its own task, with a controller that says whether it runs.
struct Instance {
    identity: String,
    /// `namespace/name` of the Lease, as the metrics label it.
    lease: String,
    runs: Arc<AtomicBool>,
    state: watch::Receiver<LeaderState>,
    metrics: Metrics,
    health: bosun_runtime::health::Health,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ManagerError>>,
}

impl Instance {
    fn start(client: Client, ns: &str, identity: &str, running: &Arc<Running>) -> Self {
        let mut config = ElectionConfig::new(ns, LEASE_NAME, identity);
        config.lease_duration = LEASE;
        config.renew_deadline = RENEW_DEADLINE;
        config.retry_period = RETRY;
        let mut manager = Manager::new()
            .with_leader_election(client, config)
            .expect("valid election config");
        let runs = Arc::new(AtomicBool::new(false));
        manager.add_controller("work", {
            let runs = runs.clone();
            let running = running.clone();
            move |stop: CancellationToken| async move {
                running.enter();
                runs.store(true, Ordering::SeqCst);
                stop.cancelled().await;
                runs.store(false, Ordering::SeqCst);
                running.leave();
            }
        });
        let state = manager.leader_state().expect("election is configured");
        let metrics = manager.metrics().clone();
        let health = manager.health().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(manager.run(shutdown.clone()));
        Instance {
            identity: identity.to_string(),
            lease: format!("{ns}/{LEASE_NAME}"),
            runs,
            state,
            metrics,
            health,
            shutdown,
            task,
        }
    }

    fn runs(&self) -> bool {
        self.runs.load(Ordering::SeqCst)
    }

    /// The value of a leader-election series of this manager's Lease.
    fn metric(&self, name: &str) -> Option<f64> {
        lease_metric(&self.metrics, &self.lease, name)
    }

    /// Shuts the manager down and returns how its run ended.
    async fn stop(self) -> Result<(), ManagerError> {
        self.shutdown.cancel();
        timeout(RENEW_DEADLINE + SLACK, self.task)
            .await
            .expect("a manager shut down returns within the renew deadline")
            .expect("the manager task does not panic")
    }
}

fn lease_metric(metrics: &Metrics, lease: &str, name: &str) -> Option<f64> {
    let text = metrics.encode_prometheus_text().expect("metrics encode");
    let samples = parse_prometheus_text(&text).expect("Prometheus text");
    value(&samples, name, &[("lease", lease)])
}

/// A second, independent client of the cluster, as another replica has.
async fn another_client(cluster: &TestCluster) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// Polls `done` every 10 ms until it holds, failing the test after
/// `within`; meanwhile never more than one controller may run. Returns when
/// it first held.
async fn eventually(
    what: &str,
    within: Duration,
    running: &Running,
    mut done: impl FnMut() -> bool,
) -> Instant {
    let start = Instant::now();
    loop {
        assert!(
            running.most.load(Ordering::SeqCst) <= 1,
            "two controllers ran at once"
        );
        if done() {
            return Instant::now();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_run_one_controller_and_a_shutdown_hands_it_over() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("two_managers_run_one_controller").await;
    let running = Arc::new(Running::default());
    let a = Instance::start(cluster.client.clone(), &ns.name, "a", &running);
    let b = Instance::start(another_client(&cluster).await, &ns.name, "b", &running);

    eventually("a controller runs", LEASE * 2, &running, || {
        a.runs() || b.runs()
    })
    .await;
    let (leader, standby) = if a.runs() { (a, b) } else { (b, a) };
    println!("{} leads", leader.identity);

    // For two lease durations the same one runs and the other waits, both
    // ready (a standby is ready), and both name the leader.
    let until = Instant::now() + LEASE * 2;
    while Instant::now() < until {
        assert!(
            running.most.load(Ordering::SeqCst) <= 1,
            "two controllers ran at once"
        );
        assert!(leader.runs() && !standby.runs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for instance in [&leader, &standby] {
        assert!(
            instance.health.readiness().passed(),
            "{}",
            instance.health.readiness()
        );
        assert_eq!(
            instance.state.borrow().leader.as_deref(),
            Some(leader.identity.as_str())
        );
    }
    assert_eq!(leader.metric("bosun_leader_is_leader"), Some(1.0));
    assert_eq!(standby.metric("bosun_leader_is_leader"), Some(0.0));
    assert_eq!(standby.metric("bosun_leader_transitions_total"), Some(0.0));

    // Graceful shutdown: the controller stops, the Lease is released, and
    // the standby's controller starts on its next attempt, not after a
    // lease duration.
    let old_leader = leader.identity.clone();
    let old_metrics = leader.metrics.clone();
    let lease = leader.lease.clone();
    let old_runs = leader.runs.clone();
    let shut_down = Instant::now();
    let result = leader.stop().await;
    assert!(result.is_ok(), "{result:?}");
    assert!(!old_runs.load(Ordering::SeqCst), "its controller stopped");
    let spec = lease_spec(&cluster.client, &ns.name).await;
    assert!(
        spec.holder_identity.as_deref() != Some(old_leader.as_str()),
        "released: {spec:?}"
    );
    let took_over = eventually("the standby's controller runs", LEASE, &running, || {
        standby.runs()
    })
    .await;
    let handover = took_over - shut_down;
    println!("controllers handed over {handover:?} after shutdown");
    assert!(
        handover < RENEW_DEADLINE + RETRY.mul_f64(1.0 + JITTER_FACTOR) + SLACK,
        "handover took {handover:?}"
    );
    assert!(
        handover < LEASE,
        "faster than a lease duration: {handover:?}"
    );
    assert_eq!(running.most.load(Ordering::SeqCst), 1);

    assert_eq!(standby.metric("bosun_leader_is_leader"), Some(1.0));
    assert_eq!(
        standby.metric("bosun_leader_transitions_total"),
        Some(1.0),
        "it saw the leader change once"
    );
    assert_eq!(
        lease_metric(&old_metrics, &lease, "bosun_leader_is_leader"),
        Some(0.0),
        "the old leader's gauge"
    );

    let result = standby.stop().await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(running.now.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_whose_lease_is_taken_stops_its_controllers_and_fails() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_manager_whose_lease_is_taken").await;
    let running = Arc::new(Running::default());
    let a = Instance::start(cluster.client.clone(), &ns.name, "a", &running);
    eventually("a's controller runs", LEASE * 2, &running, || a.runs()).await;

    // Someone else writes the Lease over its current version, as a
    // well-behaved writer would (retrying when a renewal slipped in).
    let api = Api::<Lease>::namespaced(cluster.client.clone(), &ns.name);
    let deadline = Instant::now() + LEASE;
    loop {
        let mut lease = api.get(LEASE_NAME).await.expect("the Lease exists");
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some("intruder".into());
        match api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 && Instant::now() < deadline => {}
            Err(e) => panic!("the intruder cannot write the Lease: {e}"),
        }
    }
    let taken = Instant::now();

    let health = a.health.clone();
    let runs = a.runs.clone();
    let result = timeout(RETRY * 2 + SLACK, a.task)
        .await
        .expect("the manager stops at its next renewal")
        .expect("no panic");
    println!("run ended {:?} after the Lease was taken", taken.elapsed());
    match result {
        Err(ManagerError::LostLeadership(LostLeadership::TakenOver { holder, .. })) => {
            assert_eq!(holder.as_deref(), Some("intruder"));
        }
        other => panic!("expected lost leadership, got {other:?}"),
    }
    assert!(!runs.load(Ordering::SeqCst), "the controller was stopped");
    assert_eq!(running.now.load(Ordering::SeqCst), 0);
    assert!(
        !health.readiness().passed(),
        "a failed manager is not ready"
    );
    let spec = lease_spec(&cluster.client, &ns.name).await;
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some("intruder"),
        "a manager that lost its Lease does not release someone else's"
    );
}

async fn lease_spec(client: &Client, ns: &str) -> LeaseSpec {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE_NAME)
        .await
        .expect("the Lease exists")
        .spec
        .expect("the Lease has a spec")
}
