//! The etcd operator's own Prometheus series, registered on the runtime's
//! registry beside the reconcile and leader series:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `bosun_etcd_members` | gauge | `namespace`, `cluster` |
//! | `bosun_etcd_healthy_members` | gauge | `namespace`, `cluster` |
//! | `bosun_etcd_leader_changes_total` | counter | `namespace`, `cluster` |
//! | `bosun_etcd_db_size_bytes` | gauge (largest member) | `namespace`, `cluster` |
//! | `bosun_etcd_backup_last_success_timestamp_seconds` | gauge | `namespace`, `backup` |
//! | `bosun_etcd_backup_duration_seconds` | gauge (last success) | `namespace`, `backup` |
//! | `bosun_etcd_backup_size_bytes` | gauge (last success) | `namespace`, `backup` |

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bosun_runtime::metrics::{Metrics, ReconcileMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of a per-cluster series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The EtcdCluster's namespace.
    pub namespace: String,
    /// Its name.
    pub cluster: String,
}

/// Labels of a per-backup series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabels {
    /// The EtcdBackup's namespace.
    pub namespace: String,
    /// Its name.
    pub backup: String,
}

/// What a controller records: its reconcile figures and the etcd series.
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// Reconcile totals and durations of this controller.
    pub reconcile: ReconcileMetrics,
    /// The etcd series.
    pub etcd: EtcdMetrics,
}

impl Telemetry {
    /// The telemetry of controller `name` on `metrics`' registry.
    pub fn new(metrics: &Metrics, name: &str, etcd: &EtcdMetrics) -> Self {
        Telemetry {
            reconcile: metrics.controller(name),
            etcd: etcd.clone(),
        }
    }
}

/// The etcd series. Cheap to clone; every clone records into the same series.
#[derive(Clone, Debug, Default)]
pub struct EtcdMetrics {
    members: Family<ClusterLabels, Gauge>,
    healthy_members: Family<ClusterLabels, Gauge>,
    leader_changes: Family<ClusterLabels, Counter>,
    db_size: Family<ClusterLabels, Gauge>,
    last_leader: Arc<Mutex<HashMap<ClusterLabels, u64>>>,
    /// Every cluster with series, so that those of deleted clusters can be
    /// found and removed.
    clusters: Arc<Mutex<HashSet<ClusterLabels>>>,
    backup_last_success: Family<BackupLabels, Gauge<f64, AtomicU64>>,
    backup_duration: Family<BackupLabels, Gauge<f64, AtomicU64>>,
    backup_size: Family<BackupLabels, Gauge>,
}

