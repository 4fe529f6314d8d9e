//! Liveness and readiness: named checks that parts of the process register,
//! evaluated when a probe asks (`/healthz`, `/readyz` in [`crate::http`]).
//!
//! A check reads state the process already keeps (a flag, a watch channel)
//! and answers at once: probes have short timeouts, and a check that waits
//! on the network would turn a slow dependency into restarts.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A check: `Ok(())` when healthy, otherwise why not.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The checks of one kind (liveness or readiness), in registration order.
#[derive(Clone, Default)]
struct Checks(Arc<Mutex<Vec<(String, Check)>>>);

impl Checks {
    fn add(&self, name: String, check: Check) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, check));
    }

    fn run(&self) -> HealthReport {
        // Copied out so that no lock is held while checks run.
        let checks = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        HealthReport {
            results: checks
                .into_iter()
                .map(|(name, check)| (name, check()))
                .collect(),
        }
    }
}

/// The liveness and readiness checks of one process. Cloning is cheap and
/// every clone shares the same checks. With no checks registered, both
/// kinds pass: the process answering is the check.
#[derive(Clone, Default)]
pub struct Health {
    liveness: Checks,
    readiness: Checks,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("liveness", &self.liveness.run())
            .field("readiness", &self.readiness.run())
            .finish()
    }
}

impl Health {
    /// No checks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check to `/readyz`: while it fails, Kubernetes sends the pod
    /// no traffic (and counts it unavailable) but does not restart it.
    pub fn add_readiness_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.readiness.add(name.into(), Arc::new(check));
    }

    /// Adds a check to `/healthz`: while it fails, the kubelet restarts the
    /// container. Only for states that a restart cures.
    pub fn add_liveness_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.liveness.add(name.into(), Arc::new(check));
    }

    /// Runs the readiness checks.
    pub fn readiness(&self) -> HealthReport {
        self.readiness.run()
    }

    /// Runs the liveness checks.
    pub fn liveness(&self) -> HealthReport {
        self.liveness.run()
    }
}

/// The results of one run of the checks of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// Each check's name and result, in registration order.
    pub results: Vec<(String, Result<(), String>)>,
}

impl HealthReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|(_, result)| result.is_ok())
    }
}

/// One line per check, as the Kubernetes API server's verbose health
/// endpoints write them (`[+]name ok`, `[-]name failed: reason`), then the
/// verdict.
impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, result) in &self.results {
            match result {
                Ok(()) => writeln!(f, "[+]{name} ok")?,
                Err(reason) => writeln!(f, "[-]{name} failed: {reason}")?,
            }
        }
        if self.passed() {
            writeln!(f, "ok")
        } else {
            writeln!(f, "failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn no_checks_pass() {
        let health = Health::new();
        assert!(health.readiness().passed());
        assert!(health.liveness().passed());
        assert_eq!(health.readiness().to_string(), "ok\n");
    }

    #[test]
    fn checks_run_at_every_probe_and_say_which_failed() {
        let health = Health::new();
        let ready = Arc::new(AtomicBool::new(false));
        health.add_readiness_check("always", || Ok(()));
        health.add_readiness_check("flag", {
            let ready = ready.clone();
            move || {
                if ready.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            }
        });
        let report = health.readiness();
        assert!(!report.passed());
        assert_eq!(
            report.to_string(),
            "[+]always ok\n[-]flag failed: not yet\nfailed\n"
        );
        assert!(health.liveness().passed(), "kinds are separate");

        ready.store(true, Ordering::SeqCst);
        let report = health.readiness();
        assert!(report.passed());
        assert_eq!(report.to_string(), "[+]always ok\n[+]flag ok\nok\n");
    }

    #[test]
    fn clones_share_their_checks() {
        let health = Health::new();
        health
            .clone()
            .add_liveness_check("broken", || Err("wedged".into()));
        assert!(!health.liveness().passed());
    }
}
