//! The manager: runs every controller of a process under one shutdown
//! signal, and, when leader election is configured, only while this process
//! leads (controller-runtime's `Manager`, reduced to that).
//!
//! - Every controller is a named future factory: given a token, it returns
//!   a future that runs the controller until the token is cancelled.
//! - Without election, the controllers start at once. With it, they start
//!   when this process acquires the Lease.
//! - Graceful shutdown (the token passed to [`Manager::run`] cancelled)
//!   stops the controllers, waits for them (at most the stop timeout), then
//!   releases the Lease so that a standby takes over at once.
//! - Leadership lost (renewal failed, or the Lease taken): the controllers
//!   are stopped and [`Manager::run`] returns
//!   [`ManagerError::LostLeadership`]. The process should exit non-zero and
//!   let its Deployment restart it: client-go's fail-stop default, since a
//!   fresh process is the simplest way to be sure nothing of the old term
//!   keeps acting.
//! - A controller that returns (or panics) before it was told to stop is a
//!   failure too: the others are stopped and [`Manager::run`] says which.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::health::Health;
use crate::leader_election::{
    ConfigError, ElectionConfig, LeaderElector, LeaderState, LostLeadership,
};
use crate::metrics::Metrics;

/// How long controllers may take to stop after being told to, by default:
/// with the Lease released after it, this fits in Kubernetes' default
/// 30-second termination grace period.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The name of the readiness check the manager registers.
pub const READINESS_CHECK: &str = "manager";

type ControllerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type StartController = Box<dyn FnOnce(CancellationToken) -> ControllerFuture + Send>;

/// A controller as the manager holds it until it starts it.
struct NamedController {
    name: String,
    start: StartController,
}

/// Where a manager's run is, for its readiness check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// [`Manager::run`] has not been called.
    Created,
    /// Campaigning for the Lease: a standby, ready to take over.
    Campaigning,
    /// The controllers run.
    Running,
    /// The controllers have been told to stop.
    Stopping,
    /// The run is over.
    Stopped,
}

impl Phase {
    /// The manager's readiness: a standby replica counts as ready, so that
    /// a rollout of a Deployment with election does not wait for
    /// leadership.
    fn readiness(self) -> Result<(), String> {
        match self {
            Phase::Campaigning | Phase::Running => Ok(()),
            Phase::Created => Err("the controllers have not been started".into()),
            Phase::Stopping => Err("the controllers are stopping".into()),
            Phase::Stopped => Err("the controllers have stopped".into()),
        }
    }
}

#[derive(Clone)]
struct SharedPhase(Arc<Mutex<Phase>>);

impl SharedPhase {
    fn set(&self, phase: Phase) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    fn get(&self) -> Phase {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`Manager::run`] ended other than by a graceful shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// This process stopped leading without being asked to; its controllers
    /// were stopped. Exit and let the process be restarted.
    #[error("stopped the controllers: {0}")]
    LostLeadership(#[from] LostLeadership),
    /// A controller's future returned before the controllers were told to
    /// stop; the others were stopped.
    #[error("controller {name} stopped on its own; stopped the others")]
    ControllerStopped {
        /// The controller's name.
        name: String,
    },
    /// A controller panicked; the others were stopped.
    #[error("controller {name} panicked: {message}; stopped the others")]
    ControllerPanicked {
        /// The controller's name.
        name: String,
        /// The panic's message, when it had one.
        message: String,
    },
    /// Controllers did not stop within the stop timeout and were aborted.
    #[error("controllers {controllers:?} did not stop within {timeout:?}; aborted them")]
    StopTimedOut {
        /// The controllers that were still running.
        controllers: Vec<String>,
        /// The stop timeout.
        timeout: Duration,
    },
}

/// Runs a process's controllers under one shutdown signal, optionally only
/// while leading a Lease election.
///
/// ```no_run
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use bosun_runtime::leader_election::ElectionConfig;
/// use bosun_runtime::{http, manager::Manager};
/// use tokio_util::sync::CancellationToken;
///
/// let election = ElectionConfig::new("bosun-system", "bosun-operator", "pod-abc");
/// let mut manager = Manager::new().with_leader_election(client.clone(), election)?;
/// manager.add_controller("widgets", move |stop: CancellationToken| async move {
///     // e.g. kube's Controller::new(..).graceful_shutdown_on(stop.cancelled_owned()).run(..)
///     stop.cancelled().await;
/// });
///
/// let shutdown = CancellationToken::new(); // cancelled on SIGTERM
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// let server_stop = CancellationToken::new();
/// let server = tokio::spawn(http::serve(
///     listener,
///     http::router(manager.health(), manager.metrics()),
///     server_stop.clone(),
/// ));
/// let result = manager.run(shutdown).await;
/// server_stop.cancel();
/// server.await??;
/// result?; // Err: exit non-zero, let the Deployment restart the pod
/// # Ok(())
/// # }
/// ```
pub struct Manager {
    controllers: Vec<NamedController>,
    elector: Option<LeaderElector>,
    health: Health,
    metrics: Metrics,
    phase: SharedPhase,
    stop_timeout: Duration,
}

impl Default for Manager {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.controllers.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("Manager")
            .field("controllers", &names)
            .field("election", &self.elector.as_ref().map(|e| e.config()))
            .field("phase", &self.phase.get())
            .field("stop_timeout", &self.stop_timeout)
            .finish()
    }
}

