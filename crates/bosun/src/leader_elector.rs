//! `bosun leader-elector`: the leader-election sidecar, for programs that
//! cannot take part in a Lease election themselves. It campaigns for the
//! Lease under the pod's name and tells the program next to it who leads:
//!
//! - `GET /leader` answers `{"leader", "isLeader", "leaseTransitions",
//!   "renewTime"}`;
//! - `/readyz` succeeds always, or with `--ready-only-when-leader` only on
//!   the leader, so that a readiness probe on it makes exactly one pod of a
//!   Deployment Ready (and a Service sends traffic to the leader alone);
//! - `/healthz` and `/metrics` as every bosun process serves them.
//!
//! On SIGTERM or Ctrl-C it gives the Lease back, so another replica leads
//! within a retry period. If it loses the Lease (another holder, or no
//! renewal within the renew deadline), it says so on `/leader` and campaigns
//! again: unlike the operator's manager, it runs no work of its own that
//! could outlive its term, so there is nothing a restart would make safer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::routing::get;
use bosun_runtime::health::Health;
use bosun_runtime::http;
use bosun_runtime::leader_election::{
    DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD, ElectionConfig,
    LeaderElector, LeaderState,
};
use bosun_runtime::metrics::Metrics;
use clap::Args;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::duration::parse_duration;

/// Options of `bosun leader-elector`.
#[derive(Args, Debug)]
pub struct LeaderElectorArgs {
    /// Name of the coordination.k8s.io/v1 Lease that the replicas share.
    #[arg(long, value_name = "NAME")]
    lease_name: String,
    /// Namespace of the Lease.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    lease_namespace: String,
    /// This candidate's identity, unique per replica [default: $POD_NAME, else the hostname].
    #[arg(long, value_name = "ID")]
    identity: Option<String>,
    /// Where to serve /leader, /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0:4040")]
    listen: SocketAddr,
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Let /readyz succeed only while this replica leads.
    #[arg(long)]
    ready_only_when_leader: bool,
    /// How long the others honour a Lease that stopped being renewed (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How long the leader keeps failing to renew before it steps down.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// How often the leader renews and the others try to acquire.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
}

impl LeaderElectorArgs {
    /// The election these options describe, released on shutdown. The
    /// identity is `--identity`, else `pod_name`, else `hostname`.
    fn election(
        &self,
        pod_name: Option<String>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> anyhow::Result<ElectionConfig> {
        let identity = self
            .identity
            .clone()
            .or(pod_name)
            .filter(|id| !id.is_empty())
            .or_else(hostname)
            .context("no --identity, no $POD_NAME, and the hostname cannot be read")?;
        let mut config = ElectionConfig::new(&self.lease_namespace, &self.lease_name, identity);
        config.lease_duration = self.lease_duration;
        config.renew_deadline = self.renew_deadline;
        config.retry_period = self.retry_period;
        config.release_on_cancel = true;
        config.validate()?;
        Ok(config)
    }
}

// The defaults above are client-go's; keep them in step with the runtime's.
const _: () = {
    assert!(DEFAULT_LEASE_DURATION.as_secs() == 15);
    assert!(DEFAULT_RENEW_DEADLINE.as_secs() == 10);
    assert!(DEFAULT_RETRY_PERIOD.as_secs() == 2);
};

/// Runs the sidecar until SIGTERM or Ctrl-C.
pub fn run(args: LeaderElectorArgs) -> anyhow::Result<()> {
    let config = args.election(std::env::var("POD_NAME").ok(), || {
        nix::unistd::gethostname().ok()?.into_string().ok()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = crate::client::client(args.kubeconfig.as_deref()).await?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                crate::signals::terminated().await;
                info!("shutting down: releasing the Lease");
                shutdown.cancel();
            }
        });

        // What the endpoints show: the state of the current elector, carried
        // over from one elector to the next when the sidecar campaigns again.
        let published = watch::Sender::new(LeaderState::default());
        let metrics = Metrics::new();
        let health = Health::new();
        if args.ready_only_when_leader {
            let state = published.subscribe();
            health.add_readiness_check("leader", move || leader_readiness(&state.borrow()));
        }
        let state = published.subscribe();
        let router = http::router(&health, &metrics).route(
            "/leader",
            get(move || {
                let current = state.borrow().clone();
                async move { Json(current) }
            }),
        );
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(listener, router, server_stop.clone()));
        let lease = format!("{}/{}", config.namespace, config.lease_name);
        info!(%lease, identity = %config.identity, listen = %args.listen, "leader-elector started");
        let recording = tokio::spawn({
            let metrics = metrics.clone();
            let state = published.subscribe();
            async move { metrics.record_leader(&lease, state).await }
        });

        let result = campaign(client, config, &published, shutdown).await;
        drop(published);
        server_stop.cancel();
        let served = server.await.context("the HTTP server panicked")?;
        recording.await.context("the metrics recorder panicked")?;
        result?;
        served.context("serving HTTP")
    })
}

