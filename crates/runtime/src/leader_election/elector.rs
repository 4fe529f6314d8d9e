//! The candidate: campaigns for the Lease, keeps it renewed while leading,
//! steps down when renewal misses its deadline or someone else holds the
//! Lease, and gives the Lease back when it stops of its own accord.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{ConfigError, ElectionConfig, JITTER_FACTOR};
use super::lock::{LeaseLock, LockError};
use super::record::{Decision, LeaseRecord, Observation, decide, next_record, to_micros};

/// What one candidate knows about the election, published on every change
/// through [`LeaderElector::subscribe`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LeaderState {
    /// The holder named by the Lease as last seen, this candidate included;
    /// `None` before the Lease was read and while nobody holds it.
    pub leader: Option<String>,
    /// Whether this candidate leads: from its successful acquisition until it
    /// steps down. Controllers guarded by the election run only while it is
    /// `true`.
    pub is_leader: bool,
    /// `leaseTransitions` as last seen: how many times the Lease changed
    /// hands.
    pub lease_transitions: i32,
    /// `renewTime` as last seen, by the holder's clock.
    pub renew_time: Option<Timestamp>,
}

/// Why a leader stopped leading although nobody asked it to. The work run
/// while leading has been told to stop (see
/// [`LeaderElector::run_while_leading`]); the caller should treat this as
/// fatal for whatever the lease guarded, like client-go's
/// `OnStoppedLeading`, which usually exits the process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LostLeadership {
    /// No renewal succeeded within `renew_deadline` of the last successful
    /// one (API server unreachable, slow or refusing).
    #[error(
        "could not renew Lease {lease} within the renew deadline of {renew_deadline:?}{}",
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    RenewDeadlineExceeded {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The last failed attempt's error, if an attempt ended before the
        /// deadline.
        last_error: Option<String>,
    },
    /// The Lease names another holder, or none: someone else wrote it.
    #[error("Lease {lease} is now held by {}", holder.as_deref().unwrap_or("nobody"))]
    TakenOver {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The holder the Lease now names.
        holder: Option<String>,
    },
}

/// The outcome of one renewal attempt that reached the API server.
enum Renewal {
    /// Renewed; the instant is when the attempt started (a lower bound of
    /// when others saw it).
    Renewed(Instant),
    /// The Lease names someone else (or nobody).
    TakenBy(Option<String>),
}

/// One candidate in a leader election on a `coordination.k8s.io/v1` Lease,
/// with client-go's `leaderelection` semantics.
///
/// Create it with [`LeaderElector::new`], take a [`LeaderElector::subscribe`]
/// receiver if anything wants to watch the election, then drive it with
/// [`LeaderElector::run`] or [`LeaderElector::run_while_leading`]. One
/// elector campaigns once: after it stopped leading, make a new one to stand
/// again.
pub struct LeaderElector {
    config: ElectionConfig,
    lock: LeaseLock,
    observed: Option<Observation>,
    leading: bool,
    state: watch::Sender<LeaderState>,
}

impl LeaderElector {
    /// A candidate for the Lease that `config` names, reaching the API server
    /// through `client`. Fails when the configuration breaks client-go's
    /// rules (see [`ElectionConfig::validate`]).
    pub fn new(client: Client, config: ElectionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let lock = LeaseLock::new(client, &config.namespace, &config.lease_name);
        Ok(LeaderElector {
            config,
            lock,
            observed: None,
            leading: false,
            state: watch::Sender::new(LeaderState::default()),
        })
    }

