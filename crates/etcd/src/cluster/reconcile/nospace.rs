//! Carrying out [`space::next`]: after etcd raised NOSPACE, the reconciler
//! compacts the history, defragments one member per pass and disarms the
//! alarm once every member has room — each with an Event that says so.

use kube::runtime::events::EventType;

use super::observation::{Observation, member_name};
use super::{Error, Pass};
use crate::cluster::space::{self, MemberSpace, Recovery};
use crate::members::{self, EtcdMembers};

/// Event reasons of the recovery.
const HISTORY_COMPACTED: &str = "HistoryCompacted";
const DEFRAGMENTED: &str = "Defragmented";
const ALARM_DISARMED: &str = "AlarmDisarmed";

/// What one pass did about NOSPACE.
pub(super) enum SpaceOutcome {
    /// No NOSPACE alarm is raised.
    NoAlarm,
    /// Work was done and more may follow soon.
    Working,
    /// The alarm is disarmed.
    Disarmed,
    /// Nothing can be done now; why, for the Degraded condition.
    Blocked(String),
}

impl Pass<'_> {
    /// One step of winning space back, if a member reports NOSPACE.
    pub(super) async fn win_space_back(
        &self,
        observation: &Observation,
    ) -> Result<SpaceOutcome, Error> {
        let nospace = observation
            .alarms()
            .values()
            .flatten()
            .any(|a| a.contains("NOSPACE"));
        if !nospace {
            return Ok(SpaceOutcome::NoAlarm);
        }
        let Some(listed) = &observation.listed else {
            return Ok(SpaceOutcome::Blocked(
                "no member answers with the membership".to_string(),
            ));
        };
        let quota_option = self
            .cluster
            .spec
            .etcd_options
            .get("quota-backend-bytes")
            .map(String::as_str);

        // Compaction goes through raft like a write, but is allowed under
        // NOSPACE; still, nothing is touched unless every member answers.
        if let Some(why) = space::unsafe_to_maintain(&self.spaces(listed, observation).await) {
            return Ok(SpaceOutcome::Blocked(why));
        }
        let endpoints: Vec<String> = listed
            .iter()
            .filter_map(|m| observation.endpoint(&member_name(m)))
            .collect();
        let mut etcd = EtcdMembers::connect(&endpoints).await?;
        let revision = observation
            .statuses
            .values()
            .map(|s| s.revision)
            .max()
            .unwrap_or_default();
        if revision > 0 && etcd.compact(revision).await? {
            self.event(
                EventType::Normal,
                HISTORY_COMPACTED,
                &format!(
                    "etcd raised NOSPACE: compacted the key-value history before revision \
                     {revision} (superseded values only; every current key and value is kept)"
                ),
            )
            .await;
        }

        // The status again: compaction changed how much of each file is used.
        let spaces = self.spaces(listed, observation).await;
        let reported_quota = observation.statuses.values().map(|s| s.db_size_quota).max();
        let quota = space::quota(reported_quota, quota_option);
        match space::next(&spaces, quota) {
            Recovery::Defragment {
                member,
                reclaimable,
            } => {
                let Some(endpoint) = observation.endpoint(&member) else {
                    return Ok(SpaceOutcome::Blocked(format!("{member} has no address")));
                };
                members::defragment(&endpoint).await?;
                self.event(
                    EventType::Normal,
                    DEFRAGMENTED,
                    &format!(
                        "etcd raised NOSPACE: defragmented member {member}, giving back about \
                         {reclaimable} bytes; one member at a time, while every other member serves"
                    ),
                )
                .await;
                Ok(SpaceOutcome::Working)
            }
            Recovery::Disarm => {
                for id in etcd.nospace_alarms().await? {
                    etcd.disarm_nospace(id).await?;
                }
                self.event(
                    EventType::Normal,
                    ALARM_DISARMED,
                    "every member has room again: disarmed NOSPACE; etcd accepts writes",
                )
                .await;
                Ok(SpaceOutcome::Disarmed)
            }
            Recovery::Wait(why) | Recovery::NoRoom(why) => Ok(SpaceOutcome::Blocked(why)),
        }
    }

    /// Every listed member's space, from its own status read now (`None`
    /// for a member that does not answer).
    async fn spaces(
        &self,
        listed: &[members::Member],
        observation: &Observation,
    ) -> Vec<Option<MemberSpace>> {
        let reads = listed.iter().map(|m| async move {
            let name = member_name(m);
            let endpoint = observation.endpoint(&name)?;
            let status = members::member_status(&endpoint).await.ok()?;
            Some(MemberSpace {
                healthy: status.serves(),
                db_size: status.db_size,
                db_size_in_use: status.db_size_in_use,
                name,
            })
        });
        futures::future::join_all(reads).await
    }
}
