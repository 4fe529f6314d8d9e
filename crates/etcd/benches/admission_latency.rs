//! What the etcd API's admission webhooks add to a create, on the running
//! dev cluster (`BOSUN_KUBECONFIG`, else the default state dir's) with the
//! operator installed and serving its webhooks.
//!
//! A steady load of server-side dry-run creates of EtcdClusters (a fixed
//! rate, each request on its own, so a slow answer does not slow the load)
//! runs in two namespaces in turn:
//!
//! - a namespace of its own, where the API server calls the mutating and
//!   the validating webhook for every create;
//! - the operator's namespace, which the webhook configurations exclude:
//!   the same create, the same schema and CEL rules, no webhook.
//!
//! Reported per round, from histograms (the share under 5 ms, which is a
//! bucket bound of each, and p50/p99 interpolated in buckets as
//! `histogram_quantile` does): the validating handler's time inside the
//! operator (`controller_runtime_webhook_latency_seconds`, every replica,
//! read through the API server's pod proxy), the webhook call as the API
//! server times it (`apiserver_admission_webhook_admission_duration_seconds`)
//! and the whole POST (`apiserver_request_duration_seconds`); and at the
//! client, exact p50/p99 of each create. The etcd API defaults in its
//! schema, so only the validating webhook is called. Dry runs store
//! nothing, so the load leaves no objects.
//!
//! Run: `cargo bench -p bosun-etcd --bench admission_latency`
//! (`BOSUN_BENCH_RATE` creates per second, default 40;
//! `BOSUN_BENCH_SECONDS` per round, default 30; `BOSUN_BENCH_ROUNDS`,
//! default 2).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bosun_api::EtcdCluster;
use bosun_devcluster::fixture::{OPERATOR_NAMESPACE, TestCluster};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus_parse::{Scrape, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An EtcdCluster the webhooks default and allow.
fn cluster_object(name: &str) -> EtcdCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "etcd.bosun.dev/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": name},
        "spec": {"size": 3, "version": "3.6.16"}
    }))
    .expect("an EtcdCluster")
}

/// The metrics at `path` of the API server, parsed.
async fn scrape_path(client: &Client, path: &str) -> Scrape {
    let request = http::Request::get(path)
        .body(Vec::new())
        .expect("a request");
    let text = client
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The API server's metrics, and every operator replica's (through the
/// API server's pod proxy).
async fn scrape(cluster: &TestCluster) -> (Scrape, Vec<Scrape>) {
    let server = scrape_path(&cluster.client, "/metrics").await;
    let mut operators = Vec::new();
    for pod in cluster.operator_pods().await.expect("the operator's pods") {
        let name = pod.metadata.name.unwrap_or_default();
        let path =
            format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{name}:8080/proxy/metrics");
        operators.push(scrape_path(&cluster.client, &path).await);
    }
    (server, operators)
}

/// The cumulative buckets (upper bound, count) of histogram `name`, summed
/// over the series whose labels include all of `labels`.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut summed: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if !labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)) {
            continue;
        }
        if let Value::Histogram(counts) = &sample.value {
            for bucket in counts {
                let entry = summed
                    .entry(bucket.less_than.to_bits())
                    .or_insert((bucket.less_than, 0.0));
                entry.1 += bucket.count;
            }
        }
    }
    let mut out: Vec<(f64, f64)> = summed.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The sum of the plain samples named `name` whose labels include all of
/// `labels` (a histogram's `_sum` comes as one).
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `after - before`, bucket by bucket.
fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside
/// the bucket it falls in, as Prometheus's `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    None
}

/// The share of observations at or under `bound`, a bucket bound.
fn share_under(buckets: &[(f64, f64)], bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let under = buckets.iter().find(|(b, _)| *b == bound)?.1;
    (total > 0.0).then(|| under / total)
}

/// The exact `q` quantile of sorted samples (nearest rank).
fn exact_quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Creates `rate` dry-run EtcdClusters a second for `seconds` in
/// `namespace`; returns each create's latency, sorted, and the failures.
async fn load(client: &Client, namespace: &str, rate: u64, seconds: u64) -> (Vec<Duration>, u64) {
    let api: Api<EtcdCluster> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..rate * seconds {
        tick.tick().await;
        let (api, params) = (api.clone(), params.clone());
        let (latencies, failures) = (latencies.clone(), failures.clone());
        requests.spawn(async move {
            let started = Instant::now();
            match api
                .create(&params, &cluster_object(&format!("load-{n}")))
                .await
            {
                Ok(_) => latencies.lock().await.push(started.elapsed()),
                Err(error) => {
                    eprintln!("  create {n}: {error}");
                    *failures.lock().await += 1;
                }
            }
        });
    }
    while requests.join_next().await.is_some() {}
    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let failures = *failures.lock().await;
    (latencies, failures)
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.2}", s * 1000.0))
}

fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// Buckets of one histogram summed over several processes' metrics.
fn summed_buckets(scrapes: &[Scrape], name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut total: Vec<(f64, f64)> = Vec::new();
    for scrape in scrapes {
        for (bound, count) in buckets(scrape, name, labels) {
            match total.iter_mut().find(|(b, _)| *b == bound) {
                Some(entry) => entry.1 += count,
                None => total.push((bound, count)),
            }
        }
    }
    total.sort_by(|a, b| a.0.total_cmp(&b.0));
    total
}

/// A histogram's calls in a round: count, mean (from the change of its
/// `_sum`, exact), share ≤ 5 ms, p50 and p99 (interpolated).
fn summary(calls: &[(f64, f64)], seconds: f64) -> String {
    let count = calls.last().map_or(0.0, |(_, c)| *c);
    let mean = (count > 0.0).then(|| seconds / count);
    format!(
        "{count:.0} calls, mean {} ms, {} ≤ 5 ms, p50 {} / p99 {} ms",
        ms(mean),
        percent(share_under(calls, 0.005)),
        ms(quantile(calls, 0.5)),
        ms(quantile(calls, 0.99)),
    )
}

/// One round in one namespace: prints a table row.
async fn round(cluster: &TestCluster, label: &str, namespace: &str, rate: u64, seconds: u64) {
    const WEBHOOK: &str = "apiserver_admission_webhook_admission_duration_seconds";
    const HANDLER: &str = "controller_runtime_webhook_latency_seconds";
    const REQUEST: &str = "apiserver_request_duration_seconds";
    let webhook_labels = [("type", "validating"), ("operation", "CREATE")];
    let handler_labels = [("webhook", "/validate-etcd-bosun-dev-v1alpha1-etcdcluster")];
    let request_labels = [("verb", "POST"), ("resource", "etcdclusters")];
    let (before, operators_before) = scrape(cluster).await;
    let (latencies, failures) = load(&cluster.client, namespace, rate, seconds).await;
    let (after, operators_after) = scrape(cluster).await;

    let mut cells = vec![label.to_string()];
    let handler_seconds: f64 = operators_after
        .iter()
        .map(|s| total(s, &format!("{HANDLER}_sum"), &handler_labels))
        .sum::<f64>()
        - operators_before
            .iter()
            .map(|s| total(s, &format!("{HANDLER}_sum"), &handler_labels))
            .sum::<f64>();
    cells.push(summary(
        &delta(
            &summed_buckets(&operators_before, HANDLER, &handler_labels),
            &summed_buckets(&operators_after, HANDLER, &handler_labels),
        ),
        handler_seconds,
    ));
    let webhook_sum = format!("{WEBHOOK}_sum");
    cells.push(summary(
        &delta(
            &buckets(&before, WEBHOOK, &webhook_labels),
            &buckets(&after, WEBHOOK, &webhook_labels),
        ),
        total(&after, &webhook_sum, &webhook_labels)
            - total(&before, &webhook_sum, &webhook_labels),
    ));
    let posts = delta(
        &buckets(&before, REQUEST, &request_labels),
        &buckets(&after, REQUEST, &request_labels),
    );
    cells.push(format!(
        "p50 {} / p99 {} ms",
        ms(quantile(&posts, 0.5)),
        ms(quantile(&posts, 0.99))
    ));
    cells.push(if latencies.is_empty() {
        "-".into()
    } else {
        format!(
            "p50 {:.2} / p99 {:.2} ms ({} creates, {failures} failed)",
            exact_quantile(&latencies, 0.5).as_secs_f64() * 1000.0,
            exact_quantile(&latencies, 0.99).as_secs_f64() * 1000.0,
            latencies.len()
        )
    });
    println!("| {} |", cells.join(" | "));
}

#[tokio::main]
async fn main() {
    let rate = env_or("BOSUN_BENCH_RATE", 40).max(1);
    let seconds = env_or("BOSUN_BENCH_SECONDS", 30).max(1);
    let rounds = env_or("BOSUN_BENCH_ROUNDS", 2).max(1);
    let cluster = TestCluster::connect().await;
    let namespace = cluster.namespace("admission_latency").await;

    let client = &cluster.client;
    // Warm up: connections, caches, the webhooks' first handshakes.
    load(client, &namespace.name, 20, 2).await;
    load(client, OPERATOR_NAMESPACE, 20, 2).await;

    println!("\n{rate} dry-run EtcdCluster creates/s, {seconds} s per round\n");
    println!(
        "| namespace | validating handler (at the operator) | validating webhook call (at the API server) \
         | POST etcdclusters (at the API server) | create (at the client) |"
    );
    println!("|---|---|---|---|---|");
    for _ in 0..rounds {
        round(&cluster, "webhooks called", &namespace.name, rate, seconds).await;
        round(&cluster, "no webhook", OPERATOR_NAMESPACE, rate, seconds).await;
    }
}
