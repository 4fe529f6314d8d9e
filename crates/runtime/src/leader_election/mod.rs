//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of
//! client-go's `leaderelection` package and its `LeaseLock`, so that a bosun
//! operator and a Go controller could even share one Lease.
//!
//! - A candidate reads the Lease (creating it when absent) and takes it only
//!   when nobody holds it or when the holder's record has not changed for
//!   `leaseDurationSeconds` of *local* time: expiry never compares another
//!   machine's `renewTime` with our clock.
//! - Every write replaces the Lease at the `resourceVersion` last seen: of
//!   two candidates racing, one write lands and the other gets a 409 and
//!   stays a follower. Taking over bumps `leaseTransitions`.
//! - The leader renews every `retry_period`; if no renewal succeeds within
//!   `renew_deadline` of the last one, or the Lease names someone else, it
//!   steps down (fail-stop) and reports [`LostLeadership`].
//! - On cancellation, with [`ElectionConfig::release_on_cancel`], the leader
//!   first lets its work finish, then writes an empty holder so that another
//!   candidate takes over on its next attempt.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use bosun_runtime::leader_election::{ElectionConfig, LeaderElector};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut config = ElectionConfig::new("bosun-system", "bosun-operator", "pod-abc");
//! config.release_on_cancel = true;
//! let elector = LeaderElector::new(client, config)?;
//! let state = elector.subscribe(); // serve it, log it, ...
//! let shutdown = CancellationToken::new();
//! let ran = elector
//!     .run_while_leading(shutdown, |leading| async move {
//!         // run the controllers until `leading` is cancelled
//!         leading.cancelled().await;
//!     })
//!     .await?; // Err(LostLeadership): exit and let the pod restart
//! # let _ = (state, ran);
//! # Ok(())
//! # }
//! ```
//!
//! Not carried over from client-go: coordinated leader election
//! (`LeaseCandidate`), the health-check watchdog and metrics hooks, and
//! Kubernetes Events for "became leader".

mod config;
mod elector;
mod lock;
mod record;

pub use config::{
    ConfigError, DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD,
    ElectionConfig, JITTER_FACTOR,
};
pub use elector::{LeaderElector, LeaderState, LostLeadership};
