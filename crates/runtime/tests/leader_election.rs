//! End-to-end tests of Lease leader election against the dev cluster's API
//! server: who leads, how fast leadership moves on release, on a crash and
//! on a partition, and that racing candidates never lead at once.
//!
//! Durations are short (3 s lease, 2 s renew deadline, 0.3 s retry period)
//! and every wait has a deadline derived from them; handover times are
//! measured and bounded from both sides.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::leader_election::{
    ElectionConfig, JITTER_FACTOR, LeaderElector, LeaderState, LostLeadership,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(300);
/// Room for a few API round trips on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(500);
const LEASE_NAME: &str = "election";

/// The longest a candidate waits between two attempts to acquire.
fn longest_retry() -> Duration {
    RETRY.mul_f64(1.0 + JITTER_FACTOR)
}

fn config(ns: &str, lease: &str, identity: &str, release_on_cancel: bool) -> ElectionConfig {
    let mut config = ElectionConfig::new(ns, lease, identity);
    config.lease_duration = LEASE;
    config.renew_deadline = RENEW_DEADLINE;
    config.retry_period = RETRY;
    config.release_on_cancel = release_on_cancel;
    config
}

/// One elector running on its own task.
struct Candidate {
    identity: String,
    state: watch::Receiver<LeaderState>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), LostLeadership>>,
}

impl Candidate {
    fn start(client: Client, config: ElectionConfig) -> Self {
        let identity = config.identity.clone();
        let elector = LeaderElector::new(client, config).expect("valid config");
        let state = elector.subscribe();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(elector.run(cancel.clone()));
        Candidate {
            identity,
            state,
            cancel,
            task,
        }
    }

    fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    fn leads(&self) -> bool {
        self.state.borrow().is_leader
    }

    /// Waits for this candidate's next successful renewal.
    async fn next_renewal(&mut self) {
        let before = self.state().renew_time;
        timeout(
            RETRY * 2 + SLACK,
            self.state
                .wait_for(|s| s.is_leader && s.renew_time != before),
        )
        .await
        .expect("the leader renews every retry period")
        .expect("the elector is running");
    }

    /// Cancels the candidate and returns how its run ended.
    async fn stop(self) -> Result<(), LostLeadership> {
        self.cancel.cancel();
        timeout(RENEW_DEADLINE + SLACK, self.task)
            .await
            .expect("a cancelled elector returns within the renew deadline")
            .expect("the elector task does not panic")
    }
}

