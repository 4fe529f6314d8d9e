//! `bosun operator`: runs bosun's controllers against the cluster of a
//! kubeconfig (or the in-cluster config) under one manager, until SIGTERM or
//! Ctrl-C: with leader election on a Lease when several replicas run, and
//! `/healthz`, `/readyz` and `/metrics` on one HTTP listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bosun_etcd::backup::policy::StoragePolicy;
use bosun_etcd::controller::{Scope, Settings};
use bosun_etcd::telemetry::{EtcdMetrics, Telemetry};
use bosun_runtime::leader_election::ElectionConfig;
use bosun_runtime::manager::Manager;
use clap::Args;

use crate::leader_elector::parse_duration;
use tokio_util::sync::CancellationToken;

/// Options of `bosun operator`.
#[derive(Args)]
pub struct OperatorArgs {
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Run the controllers only while holding the Lease, so that one of
    /// several replicas acts. On by default everywhere: an operator started
    /// on a laptop against a cluster that runs one too must not act beside
    /// it. Turn off only where nothing else can run.
    #[arg(long, value_name = "BOOL")]
    leader_elect: Option<bool>,
    /// The Lease of leader election.
    #[arg(long, default_value = "bosun-operator")]
    lease_name: String,
    /// The Lease's namespace [default: $POD_NAMESPACE, else bosun-system].
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long the standbys honour a Lease that stopped being renewed
    /// (whole seconds): the longest hand-over after a leader dies.
    #[arg(long, value_name = "DURATION", default_value = "8s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How long the leader keeps failing to renew before it stops its controllers.
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// How often the leader renews and the standbys try to acquire: the
    /// longest hand-over after a leader releases the Lease on shutdown.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    retry_period: Duration,
    /// Watch the Lease while standing by, to take it at once when the
    /// leader releases it (false: only try every retry period, as client-go).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    watch_lease: bool,
    /// Watch and act in this namespace only [default: every namespace].
    #[arg(long, value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// A directory `file` backups and `file://` restores may use (repeat for
    /// more); none by default, so a tenant can never make the operator read
    /// or write elsewhere on the node. `bosun install --host-backup-dir`
    /// sets it.
    #[arg(long = "backup-dir", value_name = "DIR")]
    backup_dirs: Vec<PathBuf>,
    /// Let backups and restores without a credentials Secret use the
    /// operator's own cloud identity (its pod's workload identity, instance
    /// profile, ...). Off by default: any tenant could read the others'
    /// backups with it.
    #[arg(long)]
    allow_ambient_credentials: bool,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// This replica's identity in the election: the pod's name in a pod (unique
/// per replica), else the host name and process id.
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "bosun".to_string());
        format!("{host}-{}", std::process::id())
    })
}

/// Runs the operator.
pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let armed = bosun_etcd::failpoints::arm_from_env().map_err(anyhow::Error::msg)?;
    if !armed.is_empty() {
        tracing::warn!(
            ?armed,
            "crash points armed: this operator exits when it reaches one"
        );
    }
    runtime.block_on(async move {
        let client = crate::client::client(args.kubeconfig.as_deref()).await?;
        let mut manager = Manager::new();
        if args.leader_elect.unwrap_or(true) {
            let namespace = args
                .lease_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "bosun-system".to_string());
            let mut config = ElectionConfig::new(namespace, args.lease_name, identity());
            config.lease_duration = args.lease_duration;
            config.renew_deadline = args.renew_deadline;
            config.retry_period = args.retry_period;
            config.watch_lease = args.watch_lease;
            manager = manager
                .with_leader_election(client.clone(), config)
                .context("configuring leader election")?;
        }
        let metrics = manager.metrics().clone();
        let etcd = EtcdMetrics::register(&metrics);
        let settings = Settings {
            scope: args.watch_namespace.map_or(Scope::All, Scope::Namespace),
            storage: StoragePolicy {
                file_dirs: args.backup_dirs,
                ambient_credentials: args.allow_ambient_credentials,
            },
        };
        manager.add_controller("etcdcluster", {
            let (client, settings, telemetry) = (client.clone(), settings.clone(), Telemetry::new(&metrics, "etcdcluster", &etcd));
            move |stop| bosun_etcd::cluster::reconcile::run(client, settings, stop, telemetry)
        });
        manager.add_controller("etcdbackup", {
            let (client, settings, telemetry) = (client.clone(), settings.clone(), Telemetry::new(&metrics, "etcdbackup", &etcd));
            move |stop| bosun_etcd::backup::reconcile::run(client, settings, stop, telemetry)
        });
        manager.add_controller("etcdrestore", {
            let telemetry = Telemetry::new(&metrics, "etcdrestore", &etcd);
            move |stop| bosun_etcd::restore::reconcile::run(client, settings, stop, telemetry)
        });

        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let router = bosun_runtime::http::router(manager.health(), manager.metrics());
        let http_stop = CancellationToken::new();
        let http = tokio::spawn(bosun_runtime::http::serve(
            listener,
            router,
            http_stop.clone(),
        ));

        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                crate::signals::terminated().await;
                tracing::info!("shutting down");
                shutdown.cancel();
            }
        });
        tracing::info!(
            "bosun operator: EtcdCluster, EtcdBackup and EtcdRestore controllers; health and metrics on http://{}",
            args.listen
        );
        let result = manager.run(shutdown).await;
        http_stop.cancel();
        let _ = http.await;
        result.context("the operator stopped")
    })
}
