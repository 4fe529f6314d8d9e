//! Winning space back after etcd raised NOSPACE, the way etcd's own
//! maintenance guide does it — compact the history, defragment one member
//! at a time, disarm — and only where that is safe. Pure: the reconciler
//! compacts first, reads each member's status again, then carries out the
//! one [`Recovery`] decided here.
//!
//! What must never happen, and why it cannot here:
//! - A key or its current value lost: compaction drops only superseded
//!   revisions, defragmentation only rewrites the file; nothing deletes keys.
//! - Quorum lost to maintenance: a member is defragmented (and serves
//!   nothing meanwhile) only while every member answers, one per pass.
//! - An alarm disarmed with no room: etcd would refuse the next writes
//!   again at once; the operator waits and says what the user must do.

use std::fmt::Write as _;

use bytesize::ByteSize;

/// etcd's backend quota when `quota-backend-bytes` is not set (2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

/// The alarm is disarmed only when every member's database file is at most
/// this share of the quota, so that writing can go on for a while instead
/// of raising the alarm again with the next few writes.
const ROOM_PERCENT: i64 = 80;

/// A member without room is defragmented only when at least this share of
/// the quota is free pages in its file: a freshly defragmented file still
/// has a few, and defragmenting again for them would block the member in
/// a loop for nothing.
const RECLAIMABLE_PERCENT_OF_QUOTA: i64 = 1;

/// One member's space, from its own status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpace {
    /// Member name.
    pub name: String,
    /// Whether it answered with a leader and no error but alarms.
    pub healthy: bool,
    /// Its database file's size.
    pub db_size: i64,
    /// The part of that file in use.
    pub db_size_in_use: i64,
}

impl MemberSpace {
    fn reclaimable(&self) -> i64 {
        (self.db_size - self.db_size_in_use).max(0)
    }
}

/// What to do next about a raised NOSPACE alarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Defragment this member (name, ID).
    Defragment {
        /// Its name.
        member: String,
        /// Free pages it gives back, about.
        reclaimable: i64,
    },
    /// Every member has room: disarm the alarm.
    Disarm,
    /// Not safe to touch anything now; why.
    Wait(String),
    /// The live data fills the quota; what the user can do.
    NoRoom(String),
}

/// The next recovery step, given every listed member's space (`members`,
/// one entry per member etcd lists; `None` for a member that did not
/// answer) and the quota.
pub fn next(members: &[Option<MemberSpace>], quota: i64) -> Recovery {
    if let Some(why) = unsafe_to_maintain(members) {
        return Recovery::Wait(why);
    }
    let answered: Vec<&MemberSpace> = members.iter().flatten().collect();
    let has_room = |m: &MemberSpace| m.db_size * 100 <= quota * ROOM_PERCENT;
    if answered.iter().all(|m| has_room(m)) {
        return Recovery::Disarm;
    }
    // Only members without room are defragmented (it blocks them), the
    // one that gives back most first.
    let candidate = answered
        .iter()
        .filter(|m| !has_room(m))
        .filter(|m| {
            m.reclaimable() > 0 && m.reclaimable() * 100 >= quota * RECLAIMABLE_PERCENT_OF_QUOTA
        })
        .max_by(|a, b| {
            a.reclaimable()
                .cmp(&b.reclaimable())
                .then_with(|| b.name.cmp(&a.name))
        });
    if let Some(member) = candidate {
        return Recovery::Defragment {
            member: member.name.clone(),
            reclaimable: member.reclaimable(),
        };
    }
    let largest = answered.iter().map(|m| m.db_size).max().unwrap_or_default();
    let mut message = String::new();
    let _ = write!(
        message,
        "the live data fills {} of the {} quota even after compaction and defragmentation: \
         delete keys that are not needed or raise spec.etcdOptions.quota-backend-bytes; \
         the operator disarms the alarm once every member is at most {ROOM_PERCENT}% full",
        human_bytes(largest),
        human_bytes(quota),
    );
    Recovery::NoRoom(message)
}

/// Why no maintenance (not even compaction) may start now, if it may not:
/// some member does not answer healthy.
pub fn unsafe_to_maintain(members: &[Option<MemberSpace>]) -> Option<String> {
    let all_serve = members
        .iter()
        .all(|m| m.as_ref().is_some_and(|m| m.healthy));
    (!all_serve).then(|| {
        "not every member answers: nothing is compacted, defragmented or disarmed until all \
         do, because a member being defragmented serves nothing"
            .to_string()
    })
}

/// The quota a member runs with: what it reports (etcd 3.6 and later), else
/// the `quota-backend-bytes` option, else etcd's default. An option etcd
/// would reject or read as "default" (not a positive number) counts as the
/// default.
pub fn quota(reported: Option<i64>, option: Option<&str>) -> i64 {
    if let Some(q) = reported.filter(|q| *q > 0) {
        return q;
    }
    option
        .and_then(|o| o.trim().parse::<i64>().ok())
        .filter(|q| *q > 0)
        .unwrap_or(DEFAULT_QUOTA_BYTES)
}