/// Polls `done` every 10 ms until it holds, failing the test after `within`;
/// returns when it first held.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    loop {
        if done() {
            return Instant::now();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `later - earlier` on the wall clock; zero when `later` is not later.
fn wall_gap(later: Timestamp, earlier: Timestamp) -> Duration {
    let micros = later.as_microsecond() - earlier.as_microsecond();
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

async fn lease_spec(client: &Client, ns: &str, name: &str) -> LeaseSpec {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("the Lease exists")
        .spec
        .expect("the Lease has a spec")
}

/// Everything the crate logs (tracing) in this test process, also echoed to
/// stdout; tests find their own lines by namespace.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("bosun_runtime=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        print!("{}", String::from_utf8_lossy(bytes));
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_candidates_leads_and_both_name_it() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("one_of_two_candidates_leads").await;
    let a = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "a", false),
    );
    let b = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "b", false),
    );

    eventually("a candidate leads", LEASE * 2, || a.leads() || b.leads()).await;
    let (leader, follower) = if a.leads() { (&a, &b) } else { (&b, &a) };
    let first = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;

    // For two lease durations nothing may change hands: the leader keeps
    // renewing, the follower keeps waiting and names the leader.
    let until = Instant::now() + LEASE * 2;
    while Instant::now() < until {
        assert!(!(a.leads() && b.leads()), "both candidates lead");
        assert!(leader.leads(), "{} stopped leading", leader.identity);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let follower_state = follower.state();
    assert_eq!(
        follower_state.leader.as_deref(),
        Some(leader.identity.as_str())
    );
    assert!(!follower_state.is_leader);
    assert_eq!(follower_state.lease_transitions, 0);
    let leader_state = leader.state();
    assert_eq!(
        leader_state.leader.as_deref(),
        Some(leader.identity.as_str())
    );
    assert!(leader_state.is_leader);

    let last = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    assert_eq!(
        last.holder_identity.as_deref(),
        Some(leader.identity.as_str())
    );
    assert_eq!(last.lease_duration_seconds, Some(3));
    assert_eq!(last.lease_transitions, Some(0), "created by the winner");
    assert_eq!(
        last.acquire_time, first.acquire_time,
        "renewals keep acquireTime"
    );
    assert!(last.renew_time > first.renew_time, "the leader renewed");

    for candidate in [a, b] {
        assert_eq!(candidate.stop().await, Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_over_within_a_retry_period() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_cancelled_leader_hands_over").await;
    let a = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "a", true),
    );
    eventually("a leads", LEASE, || a.leads()).await;
    let b = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "b", true),
    );
    eventually("b names a as leader", LEASE, || {
        b.state().leader.as_deref() == Some("a")
    })
    .await;

    let cancelled = Instant::now();
    let a_state = a.state.clone();
    assert_eq!(a.stop().await, Ok(()));
    assert!(!a_state.borrow().is_leader);
    let took_over = eventually("b leads", LEASE * 2, || b.leads()).await;

    // Without the release b would wait a whole lease duration (see the
    // crash test); with it, b takes over on its next attempt.
    let handover = took_over - cancelled;
    println!("handover after release: {handover:?}");
    assert!(
        handover < longest_retry() + SLACK,
        "handover took {handover:?}, lease is {LEASE:?}"
    );
    assert!(handover < LEASE / 2);

    let spec = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    let b_state = b.state();
    assert_eq!(b_state.leader.as_deref(), Some("b"));
    assert_eq!(b_state.lease_transitions, 1);
    assert_eq!(b.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_candidate_takes_a_released_lease_at_once_not_on_its_next_retry() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_watching_candidate").await;
    // A retry period far longer than the hand-over allowed below: b's next
    // attempt after its first is at least 10 s away, so only the watch can
    // make it lead sooner.
    let slow = |identity: &str| {
        let mut config = config(&ns.name, LEASE_NAME, identity, true);
        config.lease_duration = Duration::from_secs(30);
        config.renew_deadline = Duration::from_secs(25);
        config.retry_period = Duration::from_secs(10);
        config
    };
    let a = Candidate::start(cluster.client.clone(), slow("a"));
    eventually("a leads", LEASE, || a.leads()).await;
    let b = Candidate::start(cluster.client.clone(), slow("b"));
    eventually("b names a as leader", LEASE, || {
        b.state().leader.as_deref() == Some("a")
    })
    .await;

    let cancelled = Instant::now();
    assert_eq!(a.stop().await, Ok(()));
    let took_over = eventually("b leads", Duration::from_secs(10), || b.leads()).await;
    let handover = took_over - cancelled;
    println!("handover after release, watching: {handover:?}");
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}: the watch did not wake b"
    );
    assert_eq!(b.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_names_no_holder() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_released_lease_names_no_holder").await;
    let a = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "a", true),
    );
    eventually("a leads", LEASE, || a.leads()).await;
    let held = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    let a_state = a.state.clone();
    assert_eq!(a.stop().await, Ok(()));

    // client-go's release: empty holder, one second, transitions kept.
    let released = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    assert_eq!(released.holder_identity.as_deref(), Some(""));
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, held.lease_transitions);
    assert!(released.renew_time > held.renew_time);
    assert_eq!(released.acquire_time, released.renew_time);
    let state = a_state.borrow().clone();
    assert_eq!(state.leader, None);
    assert!(!state.is_leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_only_after_the_lease_duration() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_crashed_leader_is_replaced").await;
    let mut a = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "a", true),
    );
    eventually("a leads", LEASE, || a.leads()).await;
    let b = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "b", true),
    );
    eventually("b names a as leader", LEASE, || {
        b.state().leader.as_deref() == Some("a")
    })
    .await;

    // Crash right after a renewal, so that no renewal is in flight: dropping
    // the task ends it without a release, as a killed process would.
    a.next_renewal().await;
    a.task.abort();
    let crashed = Instant::now();
    let last_renewal = a.state().renew_time.expect("a renewed");
    assert!(
        a.task.await.is_err_and(|e| e.is_cancelled()),
        "the task was aborted"
    );

    let took_over = eventually("b leads", LEASE * 3, || b.leads()).await;
    let handover = took_over - crashed;
    let spec = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    let acquired = spec.acquire_time.expect("b's acquireTime").0;
    let waited = wall_gap(acquired, last_renewal);
    println!(
        "handover after crash: {handover:?}; b's acquireTime - a's last renewTime: {waited:?}"
    );

    // Exact, by the Lease's own timestamps (one machine, one wall clock): b
    // took over no sooner than a whole lease duration after a's last renewal.
    assert!(
        waited >= LEASE,
        "b acquired {waited:?} after a's last renewal, lease is {LEASE:?}"
    );
    assert!(handover >= LEASE - SLACK, "b took over after {handover:?}");
    // b sees the last renewal within one retry, then tries again within one.
    assert!(
        handover <= LEASE + longest_retry() * 2 + SLACK,
        "b took over only after {handover:?}"
    );
    assert_eq!(b.stop().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_racing_to_create_the_lease_never_lead_at_once() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("candidates_racing_to_create").await;
    // Every candidate's first attempt is immediate: all find no Lease and
    // all create one; the API server lets exactly one create land.
    let mut lost = 0;
    for round in 0..5 {
        let lease = format!("race-{round}");
        race(&cluster.client, &ns.name, &lease).await;
        let spec = lease_spec(&cluster.client, &ns.name, &lease).await;
        assert_eq!(spec.lease_transitions, Some(3), "created, then 3 takeovers");
        lost += logged(
            &ns.name,
            &lease,
            "lost the race to create the Lease (409 Conflict)",
        );
        if lost > 0 {
            break;
        }
    }
    assert!(
        lost > 0,
        "no candidate ever lost the race to create: nothing was tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_racing_for_a_released_lease_never_lead_at_once() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("candidates_racing_for_a_released").await;
    // The Lease exists and was released: all candidates read the same
    // version at once and all write over it; exactly one write lands.
    let mut lost = 0;
    for round in 0..5 {
        let lease = format!("race-{round}");
        let released: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": lease},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 7},
        }))
        .expect("a Lease");
        Api::<Lease>::namespaced(cluster.client.clone(), &ns.name)
            .create(&PostParams::default(), &released)
            .await
            .expect("create the released Lease");
        race(&cluster.client, &ns.name, &lease).await;
        let spec = lease_spec(&cluster.client, &ns.name, &lease).await;
        assert_eq!(spec.lease_transitions, Some(11), "4 takeovers");
        lost += logged(
            &ns.name,
            &lease,
            "lost the race to acquire the Lease (409 Conflict)",
        );
        if lost > 0 {
            break;
        }
    }
    assert!(
        lost > 0,
        "no candidate ever lost the race to update: nothing was tested"
    );
}

