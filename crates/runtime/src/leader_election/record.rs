//! The pure core of the election: what a Lease records, when this candidate
//! saw that record change, what to do about it, and what to write next.
//!
//! Nothing here reads a clock or does I/O: every instant comes in as an
//! argument, so each rule of client-go's `tryAcquireOrRenew` is unit-tested
//! below. Expiry is judged against the *local* instant at which the record
//! was last seen to change, never against the holder's `renewTime`, so
//! candidates whose wall clocks disagree still agree on when a lease ran out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// The fields of a Lease's spec that the election reads and writes
/// (client-go's `LeaderElectionRecord`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// The holder; `None` when `holderIdentity` is absent or empty (released).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`, as the holder wrote it.
    pub lease_duration_seconds: Option<i32>,
    /// When the holder acquired the lease (its clock).
    pub acquire_time: Option<Timestamp>,
    /// When the holder last renewed the lease (its clock): shown, never
    /// compared with ours.
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions`: how many times the lease changed hands.
    pub transitions: i32,
}

impl LeaseRecord {
    /// Reads the record out of a Lease's spec.
    pub fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return LeaseRecord::default();
        };
        LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Writes the record into a Lease's spec, leaving the fields the election
    /// does not own (`strategy`, `preferredHolder`) as they are. A released
    /// record is written with an empty `holderIdentity`, as client-go does.
    pub fn write_to(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = Some(self.holder.clone().unwrap_or_default());
        spec.lease_duration_seconds = self.lease_duration_seconds;
        spec.acquire_time = self.acquire_time.map(MicroTime);
        spec.renew_time = self.renew_time.map(MicroTime);
        spec.lease_transitions = Some(self.transitions);
    }

    /// Whether `identity` holds this lease.
    pub fn is_held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }

    /// How long the holder asked others to wait; our own lease duration when
    /// the record carries none (client-go would read 0 and take over at once;
    /// waiting is the safe side).
    fn lease_duration(&self, fallback: Duration) -> Duration {
        match self.lease_duration_seconds {
            Some(seconds) if seconds > 0 => Duration::from_secs(u64::from(seconds.unsigned_abs())),
            _ => fallback,
        }
    }

    /// The record of a Lease created by `identity`: no transitions yet.
    pub fn created(identity: &str, lease_seconds: i32, now: Timestamp) -> Self {
        LeaseRecord {
            holder: Some(identity.to_string()),
            lease_duration_seconds: Some(lease_seconds),
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: 0,
        }
    }

    /// The record after its holder `identity` renews it: the acquire time and
    /// transition count stay.
    pub fn renewed(&self, identity: &str, lease_seconds: i32, now: Timestamp) -> Self {
        LeaseRecord {
            holder: Some(identity.to_string()),
            lease_duration_seconds: Some(lease_seconds),
            acquire_time: self.acquire_time.or(Some(now)),
            renew_time: Some(now),
            transitions: self.transitions,
        }
    }

    /// The record after `identity` takes the lease over from whoever (or
    /// nobody) held it: one more transition.
    pub fn taken_over(&self, identity: &str, lease_seconds: i32, now: Timestamp) -> Self {
        LeaseRecord {
            holder: Some(identity.to_string()),
            lease_duration_seconds: Some(lease_seconds),
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: self.transitions.saturating_add(1),
        }
    }

    /// The record after its holder gives it back (client-go's `release`):
    /// no holder, a one-second duration, the transition count unchanged.
    pub fn released(&self, now: Timestamp) -> Self {
        LeaseRecord {
            holder: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: self.transitions,
        }
    }
}

/// A record and the local instant at which it was first seen in this form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The record as last read or written.
    pub record: LeaseRecord,
    /// When this candidate first saw `record` (any field of it) change.
    pub at: Instant,
}

impl Observation {
    /// Takes in a record read or written at `now`. The observation time moves
    /// only when the record differs from the one already observed: a lease
    /// nobody renews keeps ageing however often it is read.
    pub fn observe(previous: Option<Observation>, record: LeaseRecord, now: Instant) -> Self {
        match previous {
            Some(previous) if previous.record == record => previous,
            _ => Observation { record, at: now },
        }
    }

    /// The local instant from which the holder's lease counts as expired.
    pub fn expires_at(&self, fallback: Duration) -> Instant {
        self.at + self.record.lease_duration(fallback)
    }
}

/// What a candidate that is not leading does about an observed Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Another candidate holds the lease and it has not expired.
    Wait {
        /// The holder.
        holder: String,
        /// When it expires unless it changes first.
        expires_at: Instant,
    },
    /// The Lease names this candidate: keep it, as client-go does (an
    /// earlier run of the same identity held it).
    Renew,
    /// Nobody holds it (released), or its holder's lease expired: take it
    /// over.
    TakeOver,
}

/// client-go's acquire rule: wait while another holder's lease is valid,
/// that is while `observed.at + leaseDuration` is after `now`.
pub(crate) fn decide(
    observed: &Observation,
    now: Instant,
    identity: &str,
    fallback_duration: Duration,
) -> Decision {
    match observed.record.holder.as_deref() {
        None => Decision::TakeOver,
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) => {
            let expires_at = observed.expires_at(fallback_duration);
            if expires_at > now {
                Decision::Wait {
                    holder: holder.to_string(),
                    expires_at,
                }
            } else {
                Decision::TakeOver
            }
        }
    }
}

/// The record to write for `decision`, or `None` when there is nothing to
/// write.
pub(crate) fn next_record(
    decision: &Decision,
    observed: &LeaseRecord,
    identity: &str,
    lease_seconds: i32,
    now: Timestamp,
) -> Option<LeaseRecord> {
    match decision {
        Decision::Wait { .. } => None,
        Decision::Renew => Some(observed.renewed(identity, lease_seconds, now)),
        Decision::TakeOver => Some(observed.taken_over(identity, lease_seconds, now)),
    }
}

/// `now` cut to the microseconds a Lease keeps, so that a record we write
/// compares equal to the same record read back.
pub(crate) fn to_micros(now: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn wall(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(wall(0)),
            renew_time: Some(wall(renewed)),
            transitions: 3,
        }
    }

    fn seen(record: LeaseRecord, at: Instant) -> Observation {
        Observation::observe(None, record, at)
    }

    #[test]
    fn another_holders_lease_is_honoured_until_it_expires() {
        let t0 = Instant::now();
        let observed = seen(held_by("other", 0), t0);
        for elapsed in [0, 1, 14] {
            assert_eq!(
                decide(&observed, t0 + Duration::from_secs(elapsed), "me", LEASE),
                Decision::Wait {
                    holder: "other".into(),
                    expires_at: t0 + LEASE
                },
                "{elapsed} s after it was seen"
            );
        }
        // client-go: valid while observedTime + leaseDuration is after now.
        assert_eq!(
            decide(&observed, t0 + LEASE, "me", LEASE),
            Decision::TakeOver
        );
        assert_eq!(
            decide(&observed, t0 + Duration::from_secs(60), "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn expiry_counts_from_local_observation_not_from_renew_time() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: its renewTime looks
        // ancient, yet the record just changed, so the lease is valid.
        let behind = LeaseRecord {
            renew_time: Some(wall(-3600)),
            ..held_by("other", 0)
        };
        assert!(matches!(
            decide(&seen(behind, t0), t0 + Duration::from_secs(1), "me", LEASE),
            Decision::Wait { .. }
        ));
        // The holder's clock is an hour ahead: its renewTime lies in our
        // future, yet nobody renewed it for a whole lease duration.
        let ahead = LeaseRecord {
            renew_time: Some(wall(3600)),
            ..held_by("other", 0)
        };
        assert_eq!(
            decide(&seen(ahead, t0), t0 + LEASE, "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn rereading_an_unchanged_record_does_not_refresh_it() {
        let t0 = Instant::now();
        let first = seen(held_by("other", 0), t0);
        let again = Observation::observe(
            Some(first.clone()),
            held_by("other", 0),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(again.at, t0);
        assert_eq!(
            decide(&again, t0 + LEASE, "me", LEASE),
            Decision::TakeOver,
            "a lease nobody renews expires however often it is read"
        );
    }

    #[test]
    fn any_change_to_the_record_refreshes_it() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let base = held_by("other", 0);
        let changes = [
            LeaseRecord {
                renew_time: Some(wall(2)),
                ..base.clone()
            },
            LeaseRecord {
                holder: Some("third".into()),
                ..base.clone()
            },
            LeaseRecord {
                transitions: 4,
                ..base.clone()
            },
            LeaseRecord {
                lease_duration_seconds: Some(20),
                ..base.clone()
            },
        ];
        for changed in changes {
            let observed =
                Observation::observe(Some(seen(base.clone(), t0)), changed.clone(), later);
            assert_eq!(observed.at, later, "{changed:?}");
            assert_eq!(observed.record, changed);
            assert!(matches!(
                decide(&observed, t0 + LEASE, "me", LEASE),
                Decision::Wait { .. }
            ));
        }
    }

    #[test]
    fn the_holders_own_lease_duration_counts() {
        let t0 = Instant::now();
        let short = LeaseRecord {
            lease_duration_seconds: Some(5),
            ..held_by("other", 0)
        };
        let observed = seen(short, t0);
        assert!(matches!(
            decide(&observed, t0 + Duration::from_secs(4), "me", LEASE),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(&observed, t0 + Duration::from_secs(5), "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn a_record_without_a_duration_is_honoured_for_our_own() {
        let t0 = Instant::now();
        for missing in [None, Some(0), Some(-3)] {
            let record = LeaseRecord {
                lease_duration_seconds: missing,
                ..held_by("other", 0)
            };
            let observed = seen(record, t0);
            assert!(matches!(
                decide(&observed, t0 + Duration::from_secs(14), "me", LEASE),
                Decision::Wait { .. }
            ));
            assert_eq!(
                decide(&observed, t0 + LEASE, "me", LEASE),
                Decision::TakeOver
            );
        }
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_expired() {
        let t0 = Instant::now();
        let observed = seen(held_by("me", 0), t0);
        assert_eq!(decide(&observed, t0, "me", LEASE), Decision::Renew);
        assert_eq!(
            decide(&observed, t0 + Duration::from_secs(3600), "me", LEASE),
            Decision::Renew
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let released = held_by("other", 0).released(wall(5));
        assert_eq!(released.holder, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.transitions, 3);
        assert_eq!(released.acquire_time, Some(wall(5)));
        assert_eq!(released.renew_time, Some(wall(5)));
        assert_eq!(
            decide(&seen(released, t0), t0, "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn an_empty_holder_from_the_api_means_released() {
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            ..LeaseSpec::default()
        };
        let record = LeaseRecord::from_spec(Some(&spec));
        assert_eq!(record.holder, None);
        let t0 = Instant::now();
        assert_eq!(
            decide(&seen(record, t0), t0, "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn a_lease_without_spec_is_free() {
        let record = LeaseRecord::from_spec(None);
        assert_eq!(record, LeaseRecord::default());
        let t0 = Instant::now();
        assert_eq!(
            decide(&seen(record, t0), t0, "me", LEASE),
            Decision::TakeOver
        );
    }

    #[test]
    fn taking_over_bumps_transitions_and_restarts_acquire_time() {
        let old = held_by("other", 10);
        let decision = Decision::TakeOver;
        let next = next_record(&decision, &old, "me", 15, wall(40));
        assert_eq!(
            next,
            Some(LeaseRecord {
                holder: Some("me".into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(wall(40)),
                renew_time: Some(wall(40)),
                transitions: 4,
            })
        );
        // Taking a released lease is a transition too, as in client-go.
        let released = old.released(wall(20));
        let next = next_record(&decision, &released, "me", 15, wall(40));
        assert_eq!(next.map(|r| r.transitions), Some(4));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let ours = held_by("me", 10);
        let next = next_record(&Decision::Renew, &ours, "me", 15, wall(40));
        assert_eq!(
            next,
            Some(LeaseRecord {
                holder: Some("me".into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(wall(0)),
                renew_time: Some(wall(40)),
                transitions: 3,
            })
        );
    }

    #[test]
    fn waiting_writes_nothing() {
        let decision = Decision::Wait {
            holder: "other".into(),
            expires_at: Instant::now(),
        };
        assert_eq!(
            next_record(&decision, &held_by("other", 0), "me", 15, wall(1)),
            None
        );
    }

    #[test]
    fn a_created_lease_has_no_transitions() {
        let created = LeaseRecord::created("me", 15, wall(1));
        assert!(created.is_held_by("me"));
        assert!(!created.is_held_by("other"));
        assert_eq!(created.transitions, 0);
        assert_eq!(created.acquire_time, created.renew_time);
    }

    #[test]
    fn transitions_do_not_overflow() {
        let old = LeaseRecord {
            transitions: i32::MAX,
            ..held_by("other", 0)
        };
        assert_eq!(old.taken_over("me", 15, wall(1)).transitions, i32::MAX);
    }

    #[test]
    fn spec_round_trip_keeps_fields_the_election_does_not_own() {
        let mut spec = LeaseSpec {
            strategy: Some("OldestEmulationVersion".into()),
            preferred_holder: Some("someone".into()),
            ..LeaseSpec::default()
        };
        let record = held_by("me", 7);
        record.write_to(&mut spec);
        assert_eq!(LeaseRecord::from_spec(Some(&spec)), record);
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(spec.preferred_holder.as_deref(), Some("someone"));

        // A release is written the way client-go writes it: an empty holder.
        record.released(wall(8)).write_to(&mut spec);
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn timestamps_are_cut_to_microseconds() {
        let precise = Timestamp::new(1_800_000_000, 123_456_789).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(to_micros(precise).subsec_nanosecond(), 123_456_000);
    }
}