impl EtcdMetrics {
    /// Creates the series and registers them on `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = EtcdMetrics::default();
        metrics.register(
            "bosun_etcd_members",
            "Members in etcd's member list",
            this.members.clone(),
        );
        metrics.register(
            "bosun_etcd_healthy_members",
            "Members that answer with a leader and no alarm",
            this.healthy_members.clone(),
        );
        metrics.register(
            "bosun_etcd_leader_changes",
            "Changes of the leader the operator observed",
            this.leader_changes.clone(),
        );
        metrics.register(
            "bosun_etcd_db_size_bytes",
            "Database size of the cluster's largest member, in bytes",
            this.db_size.clone(),
        );
        metrics.register(
            "bosun_etcd_backup_last_success_timestamp_seconds",
            "Unix time of the EtcdBackup's last verified backup",
            this.backup_last_success.clone(),
        );
        metrics.register(
            "bosun_etcd_backup_duration_seconds",
            "Duration of the EtcdBackup's last verified backup",
            this.backup_duration.clone(),
        );
        metrics.register(
            "bosun_etcd_backup_size_bytes",
            "Size of the EtcdBackup's last verified backup",
            this.backup_size.clone(),
        );
        this
    }

    /// Records one observation of a cluster.
    pub fn observe_cluster(
        &self,
        labels: &ClusterLabels,
        members: usize,
        healthy: usize,
        leader: Option<u64>,
        db_size: i64,
    ) {
        if let Ok(mut clusters) = self.clusters.lock() {
            clusters.insert(labels.clone());
        }
        self.members
            .get_or_create(labels)
            .set(i64::try_from(members).unwrap_or(i64::MAX));
        self.healthy_members
            .get_or_create(labels)
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        self.db_size.get_or_create(labels).set(db_size);
        // The counter exists (at 0) from the first observation, so that
        // `increase()` over it works before the first change.
        let changes = self.leader_changes.get_or_create(labels);
        if let Some(leader) = leader.filter(|l| *l != 0)
            && let Ok(mut last) = self.last_leader.lock()
        {
            let previous = last.insert(labels.clone(), leader);
            if previous.is_some_and(|p| p != leader) {
                changes.inc();
            }
        }
    }

    /// Forgets a deleted cluster's series.
    pub fn forget_cluster(&self, labels: &ClusterLabels) {
        if let Ok(mut clusters) = self.clusters.lock() {
            clusters.remove(labels);
        }
        self.members.remove(labels);
        self.healthy_members.remove(labels);
        self.leader_changes.remove(labels);
        self.db_size.remove(labels);
        if let Ok(mut last) = self.last_leader.lock() {
            last.remove(labels);
        }
    }

    /// Forgets the series of every cluster for which `exists` says no.
    pub fn forget_clusters_unless(&self, exists: impl Fn(&ClusterLabels) -> bool) {
        let gone: Vec<ClusterLabels> = match self.clusters.lock() {
            Ok(clusters) => clusters.iter().filter(|l| !exists(l)).cloned().collect(),
            Err(_) => return,
        };
        for labels in &gone {
            self.forget_cluster(labels);
        }
    }

    /// Records a verified backup.
    pub fn backup_succeeded(
        &self,
        labels: &BackupLabels,
        completed_unix: f64,
        seconds: f64,
        size: i64,
    ) {
        self.backup_last_success
            .get_or_create(labels)
            .set(completed_unix);
        self.backup_duration.get_or_create(labels).set(seconds);
        self.backup_size.get_or_create(labels).set(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_changes_count_changes_not_observations() {
        let metrics = Metrics::new();
        let etcd = EtcdMetrics::register(&metrics);
        let labels = ClusterLabels {
            namespace: "ns".into(),
            cluster: "db".into(),
        };
        for leader in [Some(1), Some(1), None, Some(2), Some(2), Some(1)] {
            etcd.observe_cluster(&labels, 3, 3, leader, 4096);
        }
        let text = metrics.encode_prometheus_text().expect("encode");
        assert!(
            text.contains(r#"bosun_etcd_leader_changes_total{namespace="ns",cluster="db"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bosun_etcd_members{namespace="ns",cluster="db"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bosun_etcd_db_size_bytes{namespace="ns",cluster="db"} 4096"#),
            "{text}"
        );
        etcd.forget_cluster(&labels);
        let text = metrics.encode_prometheus_text().expect("encode");
        assert!(!text.contains(r#"cluster="db""#), "{text}");
    }

    #[test]
    fn the_series_of_clusters_that_no_longer_exist_are_forgotten() {
        let metrics = Metrics::new();
        let etcd = EtcdMetrics::register(&metrics);
        let labels = |cluster: &str| ClusterLabels {
            namespace: "ns".into(),
            cluster: cluster.into(),
        };
        etcd.observe_cluster(&labels("kept"), 1, 1, Some(7), 10);
        etcd.observe_cluster(&labels("gone"), 1, 1, None, 10);
        etcd.forget_clusters_unless(|l| l.cluster == "kept");
        let text = metrics.encode_prometheus_text().expect("encode");
        assert!(text.contains(r#"cluster="kept""#), "{text}");
        assert!(!text.contains(r#"cluster="gone""#), "{text}");
    }

    #[test]
    fn backups_record_their_last_success() {
        let metrics = Metrics::new();
        let etcd = EtcdMetrics::register(&metrics);
        let labels = BackupLabels {
            namespace: "ns".into(),
            backup: "nightly".into(),
        };
        etcd.backup_succeeded(&labels, 1_795_000_000.0, 2.5, 20_512);
        let text = metrics.encode_prometheus_text().expect("encode");
        assert!(
            text.contains(r#"bosun_etcd_backup_size_bytes{namespace="ns",backup="nightly"} 20512"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"bosun_etcd_backup_duration_seconds{namespace="ns",backup="nightly"} 2.5"#
            ),
            "{text}"
        );
    }
}
