//! `bosun`: run etcd (and other stateful software) on Kubernetes.
//!
//! This file only parses the command line and hands each subcommand to its
//! module; the work lives in the library crates.

mod backup;
mod client;
mod crds;
mod dev;
mod duration;
mod install;
mod leader_elector;
mod operator;
mod restore_member;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// bosun: Kubernetes operators in Rust, starting with etcd.
#[derive(Parser)]
#[command(name = "bosun", version, about, long_about = None)]
#[command(propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print bosun's CustomResourceDefinitions as multi-document YAML.
    ///
    /// Apply them with `bosun crds | kubectl apply -f -`.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// A real single-node Kubernetes on this machine, built from upstream components.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Run the operator against the cluster of a kubeconfig (or in cluster).
    Operator(operator::OperatorArgs),
    /// Take part in a Lease leader election for a program that cannot (a sidecar).
    ///
    /// Serves /leader (who leads, as JSON), /healthz, /readyz and /metrics;
    /// gives the Lease back on SIGTERM.
    LeaderElector(leader_elector::LeaderElectorArgs),
    /// Restore a seed member's data from a snapshot (the init container of a restore).
    RestoreMember(restore_member::RestoreMemberArgs),
    /// Refuse to start a member on a volume without its data (the init container of a restarting member).
    ///
    /// Exits 3 when the data directory holds no etcd member.
    CheckMemberData(restore_member::CheckMemberDataArgs),
    /// Install the operator into a cluster: CRDs, RBAC and its Deployment.
    ///
    /// Applies deploy/ (built into this binary) with server-side apply,
    /// waits for the CRDs and the rollout; --dry-run only has the API
    /// server check it.
    Install(install::InstallArgs),
    /// Remove what `bosun install` installed, the CRDs too unless --keep-crds.
    Uninstall(install::UninstallArgs),
    /// An EtcdCluster's backups: list them, or take one now.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // kube's client logs every failed request at ERROR, which
                // is noise while the dev cluster polls a starting API server.
                tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
            }),
        )
        // Colour only on a terminal: in a pod, codes would litter the logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Crds { out_dir: None } => crds::print(&mut std::io::stdout().lock()),
        Command::Crds { out_dir: Some(dir) } => crds::write_dir(&dir),
        Command::Dev(command) => dev::run(command),
        Command::Operator(args) => operator::run(args),
        Command::LeaderElector(args) => leader_elector::run(args),
        Command::RestoreMember(args) => restore_member::run(args),
        Command::CheckMemberData(args) => restore_member::check_member_data(args),
        Command::Install(args) => install::install(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Backup(command) => backup::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