impl Manager {
    /// A manager without controllers or election, with a fresh [`Health`]
    /// (holding its own readiness check, [`READINESS_CHECK`]) and a fresh
    /// [`Metrics`] registry.
    pub fn new() -> Self {
        let health = Health::new();
        let phase = SharedPhase(Arc::new(Mutex::new(Phase::Created)));
        health.add_readiness_check(READINESS_CHECK, {
            let phase = phase.clone();
            move || phase.get().readiness()
        });
        Manager {
            controllers: Vec::new(),
            elector: None,
            health,
            metrics: Metrics::new(),
            phase,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Runs the controllers only while this process leads the election that
    /// `config` describes. The manager releases the Lease on graceful
    /// shutdown, after its controllers stopped, whatever
    /// `config.release_on_cancel` said. Fails when `config` breaks
    /// client-go's timing rules.
    pub fn with_leader_election(
        mut self,
        client: Client,
        mut config: ElectionConfig,
    ) -> Result<Self, ConfigError> {
        config.release_on_cancel = true;
        self.elector = Some(LeaderElector::new(client, config)?);
        Ok(self)
    }

    /// How long controllers may take to stop once told to before they are
    /// aborted ([`DEFAULT_STOP_TIMEOUT`] unless set). With election, the
    /// Lease stays renewed meanwhile.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Adds a controller. `controller` is called once, when the controllers
    /// start, with a token that is cancelled when they must stop; its future
    /// must run until then and return soon after. `name` appears in logs and
    /// errors; use the same name with [`Metrics::controller`].
    pub fn add_controller<F, Fut>(&mut self, name: impl Into<String>, controller: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.controllers.push(NamedController {
            name: name.into(),
            start: Box::new(move |stop| Box::pin(controller(stop))),
        });
    }

    /// The process's health checks, to serve and to add checks to.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The process's metrics registry, to serve and to add metrics to. The
    /// manager records the leader-election series in it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The election as this process sees it, when election is configured.
    pub fn leader_state(&self) -> Option<watch::Receiver<LeaderState>> {
        self.elector.as_ref().map(LeaderElector::subscribe)
    }

    /// Runs the controllers (while leading, with election) until `shutdown`
    /// is cancelled; see the [module documentation](self).
    ///
    /// Returns `Ok(())` after a graceful shutdown: controllers stopped and,
    /// with election, the Lease released. Any error means the controllers
    /// were stopped for another reason, and the process should exit
    /// non-zero.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ManagerError> {
        let Manager {
            controllers,
            elector,
            metrics,
            phase,
            stop_timeout,
            ..
        } = self;
        let Some(elector) = elector else {
            let result = run_controllers(controllers, shutdown, &phase, stop_timeout).await;
            phase.set(Phase::Stopped);
            return result;
        };

        let lease = elector.config().lease_key();
        let state = elector.subscribe();
        phase.set(Phase::Campaigning);
        let election = elector.run_while_leading(shutdown, |leading| {
            run_controllers(controllers, leading, &phase, stop_timeout)
        });
        // The recorder ends when the elector's run ends and closes `state`.
        let (outcome, ()) = tokio::join!(election, metrics.record_leader(&lease, state));
        phase.set(Phase::Stopped);
        match outcome {
            // Cancelled before leading, or stopped gracefully and released.
            Ok(None) => Ok(()),
            Ok(Some(result)) => result,
            Err(lost) => {
                error!(%lease, error = %lost, "leadership lost; controllers stopped");
                Err(ManagerError::LostLeadership(lost))
            }
        }
    }
}

/// Starts every controller, runs them until `stop` fires or one of them
/// ends, then stops them all, waiting at most `stop_timeout`.
async fn run_controllers(
    controllers: Vec<NamedController>,
    stop: CancellationToken,
    phase: &SharedPhase,
    stop_timeout: Duration,
) -> Result<(), ManagerError> {
    // Cancelled on `stop`, and also when a controller ends on its own.
    let all = stop.child_token();
    let mut tasks = JoinSet::new();
    let mut running = HashMap::new();
    for controller in controllers {
        let handle = tasks.spawn((controller.start)(all.clone()));
        running.insert(handle.id(), controller.name);
    }
    phase.set(Phase::Running);
    info!(controllers = ?running.values().collect::<Vec<_>>(), "started the controllers");

    let mut failure = None;
    tokio::select! {
        // Biased: a controller that returns because it was told to stop is
        // ready at the same moment as the cancellation, and an unbiased
        // select could take that for a controller that ended on its own.
        biased;
        () = all.cancelled() => {}
        Some(joined) = tasks.join_next_with_id() => {
            let (id, result) = split(joined);
            let name = running.remove(&id).unwrap_or_default();
            failure = Some(ended_early(name, result));
        }
    }
    phase.set(Phase::Stopping);
    all.cancel();

    let deadline = Instant::now() + stop_timeout;
    loop {
        match timeout_at(deadline, tasks.join_next_with_id()).await {
            Ok(Some(joined)) => {
                let (id, result) = split(joined);
                let name = running.remove(&id).unwrap_or_default();
                if let Err(panic) = result {
                    let error = panicked(name, panic);
                    error!(%error, "while stopping");
                    failure.get_or_insert(error);
                }
            }
            Ok(None) => break,
            Err(_) => {
                let mut stuck: Vec<String> = running.into_values().collect();
                stuck.sort();
                warn!(controllers = ?stuck, timeout = ?stop_timeout, "controllers did not stop in time; aborting them");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                failure.get_or_insert(ManagerError::StopTimedOut {
                    controllers: stuck,
                    timeout: stop_timeout,
                });
                break;
            }
        }
    }
    info!("the controllers stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn split(
    joined: Result<(tokio::task::Id, ()), JoinError>,
) -> (tokio::task::Id, Result<(), JoinError>) {
    match joined {
        Ok((id, ())) => (id, Ok(())),
        Err(error) => (error.id(), Err(error)),
    }
}

/// The error for a controller that ended before it was told to stop.
fn ended_early(name: String, result: Result<(), JoinError>) -> ManagerError {
    let error = match result {
        Ok(()) => ManagerError::ControllerStopped { name },
        Err(panic) => panicked(name, panic),
    };
    error!(%error, "stopping the controllers");
    error
}

fn panicked(name: String, error: JoinError) -> ManagerError {
    let message = match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(error) => error.to_string(),
    };
    ManagerError::ControllerPanicked { name, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const WITHIN: Duration = Duration::from_secs(5);

    #[test]
    fn a_standby_is_ready_and_a_stopping_manager_is_not() {
        assert!(Phase::Created.readiness().is_err());
        assert!(Phase::Campaigning.readiness().is_ok());
        assert!(Phase::Running.readiness().is_ok());
        assert!(Phase::Stopping.readiness().is_err());
        assert!(Phase::Stopped.readiness().is_err());
    }

    /// A controller that counts how many of its kind run, until stopped.
    fn counting(
        running: &Arc<AtomicUsize>,
    ) -> impl FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static
    {
        let running = running.clone();
        move |stop| {
            Box::pin(async move {
                running.fetch_add(1, Ordering::SeqCst);
                stop.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn without_election_controllers_run_until_shutdown() {
        let running = Arc::new(AtomicUsize::new(0));
        let mut manager = Manager::new();
        manager.add_controller("a", counting(&running));
        manager.add_controller("b", counting(&running));
        let health = manager.health().clone();
        assert!(!health.readiness().passed(), "not ready before run");

        let shutdown = CancellationToken::new();
        let run = tokio::spawn(manager.run(shutdown.clone()));
        tokio::time::timeout(WITHIN, async {
            while running.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both controllers start");
        assert!(health.readiness().passed(), "{}", health.readiness());

        shutdown.cancel();
        let result = tokio::time::timeout(WITHIN, run)
            .await
            .expect("the run ends after shutdown")
            .expect("no panic");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(running.load(Ordering::SeqCst), 0, "both stopped");
        assert!(!health.readiness().passed(), "not ready after the run");
    }

    #[tokio::test]
    async fn a_controller_that_returns_stops_the_others() {
        let running = Arc::new(AtomicUsize::new(0));
        let mut manager = Manager::new();
        manager.add_controller("steady", counting(&running));
        manager.add_controller("quitter", |_stop| async {});
        let result = tokio::time::timeout(WITHIN, manager.run(CancellationToken::new()))
            .await
            .expect("the run ends without shutdown");
        assert!(
            matches!(&result, Err(ManagerError::ControllerStopped { name }) if name == "quitter"),
            "{result:?}"
        );
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_controller_that_panics_is_named() {
        let mut manager = Manager::new();
        manager.add_controller("steady", |stop: CancellationToken| async move {
            stop.cancelled().await;
        });
        manager.add_controller("broken", |_stop| async { panic!("invariant broken") });
        let result = tokio::time::timeout(WITHIN, manager.run(CancellationToken::new()))
            .await
            .expect("the run ends without shutdown");
        assert!(
            matches!(&result, Err(ManagerError::ControllerPanicked { name, message })
                if name == "broken" && message == "invariant broken"),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_controller_that_ignores_stop_is_aborted_after_the_timeout() {
        let mut manager = Manager::new().with_stop_timeout(Duration::from_millis(200));
        manager.add_controller("stubborn", |_stop| std::future::pending::<()>());
        manager.add_controller("polite", |stop: CancellationToken| async move {
            stop.cancelled().await;
        });
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = Instant::now();
        let result = tokio::time::timeout(WITHIN, manager.run(shutdown))
            .await
            .expect("the run ends after the stop timeout");
        assert!(
            matches!(&result, Err(ManagerError::StopTimedOut { controllers, .. })
                if controllers == &["stubborn".to_string()]),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