    /// The configuration this candidate runs with.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// A receiver of this candidate's [`LeaderState`]: it changes when the
    /// observed holder, renewal or transition count changes, and when this
    /// candidate starts or stops leading (client-go's `OnNewLeader`,
    /// `OnStartedLeading` and `OnStoppedLeading`). It is closed when the
    /// elector's run ends. Intermediate states may be skipped by a slow
    /// reader; to run code exactly while leading, use
    /// [`LeaderElector::run_while_leading`].
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }

    /// Campaigns until this candidate leads, then keeps the Lease renewed
    /// until `cancel` fires or leadership is lost.
    ///
    /// Returns `Ok(())` when cancelled, having released the Lease if
    /// [`ElectionConfig::release_on_cancel`] is set, and
    /// [`LostLeadership`] when renewal failed past the renew deadline or
    /// someone else took the Lease.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), LostLeadership> {
        self.run_while_leading(cancel, |leading| async move { leading.cancelled().await })
            .await
            .map(|_| ())
    }

    /// Campaigns until this candidate leads, then runs `work` for as long as
    /// it leads, renewing the Lease meanwhile.
    ///
    /// `work` gets a token that is cancelled when leadership ends: when
    /// `cancel` fires (it is a child of `cancel`) or when leadership is lost.
    ///
    /// - Cancelled before leading: returns `Ok(None)` without running `work`.
    /// - Cancelled while leading: the Lease stays renewed until `work`
    ///   returns, so nobody else leads while it winds down; then the Lease is
    ///   released if [`ElectionConfig::release_on_cancel`] is set, and its
    ///   output returned as `Ok(Some(output))`. The same happens when `work`
    ///   returns on its own.
    /// - Leadership lost: `work`'s token is cancelled and `work` is dropped
    ///   at once, at the renew deadline (as client-go stops), not when the
    ///   Lease could expire for the others: that is exactly when a standby
    ///   may take over, and two leaders must never act at once. The Lease is
    ///   not released and [`LostLeadership`] is returned.
    pub async fn run_while_leading<F, Fut>(
        mut self,
        cancel: CancellationToken,
        work: F,
    ) -> Result<Option<Fut::Output>, LostLeadership>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future,
    {
        let lease = self.config.lease_key();
        let identity = self.config.identity.clone();
        info!(%lease, %identity, "campaigning for leadership");
        let Some(acquired_at) = self.acquire(&cancel).await else {
            info!(%lease, %identity, "cancelled before leading");
            return Ok(None);
        };
        info!(%lease, %identity, "started leading");
        self.set_leading(true);

        let leading = cancel.child_token();
        let mut work = pin!(work(leading.clone()));
        let outcome = {
            let mut hold = pin!(self.hold(acquired_at));
            tokio::select! {
                output = &mut work => Ok(output),
                lost = &mut hold => Err(lost),
            }
        };
        leading.cancel();
        self.set_leading(false);

        match outcome {
            Ok(output) => {
                info!(%lease, %identity, "stopped leading");
                if self.config.release_on_cancel {
                    self.release().await;
                }
                Ok(Some(output))
            }
            Err((lost, grace_until)) => {
                warn!(%lease, %identity, error = %lost, "stopped leading: leadership lost");
                if timeout_at(grace_until, &mut work).await.is_err() {
                    warn!(%lease, %identity, "leadership lost: the work is dropped at the renew deadline");
                }
                Err(lost)
            }
        }
    }

    /// Tries to acquire every `retry_period` (jittered), and at once when a
    /// watch sees the Lease freed, until it succeeds or `cancel` fires. Returns when the successful attempt started.
    async fn acquire(&mut self, cancel: &CancellationToken) -> Option<Instant> {
        // A release wakes the wait below at once (client-go waits for its
        // next retry), so a graceful hand-over takes one round trip.
        let watch = self.config.watch_lease.then(|| self.lock.freed());
        let mut freed = pin!(futures::stream::iter(watch).flatten());
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            // An attempt is not interrupted by `cancel`: a write the server
            // applied but we never heard of would leave the Lease held until
            // it expired. It is bounded instead.
            match timeout(self.attempt_timeout(), self.try_acquire()).await {
                Ok(Ok(Some(started))) if cancel.is_cancelled() => {
                    debug!(started = ?started, "acquired the Lease while being cancelled");
                    if self.config.release_on_cancel {
                        self.release().await;
                    }
                    return None;
                }
                Ok(Ok(Some(started))) => return Some(started),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    warn!(lease = %self.config.lease_key(), %error, "could not try to acquire the Lease");
                }
                Err(_) => {
                    warn!(lease = %self.config.lease_key(), timeout = ?self.attempt_timeout(), "an attempt to acquire the Lease timed out");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = sleep(jittered(self.config.retry_period)) => {}
                Some(()) = freed.next() => {
                    debug!(lease = %self.config.lease_key(), "the Lease is free; trying at once");
                }
            }
        }
    }

    /// One attempt to acquire (client-go's `tryAcquireOrRenew` for a
    /// candidate that is not leading): `Some(start of the attempt)` when this
    /// candidate now holds the Lease.
    async fn try_acquire(&mut self) -> Result<Option<Instant>, LockError> {
        // The wall clock for acquireTime is read after the decision, so that a
        // takeover's acquireTime is never earlier than the moment the old
        // holder's lease expired by our observation.
        let started = Instant::now();
        let identity = self.config.identity.clone();
        let seconds = self.config.lease_seconds();

        let Some(record) = self.lock.get().await? else {
            let record = LeaseRecord::created(&identity, seconds, wall_clock());
            return match self.lock.create(&record).await {
                Ok(written) => {
                    self.observe(written, started);
                    Ok(Some(started))
                }
                Err(LockError::Conflict) => {
                    debug!(lease = %self.config.lease_key(), "lost the race to create the Lease (409 Conflict)");
                    Ok(None)
                }
                Err(error) => Err(error),
            };
        };
        self.observe(record, Instant::now());
        let Some(observed) = &self.observed else {
            return Ok(None);
        };
        let decision = decide(
            observed,
            Instant::now(),
            &identity,
            self.config.lease_duration,
        );
        let next = next_record(
            &decision,
            &observed.record,
            &identity,
            seconds,
            wall_clock(),
        );
        let Some(next) = next else {
            return Ok(None);
        };
        if decision == Decision::TakeOver {
            debug!(lease = %self.config.lease_key(), previous = ?observed.record.holder, "taking over the Lease");
        }
        match self.lock.update(&next).await {
            Ok(written) => {
                self.observe(written, started);
                Ok(Some(started))
            }
            Err(LockError::Conflict) => {
                debug!(lease = %self.config.lease_key(), "lost the race to acquire the Lease (409 Conflict)");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Renews every `retry_period` for as long as renewals succeed. Returns
    /// why leadership was lost, and until when the work may still run.
    async fn hold(&mut self, acquired_at: Instant) -> (LostLeadership, Instant) {
        let retry = self.config.retry_period;
        let mut renewed_at = acquired_at;
        let mut next_attempt = acquired_at + retry;
        let mut last_error: Option<String> = None;
        loop {
            let deadline = renewed_at + self.config.renew_deadline;
            sleep_until(next_attempt.min(deadline)).await;
            let attempt = Instant::now();
            // One attempt may not use up the whole deadline: a request stuck
            // on a dead connection is dropped and retried on a fresh one.
            let give_up = deadline.min(attempt + self.attempt_timeout());
            let outcome = if attempt >= deadline {
                None
            } else {
                match timeout_at(give_up, self.try_renew()).await {
                    Ok(result) => Some(result),
                    Err(_) if give_up >= deadline => None,
                    Err(_) => Some(Err(LockError::TimedOut(give_up - attempt))),
                }
            };
            match outcome {
                Some(Ok(Renewal::Renewed(started))) => {
                    renewed_at = started;
                    next_attempt = started + retry;
                    last_error = None;
                }
                Some(Ok(Renewal::TakenBy(holder))) => {
                    let lost = LostLeadership::TakenOver {
                        lease: self.config.lease_key(),
                        holder,
                    };
                    return (lost, Instant::now());
                }
                Some(Err(error)) => {
                    warn!(lease = %self.config.lease_key(), %error, "could not renew the Lease; retrying until the renew deadline");
                    last_error = Some(error.to_string());
                    next_attempt = attempt + retry;
                }
                None => {
                    let lost = LostLeadership::RenewDeadlineExceeded {
                        lease: self.config.lease_key(),
                        renew_deadline: self.config.renew_deadline,
                        last_error,
                    };
                    // The renew deadline has passed: stop now. Between here
                    // and renewed_at + lease_duration nobody leads, which is
                    // the margin that keeps two leaders from overlapping.
                    return (lost, Instant::now());
                }
            }
        }
    }

    /// One renewal: first optimistically over the version we last wrote
    /// (client-go's fast path), then, if that fails, by reading the Lease and
    /// renewing only if it still names us.
    async fn try_renew(&mut self) -> Result<Renewal, LockError> {
        let started = Instant::now();
        let now = wall_clock();
        let identity = self.config.identity.clone();
        let seconds = self.config.lease_seconds();

        if let Some(observed) = &self.observed
            && observed.record.is_held_by(&identity)
        {
            let next = observed.record.renewed(&identity, seconds, now);
            match self.lock.update(&next).await {
                Ok(written) => {
                    self.observe(written, started);
                    return Ok(Renewal::Renewed(started));
                }
                Err(error) => {
                    debug!(lease = %self.config.lease_key(), %error, "optimistic renewal failed; reading the Lease");
                }
            }
        }

        let Some(record) = self.lock.get().await? else {
            // Deleted under us: recreate it, as client-go does. Should another
            // candidate create it first, the next attempt sees its name.
            let written = self
                .lock
                .create(&LeaseRecord::created(&identity, seconds, now))
                .await?;
            self.observe(written, started);
            return Ok(Renewal::Renewed(started));
        };
        self.observe(record, Instant::now());
        let Some(observed) = &self.observed else {
            return Err(LockError::NotRead);
        };
        if !observed.record.is_held_by(&identity) {
            return Ok(Renewal::TakenBy(observed.record.holder.clone()));
        }
        let next = observed.record.renewed(&identity, seconds, now);
        let written = self.lock.update(&next).await?;
        self.observe(written, started);
        Ok(Renewal::Renewed(started))
    }

    /// How long one attempt to acquire or renew may take: half the renew
    /// deadline, so that the leader gets at least a second attempt.
    fn attempt_timeout(&self) -> Duration {
        self.config.renew_deadline / 2
    }

    /// Gives the Lease back if this candidate holds it, within
    /// `renew_deadline`; on failure the Lease simply expires.
    async fn release(&mut self) {
        let lease = self.config.lease_key();
        match timeout(self.config.renew_deadline, self.try_release()).await {
            Ok(Ok(true)) => info!(%lease, "released the Lease"),
            Ok(Ok(false)) => debug!(%lease, "not releasing a Lease held by someone else"),
            Ok(Err(error)) => {
                warn!(%lease, %error, "could not release the Lease; it will expire instead");
            }
            Err(_) => warn!(%lease, "releasing the Lease timed out; it will expire instead"),
        }
    }

    async fn try_release(&mut self) -> Result<bool, LockError> {
        let now = wall_clock();
        let identity = self.config.identity.clone();
        let Some(observed) = &self.observed else {
            return Ok(false);
        };
        if !observed.record.is_held_by(&identity) {
            return Ok(false);
        }
        let released = observed.record.released(now);
        match self.lock.update(&released).await {
            Ok(written) => {
                self.observe(written, Instant::now());
                return Ok(true);
            }
            // A renewal that was in flight when the work finished may have
            // landed unseen; release only a Lease that still names us.
            Err(LockError::Conflict) => {}
            Err(error) => return Err(error),
        }
        let Some(record) = self.lock.get().await? else {
            return Ok(false);
        };
        self.observe(record, Instant::now());
        let Some(observed) = &self.observed else {
            return Ok(false);
        };
        if !observed.record.is_held_by(&identity) {
            return Ok(false);
        }
        let released = observed.record.released(now);
        let written = self.lock.update(&released).await?;
        self.observe(written, Instant::now());
        Ok(true)
    }

    fn observe(&mut self, record: LeaseRecord, now: Instant) {
        self.observed = Some(Observation::observe(self.observed.take(), record, now));
        self.publish();
    }

    fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
        self.publish();
    }

    fn publish(&self) {
        let record = self.observed.as_ref().map(|o| &o.record);
        let next = LeaderState {
            leader: record.and_then(|r| r.holder.clone()),
            is_leader: self.leading,
            lease_transitions: record.map_or(0, |r| r.transitions),
            renew_time: record.and_then(|r| r.renew_time),
        };
        self.state.send_if_modified(|state| {
            if *state == next {
                return false;
            }
            if state.leader != next.leader {
                info!(lease = %self.config.lease_key(), leader = ?next.leader, "new leader observed");
            }
            *state = next;
            true
        });
    }
}

/// The wall clock, cut to the microseconds a Lease keeps.
fn wall_clock() -> Timestamp {
    to_micros(Timestamp::now())
}

/// `period` stretched by up to `JITTER_FACTOR` (client-go's `wait.Jitter`),
/// so that candidates started together do not keep colliding.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + JITTER_FACTOR * random_fraction())
}