/// Stands for election until `shutdown` fires, standing again whenever
/// leadership is lost, and publishes every state of every elector.
async fn campaign(
    client: Client,
    config: ElectionConfig,
    published: &watch::Sender<LeaderState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let elector = LeaderElector::new(client.clone(), config.clone())?;
        let mut state = elector.subscribe();
        let forward = async {
            // A new elector starts from an empty state; the previous one's
            // last state stays published until this one learns more.
            while state.changed().await.is_ok() {
                published.send_replace(state.borrow_and_update().clone());
            }
        };
        let (result, ()) = tokio::join!(elector.run(shutdown.clone()), forward);
        match result {
            Ok(()) => return Ok(()),
            Err(lost) => warn!(error = %lost, "lost leadership; campaigning again"),
        }
    }
}

/// The `leader` readiness check of `--ready-only-when-leader`.
fn leader_readiness(state: &LeaderState) -> Result<(), String> {
    if state.is_leader {
        return Ok(());
    }
    Err(match &state.leader {
        Some(leader) => format!("not the leader; {leader} leads"),
        None => "not the leader; nobody leads yet".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LeaderElectorArgs,
    }

    fn parse(flags: &[&str]) -> Result<LeaderElectorArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("leader-elector").chain(flags.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn client_go_defaults_and_release_on_shutdown() {
        let args = parse(&["--lease-name", "app"]).expect("valid flags");
        assert_eq!(args.listen, "0.0.0.0:4040".parse().expect("address"));
        assert!(!args.ready_only_when_leader);
        let config = args
            .election(Some("pod-1".into()), || None)
            .expect("valid election");
        assert_eq!(config.lease_name, "app");
        assert_eq!(config.identity, "pod-1");
        assert_eq!(config.lease_duration, DEFAULT_LEASE_DURATION);
        assert_eq!(config.renew_deadline, DEFAULT_RENEW_DEADLINE);
        assert_eq!(config.retry_period, DEFAULT_RETRY_PERIOD);
        assert!(config.release_on_cancel);
    }

    #[test]
    fn identity_is_the_flag_then_the_pod_name_then_the_hostname() {
        let flagged = parse(&["--lease-name", "app", "--identity", "me"]).expect("flags");
        let identity = |args: &LeaderElectorArgs, pod: Option<&str>, host: Option<&str>| {
            args.election(pod.map(String::from), || host.map(String::from))
                .map(|c| c.identity)
                .ok()
        };
        assert_eq!(
            identity(&flagged, Some("pod"), Some("host")).as_deref(),
            Some("me")
        );
        let bare = parse(&["--lease-name", "app"]).expect("flags");
        assert_eq!(
            identity(&bare, Some("pod"), Some("host")).as_deref(),
            Some("pod")
        );
        assert_eq!(
            identity(&bare, Some(""), Some("host")).as_deref(),
            Some("host")
        );
        assert_eq!(identity(&bare, None, Some("host")).as_deref(), Some("host"));
        assert_eq!(identity(&bare, None, None), None);
    }

    #[test]
    fn durations_are_checked_against_client_gos_rules() {
        let args = parse(&[
            "--lease-name",
            "app",
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "300ms",
        ])
        .expect("flags");
        let config = args.election(Some("pod".into()), || None).expect("valid");
        assert_eq!(config.retry_period, Duration::from_millis(300));

        let args = parse(&["--lease-name", "app", "--renew-deadline", "20s"]).expect("flags");
        let error = args
            .election(Some("pod".into()), || None)
            .expect_err("renew deadline above lease duration");
        assert!(error.to_string().contains("renew_deadline"), "{error}");
        assert!(parse(&["--lease-name", "app", "--retry-period", "2"]).is_err());
        assert!(parse(&[]).is_err(), "--lease-name is required");
    }

    #[test]
    fn only_the_leader_is_ready_when_asked() {
        let mut state = LeaderState::default();
        assert_eq!(
            leader_readiness(&state),
            Err("not the leader; nobody leads yet".to_string())
        );
        state.leader = Some("other".into());
        assert_eq!(
            leader_readiness(&state),
            Err("not the leader; other leads".to_string())
        );
        state.leader = Some("me".into());
        state.is_leader = true;
        assert_eq!(leader_readiness(&state), Ok(()));
    }
}
