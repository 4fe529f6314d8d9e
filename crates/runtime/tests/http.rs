//! The HTTP endpoints, over real requests on loopback: probes that follow
//! the manager and registered checks, and `/metrics` that Prometheus can
//! read, carrying the reconcile and leader-election series with the values
//! that were recorded. No cluster: a manager without election and a leader
//! state driven by the test.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bosun_runtime::http;
use bosun_runtime::leader_election::LeaderState;
use bosun_runtime::manager::Manager;
use bosun_runtime::metrics::Metrics;
use bosun_runtime::prometheus_client::metrics::gauge::Gauge;
use support::{Sample, get, parse_prometheus_text, value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(router: axum::Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let stop = CancellationToken::new();
    let task = tokio::spawn(http::serve(listener, router, stop.clone()));
    Server { addr, stop, task }
}

async fn metrics_samples(addr: SocketAddr) -> Vec<Sample> {
    let response = get(addr, "/metrics", None).await.expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_prometheus_text(&response.body)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{}", response.body))
}

/// Polls `GET path` until `done` holds for it, failing after `within`.
async fn eventually_get(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    done: impl Fn(&support::Response) -> bool,
) -> support::Response {
    let deadline = Instant::now() + within;
    loop {
        let response = get(addr, path, None).await.expect("GET");
        if done(&response) {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: not within {within:?}; last: {} {}",
            response.status,
            response.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_manager_and_registered_checks() {
    let mut manager = Manager::new();
    let (started_tx, started) = oneshot::channel();
    manager.add_controller("widgets", move |stop: CancellationToken| async move {
        started_tx.send(()).ok();
        stop.cancelled().await;
    });
    let synced = Arc::new(AtomicBool::new(false));
    manager.health().add_readiness_check("cache-synced", {
        let synced = synced.clone();
        move || {
            if synced.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the cache has not synced".into())
            }
        }
    });
    let server = start(http::router(manager.health(), manager.metrics())).await;

    let live = get(server.addr, "/healthz", None).await.expect("GET");
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let ready = get(server.addr, "/readyz", None).await.expect("GET");
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body,
        "[-]manager failed: the controllers have not been started\n\
         [-]cache-synced failed: the cache has not synced\nfailed\n"
    );

    let shutdown = CancellationToken::new();
    let run = tokio::spawn(manager.run(shutdown.clone()));
    tokio::time::timeout(WITHIN, started)
        .await
        .expect("the controller starts")
        .expect("the controller says so");
    let ready = eventually_get(server.addr, "/readyz", WITHIN, |r| {
        r.body.starts_with("[+]manager ok\n")
    })
    .await;
    assert_eq!(ready.status, 503, "the registered check still fails");

    synced.store(true, Ordering::SeqCst);
    let ready = get(server.addr, "/readyz", None).await.expect("GET");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "[+]manager ok\n[+]cache-synced ok\nok\n")
    );

    shutdown.cancel();
    let result = tokio::time::timeout(WITHIN, run)
        .await
        .expect("the manager stops")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    let ready = get(server.addr, "/readyz", None).await.expect("GET");
    assert_eq!(ready.status, 503, "a stopped manager is not ready");
    assert!(
        ready
            .body
            .contains("[-]manager failed: the controllers have stopped")
    );

    server.stop.cancel();
    tokio::time::timeout(WITHIN, server.task)
        .await
        .expect("the server stops")
        .expect("no panic")
        .expect("served without error");
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_the_recorded_values() {
    let metrics = Metrics::new();
    let health = bosun_runtime::health::Health::new();
    let server = start(http::router(&health, &metrics)).await;

    // Reconciles: two successes, one error.
    let widgets = metrics.controller("widgets");
    let _gadgets = metrics.controller("gadgets");
    for outcome in [Ok(()), Err("conflict"), Ok(())] {
        let result = widgets
            .observe(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                outcome
            })
            .await;
        assert_eq!(result, outcome);
    }

    // An operator's own series on the same registry.
    let members = Gauge::<i64>::default();
    metrics.register("example_members", "Members of the example", members.clone());
    members.set(3);

    // The election as an elector would publish it: first another leader,
    // then this process.
    let mut state = LeaderState::default();
    state.leader = Some("other".into());
    let (publish, receiver) = watch::channel(state.clone());
    let recording = tokio::spawn({
        let metrics = metrics.clone();
        async move { metrics.record_leader("ns/lease", receiver).await }
    });
    let lease = [("lease", "ns/lease")];
    wait_for_value(server.addr, "bosun_leader_is_leader", &lease, 0.0).await;
    state.leader = Some("me".into());
    state.is_leader = true;
    publish.send_replace(state);
    wait_for_value(server.addr, "bosun_leader_is_leader", &lease, 1.0).await;

    let samples = metrics_samples(server.addr).await;
    let total = |controller, result| {
        value(
            &samples,
            "bosun_reconcile_total",
            &[("controller", controller), ("result", result)],
        )
    };
    assert_eq!(total("widgets", "success"), Some(2.0));
    assert_eq!(total("widgets", "error"), Some(1.0));
    assert_eq!(total("gadgets", "success"), Some(0.0), "declared at zero");
    assert_eq!(total("gadgets", "error"), Some(0.0));

    let widgets_only = [("controller", "widgets")];
    let count = value(
        &samples,
        "bosun_reconcile_duration_seconds_count",
        &widgets_only,
    );
    assert_eq!(count, Some(3.0));
    let sum = value(
        &samples,
        "bosun_reconcile_duration_seconds_sum",
        &widgets_only,
    )
    .expect("a duration sum");
    assert!(
        (0.06..5.0).contains(&sum),
        "three reconciles of 20 ms took {sum} s"
    );
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| {
            s.name == "bosun_reconcile_duration_seconds_bucket"
                && s.labels.get("controller").map(String::as_str) == Some("widgets")
        })
        .map(|s| {
            let le = s.labels["le"].as_str();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            (bound, s.value)
        })
        .collect();
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "bounds rise and counts are cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3.0)));
    assert_eq!(
        buckets
            .iter()
            .find(|(bound, _)| *bound == 0.005)
            .map(|b| b.1),
        Some(0.0),
        "no 20 ms reconcile took under 5 ms"
    );

    assert_eq!(value(&samples, "bosun_leader_is_leader", &lease), Some(1.0));
    assert_eq!(
        value(&samples, "bosun_leader_transitions_total", &lease),
        Some(1.0),
        "other -> me"
    );
    assert_eq!(value(&samples, "example_members", &[]), Some(3.0));

    // The elector's run ends: this process no longer leads.
    drop(publish);
    tokio::time::timeout(WITHIN, recording)
        .await
        .expect("recording ends with the election")
        .expect("no panic");
    let samples = metrics_samples(server.addr).await;
    assert_eq!(value(&samples, "bosun_leader_is_leader", &lease), Some(0.0));
    server.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_when_the_scraper_asks() {
    let metrics = Metrics::new();
    metrics
        .controller("widgets")
        .record(true, Duration::from_millis(1));
    let server = start(http::router(
        &bosun_runtime::health::Health::new(),
        &metrics,
    ))
    .await;
    // What Prometheus sends.
    let accept =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
    let response = get(server.addr, "/metrics", Some(accept))
        .await
        .expect("GET");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    assert!(
        response
            .body
            .contains("bosun_reconcile_total{controller=\"widgets\",result=\"success\"} 1\n"),
        "{}",
        response.body
    );
    assert!(
        response
            .body
            .contains("# UNIT bosun_reconcile_duration_seconds seconds\n")
    );
    server.stop.cancel();
}