/// A size from etcd's status for people: 1.5 GiB. etcd reports no
/// negative sizes; one would print as 0 B.
fn human_bytes(bytes: i64) -> ByteSize {
    ByteSize(u64::try_from(bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: i64 = 1024 * 1024;

    fn member(name: &str, size: i64, in_use: i64) -> Option<MemberSpace> {
        Some(MemberSpace {
            name: name.to_string(),
            healthy: true,
            db_size: size,
            db_size_in_use: in_use,
        })
    }

    #[test]
    fn a_member_that_does_not_answer_stops_all_maintenance() {
        let members = [member("a", 4 * MIB, MIB), None];
        assert!(matches!(next(&members, 4 * MIB), Recovery::Wait(_)));
        let mut unhealthy = member("a", 4 * MIB, MIB);
        if let Some(m) = unhealthy.as_mut() {
            m.healthy = false;
        }
        let members = [unhealthy, member("b", 4 * MIB, MIB)];
        assert!(matches!(next(&members, 4 * MIB), Recovery::Wait(_)));
    }

    #[test]
    fn the_member_with_most_free_pages_is_defragmented_first() {
        let members = [
            member("a", 4 * MIB, 3 * MIB),
            member("b", 4 * MIB, MIB),
            member("c", 4 * MIB, 4 * MIB),
            // Most free pages, but room already: left serving.
            member("d", 3 * MIB, 0),
        ];
        assert_eq!(
            next(&members, 4 * MIB),
            Recovery::Defragment {
                member: "b".to_string(),
                reclaimable: 3 * MIB
            }
        );
    }

    #[test]
    fn a_few_free_pages_left_after_defragmenting_are_no_reason_to_do_it_again() {
        // A freshly defragmented member still has a page or two free; with
        // room it is done, without room it needs the user, not a loop.
        let members = [member("a", 32 * 1024, 24 * 1024)];
        assert_eq!(next(&members, 4 * MIB), Recovery::Disarm);
        let members = [member("a", 4 * MIB, 4 * MIB - 8 * 1024)];
        assert!(matches!(next(&members, 4 * MIB), Recovery::NoRoom(_)));
    }

    #[test]
    fn no_room_says_the_sizes_in_units_people_read() {
        let full = 1946 * MIB;
        let members = [member("a", full, full)];
        let Recovery::NoRoom(message) = next(&members, DEFAULT_QUOTA_BYTES) else {
            panic!("no room expected");
        };
        assert!(
            message.contains("fills 1.9 GiB of the 2.0 GiB quota"),
            "{message}"
        );
    }

    #[test]
    fn once_defragmented_with_room_the_alarm_is_disarmed() {
        let members = [member("a", MIB, MIB), member("b", MIB, MIB - 1)];
        assert_eq!(next(&members, 4 * MIB), Recovery::Disarm);
    }

    #[test]
    fn live_data_at_the_quota_is_never_disarmed_and_says_what_to_do() {
        let members = [member("a", 4 * MIB, 4 * MIB)];
        match next(&members, 4 * MIB) {
            Recovery::NoRoom(message) => {
                assert!(message.contains("quota-backend-bytes"), "{message}");
                assert!(message.contains("delete keys"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_quota_comes_from_the_member_then_the_option_then_etcds_default() {
        assert_eq!(quota(Some(5), Some("7")), 5);
        assert_eq!(quota(Some(0), Some("7")), 7);
        assert_eq!(quota(None, Some(" 7 ")), 7);
        assert_eq!(quota(None, Some("0")), DEFAULT_QUOTA_BYTES);
        assert_eq!(quota(None, Some("-1")), DEFAULT_QUOTA_BYTES);
        assert_eq!(quota(None, Some("8GiB")), DEFAULT_QUOTA_BYTES);
        assert_eq!(quota(None, None), DEFAULT_QUOTA_BYTES);
    }

    fn any_member() -> impl Strategy<Value = Option<MemberSpace>> {
        prop::option::weighted(
            0.9,
            (any::<bool>(), 0..64 * MIB, 0..=100i64).prop_map(|(healthy, size, used)| {
                MemberSpace {
                    name: format!("m{size}"),
                    healthy,
                    db_size: size,
                    db_size_in_use: size * used / 100,
                }
            }),
        )
    }

    proptest! {
        /// Nothing is touched unless every member answers healthy; a
        /// defragmentation names a listed member with free pages; a disarm
        /// leaves room on every member.
        #[test]
        fn maintenance_is_only_ever_safe(
            members in prop::collection::vec(any_member(), 1..6),
            quota in MIB..64 * MIB,
        ) {
            let all_healthy = members.iter().all(|m| m.as_ref().is_some_and(|m| m.healthy));
            match next(&members, quota) {
                Recovery::Wait(_) => prop_assert!(!all_healthy),
                Recovery::Defragment { member, reclaimable } => {
                    prop_assert!(all_healthy);
                    prop_assert!(reclaimable > 0);
                    prop_assert!(members.iter().flatten().any(|m| m.name == member
                        && m.reclaimable() == reclaimable
                        && m.db_size * 100 > quota * ROOM_PERCENT));
                }
                Recovery::Disarm => {
                    prop_assert!(all_healthy);
                    prop_assert!(members.iter().flatten().all(|m| m.db_size * 100 <= quota * ROOM_PERCENT));
                }
                Recovery::NoRoom(_) => prop_assert!(all_healthy),
            }
        }
    }
}
