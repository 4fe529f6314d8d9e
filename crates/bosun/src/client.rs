//! The Kubernetes client of every subcommand that talks to a cluster: from
//! `--kubeconfig` when given, else `$KUBECONFIG`, `~/.kube/config` or the
//! in-cluster service account, as kubectl finds them.

use std::path::Path;

use anyhow::Context;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Builds the client.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a kubeconfig or in-cluster config")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}
