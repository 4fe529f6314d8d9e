//! Deciding the next step for an EtcdCluster from what is observed: the
//! etcd membership, the member pods and their volumes. A pure function, so
//! that every situation — including every point where the operator could
//! have been killed — is a unit test. The reconciler carries out one step
//! per pass and observes again: each step is level-triggered.

use std::collections::BTreeSet;

/// A member pod as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// Member (and pod) name.
    pub member: String,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// The etcd version it runs (its version annotation).
    pub version: Option<String>,
}

/// A member as etcd lists it, with the health observed through its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberView {
    /// etcd member ID.
    pub id: u64,
    /// Member name (for a learner that never started: from its peer URL).
    pub name: String,
    /// Whether it is a learner.
    pub learner: bool,
    /// Whether it answered its status call without errors.
    pub healthy: bool,
    /// Whether it is the leader.
    pub leader: bool,
}

/// What the reconciler sees.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Member pods.
    pub pods: Vec<PodView>,
    /// Members with a data volume (PVC); empty for emptyDir clusters.
    pub volumes: Vec<String>,
    /// The membership, when some member answered.
    pub members: Option<Vec<MemberView>>,
}

/// What the spec asks for.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Voting members.
    pub size: usize,
    /// The version every member should run (already checked to be a permitted change).
    pub version: String,
}

/// The one thing to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing exists: create the seed member's volume and pod (`--initial-cluster-state new`).
    CreateSeed,
    /// A member's pod is missing: create it with the member's identity (and
    /// its volume if that is missing too, for a learner that never started).
    CreatePod {
        /// The member.
        member: String,
    },
    /// Add a new member as a learner, then create its volume and pod.
    AddLearner,
    /// Promote a learner that has started.
    Promote {
        /// Member ID.
        id: u64,
        /// Member name.
        member: String,
    },
    /// Remove a member from the membership, then delete its pod and volume.
    RemoveMember {
        /// Member ID.
        id: u64,
        /// Member name.
        member: String,
        /// Why (scale-down or lost data).
        reason: RemoveReason,
    },
    /// Hand leadership to another member before the leader is replaced.
    MoveLeader {
        /// The member to lead.
        to: u64,
    },
    /// Delete a pod or volume that belongs to no member.
    DeleteOrphan {
        /// Its name.
        member: String,
    },
    /// Delete a member's pod so that it comes back with the target version on its volume.
    Upgrade {
        /// The member.
        member: String,
    },
    /// Nothing to do until something changes.
    Wait {
        /// What is awaited.
        reason: String,
    },
    /// Quorum is lost and cannot be regained from volumes: change nothing.
    QuorumLost {
        /// What is known.
        message: String,
    },
    /// The cluster is as specified.
    Done,
}

/// Why a member is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// The spec asks for fewer members.
    ScaleDown,
    /// Its data volume is gone; a new member replaces it.
    DataLost,
}

