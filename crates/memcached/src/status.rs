//! A Memcached's status, computed from what one pass observed: its
//! StatefulSet (as applied), its pods, and how the pass went. Pure: the
//! reconciler observes, calls [`compute`], and writes the result only when
//! it differs from what is stored.
//!
//! Conditions, each with the spec generation it judged:
//! - `Ready`: every server the StatefulSet runs answers memcached requests;
//! - `Progressing`: servers are being created, replaced or added/removed;
//! - `Degraded`: something the operator cannot fix alone (an invalid spec,
//!   an apply the API server refused, a server that cannot start).

use bosun_api::conditions::{DEGRADED, PROGRESSING};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::api::{Memcached, MemcachedStatus};
use crate::objects::{ordinal_of, servers};

/// Every server the StatefulSet runs answers memcached requests.
pub const READY: &str = "Ready";

/// The reasons of the conditions.
pub mod reasons {
    /// The spec fails validation; the message holds every error.
    pub use bosun_api::conditions::reasons::INVALID_SPEC;
    /// The API server refused an object the operator applied.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Every server is ready.
    pub const ALL_SERVERS_READY: &str = "AllServersReady";
    /// Some servers are not ready.
    pub const SERVERS_NOT_READY: &str = "ServersNotReady";
    /// No StatefulSet exists yet.
    pub const CREATING: &str = "Creating";
    /// Servers are being replaced with the current template.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Servers are being added or removed.
    pub const SCALING: &str = "Scaling";
    /// Every server runs the current template and is ready.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// A server's container cannot start or keeps failing.
    pub const SERVER_FAILING: &str = "ServerFailing";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
}

/// Container waiting reasons that mean a server will not start by itself.
const FAILING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// How the pass went before status was computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The objects were applied.
    Applied,
    /// The spec is invalid: nothing was applied (the message says why).
    InvalidSpec(String),
    /// Applying an object failed (the message says which and why).
    ApplyFailed(String),
}

/// What one pass observed of a Memcached's objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// The StatefulSet, as applied (or as read, when nothing was applied).
    pub stateful_set: Option<&'a StatefulSet>,
    /// The pods its selector selects.
    pub pods: &'a [Pod],
}

/// The status of `memcached` after a pass with `outcome` that observed
/// `observed`, at `now`. A condition whose status is unchanged keeps its
/// stored transition time, so an unchanged cache computes an equal status.
pub fn compute(
    memcached: &Memcached,
    observed: Observed<'_>,
    outcome: &Outcome,
    now: &Time,
) -> MemcachedStatus {
    let name = memcached.name_any();
    let namespace = memcached.namespace().unwrap_or_default();
    let generation = memcached.metadata.generation;
    let set = observed.stateful_set;
    let replicas = set
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0));

    let mut pods: Vec<(u32, &Pod)> = observed
        .pods
        .iter()
        .filter_map(|pod| ordinal_of(&name, &pod.name_any()).map(|ordinal| (ordinal, pod)))
        .collect();
    pods.sort_by_key(|(ordinal, _)| *ordinal);
    let nodes = pods.iter().map(|(_, pod)| pod.name_any()).collect();
    let ready = pods
        .iter()
        .filter(|(ordinal, pod)| *ordinal < replicas && pod_ready(pod))
        .count();
    let ready_replicas = i32::try_from(ready).unwrap_or(i32::MAX);
    let replicas_i32 = i32::try_from(replicas).unwrap_or(i32::MAX);

    let condition = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let ready_condition = if replicas > 0 && ready_replicas == replicas_i32 {
        condition(
            READY,
            true,
            reasons::ALL_SERVERS_READY,
            format!("{ready_replicas} of {replicas} servers ready"),
        )
    } else {
        condition(
            READY,
            false,
            reasons::SERVERS_NOT_READY,
            format!("{ready_replicas} of {replicas} servers ready"),
        )
    };
    let progressing = match (outcome, set) {
        (Outcome::InvalidSpec(_), _) => condition(
            PROGRESSING,
            false,
            reasons::INVALID_SPEC,
            "the spec is invalid: nothing is changed until it is fixed".to_string(),
        ),
        (Outcome::ApplyFailed(_), _) => condition(
            PROGRESSING,
            false,
            reasons::APPLY_FAILED,
            "the objects could not be applied; see Degraded".to_string(),
        ),
        (Outcome::Applied, None) => condition(
            PROGRESSING,
            true,
            reasons::CREATING,
            "creating the StatefulSet".to_string(),
        ),
        (Outcome::Applied, Some(set)) => rollout(set, replicas_i32, ready_replicas).map_or_else(
            || {
                condition(
                    PROGRESSING,
                    false,
                    reasons::ROLLOUT_COMPLETE,
                    format!("{replicas} servers run the current template"),
                )
            },
            |(reason, message)| condition(PROGRESSING, true, reason, message),
        ),
    };
    let degraded = match outcome {
        Outcome::InvalidSpec(message) => {
            condition(DEGRADED, true, reasons::INVALID_SPEC, message.clone())
        }
        Outcome::ApplyFailed(message) => {
            condition(DEGRADED, true, reasons::APPLY_FAILED, message.clone())
        }
        Outcome::Applied => {
            let failing: Vec<String> = pods.iter().filter_map(|(_, pod)| failing(pod)).collect();
            if failing.is_empty() {
                condition(
                    DEGRADED,
                    false,
                    reasons::AS_EXPECTED,
                    "no problem seen".to_string(),
                )
            } else {
                condition(DEGRADED, true, reasons::SERVER_FAILING, failing.join("; "))
            }
        }
    };
    let previous = memcached
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    MemcachedStatus {
        nodes,
        servers: servers(&name, &namespace, replicas),
        ready_replicas,
        observed_generation: generation,
        conditions: carry_transition_times(previous, vec![ready_condition, progressing, degraded]),
    }
}

