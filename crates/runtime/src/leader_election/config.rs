//! What a candidate needs to take part in an election: which Lease, who it
//! is, and the three durations, with client-go's defaults and timing rules.

use std::time::Duration;

/// client-go's default `LeaseDuration`: how long a lease that stopped
/// changing is honoured by the other candidates.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default `RenewDeadline`: how long the leader keeps failing to
/// renew before it steps down.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default `RetryPeriod`: how often a candidate tries to acquire
/// and the leader renews.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's `JitterFactor`: a candidate waits between `retry_period` and
/// `(1 + JITTER_FACTOR) × retry_period` between attempts to acquire, and
/// `renew_deadline` must exceed `JITTER_FACTOR × retry_period`.
pub const JITTER_FACTOR: f64 = 1.2;

/// One candidate's view of one election.
///
/// Build it with [`ElectionConfig::new`], which takes client-go's defaults,
/// then change the public fields as needed; [`LeaderElector::new`]
/// validates it.
///
/// [`LeaderElector::new`]: super::LeaderElector::new
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionConfig {
    /// The namespace of the `coordination.k8s.io/v1` Lease.
    pub namespace: String,
    /// The name of the Lease; every candidate of one election uses the same.
    pub lease_name: String,
    /// Who this candidate is, written to `holderIdentity`. It must be unique
    /// per running process (for example the pod name): a candidate that
    /// finds its own identity in the Lease takes it as its own at once,
    /// the way client-go does.
    pub identity: String,
    /// How long the other candidates wait, from the moment they last saw the
    /// Lease change, before they take it over. Written to the Lease as
    /// `leaseDurationSeconds`, so it must be a whole number of seconds.
    pub lease_duration: Duration,
    /// How long the leader may go on failing to renew, counted from the start
    /// of its last successful renewal, before it steps down. Must be shorter
    /// than `lease_duration`: the difference is the time the stepping-down
    /// leader has to stop its work before anyone else can lead.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate tries to acquire (the
    /// latter with jitter, see [`JITTER_FACTOR`]).
    pub retry_period: Duration,
    /// Whether to give the Lease back when leadership ends of our own accord
    /// (the cancellation token fired, or the work run while leading
    /// finished): the Lease is written with an empty holder and a one-second
    /// duration, so another candidate takes over on its next attempt instead
    /// of after `lease_duration`. Only safe when the work guarded by the
    /// lease has stopped by then, which [`LeaderElector`] ensures by waiting
    /// for it. client-go's default is `false`.
    ///
    /// [`LeaderElector`]: super::LeaderElector
    pub release_on_cancel: bool,
    /// Whether a waiting candidate also watches the Lease (a list and watch
    /// of that one name) and tries at once when it is released, instead of
    /// on its next retry. Needs `list` and `watch` on the Lease; without
    /// them it logs a warning once and relies on its retries. client-go
    /// only polls; the default here is `true`.
    pub watch_lease: bool,
}

