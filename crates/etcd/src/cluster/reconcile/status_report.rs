//! How one pass's observation and step read in the EtcdCluster's status:
//! the phase, the Progressing condition and etcd's member list. Pure, and
//! tested here; the Degraded condition has its own module
//! (`cluster::degraded`).

use bosun_api::cluster::{ClusterPhase, MemberStatus};
use bosun_api::conditions::reasons;

use super::observation::{Observation, member_name};
use crate::cluster::plan::Step;

pub(super) fn member_statuses(observation: &Observation) -> Vec<MemberStatus> {
    let Some(listed) = &observation.listed else {
        return vec![];
    };
    let mut out: Vec<MemberStatus> = listed
        .iter()
        .map(|m| {
            let name = member_name(m);
            let view = observation.members().iter().find(|v| v.id == m.id);
            MemberStatus {
                id: format!("{:x}", m.id),
                peer_url: m.peer_urls.first().cloned(),
                client_urls: m.client_urls.clone(),
                ready: view.is_some_and(|v| v.healthy),
                leader: view.is_some_and(|v| v.leader),
                learner: m.is_learner,
                version: observation.statuses.get(&name).map(|s| s.version.clone()),
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The phase the status shows for `step`.
pub(super) fn phase_of(step: &Step, observation: &Observation) -> ClusterPhase {
    match step {
        Step::CreateSeed => ClusterPhase::Creating,
        Step::QuorumLost { .. } => ClusterPhase::Degraded,
        Step::Upgrade { .. } | Step::MoveLeader { .. } | Step::HaltUpgrade { .. } => {
            ClusterPhase::Upgrading
        }
        Step::Done => ClusterPhase::Running,
        _ if observation.plan.members.is_none() => ClusterPhase::Creating,
        Step::Wait { .. } if observation.healthy_voters() < observation.voters() => {
            ClusterPhase::Degraded
        }
        _ => ClusterPhase::Scaling,
    }
}

/// The Progressing condition for `step`: (status, reason, message).
pub(super) fn describe(step: &Step) -> (bool, &'static str, String) {
    match step {
        Step::Done => (
            false,
            "AsSpecified",
            "the cluster has its size and version".into(),
        ),
        Step::Wait { reason } => (true, "Waiting", format!("waiting for {reason}")),
        Step::QuorumLost { message } => (false, reasons::QUORUM_LOST, message.clone()),
        Step::CreateSeed => (true, "Creating", "creating the seed member".into()),
        Step::Upgrade { member } => (true, "Upgrading", format!("upgrading member {member}")),
        Step::HaltUpgrade { member, back_to } => (
            true,
            "HaltingUpgrade",
            format!(
                "member {member} did not start in time: giving the upgrade up, back to {back_to}"
            ),
        ),
        Step::HaltScaleUp { member } => (
            true,
            "HaltingScaleUp",
            format!("member {member} did not start in time: giving the scale-up up"),
        ),
        other => (true, "Reconciling", format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::plan::{MemberView, Observed};
    use crate::members::{Member, MemberStatus as EtcdStatus};

    fn observation(members: &[(u64, &str, bool, bool)]) -> Observation {
        let views = members
            .iter()
            .map(|(id, name, learner, healthy)| MemberView {
                id: *id,
                name: name.to_string(),
                learner: *learner,
                healthy: *healthy,
                leader: *id == 1,
            })
            .collect();
        let listed = members
            .iter()
            .map(|(id, name, learner, _)| Member {
                id: *id,
                name: name.to_string(),
                peer_urls: vec![format!("http://{name}.db.ns.svc:2380")],
                client_urls: vec![],
                is_learner: *learner,
            })
            .collect();
        let statuses = members
            .iter()
            .filter(|(_, _, _, healthy)| *healthy)
            .map(|(id, name, learner, _)| {
                (
                    name.to_string(),
                    EtcdStatus {
                        id: *id,
                        leader: 1,
                        raft_index: 0,
                        revision: 0,
                        version: "3.6.16".into(),
                        db_size: 0,
                        db_size_in_use: 0,
                        db_size_quota: 0,
                        is_learner: *learner,
                        errors: vec![],
                        storage_version: String::new(),
                    },
                )
            })
            .collect();
        Observation {
            plan: Observed {
                members: Some(views),
                ..Observed::default()
            },
            pod_ips: BTreeMap::new(),
            listed: Some(listed),
            statuses,
            restore_intents: BTreeMap::new(),
            start_failures: BTreeMap::new(),
            pod_troubles: BTreeMap::new(),
            last_images: BTreeMap::new(),
            pod_images: BTreeMap::new(),
        }
    }

    #[test]
    fn the_member_list_is_etcds_sorted_by_name_with_health_and_versions() {
        let seen = observation(&[(2, "b", false, false), (1, "a", false, true)]);
        let members = member_statuses(&seen);
        assert_eq!(
            members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(members[0].ready && members[0].leader);
        assert_eq!(members[0].id, "1");
        assert_eq!(members[0].version.as_deref(), Some("3.6.16"));
        assert!(!members[1].ready && members[1].version.is_none());
    }

    #[test]
    fn phases_follow_the_step_and_health() {
        let healthy = observation(&[(1, "a", false, true), (2, "b", false, true)]);
        let one_down = observation(&[(1, "a", false, true), (2, "b", false, false)]);
        let waiting = Step::Wait { reason: "x".into() };
        assert_eq!(phase_of(&Step::Done, &healthy), ClusterPhase::Running);
        assert_eq!(phase_of(&waiting, &one_down), ClusterPhase::Degraded);
        assert_eq!(phase_of(&waiting, &healthy), ClusterPhase::Scaling);
        assert_eq!(
            phase_of(&Step::Upgrade { member: "a".into() }, &healthy),
            ClusterPhase::Upgrading
        );
        let mut unknown = healthy;
        unknown.plan.members = None;
        assert_eq!(phase_of(&waiting, &unknown), ClusterPhase::Creating);
        let (progressing, reason, _) = describe(&Step::Done);
        assert!(!progressing);
        assert_eq!(reason, "AsSpecified");
        let (progressing, _, message) = describe(&waiting);
        assert!(progressing && message == "waiting for x");
    }
}
