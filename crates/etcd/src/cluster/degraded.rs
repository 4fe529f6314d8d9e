//! What the EtcdCluster's `Degraded` condition says, from what one pass
//! observed and decided. Pure, so that every case — above all the ones
//! where it would be tempting to say "healthy" for lack of an answer — is a
//! unit test.

use std::collections::BTreeMap;

use bosun_api::cluster::{HaltedChange, HaltedKind};
use bosun_api::conditions::reasons;

use super::plan::{MemberView, Step};

/// Reason: members exist but none answered, so nothing is known healthy.
pub const NO_MEMBER_ANSWERS: &str = "NoMemberAnswers";
/// Reason: etcd raised an alarm (NOSPACE: the backend reached its quota).
pub const ALARM_RAISED: &str = "AlarmRaised";
/// Event and condition reason of a given-up upgrade.
pub const UPGRADE_HALTED: &str = "UpgradeHalted";
/// Event and condition reason of a given-up scale-up.
pub const SCALE_UP_HALTED: &str = "ScaleUpHalted";

/// Reason: a listed member is not healthy.
pub const MEMBER_UNHEALTHY: &str = "MemberUnhealthy";

/// What the condition is computed from.
pub struct Report<'a> {
    /// The step decided this pass.
    pub step: &'a Step,
    /// Why a version change was refused, if it was.
    pub refusal: Option<&'a str>,
    /// The upgrade or scale-up given up for this generation, if any.
    pub halted: Option<&'a HaltedChange>,
    /// Member name → why its pod's init container failed.
    pub start_failures: &'a BTreeMap<String, String>,
    /// Member name → the alarms it reports.
    pub alarms: &'a BTreeMap<String, Vec<String>>,
    /// Why the operator cannot clear a NOSPACE alarm now, if it cannot.
    pub space: Option<&'a str>,
    /// The membership, when some member answered.
    pub members: Option<&'a [MemberView]>,
    /// Whether any member pod or volume exists.
    pub has_member_objects: bool,
}

