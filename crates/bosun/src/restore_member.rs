//! The init containers of member pods: `bosun restore-member` restores a
//! seed from a backup (see `bosun_etcd::restore::member`), and `bosun
//! check-member-data` refuses to restart a member on a volume without its
//! data (see `bosun_etcd::cluster::member_data`). On failure each writes
//! its message where Kubernetes reads a container's termination message,
//! so the operator can put it into the cluster's conditions.

use std::path::PathBuf;

use anyhow::Context;
use bosun_api::restore::SnapshotLocation;
use bosun_etcd::cluster::member_data::{self, MemberDataError};
use bosun_etcd::cluster::objects::DATA_LOST_EXIT_CODE;
use bosun_etcd::restore::member::{self, Outcome, RestoreMember};
use clap::Args;

/// Where Kubernetes reads a container's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Options of `bosun restore-member`.
#[derive(Args)]
pub struct RestoreMemberArgs {
    /// The snapshot: s3://bucket/key, gs://bucket/key, azure://account/container/key or file:///path.
    #[arg(long, value_name = "URL")]
    source_url: String,
    /// The SHA-256 the snapshot must have (lowercase hex).
    #[arg(long)]
    sha256: Option<String>,
    /// S3 endpoint (S3-compatible stores).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region.
    #[arg(long)]
    region: Option<String>,
    /// A directory with the credentials Secret's keys as files.
    #[arg(long, value_name = "DIR")]
    credentials_dir: Option<PathBuf>,
    /// etcd's data directory to restore into.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The member's name.
    #[arg(long)]
    name: String,
    /// The member's peer URL.
    #[arg(long, value_name = "URL")]
    peer_url: String,
    /// The restored cluster's new token.
    #[arg(long)]
    cluster_token: String,
    /// The etcdutl to run (of the cluster's etcd version).
    #[arg(long, value_name = "PATH", default_value = "etcdutl")]
    etcdutl: PathBuf,
}

/// Runs the restore.
pub fn run(args: RestoreMemberArgs) -> anyhow::Result<()> {
    let options = RestoreMember {
        source: SnapshotLocation {
            url: args.source_url,
            credentials_secret: None,
            endpoint: args.endpoint,
            region: args.region,
            sha256: args.sha256,
        },
        credentials_dir: args.credentials_dir,
        data_dir: args.data_dir,
        name: args.name,
        peer_url: args.peer_url,
        cluster_token: args.cluster_token,
        etcdutl: args.etcdutl,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(member::run(&options)) {
        Ok(Outcome::AlreadyRestored) => {
            tracing::info!(
                "{} already holds a member; nothing to restore",
                options.data_dir.display()
            );
            Ok(())
        }
        Ok(Outcome::Restored { size }) => {
            tracing::info!(
                "restored {} ({size} bytes) into {}",
                options.source.url,
                options.data_dir.display()
            );
            Ok(())
        }
        Err(e) => {
            let message = format!("restoring {}: {e}", options.source.url);
            // Best effort: outside a pod there is no termination log.
            let _ = std::fs::write(TERMINATION_LOG, &message);
            Err(anyhow::anyhow!(message))
        }
    }
}

/// Options of `bosun check-member-data`.
#[derive(Args)]
pub struct CheckMemberDataArgs {
    /// etcd's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

/// Checks the data directory; exits [`DATA_LOST_EXIT_CODE`] when it holds no
/// member, so the operator can tell lost data from any other failure.
pub fn check_member_data(args: CheckMemberDataArgs) -> anyhow::Result<()> {
    match member_data::check(&args.data_dir) {
        Ok(()) => {
            tracing::info!("{} holds the member's data", args.data_dir.display());
            Ok(())
        }
        Err(e @ MemberDataError::Missing { .. }) => {
            let message = e.to_string();
            let _ = std::fs::write(TERMINATION_LOG, &message);
            eprintln!("bosun: {message}");
            std::process::exit(DATA_LOST_EXIT_CODE);
        }
        Err(e) => {
            let message = e.to_string();
            let _ = std::fs::write(TERMINATION_LOG, &message);
            Err(anyhow::anyhow!(message))
        }
    }
}
