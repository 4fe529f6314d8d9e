//! `bosun`: run etcd (and other stateful software) on Kubernetes.
//!
//! This file only parses the command line and hands each subcommand to its
//! module; the work lives in the library crates.

mod crds;

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
    /// Run a real single-node Kubernetes on this machine (not yet implemented).
    Dev,
    /// Run the operator against the cluster of the current kubeconfig (not yet implemented).
    Operator,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out_dir: None } => crds::print(&mut std::io::stdout().lock()),
        Command::Crds { out_dir: Some(dir) } => crds::write_dir(&dir),
        Command::Dev => not_yet("dev"),
        Command::Operator => not_yet("operator"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosun: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn not_yet(command: &str) -> anyhow::Result<()> {
    anyhow::bail!("`bosun {command}` is not yet implemented")
}
