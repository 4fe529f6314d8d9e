//! `bosun operator`: runs bosun's controllers against the cluster of a
//! kubeconfig (or the in-cluster config) under one manager, until SIGTERM or
//! Ctrl-C: with leader election on a Lease when several replicas run, and
//! `/healthz`, `/readyz` and `/metrics` on one HTTP listener, and the etcd
//! API's admission webhooks over HTTPS on every replica.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bosun_etcd::backup::policy::StoragePolicy;
use bosun_etcd::controller::{Scope, Settings};
use bosun_etcd::telemetry::{EtcdMetrics, Telemetry};
use bosun_runtime::leader_election::ElectionConfig;
use bosun_runtime::manager::Manager;
use bosun_runtime::webhook::{ConfigurationNames, DEFAULT_PORT, WebhookCertificates};
use clap::Args;

use crate::duration::parse_duration;
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
    /// Serve the etcd API's admission webhooks [default: true in a pod,
    /// false elsewhere: the API server reaches the webhooks through the
    /// operator's Service, never a laptop].
    #[arg(long, value_name = "BOOL")]
    webhooks: Option<bool>,
    /// The port the webhooks are served on (HTTPS, every address).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    webhook_port: u16,
    /// The namespace of the webhook Service and certificate Secret
    /// [default: $POD_NAMESPACE, else bosun-system].
    #[arg(long, value_name = "NAMESPACE")]
    webhook_namespace: Option<String>,
    /// The Service the API server calls the webhooks through: the names of
    /// the self-managed serving certificate.
    #[arg(long, value_name = "NAME", default_value = bosun_etcd::admission::DEFAULT_SERVICE)]
    webhook_service: String,
    /// The Secret holding the webhooks' certificate (tls.crt, tls.key,
    /// ca.crt). The Lease holder creates and rotates it, and writes its CA
    /// into the webhook configuration's caBundle, unless
    /// --webhook-secret-provided says someone else does.
    #[arg(long, value_name = "NAME", default_value = bosun_etcd::admission::DEFAULT_SECRET)]
    webhook_secret: String,
    /// The webhook Secret is kept by someone else (cert-manager, an
    /// administrator), who also fills the configuration's caBundle: the
    /// operator only serves and reloads it, and never writes either.
    #[arg(long)]
    webhook_secret_provided: bool,
}

/// Whether this process runs in a pod: the kubelet sets this variable in
/// every container.
fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
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
            scope: args.watch_namespace.clone().map_or(Scope::All, Scope::Namespace),
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
        manager.add_controller(bosun_memcached::reconcile::CONTROLLER, {
            let (client, namespace) = (client.clone(), args.watch_namespace.clone());
            let metrics = metrics.controller(bosun_memcached::reconcile::CONTROLLER);
            move |stop| bosun_memcached::reconcile::run(client, namespace, stop, metrics)
        });
        let (storage, scope) = (settings.storage.clone(), settings.scope.clone());
        manager.add_controller("etcdrestore", {
            let (client, telemetry) = (client.clone(), Telemetry::new(&metrics, "etcdrestore", &etcd));
            move |stop| bosun_etcd::restore::reconcile::run(client, settings, stop, telemetry)
        });

        let webhook_stop = CancellationToken::new();
        let webhooks = if args.webhooks.unwrap_or_else(in_cluster) {
            let namespace = args
                .webhook_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "bosun-system".to_string());
            // One certificate for both APIs' webhooks: the same server
            // answers them, so every configuration carries the same CA.
            let names = {
                let (etcd, memcached) = (
                    bosun_etcd::admission::configuration_names(),
                    bosun_memcached::admission::configuration_names(),
                );
                ConfigurationNames {
                    validating: [etcd.validating, memcached.validating].concat(),
                    mutating: [etcd.mutating, memcached.mutating].concat(),
                }
            };
            let certificates = if args.webhook_secret_provided {
                WebhookCertificates::provided(client.clone(), &namespace, &args.webhook_secret, names)
            } else {
                WebhookCertificates::self_managed(
                    client.clone(),
                    &namespace,
                    &args.webhook_secret,
                    &args.webhook_service,
                    names,
                )
            };
            // Not ready until the served certificate's CA is in the
            // caBundle: the Service sends the API server only to replicas
            // it will trust.
            certificates.register_readiness(manager.health());
            // Only the Lease holder writes the Secret and the caBundle, so
            // that replicas never race each other with CAs of their own.
            if let Some(writer) = certificates.leader_writer() {
                manager.add_controller("webhook-certificates", move |stop| writer.run(stop));
            }
            let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.webhook_port));
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listening for webhooks on {address}"))?;
            // Restores and backups the handlers look up, read from caches
            // (the watches run on every replica, as the server does).
            let (lookups, watch) =
                bosun_etcd::admission::Lookups::watch(&client, &scope, webhook_stop.clone());
            let lookups_watch = tokio::spawn(watch);
            let judge = bosun_etcd::admission::Judge { policy: storage, scope, lookups };
            let server = bosun_memcached::admission::register(bosun_etcd::admission::server(judge))
                .with_metrics(manager.metrics());
            let replica = tokio::spawn(certificates.clone().run_replica(webhook_stop.clone()));
            let serving = certificates.serving();
            let stop = webhook_stop.clone();
            let serve = tokio::spawn(async move {
                // Without a server the replica never reports ready, which
                // the Deployment shows; the log says why.
                if let Err(error) = server.serve(listener, serving, stop).await {
                    tracing::error!(%error, "the webhook server stopped");
                }
            });
            tracing::info!(%address, secret = %args.webhook_secret, provided = args.webhook_secret_provided, "serving the etcd and Memcached admission webhooks");
            Some((replica, serve, lookups_watch))
        } else {
            tracing::info!("admission webhooks off (--webhooks=false, or not in a pod)");
            None
        };

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
            "bosun operator: EtcdCluster, EtcdBackup, EtcdRestore and Memcached controllers; health and metrics on http://{}",
            args.listen
        );
        let result = manager.run(shutdown).await;
        // The webhooks answer until the controllers have stopped: a
        // replica going away still admits what is in flight.
        webhook_stop.cancel();
        if let Some((replica, serve, lookups_watch)) = webhooks {
            let _ = tokio::join!(replica, serve, lookups_watch);
        }
        http_stop.cancel();
        let _ = http.await;
        result.context("the operator stopped")
    })
}
