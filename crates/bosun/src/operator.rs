//! `bosun operator`: runs bosun's controllers against the cluster of a
//! kubeconfig (or the in-cluster config), until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

/// Options of `bosun operator`.
#[derive(Args)]
pub struct OperatorArgs {
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

/// Runs the operator.
pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await?
            }
            None => kube::Config::infer()
                .await
                .context("finding a kubeconfig or in-cluster config")?,
        };
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
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
            "bosun operator: running the EtcdCluster, EtcdBackup and EtcdRestore controllers"
        );
        tokio::join!(
            bosun_etcd::cluster::reconcile::run(client.clone(), shutdown.clone()),
            bosun_etcd::backup::reconcile::run(client.clone(), shutdown.clone()),
            bosun_etcd::restore::reconcile::run(client, shutdown),
        );
        Ok(())
    })
}