/// A number in `[0, 1)`; good enough for jitter, not for anything secret.
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_client_gos_bounds() {
        let period = Duration::from_millis(300);
        for _ in 0..1000 {
            let waited = jittered(period);
            assert!(waited >= period, "{waited:?}");
            assert!(waited < period.mul_f64(1.0 + JITTER_FACTOR), "{waited:?}");
        }
    }

    #[test]
    fn jitter_varies() {
        let waits: std::collections::HashSet<_> =
            (0..20).map(|_| jittered(Duration::from_secs(2))).collect();
        assert!(waits.len() > 1);
    }

    #[test]
    fn lost_leadership_says_why() {
        let lost = LostLeadership::RenewDeadlineExceeded {
            lease: "ns/lease".into(),
            renew_deadline: Duration::from_secs(10),
            last_error: Some("connection refused".into()),
        };
        assert_eq!(
            lost.to_string(),
            "could not renew Lease ns/lease within the renew deadline of 10s (last error: connection refused)"
        );
        let lost = LostLeadership::TakenOver {
            lease: "ns/lease".into(),
            holder: Some("b".into()),
        };
        assert_eq!(lost.to_string(), "Lease ns/lease is now held by b");
    }

    #[test]
    fn leader_state_serialises_for_a_status_endpoint() {
        let state = LeaderState {
            leader: Some("a".into()),
            is_leader: true,
            lease_transitions: 2,
            renew_time: Timestamp::from_second(1_800_000_000).ok(),
        };
        let json = serde_json::to_value(&state).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "leader": "a",
                "isLeader": true,
                "leaseTransitions": 2,
                "renewTime": "2027-01-15T08:00:00Z",
            })
        );
    }
}