/// The next step.
pub fn next_step(desired: &Desired, observed: &Observed) -> Step {
    let live_pods: BTreeSet<&str> = observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .map(|p| p.member.as_str())
        .collect();
    let any_pod_terminating = observed.pods.iter().any(|p| p.terminating);
    let volumes: BTreeSet<&str> = observed.volumes.iter().map(String::as_str).collect();

    let Some(members) = &observed.members else {
        return without_membership(observed, &live_pods, &volumes);
    };
    let names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();

    // Members whose pod is gone but whose data is there come back first:
    // no membership change, and it may be what regains quorum.
    for member in members {
        let has_data = volumes.contains(member.name.as_str());
        if !live_pods.contains(member.name.as_str()) && (has_data || member.learner) {
            if any_pod_terminating && observed.pods.iter().any(|p| p.member == member.name) {
                return Step::Wait {
                    reason: format!("pod {} to finish terminating", member.name),
                };
            }
            return Step::CreatePod {
                member: member.name.clone(),
            };
        }
    }

    let voters: Vec<&MemberView> = members.iter().filter(|m| !m.learner).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    if healthy_voters * 2 <= voters.len() {
        return Step::QuorumLost {
            message: format!(
                "quorum lost: {healthy_voters} of {} voting members are healthy; members with their data are being brought back, and if they cannot be, restore the cluster from a backup (EtcdRestore)",
                voters.len()
            ),
        };
    }

    // Pods and volumes of no member: left over from a removal or a crash.
    let orphan = observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .map(|p| p.member.as_str())
        .chain(volumes.iter().copied())
        .find(|name| !names.contains(name));
    if let Some(orphan) = orphan {
        return Step::DeleteOrphan {
            member: orphan.to_string(),
        };
    }

    // A voter whose data is gone (no volume, no pod) is replaced: removed
    // now, added back as a new member by the scale-up below.
    if let Some(lost) = voters
        .iter()
        .find(|m| !live_pods.contains(m.name.as_str()) && !volumes.contains(m.name.as_str()))
    {
        return Step::RemoveMember {
            id: lost.id,
            member: lost.name.clone(),
            reason: RemoveReason::DataLost,
        };
    }

    if let Some(unhealthy) = members.iter().find(|m| !m.healthy) {
        return Step::Wait {
            reason: format!("member {} to become healthy", unhealthy.name),
        };
    }
    if any_pod_terminating {
        return Step::Wait {
            reason: "member pods to finish terminating".into(),
        };
    }

    if let Some(learner) = members.iter().find(|m| m.learner) {
        return Step::Promote {
            id: learner.id,
            member: learner.name.clone(),
        };
    }
    if voters.len() < desired.size {
        return Step::AddLearner;
    }
    if voters.len() > desired.size {
        // Never the leader while another member can go.
        let victim = voters
            .iter()
            .filter(|m| !m.leader)
            .max_by(|a, b| a.name.cmp(&b.name))
            .or_else(|| voters.first());
        if let Some(victim) = victim {
            return Step::RemoveMember {
                id: victim.id,
                member: victim.name.clone(),
                reason: RemoveReason::ScaleDown,
            };
        }
    }

    // Rolling upgrade: followers first, one at a time; the leader hands
    // leadership over before its turn.
    let outdated: Vec<&&MemberView> = voters
        .iter()
        .filter(|m| {
            observed
                .pods
                .iter()
                .find(|p| p.member == m.name)
                .is_some_and(|p| p.version.as_deref() != Some(desired.version.as_str()))
        })
        .collect();
    if let Some(follower) = outdated.iter().find(|m| !m.leader) {
        return Step::Upgrade {
            member: follower.name.clone(),
        };
    }
    if let Some(leader) = outdated.first() {
        if let Some(next) = voters.iter().find(|m| !m.leader) {
            return Step::MoveLeader { to: next.id };
        }
        return Step::Upgrade {
            member: leader.name.clone(),
        };
    }
    Step::Done
}