/// Starts four candidates together on `lease`, then cancels each leader in
/// turn (it releases, and the rest race again) until every one has led.
/// Each leader's work records when it starts and ends: these intervals must
/// never overlap.
async fn race(client: &Client, ns: &str, lease: &str) {
    let events: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
    let mut candidates: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|identity| {
            let elector = LeaderElector::new(client.clone(), config(ns, lease, identity, true))
                .expect("valid config");
            let cancel = CancellationToken::new();
            let events = events.clone();
            let work = move |leading: CancellationToken| async move {
                let record = |what| {
                    events
                        .lock()
                        .expect("events lock")
                        .push((identity.to_string(), what));
                };
                record("start");
                leading.cancelled().await;
                record("end");
            };
            let task = tokio::spawn(elector.run_while_leading(cancel.clone(), work));
            (identity, cancel, Some(task))
        })
        .collect();

    for handover in 0..candidates.len() {
        eventually("a candidate leads", LEASE * 3, || {
            events.lock().expect("events lock").len() > handover * 2
        })
        .await;
        let leader = {
            let events = events.lock().expect("events lock");
            assert_alternating(&events);
            events[handover * 2].0.clone()
        };
        let (_, cancel, task) = candidates
            .iter_mut()
            .find(|(identity, _, _)| *identity == leader)
            .expect("the leader is a candidate");
        cancel.cancel();
        let task = task.take().expect("each candidate leads once");
        let ran = timeout(RENEW_DEADLINE + SLACK, task)
            .await
            .expect("a cancelled leader returns within the renew deadline")
            .expect("the elector task does not panic");
        assert_eq!(ran, Ok(Some(())), "{leader} stepped down cleanly");
    }
    let events = events.lock().expect("events lock").clone();
    assert_alternating(&events);
    assert_eq!(events.len(), 8, "every candidate led once: {events:?}");
}