/// What is still moving in a StatefulSet that wants `replicas` servers, of
/// which `ready` are ready: `None` when nothing is.
fn rollout(set: &StatefulSet, replicas: i32, ready: i32) -> Option<(&'static str, String)> {
    let status = set.status.clone().unwrap_or_default();
    let seen = status.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let same_revision = status.current_revision == status.update_revision;
    if !seen || !same_revision || updated < replicas {
        return Some((
            reasons::ROLLING_OUT,
            format!("{updated} of {replicas} servers run the current template"),
        ));
    }
    if status.replicas != replicas {
        return Some((
            reasons::SCALING,
            format!("{} servers, scaling to {replicas}", status.replicas),
        ));
    }
    (ready < replicas).then(|| {
        (
            reasons::SCALING,
            format!("{ready} of {replicas} servers ready, waiting for the others"),
        )
    })
}

/// Whether a pod's Ready condition is True (and it is not going away).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a pod's server cannot start, in the pod's own words; `None` while
/// it runs or may still start.
pub fn failing(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        let why = status.message.as_deref().unwrap_or("the pod failed");
        return Some(format!("pod {}: {why}", pod.name_any()));
    }
    status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FAILING_REASONS.contains(&reason).then(|| {
            let message = waiting.message.as_deref().unwrap_or_default();
            format!("pod {}: {reason}: {message}", pod.name_any())
                .trim_end_matches([' ', ':'])
                .to_string()
        })
    })
}

/// `conditions` with the transition time of each one whose status equals
/// its stored (`previous`) one taken from there.
pub fn carry_transition_times(
    previous: &[Condition],
    mut conditions: Vec<Condition>,
) -> Vec<Condition> {
    for condition in &mut conditions {
        if let Some(old) = previous
            .iter()
            .find(|old| old.type_ == condition.type_ && old.status == condition.status)
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
    conditions
}

/// An Event to publish: its type (`true` for Warning), reason and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Whether it is a Warning (else Normal).
    pub warning: bool,
    /// The Event's reason.
    pub reason: String,
    /// The Event's note.
    pub note: String,
}

/// What changed between the stored conditions and the new ones, as
/// Events: Ready turning true (or false again), Degraded turning true or
/// changing its reason (its reason is the Event's), and Degraded clearing.
/// A first status announces nothing that is merely not there yet.
/// Progressing is left out: its changes are the StatefulSet's, which the
/// reconciler announces as it applies them.
pub fn announcements(previous: &[Condition], new: &[Condition]) -> Vec<Announcement> {
    let mut out = Vec::new();
    for condition in new {
        let old = previous.iter().find(|c| c.type_ == condition.type_);
        let was = |status: &str| old.is_some_and(|o| o.status == status);
        let is_true = condition.status == "True";
        let mut announce = |warning: bool, reason: &str| {
            out.push(Announcement {
                warning,
                reason: reason.to_string(),
                note: condition.message.clone(),
            })
        };
        match condition.type_.as_str() {
            READY if is_true && !was("True") => announce(false, "Ready"),
            READY if !is_true && was("True") => announce(true, "NotReady"),
            DEGRADED
                if is_true
                    && old.is_none_or(|o| o.status != "True" || o.reason != condition.reason) =>
            {
                announce(true, &condition.reason)
            }
            DEGRADED if !is_true && was("True") => announce(false, "Recovered"),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