fn without_membership(
    observed: &Observed,
    live_pods: &BTreeSet<&str>,
    volumes: &BTreeSet<&str>,
) -> Step {
    if observed.pods.is_empty() && volumes.is_empty() {
        return Step::CreateSeed;
    }
    // Pods are gone but data remains (every pod deleted, a node restart):
    // bring every member back from its volume; no membership change.
    if let Some(missing) = volumes.iter().find(|v| !live_pods.contains(*v)) {
        return Step::CreatePod {
            member: missing.to_string(),
        };
    }
    Step::Wait {
        reason: "a member to answer (pods are starting)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(size: usize) -> Desired {
        Desired {
            size,
            version: "3.6.16".into(),
        }
    }

    fn pod(name: &str) -> PodView {
        PodView {
            member: name.into(),
            terminating: false,
            version: Some("3.6.16".into()),
        }
    }

    fn voter(id: u64, name: &str) -> MemberView {
        MemberView {
            id,
            name: name.into(),
            learner: false,
            healthy: true,
            leader: id == 1,
        }
    }

    /// A healthy cluster of `names`, each with pod and volume; the first leads.
    fn healthy(names: &[&str]) -> Observed {
        Observed {
            pods: names.iter().map(|n| pod(n)).collect(),
            volumes: names.iter().map(|n| n.to_string()).collect(),
            members: Some(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| voter(i as u64 + 1, n))
                    .collect(),
            ),
        }
    }

    #[test]
    fn an_empty_cluster_starts_with_a_seed() {
        assert_eq!(
            next_step(&desired(3), &Observed::default()),
            Step::CreateSeed
        );
    }

    #[test]
    fn a_seed_that_has_not_answered_yet_is_waited_for() {
        let observed = Observed {
            pods: vec![pod("a")],
            volumes: vec!["a".into()],
            members: None,
        };
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn growth_is_one_learner_at_a_time_then_promotion() {
        assert_eq!(next_step(&desired(3), &healthy(&["a"])), Step::AddLearner);
        let mut with_learner = healthy(&["a", "b"]);
        if let Some(members) = with_learner.members.as_mut() {
            members[1].learner = true;
        }
        assert_eq!(
            next_step(&desired(3), &with_learner),
            Step::Promote {
                id: 2,
                member: "b".into()
            }
        );
        assert_eq!(
            next_step(&desired(3), &healthy(&["a", "b", "c"])),
            Step::Done
        );
    }

    #[test]
    fn nothing_grows_while_a_member_is_unhealthy() {
        let mut observed = healthy(&["a", "b", "c"]);
        if let Some(members) = observed.members.as_mut() {
            members[2].healthy = false;
        }
        assert!(matches!(
            next_step(&desired(5), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn a_learner_added_before_a_crash_gets_its_pod() {
        // The operator died between MemberAdd and creating the pod and volume.
        let mut observed = healthy(&["a", "b", "c"]);
        if let Some(members) = observed.members.as_mut() {
            members.push(MemberView {
                id: 4,
                name: "d".into(),
                learner: true,
                healthy: false,
                leader: false,
            });
        }
        assert_eq!(
            next_step(&desired(4), &observed),
            Step::CreatePod { member: "d".into() }
        );
    }

    #[test]
    fn a_pod_without_a_member_is_cleaned_up() {
        // The operator died between MemberRemove and deleting the pod.
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.push(pod("d"));
        observed.volumes.push("d".into());
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::DeleteOrphan { member: "d".into() }
        );
    }

    #[test]
    fn a_member_whose_pod_is_gone_comes_back_on_its_volume() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member != "b");
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod { member: "b".into() }
        );
    }

    #[test]
    fn a_member_whose_data_is_gone_is_removed_and_replaced() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member != "c");
        observed.volumes.retain(|v| v != "c");
        if let Some(members) = observed.members.as_mut() {
            members[2].healthy = false;
        }
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::RemoveMember {
                id: 3,
                member: "c".into(),
                reason: RemoveReason::DataLost
            }
        );
    }

    #[test]
    fn lost_quorum_changes_no_membership() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member == "a");
        observed.volumes.retain(|v| v == "a");
        if let Some(members) = observed.members.as_mut() {
            members[1].healthy = false;
            members[2].healthy = false;
        }
        match next_step(&desired(3), &observed) {
            Step::QuorumLost { message } => assert!(message.contains("restore"), "{message}"),
            other => panic!("expected QuorumLost, got {other:?}"),
        }
    }

    #[test]
    fn lost_pods_with_volumes_come_back_even_without_quorum() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member == "a");
        if let Some(members) = observed.members.as_mut() {
            members[1].healthy = false;
            members[2].healthy = false;
        }
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod { member: "b".into() }
        );
    }

    #[test]
    fn every_pod_gone_comes_back_from_volumes() {
        let observed = Observed {
            pods: vec![],
            volumes: vec!["a".into(), "b".into(), "c".into()],
            members: None,
        };
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod { member: "a".into() }
        );
    }

    #[test]
    fn scale_down_removes_a_follower_never_the_leader() {
        let step = next_step(&desired(3), &healthy(&["a", "b", "c", "d", "e"]));
        match step {
            Step::RemoveMember { member, reason, .. } => {
                assert_ne!(member, "a", "a leads");
                assert_eq!(reason, RemoveReason::ScaleDown);
            }
            other => panic!("expected RemoveMember, got {other:?}"),
        }
    }

    #[test]
    fn upgrade_goes_follower_by_follower_and_moves_the_leader_last() {
        let mut want = desired(3);
        want.version = "3.7.3".into();
        let observed = healthy(&["a", "b", "c"]);
        assert!(matches!(next_step(&want, &observed), Step::Upgrade { member } if member != "a"));

        let mut followers_done = healthy(&["a", "b", "c"]);
        for p in followers_done.pods.iter_mut().filter(|p| p.member != "a") {
            p.version = Some("3.7.3".into());
        }
        assert_eq!(
            next_step(&want, &followers_done),
            Step::MoveLeader { to: 2 }
        );

        let mut single = healthy(&["a"]);
        single.pods[0].version = Some("3.6.16".into());
        assert_eq!(
            next_step(
                &Desired {
                    size: 1,
                    ..want.clone()
                },
                &single
            ),
            Step::Upgrade { member: "a".into() }
        );
    }

    #[test]
    fn a_replaced_pod_is_awaited_while_it_terminates() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods[1].terminating = true;
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn empty_dir_members_that_lose_their_pod_are_replaced() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.volumes.clear();
        observed.pods.retain(|p| p.member != "b");
        if let Some(members) = observed.members.as_mut() {
            members[1].healthy = false;
        }
        // emptyDir members have no volumes: a lost pod is lost data.
        assert!(
            matches!(next_step(&desired(3), &observed), Step::RemoveMember { member, .. } if member == "b")
        );
    }
}
