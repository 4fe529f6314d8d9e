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
    /// Its data guard refused to start it: the volume holds no data
    /// although a member ran on it (it was lost or re-provisioned empty).
    pub data_lost: bool,
    /// It is Ready (its readiness probe passes).
    pub ready: bool,
    /// It is not ready and was created longer ago than the cluster's
    /// member start deadline.
    pub overdue: bool,
}

/// A member's data volume (PVC) as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeView {
    /// Member (and PVC) name.
    pub member: String,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// It was made for a restore: its PVC carries the restore's source, and
    /// every pod on it restores from that source until the data is there.
    pub restore: bool,
    /// A member has run on it: it must hold that member's data, and a pod
    /// on it refuses to start without it.
    pub held_member: bool,
    /// The etcd version a member last ran healthy on it.
    pub last_version: Option<String>,
}

impl VolumeView {
    /// A volume of `member` that no member has run on yet.
    pub fn fresh(member: &str) -> Self {
        VolumeView {
            member: member.to_string(),
            ..VolumeView::default()
        }
    }
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
    /// Member data volumes (PVCs), terminating ones included; empty for
    /// emptyDir clusters.
    pub volumes: Vec<VolumeView>,
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
        /// How it starts on its volume.
        start: Start,
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
    /// A member upgraded first did not start on the new version within the
    /// deadline: give the upgrade up (record it), which returns the member
    /// to `back_to`, the version that last ran on its volume and that every
    /// other member still runs.
    HaltUpgrade {
        /// The member.
        member: String,
        /// The version it goes back to.
        back_to: String,
    },
    /// A new learner did not start within the deadline: give the scale-up
    /// up (record it), after which the learner is removed.
    HaltScaleUp {
        /// The learner.
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

/// How a member pod starts on its volume. The plan decides it from what the
/// volume is known to hold, so that no pod ever bootstraps a new, empty
/// member on a volume that was made for a restore or that held a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first member of a cluster that never ran, on an empty volume:
    /// `--initial-cluster-state=new`.
    New,
    /// The seed of a restore: its init container restores the volume from
    /// the source its PVC names (unless the data is already there), then
    /// etcd starts `new` on that data.
    Restore,
    /// A learner's first start: it joins the running cluster (`existing`)
    /// with an empty volume, and etcd sends it the data.
    Join,
    /// A member restarting on its own data: its guard refuses to start it
    /// on a volume without that data.
    Resume,
}

/// Why a member is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// The spec asks for fewer members.
    ScaleDown,
    /// Its data volume is gone; a new member replaces it.
    DataLost,
    /// A learner that never became healthy, and the spec no longer needs it
    /// (a scale-up reverted while the new member could not start).
    NotNeeded,
}

/// Whether a voter can leave a membership of `voters` voters, `healthy` of
/// them healthy, and quorum still hold among the rest.
pub fn removal_keeps_quorum(voters: usize, healthy: usize, victim_healthy: bool) -> bool {
    let remaining = voters.saturating_sub(1);
    let remaining_healthy = healthy - usize::from(victim_healthy && healthy > 0);
    remaining > 0 && remaining_healthy * 2 > remaining
}

/// Whether the leader's member list (`current`) is the membership a removal
/// of `victim` was decided on (`observed`): the same voters and learners,
/// with the victim among them. A removal decided on a stale list could
/// take a voter the observation never counted.
pub fn same_membership(
    observed: &[MemberView],
    current: &[crate::members::Member],
    victim: u64,
) -> bool {
    let seen: BTreeSet<(u64, bool)> = observed.iter().map(|m| (m.id, m.learner)).collect();
    let now: BTreeSet<(u64, bool)> = current.iter().map(|m| (m.id, m.is_learner)).collect();
    seen == now && now.iter().any(|(id, _)| *id == victim)
}