/// `(status, reason, message)` of the `Degraded` condition.
pub fn degraded(report: &Report<'_>) -> (bool, &'static str, String) {
    if let Step::QuorumLost { message } = report.step {
        return (true, reasons::QUORUM_LOST, message.clone());
    }
    if let Some(refusal) = report.refusal {
        return (true, reasons::VERSION_CHANGE_REFUSED, refusal.to_string());
    }
    if let Some(halted) = report.halted {
        let reason = match halted.change {
            HaltedKind::Upgrade => UPGRADE_HALTED,
            HaltedKind::ScaleUp => SCALE_UP_HALTED,
        };
        return (true, reason, halted_message(halted));
    }
    if !report.start_failures.is_empty() {
        let message = report
            .start_failures
            .iter()
            .map(|(member, why)| format!("member {member} cannot start: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        return (true, reasons::MEMBER_START_FAILED, message);
    }
    if !report.alarms.is_empty() {
        let mut message = alarm_message(report.alarms);
        if let Some(why) = report.space {
            message.push_str(&format!(". Not cleared yet: {why}"));
        }
        return (true, ALARM_RAISED, message);
    }
    let Some(members) = report.members else {
        // No answer is not health. Before the first member ever ran
        // (nothing exists yet) there is nothing to be degraded.
        return if report.has_member_objects {
            (
                true,
                NO_MEMBER_ANSWERS,
                "no member answers: nothing is known to be healthy; members are being brought back from their volumes".to_string(),
            )
        } else {
            (false, "AsExpected", "no member exists yet".to_string())
        };
    };
    let unhealthy: Vec<&str> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| m.name.as_str())
        .collect();
    if unhealthy.is_empty() {
        (false, "AsExpected", "every member is healthy".to_string())
    } else {
        (
            true,
            MEMBER_UNHEALTHY,
            format!("not healthy: {}", unhealthy.join(", ")),
        )
    }
}

/// What an alarm means and what to do, for the condition and the Event.
pub fn alarm_message(alarms: &BTreeMap<String, Vec<String>>) -> String {
    let raised = alarms
        .iter()
        .map(|(member, alarms)| format!("{member}: {}", alarms.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    let nospace = alarms.values().flatten().any(|a| a.contains("NOSPACE"));
    if nospace {
        format!(
            "etcd raised an alarm ({raised}): NOSPACE means the backend reached its quota \
             (quota-backend-bytes) and etcd refuses writes, while reads, deletes and \
             compaction still work and members stay Ready. The operator compacts the history, \
             defragments one member at a time and disarms the alarm (etcdctl alarm disarm) \
             once every member has room; if the live data itself fills the quota, delete what \
             is not needed or raise the quota. Quorum is intact: do not restore from a backup \
             for this"
        )
    } else {
        format!("etcd raised an alarm ({raised}); see etcd's documentation for the alarm")
    }
}

/// What the Degraded condition and the Event say of a halt.
pub fn halted_message(halted: &HaltedChange) -> String {
    match halted.change {
        HaltedKind::Upgrade => format!(
            "the upgrade is halted: member {} did not start on the new version within the \
             member start deadline ({}); it goes back to {}{}, the version that last ran on its \
             volume, and the other members were never moved. Fix the cause and change the spec \
             (for example spec.version or spec.image) to try again",
            halted.member,
            halted.message,
            halted
                .rolled_back_to
                .as_deref()
                .unwrap_or("its old version"),
            halted
                .rolled_back_image
                .as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default(),
        ),
        HaltedKind::ScaleUp => format!(
            "the scale-up is halted at {} voters: new member {} did not start within the member \
             start deadline ({}); it is removed (a learner does not vote). Fix the cause and \
             change the spec to try again",
            halted.held_size.unwrap_or_default(),
            halted.member,
            halted.message,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_ALARMS: BTreeMap<String, Vec<String>> = BTreeMap::new();

    #[test]
    fn an_alarm_is_its_own_condition_not_quorum_loss() {
        let none = BTreeMap::new();
        let alarms = BTreeMap::from([(
            "a".to_string(),
            vec!["memberID:1 alarm:NOSPACE".to_string()],
        )]);
        let members = [member("a", true)];
        let (status, reason, message) = degraded(&Report {
            alarms: &alarms,
            ..report(&Step::Done, Some(&members), &none)
        });
        assert!(status);
        assert_eq!(reason, ALARM_RAISED);
        assert!(
            message.contains("alarm disarm") && message.contains("do not restore"),
            "{message}"
        );
        let (_, _, message) = degraded(&Report {
            alarms: &alarms,
            space: Some("the live data fills it"),
            ..report(&Step::Done, Some(&members), &none)
        });
        assert!(
            message.ends_with("Not cleared yet: the live data fills it"),
            "{message}"
        );
    }

    fn member(name: &str, healthy: bool) -> MemberView {
        MemberView {
            id: 1,
            name: name.into(),
            learner: false,
            healthy,
            leader: false,
        }
    }

    fn report<'a>(
        step: &'a Step,
        members: Option<&'a [MemberView]>,
        failures: &'a BTreeMap<String, String>,
    ) -> Report<'a> {
        Report {
            step,
            refusal: None,
            halted: None,
            start_failures: failures,
            alarms: &NO_ALARMS,
            space: None,
            members,
            has_member_objects: true,
        }
    }

    #[test]
    fn no_member_answering_is_never_reported_healthy() {
        let none = BTreeMap::new();
        let step = Step::Wait { reason: "x".into() };
        let (status, reason, _) = degraded(&report(&step, None, &none));
        assert!(status);
        assert_eq!(reason, NO_MEMBER_ANSWERS);
        // A cluster being created, with nothing yet, is not degraded.
        let (status, _, _) = degraded(&Report {
            has_member_objects: false,
            ..report(&step, None, &none)
        });
        assert!(!status);
    }

    #[test]
    fn unhealthy_members_are_named() {
        let none = BTreeMap::new();
        let members = [member("a", true), member("b", false)];
        let (status, reason, message) = degraded(&report(&Step::Done, Some(&members), &none));
        assert!(status);
        assert_eq!(reason, MEMBER_UNHEALTHY);
        assert!(
            message.contains('b') && !message.contains("a,"),
            "{message}"
        );
        let healthy = [member("a", true)];
        assert!(!degraded(&report(&Step::Done, Some(&healthy), &none)).0);
    }

    #[test]
    fn quorum_loss_refusals_and_start_failures_come_first() {
        let failures = BTreeMap::from([("a".to_string(), "data-guard: lost".to_string())]);
        let members = [member("a", false)];
        let (_, reason, message) = degraded(&report(&Step::Done, Some(&members), &failures));
        assert_eq!(reason, reasons::MEMBER_START_FAILED);
        assert!(message.contains("member a cannot start: data-guard: lost"));
        let lost = Step::QuorumLost {
            message: "lost".into(),
        };
        assert_eq!(
            degraded(&report(&lost, Some(&members), &failures)).1,
            reasons::QUORUM_LOST
        );
        let refused = Report {
            refusal: Some("spec.version: no"),
            ..report(&Step::Done, Some(&members), &failures)
        };
        assert_eq!(degraded(&refused).1, reasons::VERSION_CHANGE_REFUSED);
    }

    #[test]
    fn a_halt_says_what_happened_why_and_how_to_try_again() {
        let upgrade = HaltedChange {
            change: HaltedKind::Upgrade,
            generation: 2,
            member: "a-x".into(),
            rolled_back_to: Some("3.6.16".into()),
            rolled_back_image: Some("etcd:v3.6.16".into()),
            held_size: None,
            message: "ImagePullBackOff: no such host".into(),
        };
        let message = halted_message(&upgrade);
        for part in [
            "a-x",
            "ImagePullBackOff",
            "3.6.16 (etcd:v3.6.16)",
            "change the spec",
        ] {
            assert!(message.contains(part), "{part} in {message}");
        }
        let scale = HaltedChange {
            change: HaltedKind::ScaleUp,
            held_size: Some(1),
            rolled_back_to: None,
            rolled_back_image: None,
            message: "Unschedulable: 0/1 nodes".into(),
            ..upgrade
        };
        let message = halted_message(&scale);
        for part in ["at 1 voters", "a-x", "Unschedulable", "change the spec"] {
            assert!(message.contains(part), "{part} in {message}");
        }
    }
}