async fn wait_for_value(addr: SocketAddr, name: &str, labels: &[(&str, &str)], expected: f64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let samples = metrics_samples(addr).await;
        if value(&samples, name, labels) == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is not {expected} within {WITHIN:?}: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_text_reader_refuses_what_prometheus_would() {
    let bad = [
        (
            "# TYPE a counter\na_total 1\n",
            "in 0.0.4 a counter's TYPE names a_total",
        ),
        ("a 1\n", "no TYPE"),
        ("# TYPE a gauge\na{b=\"c\" 1\n", "unclosed labels"),
        ("# TYPE a gauge\na{b=\"c\"}1\n", "no space"),
        ("# TYPE a gauge\na{b=\"c\"} x\n", "not a number"),
        ("# random\n", "not HELP or TYPE"),
        ("# TYPE a gauge\n# TYPE a gauge\n", "declared twice"),
    ];
    for (text, why) in bad {
        assert!(parse_prometheus_text(text).is_err(), "{why}: {text:?}");
    }
    let samples =
        parse_prometheus_text("# TYPE a gauge\na{b=\"q\\\"x\",c=\"d\"} 2.5\n").expect("valid text");
    assert_eq!(
        value(&samples, "a", &[("b", "q\"x"), ("c", "d")]),
        Some(2.5)
    );
}