/// How `member`'s pod starts, from what its volume is known to hold.
fn start_of(observed: &Observed, member: &str) -> Start {
    let volume = observed
        .volumes
        .iter()
        .find(|v| v.member == member && !v.terminating);
    match volume {
        Some(v) if v.held_member => Start::Resume,
        Some(v) if v.restore => Start::Restore,
        // The only volume of a cluster nobody has answered for yet, and no
        // member ran on it: the seed, lost before it first started.
        Some(_) if observed.members.is_none() && observed.volumes.len() == 1 => Start::New,
        _ => Start::Join,
    }
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
    let volumes: BTreeSet<&str> = observed
        .volumes
        .iter()
        .filter(|v| !v.terminating)
        .map(|v| v.member.as_str())
        .collect();
    let data_lost: BTreeSet<&str> = observed
        .pods
        .iter()
        .filter(|p| p.data_lost && !p.terminating)
        .map(|p| p.member.as_str())
        .collect();

    let Some(members) = &observed.members else {
        return without_membership(desired, observed, &live_pods, &volumes);
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
                start: start_of(observed, &member.name),
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

    // A member whose data is gone (no volume and no pod, or a volume its
    // guard found empty) is replaced: removed now, while quorum holds
    // without it, and added back as a new member by the scale-up below. It
    // never rejoins with an empty log under its old identity.
    let lost = members.iter().find(|m| {
        data_lost.contains(m.name.as_str())
            || (!m.learner
                && !live_pods.contains(m.name.as_str())
                && !volumes.contains(m.name.as_str()))
    });
    if let Some(lost) = lost {
        if !lost.learner && !removal_keeps_quorum(voters.len(), healthy_voters, lost.healthy) {
            return Step::Wait {
                reason: format!(
                    "member {}'s data is lost, and removing it now would leave no quorum",
                    lost.name
                ),
            };
        }
        return Step::RemoveMember {
            id: lost.id,
            member: lost.name.clone(),
            reason: RemoveReason::DataLost,
        };
    }

    // A change whose new member cannot start is given up after the
    // deadline, instead of holding every other step for good. Neither
    // takes anything from quorum: a learner does not vote, and the member
    // going back to its old version is not running anyway.
    let overdue_pod = |m: &MemberView| {
        observed
            .pods
            .iter()
            .find(|p| p.member == m.name && !p.terminating)
            .filter(|p| p.overdue)
    };
    if voters.len() < desired.size
        && let Some(learner) = members
            .iter()
            .find(|m| m.learner && !m.healthy && overdue_pod(m).is_some())
    {
        return Step::HaltScaleUp {
            member: learner.name.clone(),
        };
    }
    if let Some((member, back_to)) = members
        .iter()
        .filter(|m| !m.learner && !m.healthy)
        .find_map(|m| first_upgraded_and_stuck(desired, observed, &m.name, overdue_pod(m)?))
    {
        return Step::HaltUpgrade { member, back_to };
    }

    // A learner that cannot start (its pod unschedulable, its image
    // missing) holds every other step; once the spec no longer wants it —
    // the scale-up was reverted — it goes. A learner does not vote, so its
    // removal takes nothing from quorum.
    if voters.len() >= desired.size
        && let Some(learner) = members.iter().find(|m| m.learner && !m.healthy)
    {
        return Step::RemoveMember {
            id: learner.id,
            member: learner.name.clone(),
            reason: RemoveReason::NotNeeded,
        };
    }

    // A member that is not healthy and whose pod was made for another
    // version than the one now wanted (an upgrade to an image that cannot
    // start, then reverted) gets its pod replaced: waiting for it to become
    // healthy first would wait for good. Replacing the pod of an unhealthy
    // member takes nothing from quorum, and the member keeps its volume.
    if let Some(stuck) = members.iter().find(|m| {
        !m.healthy
            && !any_pod_terminating
            && observed.pods.iter().any(|p| {
                p.member == m.name
                    && !p.terminating
                    && p.version.as_deref().is_some_and(|v| v != desired.version)
            })
    }) {
        return Step::Upgrade {
            member: stuck.name.clone(),
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
        if let Some(victim) = victim
            && removal_keeps_quorum(voters.len(), healthy_voters, victim.healthy)
        {
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

/// `(member, version to go back to)` when `member`'s overdue pod was made
/// for the wanted version, a member last ran healthy on its volume with
/// another version, and every other member pod still has that version: the
/// member was the first to move, so going back returns the cluster exactly
/// to where it was. A member stuck later in an upgrade is not moved back
/// automatically (others already run the new version); it is reported.
fn first_upgraded_and_stuck(
    desired: &Desired,
    observed: &Observed,
    member: &str,
    pod: &PodView,
) -> Option<(String, String)> {
    if pod.version.as_deref() != Some(desired.version.as_str()) {
        return None;
    }
    let back_to = observed
        .volumes
        .iter()
        .find(|v| v.member == member && !v.terminating)?
        .last_version
        .clone()
        .filter(|v| *v != desired.version)?;
    let others_unmoved = observed
        .pods
        .iter()
        .filter(|p| p.member != member && !p.terminating)
        .all(|p| p.version.as_deref() == Some(back_to.as_str()));
    others_unmoved.then(|| (member.to_string(), back_to))
}

fn without_membership(
    desired: &Desired,
    observed: &Observed,
    live_pods: &BTreeSet<&str>,
    volumes: &BTreeSet<&str>,
) -> Step {
    // Terminating volumes count: a seed is never made while any member
    // volume exists, whatever state it is in.
    if observed.pods.is_empty() && observed.volumes.is_empty() {
        return Step::CreateSeed;
    }
    // Pods are gone but data remains (every pod deleted, a node restart):
    // bring every member back from its volume; no membership change.
    if let Some(missing) = volumes.iter().find(|v| !live_pods.contains(*v)) {
        return Step::CreatePod {
            member: missing.to_string(),
            start: start_of(observed, missing),
        };
    }
    if let Some(lost) = observed.pods.iter().find(|p| p.data_lost && !p.terminating) {
        return Step::Wait {
            reason: format!(
                "member {}'s data is lost, and no member answers to replace it through the membership",
                lost.member
            ),
        };
    }
    // No member answers because the one moved to a new version cannot
    // start (a cluster of one, upgraded to an image that does not run):
    // the same deadline and the same way back as with a membership. And a
    // pod that is not ready and was made for another version than the one
    // wanted (that upgrade given up, or the spec reverted) is replaced: it
    // serves nothing, and its member keeps its volume. A Ready pod is never
    // touched here, where nothing is known of the membership.
    let live = || observed.pods.iter().filter(|p| !p.terminating);
    if let Some((member, back_to)) = live()
        .filter(|p| p.overdue)
        .find_map(|p| first_upgraded_and_stuck(desired, observed, &p.member, p))
    {
        return Step::HaltUpgrade { member, back_to };
    }
    let any_pod_terminating = observed.pods.iter().any(|p| p.terminating);
    if let Some(stuck) =
        live().find(|p| !p.ready && p.version.as_deref().is_some_and(|v| v != desired.version))
        && !any_pod_terminating
    {
        return Step::Upgrade {
            member: stuck.member.clone(),
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
            data_lost: false,
            ready: true,
            overdue: false,
        }
    }

    /// The volume of a member that has run on it.
    fn held(name: &str) -> VolumeView {
        VolumeView {
            held_member: true,
            ..VolumeView::fresh(name)
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
            volumes: names.iter().map(|n| held(n)).collect(),
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
            volumes: vec![VolumeView::fresh("a")],
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
            Step::CreatePod {
                member: "d".into(),
                start: Start::Join
            }
        );
    }

    #[test]
    fn a_pod_without_a_member_is_cleaned_up() {
        // The operator died between MemberRemove and deleting the pod.
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.push(pod("d"));
        observed.volumes.push(held("d"));
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
            Step::CreatePod {
                member: "b".into(),
                start: Start::Resume
            }
        );
    }

    #[test]
    fn a_member_whose_data_is_gone_is_removed_and_replaced() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member != "c");
        observed.volumes.retain(|v| v.member != "c");
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
        observed.volumes.retain(|v| v.member == "a");
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
            Step::CreatePod {
                member: "b".into(),
                start: Start::Resume
            }
        );
    }

    #[test]
    fn every_pod_gone_comes_back_from_volumes() {
        let observed = Observed {
            pods: vec![],
            volumes: vec![held("a"), held("b"), held("c")],
            members: None,
        };
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod {
                member: "a".into(),
                start: Start::Resume
            }
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

    #[test]
    fn a_removal_waits_for_the_leaders_list_to_match_what_was_observed() {
        let observed = healthy(&["a", "b", "c"]).members.unwrap_or_default();
        let listed = |ids: &[(u64, bool)]| -> Vec<crate::members::Member> {
            ids.iter()
                .map(|(id, learner)| crate::members::Member {
                    id: *id,
                    name: String::new(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    is_learner: *learner,
                })
                .collect()
        };
        assert!(same_membership(
            &observed,
            &listed(&[(1, false), (2, false), (3, false)]),
            3
        ));
        // The leader knows a member the stale list did not, or no longer the victim.
        assert!(!same_membership(
            &observed,
            &listed(&[(1, false), (2, false), (3, false), (4, false)]),
            3
        ));
        assert!(!same_membership(
            &observed,
            &listed(&[(1, false), (2, false)]),
            3
        ));
        // A learner promoted meanwhile changes the count of voters.
        assert!(!same_membership(
            &observed,
            &listed(&[(1, false), (2, false), (3, true)]),
            3
        ));
    }

    #[test]
    fn a_learner_that_cannot_start_goes_when_the_scale_up_is_reverted() {
        let mut observed = healthy(&["a", "b"]);
        if let Some(members) = observed.members.as_mut() {
            members[1].learner = true;
            members[1].healthy = false;
        }
        // Still wanted: waited for.
        assert!(matches!(
            next_step(&desired(2), &observed),
            Step::Wait { .. }
        ));
        // No longer wanted: removed.
        assert_eq!(
            next_step(&desired(1), &observed),
            Step::RemoveMember {
                id: 2,
                member: "b".into(),
                reason: RemoveReason::NotNeeded
            }
        );
    }

    #[test]
    fn a_learner_that_misses_its_deadline_halts_the_scale_up() {
        let mut observed = healthy(&["a", "b"]);
        if let Some(members) = observed.members.as_mut() {
            members[1].learner = true;
            members[1].healthy = false;
        }
        observed.pods[1].overdue = true;
        assert_eq!(
            next_step(&desired(2), &observed),
            Step::HaltScaleUp { member: "b".into() }
        );
        // Once halted (the size held at the voters there are), it goes.
        assert!(matches!(
            next_step(&desired(1), &observed),
            Step::RemoveMember {
                reason: RemoveReason::NotNeeded,
                ..
            }
        ));
    }

    #[test]
    fn the_first_upgraded_member_that_misses_its_deadline_goes_back() {
        // 3.5.20 ran everywhere; "c" was moved to 3.6.16 first and cannot start.
        let mut observed = healthy(&["a", "b", "c"]);
        for pod in &mut observed.pods[..2] {
            pod.version = Some("3.5.20".into());
        }
        observed.volumes = ["a", "b", "c"]
            .iter()
            .map(|m| VolumeView {
                last_version: Some("3.5.20".into()),
                ..held(m)
            })
            .collect();
        if let Some(members) = observed.members.as_mut() {
            members[2].healthy = false;
        }
        // Before the deadline: waited for.
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::Wait { .. }
        ));
        observed.pods[2].overdue = true;
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::HaltUpgrade {
                member: "c".into(),
                back_to: "3.5.20".into()
            }
        );
        // Once halted (the target is 3.5.20 again), its pod is replaced.
        let back = Desired {
            size: 3,
            version: "3.5.20".into(),
        };
        assert_eq!(
            next_step(&back, &observed),
            Step::Upgrade { member: "c".into() }
        );
        // A member stuck after another already moved is not sent back on
        // its own: that would leave the cluster on two versions the user
        // never chose.
        observed.pods[1].version = Some("3.6.16".into());
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn a_lone_member_upgraded_to_an_image_that_cannot_start_goes_back() {
        // Nothing answers: the only member's new pod does not start.
        let mut observed = Observed {
            pods: vec![PodView {
                version: Some("3.6.17".into()),
                ready: false,
                overdue: true,
                ..pod("a")
            }],
            volumes: vec![VolumeView {
                last_version: Some("3.6.16".into()),
                ..held("a")
            }],
            members: None,
        };
        let upgrade = Desired {
            size: 1,
            version: "3.6.17".into(),
        };
        assert_eq!(
            next_step(&upgrade, &observed),
            Step::HaltUpgrade {
                member: "a".into(),
                back_to: "3.6.16".into()
            }
        );
        assert_eq!(
            next_step(&desired(1), &observed),
            Step::Upgrade { member: "a".into() }
        );
        // A Ready pod is never replaced while nothing answers.
        observed.pods[0].ready = true;
        observed.pods[0].overdue = false;
        assert!(matches!(
            next_step(&desired(1), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn a_member_stuck_on_another_version_is_replaced_when_the_spec_is_reverted() {
        // 3.6.16 was wanted; one member's pod was made for 3.7.3, whose image
        // cannot start; the spec is reverted to 3.6.16.
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods[2].version = Some("3.7.3".into());
        if let Some(members) = observed.members.as_mut() {
            members[2].healthy = false;
        }
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::Upgrade { member: "c".into() }
        );
        // An unhealthy member on the wanted version is waited for.
        observed.pods[2].version = Some("3.6.16".into());
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn a_restore_seed_lost_before_it_answered_restores_again() {
        // The seed's pod was deleted while its restore init container ran.
        let observed = Observed {
            pods: vec![],
            volumes: vec![VolumeView {
                restore: true,
                ..VolumeView::fresh("a")
            }],
            members: None,
        };
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod {
                member: "a".into(),
                start: Start::Restore
            }
        );
    }

    #[test]
    fn a_volume_that_held_a_member_resumes_and_never_restores_again() {
        // The restored seed ran, the cluster grew, then every pod went.
        let observed = Observed {
            pods: vec![],
            volumes: vec![
                VolumeView {
                    restore: true,
                    held_member: true,
                    ..VolumeView::fresh("a")
                },
                held("b"),
            ],
            members: None,
        };
        assert_eq!(
            next_step(&desired(3), &observed),
            Step::CreatePod {
                member: "a".into(),
                start: Start::Resume
            }
        );
    }

    #[test]
    fn a_plain_seed_lost_before_it_first_started_starts_new() {
        let observed = Observed {
            pods: vec![],
            volumes: vec![VolumeView::fresh("a")],
            members: None,
        };
        assert_eq!(
            next_step(&desired(1), &observed),
            Step::CreatePod {
                member: "a".into(),
                start: Start::New
            }
        );
    }

    #[test]
    fn no_seed_while_a_volume_is_still_being_deleted() {
        let observed = Observed {
            pods: vec![],
            volumes: vec![VolumeView {
                terminating: true,
                ..held("a")
            }],
            members: None,
        };
        assert!(matches!(
            next_step(&desired(1), &observed),
            Step::Wait { .. }
        ));
    }

    #[test]
    fn a_member_whose_guard_found_its_volume_empty_is_replaced_through_membership() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods[2].data_lost = true;
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
    fn a_voter_is_not_created_a_new_volume() {
        // A voter without pod or volume is removed, never given a new
        // empty volume under its old identity.
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods.retain(|p| p.member != "b");
        observed.volumes.retain(|v| v.member != "b");
        if let Some(members) = observed.members.as_mut() {
            members[1].healthy = false;
        }
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::RemoveMember { member, reason: RemoveReason::DataLost, .. } if member == "b"
        ));
    }

    #[test]
    fn lost_data_without_quorum_removes_nothing() {
        let mut observed = healthy(&["a", "b", "c"]);
        observed.pods[1].data_lost = true;
        observed.pods[2].data_lost = true;
        if let Some(members) = observed.members.as_mut() {
            members[1].healthy = false;
            members[2].healthy = false;
        }
        assert!(matches!(
            next_step(&desired(3), &observed),
            Step::QuorumLost { .. }
        ));
    }

    mod properties {
        //! Invariants of the planner over generated observations: whatever
        //! the operator sees, the step it takes must not lose data.
        use super::super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

        #[derive(Clone, Debug)]
        struct Slot {
            member: Option<(bool, bool, bool)>, // (learner, healthy, leader)
            pod: Option<(bool, bool, bool, bool)>, // (terminating, data_lost, outdated, overdue)
            volume: Option<(bool, bool, bool, Option<bool>)>, // (terminating, restore, held, last version outdated)
        }

        fn slot() -> impl Strategy<Value = Slot> {
            (
                proptest::option::of(any::<(bool, bool, bool)>()),
                proptest::option::of(any::<(bool, bool, bool, bool)>()),
                proptest::option::of(any::<(bool, bool, bool, Option<bool>)>()),
            )
                .prop_map(|(member, pod, volume)| Slot {
                    member,
                    pod,
                    volume,
                })
        }

        fn observed() -> impl Strategy<Value = (Observed, usize)> {
            (
                proptest::collection::vec(slot(), 0..=NAMES.len()),
                any::<bool>(),
                1usize..=7,
            )
                .prop_map(|(slots, membership_known, size)| {
                    let mut observed = Observed::default();
                    let mut members = vec![];
                    let mut leader_taken = false;
                    for (i, slot) in slots.iter().enumerate() {
                        let name = NAMES[i];
                        if let Some((learner, healthy, leader)) = slot.member {
                            let leader = leader && healthy && !learner && !leader_taken;
                            leader_taken |= leader;
                            members.push(MemberView {
                                id: i as u64 + 1,
                                name: name.into(),
                                learner,
                                healthy,
                                leader,
                            });
                        }
                        if let Some((terminating, data_lost, outdated, overdue)) = slot.pod {
                            observed.pods.push(PodView {
                                member: name.into(),
                                terminating,
                                version: Some(version(outdated)),
                                data_lost,
                                ready: !overdue && !data_lost,
                                overdue,
                            });
                        }
                        if let Some((terminating, restore, held_member, last)) = slot.volume {
                            observed.volumes.push(VolumeView {
                                member: name.into(),
                                terminating,
                                restore,
                                held_member,
                                last_version: last.map(version),
                            });
                        }
                    }
                    if membership_known && !members.is_empty() {
                        observed.members = Some(members);
                    }
                    (observed, size)
                })
        }

        fn desired(size: usize) -> Desired {
            Desired {
                size,
                version: "3.6.16".into(),
            }
        }

        fn version(outdated: bool) -> String {
            if outdated { "3.5.20" } else { "3.6.16" }.into()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn no_voter_is_removed_below_quorum((observed, size) in observed()) {
                if let Step::RemoveMember { id, .. } = next_step(&desired(size), &observed) {
                    let members = observed.members.clone().unwrap_or_default();
                    let victim = members.iter().find(|m| m.id == id).expect("a listed member");
                    if !victim.learner {
                        let voters: Vec<_> = members.iter().filter(|m| !m.learner).collect();
                        let remaining = voters.len() - 1;
                        let healthy_remaining = voters
                            .iter()
                            .filter(|m| m.healthy && m.id != id)
                            .count();
                        prop_assert!(
                            remaining > 0 && healthy_remaining * 2 > remaining,
                            "removing {id} leaves {healthy_remaining} healthy of {remaining}"
                        );
                    }
                }
            }

            #[test]
            fn no_seed_while_any_member_volume_exists((observed, size) in observed()) {
                if next_step(&desired(size), &observed) == Step::CreateSeed {
                    prop_assert!(observed.volumes.is_empty());
                    prop_assert!(observed.pods.is_empty());
                    prop_assert!(observed.members.is_none());
                }
            }

            #[test]
            fn no_new_member_on_a_restore_volume_or_one_that_held_a_member(
                (observed, size) in observed()
            ) {
                if let Step::CreatePod { member, start } = next_step(&desired(size), &observed) {
                    let volume = observed
                        .volumes
                        .iter()
                        .find(|v| v.member == member && !v.terminating);
                    if let Some(volume) = volume {
                        if volume.held_member {
                            prop_assert_eq!(start, Start::Resume);
                        } else if volume.restore {
                            prop_assert_eq!(start, Start::Restore);
                        }
                    } else {
                        // Without a volume only a learner gets a pod (and a
                        // new volume): never a voter, which would rejoin empty.
                        let members = observed.members.clone().unwrap_or_default();
                        let listed = members.iter().find(|m| m.name == member);
                        prop_assert!(
                            listed.is_some_and(|m| m.learner),
                            "a pod for {member} without its volume"
                        );
                        prop_assert_eq!(start, Start::Join);
                    }
                }
            }

            #[test]
            fn nothing_grows_or_shrinks_while_unhealthy((observed, size) in observed()) {
                let step = next_step(&desired(size), &observed);
                let unhealthy = observed
                    .members
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|m| !m.healthy));
                if unhealthy {
                    let changes = matches!(
                        step,
                        Step::AddLearner
                            | Step::Promote { .. }
                            | Step::MoveLeader { .. }
                            | Step::RemoveMember { reason: RemoveReason::ScaleDown, .. }
                    );
                    prop_assert!(!changes, "{:?} while a member is unhealthy", step);
                    // Only an unhealthy member's pod is replaced meanwhile:
                    // never a healthy one, which would take from quorum.
                    if let Step::Upgrade { member } = &step {
                        match &observed.members {
                            Some(members) => prop_assert!(
                                members.iter().any(|m| &m.name == member && !m.healthy),
                                "{member}'s healthy pod replaced while another member is unhealthy"
                            ),
                            // Nothing known of the membership: only a pod
                            // that is not Ready is ever replaced.
                            None => prop_assert!(
                                observed.pods.iter().any(|p| &p.member == member && !p.ready && !p.terminating),
                                "{member}'s Ready pod replaced while no member answers"
                            ),
                        }
                    }
                }
            }

            #[test]
            fn a_change_is_given_up_only_for_a_member_that_cannot_start(
                (observed, size) in observed()
            ) {
                let members = observed.members.clone().unwrap_or_default();
                let overdue = |name: &str| {
                    observed.pods.iter().any(|p| p.member == name && !p.terminating && p.overdue)
                };
                match next_step(&desired(size), &observed) {
                    Step::HaltScaleUp { member } => {
                        prop_assert!(members.iter().any(|m| m.name == member && m.learner && !m.healthy));
                        prop_assert!(overdue(&member));
                    }
                    Step::HaltUpgrade { member, back_to } => {
                        if observed.members.is_some() {
                            prop_assert!(members.iter().any(|m| m.name == member && !m.learner && !m.healthy));
                        }
                        prop_assert!(overdue(&member));
                        prop_assert_ne!(&back_to, "3.6.16");
                        // Going back moves no other member: they all still
                        // run the version the stuck one returns to.
                        for pod in observed.pods.iter().filter(|p| p.member != member && !p.terminating) {
                            prop_assert_eq!(pod.version.as_deref(), Some(back_to.as_str()));
                        }
                    }
                    _ => {}
                }
            }

            #[test]
            fn nothing_is_deleted_that_a_member_owns((observed, size) in observed()) {
                // At most one membership change per pass is given by the
                // type (one Step); orphan deletion never touches a member.
                if let Step::DeleteOrphan { member } = next_step(&desired(size), &observed) {
                    let members = observed.members.clone().unwrap_or_default();
                    prop_assert!(!members.iter().any(|m| m.name == member));
                }
            }
        }
    }
}
