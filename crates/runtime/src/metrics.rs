//! The process's Prometheus metrics: one registry that the runtime's own
//! series (reconciles, leader election) and the operator's series share, and
//! the helpers that keep the runtime's series up to date.
//!
//! Series the runtime writes:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `bosun_reconcile_total` | counter | `controller`, `result` = `success` or `error` |
//! | `bosun_reconcile_duration_seconds` | histogram | `controller` |
//! | `bosun_leader_is_leader` | gauge, 0 or 1 | `lease` (`namespace/name`) |
//! | `bosun_leader_transitions_total` | counter: changes of leader this process saw | `lease` |
//!
//! Operator code adds its own with [`Metrics::register`] (a metric or a
//! label family of them) or [`Metrics::register_collector`] (computed at
//! each scrape).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader_election::LeaderState;

/// The `Content-Type` of [`Metrics::encode_prometheus_text`].
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `bosun_reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: String,
    result: &'static str,
}

/// Labels of `bosun_reconcile_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

/// Labels of the leader-election series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: String,
}

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// Reconcile durations from 5 ms to about 41 s, doubling: a reconcile that
/// takes longer is stuck on a deadline and lands in `+Inf`.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The registry of one process and the runtime's series in it. Cloning is
/// cheap and every clone writes to the same registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: DurationFamily,
    is_leader: Family<LeaseLabels, Gauge>,
    leader_changes: Family<LeaseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the runtime's series, with no samples yet.
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            reconciles: Family::default(),
            durations: Family::new_with_constructor(reconcile_histogram),
            is_leader: Family::default(),
            leader_changes: Family::default(),
        };
        {
            let mut registry = metrics.lock();
            registry.register(
                "bosun_reconcile",
                "Reconciles finished, by controller and result (success or error)",
                metrics.reconciles.clone(),
            );
            registry.register_with_unit(
                "bosun_reconcile_duration",
                "How long reconciles took, by controller",
                Unit::Seconds,
                metrics.durations.clone(),
            );
            registry.register(
                "bosun_leader_is_leader",
                "1 while this process leads the election on the Lease, else 0",
                metrics.is_leader.clone(),
            );
            registry.register(
                "bosun_leader_transitions",
                "Changes of leader this process observed on the Lease",
                metrics.leader_changes.clone(),
            );
        }
        metrics
    }

    /// Adds an operator's own metric (or a [`Family`] of them) to the
    /// registry; it is served with the runtime's series.
    ///
    /// Names follow prometheus-client's rules: a counter is registered
    /// without its `_total` suffix (the encoder adds it; debug builds panic
    /// otherwise), and a unit is given with
    /// [`Metrics::register_with_unit`], not written into the name.
    #[track_caller]
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Like [`Metrics::register`], with a unit that the encoder appends to
    /// the name (`Unit::Seconds` makes `..._seconds`).
    #[track_caller]
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.lock().register_with_unit(name, help, unit, metric);
    }

    /// Adds a collector, which encodes its series afresh at every scrape
    /// (for figures that are cheaper to read than to keep up to date).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.lock().register_collector(collector);
    }

    /// Every series in the Prometheus text format, version 0.0.4.
    pub fn encode_prometheus_text(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.lock())?;
        Ok(text)
    }

    /// Every series in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.lock())?;
        Ok(text)
    }

    /// The recorder of one controller's reconciles. Its series exist from
    /// now on (at zero), so a dashboard sees the controller before its first
    /// reconcile.
    pub fn controller(&self, name: &str) -> ReconcileMetrics {
        let outcome = |result| ReconcileLabels {
            controller: name.to_string(),
            result,
        };
        let success = self.reconciles.get_or_create_owned(&outcome("success"));
        let error = self.reconciles.get_or_create_owned(&outcome("error"));
        let duration = self.durations.get_or_create_owned(&ControllerLabels {
            controller: name.to_string(),
        });
        ReconcileMetrics {
            success,
            error,
            duration,
        }
    }

    /// Keeps `bosun_leader_is_leader{lease}` and
    /// `bosun_leader_transitions_total{lease}` up to date from an elector's
    /// state, until the elector's run ends (the receiver closes); then the
    /// gauge says 0.
    ///
    /// `lease` is the label value, by convention `namespace/name`.
    pub async fn record_leader(&self, lease: &str, mut state: watch::Receiver<LeaderState>) {
        let mut series = self.leader_series(lease);
        loop {
            series.observe(&state.borrow_and_update());
            if state.changed().await.is_err() {
                break;
            }
        }
        series.stopped();
    }

    fn leader_series(&self, lease: &str) -> LeaderSeries {
        let labels = LeaseLabels {
            lease: lease.to_string(),
        };
        LeaderSeries {
            is_leader: self.is_leader.get_or_create_owned(&labels),
            changes: self.leader_changes.get_or_create_owned(&labels),
            last_leader: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while registering leaves the registry usable: every
        // registration is a single push.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The leader-election series of one Lease and what they were computed
/// from.
struct LeaderSeries {
    is_leader: Gauge,
    changes: Counter,
    /// The last holder named by the Lease; a released Lease keeps it.
    last_leader: Option<String>,
}

impl LeaderSeries {
    fn observe(&mut self, state: &LeaderState) {
        self.is_leader.set(i64::from(state.is_leader));
        if leader_changed(self.last_leader.as_deref(), state.leader.as_deref()) {
            self.changes.inc();
        }
        if state.leader.is_some() {
            self.last_leader.clone_from(&state.leader);
        }
    }

    /// The elector's run is over: whatever its last state said, this process
    /// no longer leads.
    fn stopped(&self) {
        self.is_leader.set(0);
    }
}

/// Whether the leader named now differs from the last one named. The first
/// leader a process sees is not a change, and neither is a released Lease
/// (nobody named): only a hand-over from one identity to another counts.
fn leader_changed(last: Option<&str>, now: Option<&str>) -> bool {
    matches!((last, now), (Some(last), Some(now)) if last != now)
}

/// Records one controller's reconciles into `bosun_reconcile_total` and
/// `bosun_reconcile_duration_seconds`; from [`Metrics::controller`].
///
/// With kube-rs's `Controller::run`, wrap the reconcile function:
///
/// ```no_run
/// # use std::sync::Arc;
/// # struct Context { metrics: bosun_runtime::metrics::ReconcileMetrics }
/// # #[derive(Debug)] struct Error;
/// # async fn apply(_: Arc<()>, _: &Context) -> Result<kube::runtime::controller::Action, Error> { todo!() }
/// async fn reconcile(
///     object: Arc<()>,
///     ctx: Arc<Context>,
/// ) -> Result<kube::runtime::controller::Action, Error> {
///     ctx.metrics.observe(apply(object, &ctx)).await
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    success: Counter,
    error: Counter,
    duration: Histogram,
}

impl ReconcileMetrics {
    /// Runs `reconcile` and records its result and how long it took. A
    /// reconcile dropped before it finished (the controller shut down) is
    /// not recorded.
    pub async fn observe<T, E>(
        &self,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = reconcile.await;
        self.record(result.is_ok(), started.elapsed());
        result
    }

    /// Records one finished reconcile, for callers that time it themselves.
    pub fn record(&self, succeeded: bool, took: Duration) {
        if succeeded {
            self.success.inc();
        } else {
            self.error.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus_text(metrics: &Metrics) -> String {
        metrics.encode_prometheus_text().unwrap_or_default()
    }

    #[test]
    fn only_a_hand_over_counts_as_a_change_of_leader() {
        assert!(!leader_changed(None, None));
        assert!(!leader_changed(None, Some("a")), "the first leader seen");
        assert!(!leader_changed(Some("a"), Some("a")));
        assert!(!leader_changed(Some("a"), None), "released");
        assert!(leader_changed(Some("a"), Some("b")));
    }

    #[test]
    fn the_runtime_series_are_declared_with_their_types() {
        let metrics = Metrics::new();
        let _recorder = metrics.controller("widgets");
        let _series = metrics.leader_series("ns/lease");
        let text = prometheus_text(&metrics);
        for declared in [
            "# TYPE bosun_reconcile_total counter",
            "# TYPE bosun_reconcile_duration_seconds histogram",
            "# TYPE bosun_leader_is_leader gauge",
            "# TYPE bosun_leader_transitions_total counter",
        ] {
            assert!(text.contains(declared), "{declared} in:\n{text}");
        }
    }

    #[test]
    fn a_controllers_series_exist_before_its_first_reconcile() {
        let metrics = Metrics::new();
        let _recorder = metrics.controller("widgets");
        let text = prometheus_text(&metrics);
        assert!(
            text.contains(r#"bosun_reconcile_total{controller="widgets",result="success"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bosun_reconcile_total{controller="widgets",result="error"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bosun_reconcile_duration_seconds_count{controller="widgets"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn recorded_reconciles_count_by_result_and_fill_the_histogram() {
        let metrics = Metrics::new();
        let recorder = metrics.controller("widgets");
        recorder.record(true, Duration::from_millis(3));
        recorder.record(true, Duration::from_millis(30));
        recorder.record(false, Duration::from_secs(100));
        let text = prometheus_text(&metrics);
        for line in [
            r#"bosun_reconcile_total{controller="widgets",result="success"} 2"#,
            r#"bosun_reconcile_total{controller="widgets",result="error"} 1"#,
            r#"bosun_reconcile_duration_seconds_count{controller="widgets"} 3"#,
            r#"bosun_reconcile_duration_seconds_bucket{controller="widgets",le="0.005"} 1"#,
            r#"bosun_reconcile_duration_seconds_bucket{controller="widgets",le="40.96"} 2"#,
            r#"bosun_reconcile_duration_seconds_bucket{controller="widgets",le="+Inf"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn operator_metrics_share_the_registry() {
        let metrics = Metrics::new();
        let members: Family<Vec<(String, String)>, Gauge> = Family::default();
        metrics.register("etcd_members", "Members per cluster", members.clone());
        members
            .get_or_create(&vec![("cluster".into(), "ns/a".into())])
            .set(3);
        let text = prometheus_text(&metrics);
        assert!(text.contains(r#"etcd_members{cluster="ns/a"} 3"#), "{text}");
        let open = metrics.encode_openmetrics().unwrap_or_default();
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    #[tokio::test]
    async fn observe_records_the_outcome_of_the_future() {
        let metrics = Metrics::new();
        let recorder = metrics.controller("widgets");
        assert_eq!(recorder.observe(async { Ok::<_, ()>(7) }).await, Ok(7));
        assert_eq!(
            recorder.observe(async { Err::<(), _>("no") }).await,
            Err("no")
        );
        let text = prometheus_text(&metrics);
        assert!(
            text.contains(r#"bosun_reconcile_total{controller="widgets",result="success"} 1"#)
                && text.contains(r#"bosun_reconcile_total{controller="widgets",result="error"} 1"#),
            "{text}"
        );
    }

    fn state(leader: Option<&str>, is_leader: bool) -> LeaderState {
        LeaderState {
            leader: leader.map(String::from),
            is_leader,
            ..LeaderState::default()
        }
    }

    #[test]
    fn leader_series_follow_the_election_state() {
        let metrics = Metrics::new();
        let mut series = metrics.leader_series("ns/lease");
        let gauge = r#"bosun_leader_is_leader{lease="ns/lease"}"#;
        let changes = r#"bosun_leader_transitions_total{lease="ns/lease"}"#;
        assert!(prometheus_text(&metrics).contains(&format!("{changes} 0")));
        let steps = [
            (Some("a"), false, 0, 0),
            (None, false, 0, 0),
            (Some("me"), true, 1, 1),
            (Some("me"), true, 1, 1),
            (Some("b"), false, 0, 2),
        ];
        for (leader, is_leader, gauge_value, changes_value) in steps {
            series.observe(&state(leader, is_leader));
            let text = prometheus_text(&metrics);
            assert!(
                text.contains(&format!("{gauge} {gauge_value}")),
                "{leader:?}: {text}"
            );
            assert!(
                text.contains(&format!("{changes} {changes_value}")),
                "{leader:?}: {text}"
            );
        }
        series.observe(&state(Some("me"), true));
        series.stopped();
        assert!(prometheus_text(&metrics).contains(&format!("{gauge} 0")));
    }

    #[tokio::test]
    async fn recording_ends_with_the_election() {
        let metrics = Metrics::new();
        let (sender, receiver) = watch::channel(state(Some("me"), true));
        let recording = tokio::spawn({
            let metrics = metrics.clone();
            async move { metrics.record_leader("ns/lease", receiver).await }
        });
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), recording)
            .await
            .expect("recording ends when the sender is dropped")
            .expect("no panic");
        let text = prometheus_text(&metrics);
        assert!(
            text.contains(r#"bosun_leader_is_leader{lease="ns/lease"} 0"#),
            "{text}"
        );
    }
}