/// How many log lines about `ns/lease` contain `message`.
fn logged(ns: &str, lease: &str, message: &str) -> usize {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().expect("logs lock")).into_owned();
    let key = format!("lease={ns}/{lease}");
    let count = text
        .lines()
        .filter(|line| line.contains(message) && line.split_whitespace().any(|w| w == key))
        .count();
    println!("{ns}/{lease}: {count} × {message:?}");
    count
}

/// Leadership intervals: start, end, start, end..., each end by the
/// candidate that started.
fn assert_alternating(events: &[(String, &'static str)]) {
    for (i, pair) in events.chunks(2).enumerate() {
        assert_eq!(pair[0].1, "start", "interval {i}: {events:?}");
        if let Some(end) = pair.get(1) {
            assert_eq!(end.1, "end", "two leaders at once: {events:?}");
            assert_eq!(end.0, pair[0].0, "two leaders at once: {events:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_steps_down_at_once() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_leader_whose_lease_is_taken").await;
    let elector = LeaderElector::new(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "a", true),
    )
    .expect("valid config");
    let mut state = elector.subscribe();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let task = tokio::spawn(elector.run_while_leading(
        CancellationToken::new(),
        |leading| async move {
            leading.cancelled().await;
            let _ = stopped_tx.send(Instant::now());
        },
    ));
    timeout(LEASE, state.wait_for(|s| s.is_leader))
        .await
        .expect("a leads")
        .expect("running");

    // Someone else writes the Lease (over its current version, as a
    // well-behaved writer would).
    let api = Api::<Lease>::namespaced(cluster.client.clone(), &ns.name);
    let mut lease = api.get(LEASE_NAME).await.expect("lease");
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some("intruder".into());
    let taken = Instant::now();
    api.replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .expect("the intruder writes the Lease");

    let ran = timeout(RETRY + SLACK, task)
        .await
        .expect("a steps down at its next renewal")
        .expect("no panic");
    assert_eq!(
        ran,
        Err(LostLeadership::TakenOver {
            lease: format!("{}/{LEASE_NAME}", ns.name),
            holder: Some("intruder".into()),
        })
    );
    let stopped = stopped_rx.await.expect("the work was told to stop");
    assert!(stopped - taken < RETRY + SLACK);
    let last = state.borrow().clone();
    assert!(!last.is_leader);
    assert_eq!(last.leader.as_deref(), Some("intruder"));
    // The intruder's Lease is left alone.
    let spec = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("intruder"));
}

/// A TCP path to the API server that the test can cut: every forwarded
/// connection is closed and new ones are refused, which is how a network
/// partition looks to the leader. It stands in for a fault the shared dev
/// cluster cannot be put through without disturbing its other users.
struct Partition {
    address: SocketAddr,
    cut: CancellationToken,
}

impl Partition {
    async fn to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let upstream = upstream.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Partition { address, cut }
    }

    fn cut(&self) {
        self.cut.cancel();
    }
}

/// A client whose every request goes through a [`Partition`].
async fn client_through_partition(cluster: &TestCluster) -> (Client, Partition) {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("client config");
    let host = config.cluster_url.host().expect("server host").to_string();
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let partition = Partition::to(format!("{host}:{port}")).await;
    config.cluster_url = format!("https://{}", partition.address)
        .parse()
        .expect("proxy URL");
    config.tls_server_name = Some(host);
    let client = Client::try_from(config).expect("client");
    (client, partition)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_before_its_lease_expires() {
    logs();
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("a_partitioned_leader_steps_down").await;
    let (partitioned, partition) = client_through_partition(&cluster).await;

    let elector = LeaderElector::new(partitioned, config(&ns.name, LEASE_NAME, "a", true))
        .expect("valid config");
    let mut a_state = elector.subscribe();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let a = tokio::spawn(elector.run_while_leading(
        CancellationToken::new(),
        |leading| async move {
            leading.cancelled().await;
            let _ = stopped_tx.send((Instant::now(), Timestamp::now()));
        },
    ));
    timeout(LEASE, a_state.wait_for(|s| s.is_leader))
        .await
        .expect("a leads")
        .expect("running");
    let b = Candidate::start(
        cluster.client.clone(),
        config(&ns.name, LEASE_NAME, "b", true),
    );
    eventually("b names a as leader", LEASE, || {
        b.state().leader.as_deref() == Some("a")
    })
    .await;

    // Cut a off right after a renewal.
    let before = a_state.borrow().renew_time;
    timeout(
        RETRY * 2 + SLACK,
        a_state.wait_for(|s| s.renew_time != before),
    )
    .await
    .expect("a renews")
    .expect("running");
    partition.cut();
    let cut = Instant::now();
    let last_renewal = a_state.borrow().renew_time.expect("a renewed");

    let ran = timeout(RENEW_DEADLINE + SLACK, a)
        .await
        .expect("a steps down by its renew deadline")
        .expect("no panic");
    assert!(
        matches!(
            &ran,
            Err(LostLeadership::RenewDeadlineExceeded {
                last_error: Some(_),
                ..
            })
        ),
        "{ran:?}"
    );
    let (work_stopped, work_stopped_wall) = stopped_rx.await.expect("the work was told to stop");
    assert!(!a_state.borrow().is_leader);
    // a keeps trying for exactly its renew deadline after its last renewal
    // started (renewTime is read as it starts), not a moment less.
    let gave_up_after = wall_gap(work_stopped_wall, last_renewal);
    println!(
        "step-down: {:?} after the cut, {gave_up_after:?} after the last renewal",
        work_stopped - cut
    );
    assert!(
        gave_up_after >= RENEW_DEADLINE - Duration::from_millis(1),
        "a gave up {gave_up_after:?} after its last renewal"
    );
    assert!(gave_up_after <= RENEW_DEADLINE + SLACK, "{gave_up_after:?}");

    let took_over = eventually("b leads", LEASE * 3, || b.leads()).await;
    let handover = took_over - cut;
    let spec = lease_spec(&cluster.client, &ns.name, LEASE_NAME).await;
    let acquired = spec.acquire_time.expect("b's acquireTime").0;
    let margin = wall_gap(acquired, work_stopped_wall);
    println!("handover after the partition: {handover:?}; a's work had stopped {margin:?} before");
    // The point of fail-stop: a's work stopped before b could lead.
    assert!(
        acquired > work_stopped_wall,
        "b led before a's work stopped"
    );
    assert!(wall_gap(acquired, last_renewal) >= LEASE);
    assert!(
        handover <= LEASE + longest_retry() * 2 + SLACK,
        "{handover:?}"
    );
    assert_eq!(b.stop().await, Ok(()));
}