impl ElectionConfig {
    /// A configuration with client-go's default durations (15 s, 10 s, 2 s),
    /// no release on cancel, and a watch on the Lease.
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        ElectionConfig {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            release_on_cancel: false,
            watch_lease: true,
        }
    }

    /// Checks client-go's rules: a non-empty identity, and
    /// `lease_duration > renew_deadline > JITTER_FACTOR × retry_period > 0`;
    /// and ours: a Lease name and namespace, and a lease duration the Lease
    /// can hold (whole seconds, at least one).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity.is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        if self.namespace.is_empty() {
            return Err(ConfigError::EmptyNamespace);
        }
        if self.lease_name.is_empty() {
            return Err(ConfigError::EmptyLeaseName);
        }
        if self.retry_period.is_zero() {
            return Err(ConfigError::ZeroRetryPeriod);
        }
        let whole_seconds = self.lease_duration.subsec_nanos() == 0
            && self.lease_duration.as_secs() >= 1
            && i32::try_from(self.lease_duration.as_secs()).is_ok();
        if !whole_seconds {
            return Err(ConfigError::LeaseDurationNotWholeSeconds {
                lease_duration: self.lease_duration,
            });
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::LeaseDurationNotAboveRenewDeadline {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return Err(ConfigError::RenewDeadlineNotAboveJitteredRetry {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written to the Lease; exact once
    /// [`ElectionConfig::validate`] passed.
    pub(crate) fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// `namespace/name`, for messages.
    pub(crate) fn lease_key(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }
}

/// Why an [`ElectionConfig`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The identity is empty: nobody could tell this candidate's lease from a
    /// released one.
    #[error("the candidate identity is empty; use one unique per process, such as the pod name")]
    EmptyIdentity,
    /// The Lease namespace is empty.
    #[error("the Lease namespace is empty")]
    EmptyNamespace,
    /// The Lease name is empty.
    #[error("the Lease name is empty")]
    EmptyLeaseName,
    /// The retry period is zero.
    #[error("retry_period must be greater than zero")]
    ZeroRetryPeriod,
    /// The lease duration cannot be written as `leaseDurationSeconds`.
    #[error(
        "lease_duration ({lease_duration:?}) must be a whole number of seconds, at least 1 s: the Lease records it in seconds"
    )]
    LeaseDurationNotWholeSeconds {
        /// The configured lease duration.
        lease_duration: Duration,
    },
    /// The leader would still believe it leads after others may take over.
    #[error(
        "lease_duration ({lease_duration:?}) must be greater than renew_deadline ({renew_deadline:?})"
    )]
    LeaseDurationNotAboveRenewDeadline {
        /// The configured lease duration.
        lease_duration: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
    },
    /// The leader would not get one jittered retry in before its deadline.
    #[error(
        "renew_deadline ({renew_deadline:?}) must be greater than {JITTER_FACTOR} × retry_period ({retry_period:?})"
    )]
    RenewDeadlineNotAboveJitteredRetry {
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured retry period.
        retry_period: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ElectionConfig {
        ElectionConfig::new("ns", "lease", "me")
    }

    fn with(lease: f64, renew: f64, retry: f64) -> ElectionConfig {
        let mut c = config();
        c.lease_duration = Duration::from_secs_f64(lease);
        c.renew_deadline = Duration::from_secs_f64(renew);
        c.retry_period = Duration::from_secs_f64(retry);
        c
    }

    #[test]
    fn client_go_defaults_are_valid() {
        let c = config();
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert!(!c.release_on_cancel);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.lease_seconds(), 15);
    }

    #[test]
    fn short_test_durations_are_valid() {
        assert_eq!(with(2.0, 1.5, 0.3).validate(), Ok(()));
    }

    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        assert!(matches!(
            with(10.0, 10.0, 2.0).validate(),
            Err(ConfigError::LeaseDurationNotAboveRenewDeadline { .. })
        ));
        assert!(matches!(
            with(9.0, 10.0, 2.0).validate(),
            Err(ConfigError::LeaseDurationNotAboveRenewDeadline { .. })
        ));
    }

    #[test]
    fn renew_deadline_must_exceed_jittered_retry_period() {
        // 1.2 × 2 s = 2.4 s: equal is not enough, as in client-go.
        assert!(matches!(
            with(15.0, 2.4, 2.0).validate(),
            Err(ConfigError::RenewDeadlineNotAboveJitteredRetry { .. })
        ));
        assert!(matches!(
            with(15.0, 2.0, 2.0).validate(),
            Err(ConfigError::RenewDeadlineNotAboveJitteredRetry { .. })
        ));
        assert_eq!(with(15.0, 2.5, 2.0).validate(), Ok(()));
    }

    #[test]
    fn identity_name_and_namespace_must_not_be_empty() {
        let mut c = config();
        c.identity.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyIdentity));
        let mut c = config();
        c.lease_name.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyLeaseName));
        let mut c = config();
        c.namespace.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyNamespace));
    }

    #[test]
    fn lease_duration_must_be_whole_seconds() {
        for lease in [1.5, 0.5, 0.0] {
            assert!(
                matches!(
                    with(lease, 0.4, 0.1).validate(),
                    Err(ConfigError::LeaseDurationNotWholeSeconds { .. })
                ),
                "{lease}"
            );
        }
        let mut c = config();
        c.lease_duration = Duration::from_secs(u64::from(u32::MAX));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::LeaseDurationNotWholeSeconds { .. })
        ));
    }

    #[test]
    fn retry_period_must_not_be_zero() {
        assert_eq!(
            with(15.0, 10.0, 0.0).validate(),
            Err(ConfigError::ZeroRetryPeriod)
        );
    }

    #[test]
    fn errors_name_the_offending_values() {
        let message = with(10.0, 10.0, 2.0)
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("10s"), "{message}");
        assert!(message.contains("renew_deadline"), "{message}");
    }
}
