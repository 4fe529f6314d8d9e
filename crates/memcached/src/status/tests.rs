//! Unit and property tests of the status computation.

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::api::MemcachedSpec;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("a time"))
}

fn memcached(size: i32, generation: i64) -> Memcached {
    let mut memcached = Memcached::new("cache", MemcachedSpec::with_size(size));
    memcached.metadata.namespace = Some("web".to_string());
    memcached.metadata.uid = Some("uid".to_string());
    memcached.metadata.generation = Some(generation);
    memcached
}

/// A StatefulSet wanting `replicas`, whose controller reports `status`.
fn stateful_set(replicas: i32, generation: i64, status: Value) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": "cache", "namespace": "web", "generation": generation},
        "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "cache"},
        "status": status,
    }))
    .expect("a StatefulSet")
}

fn settled(replicas: i32) -> StatefulSet {
    stateful_set(
        replicas,
        2,
        json!({"observedGeneration": 2, "replicas": replicas, "readyReplicas": replicas,
               "updatedReplicas": replicas, "currentRevision": "cache-1", "updateRevision": "cache-1"}),
    )
}

fn pod(name: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "web"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
    }))
    .expect("a pod")
}

fn waiting_pod(name: &str, reason: &str, message: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "web"},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "memcached", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": reason, "message": message}}}]},
    }))
    .expect("a pod")
}

fn condition<'a>(status: &'a MemcachedStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

fn summary(status: &MemcachedStatus, type_: &str) -> (String, String) {
    let c = condition(status, type_);
    (c.status.clone(), c.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

#[test]
fn a_settled_cache_is_ready_and_lists_its_servers_in_order() {
    let set = settled(3);
    let pods = [
        pod("cache-2", true),
        pod("cache-0", true),
        pod("cache-1", true),
    ];
    let status = compute(
        &memcached(3, 2),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(100),
    );
    assert_eq!(status.nodes, ["cache-0", "cache-1", "cache-2"]);
    assert_eq!(
        status.servers,
        [
            "cache-0.cache.web.svc:11211",
            "cache-1.cache.web.svc:11211",
            "cache-2.cache.web.svc:11211"
        ]
    );
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(
        summary(&status, READY),
        pair("True", reasons::ALL_SERVERS_READY)
    );
    assert_eq!(
        summary(&status, PROGRESSING),
        pair("False", reasons::ROLLOUT_COMPLETE)
    );
    assert_eq!(
        summary(&status, DEGRADED),
        pair("False", reasons::AS_EXPECTED)
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
}

#[test]
fn ordinals_sort_numerically_and_strangers_are_left_out() {
    let set = settled(11);
    let pods: Vec<Pod> = ["cache-10", "cache-9", "cache-1", "cache-x", "other-0"]
        .iter()
        .map(|n| pod(n, true))
        .collect();
    let status = compute(
        &memcached(11, 2),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(status.nodes, ["cache-1", "cache-9", "cache-10"]);
    assert_eq!(status.servers.len(), 11);
}

#[test]
fn nothing_applied_yet_is_creating() {
    let status = compute(
        &memcached(3, 1),
        Observed::default(),
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(
        summary(&status, PROGRESSING),
        pair("True", reasons::CREATING)
    );
    assert_eq!(
        summary(&status, READY),
        pair("False", reasons::SERVERS_NOT_READY)
    );
    assert!(status.servers.is_empty());
}

#[test]
fn a_new_template_is_rolling_out_until_every_server_runs_it() {
    let set = stateful_set(
        3,
        3,
        json!({"observedGeneration": 3, "replicas": 3, "readyReplicas": 2, "updatedReplicas": 1,
               "currentRevision": "cache-1", "updateRevision": "cache-2"}),
    );
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", false),
    ];
    let status = compute(
        &memcached(3, 3),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(
        summary(&status, PROGRESSING),
        pair("True", reasons::ROLLING_OUT)
    );
    assert_eq!(
        condition(&status, PROGRESSING).message,
        "1 of 3 servers run the current template"
    );
    assert_eq!(
        summary(&status, READY),
        pair("False", reasons::SERVERS_NOT_READY)
    );
    assert_eq!(status.ready_replicas, 2);
}

#[test]
fn a_stateful_set_its_controller_has_not_seen_is_still_rolling_out() {
    let mut set = settled(3);
    set.metadata.generation = Some(3);
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", true),
    ];
    let status = compute(
        &memcached(3, 3),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(
        summary(&status, PROGRESSING),
        pair("True", reasons::ROLLING_OUT)
    );
}

#[test]
fn a_scale_up_is_progressing_and_lists_the_new_servers_at_once() {
    let set = stateful_set(
        5,
        2,
        json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 5,
               "currentRevision": "cache-1", "updateRevision": "cache-1"}),
    );
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", true),
    ];
    let status = compute(
        &memcached(5, 2),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(
        summary(&status, PROGRESSING),
        pair("True", reasons::SCALING)
    );
    assert_eq!(status.servers.len(), 5);
    assert_eq!(status.nodes.len(), 3);
}

#[test]
fn servers_beyond_the_size_are_not_counted_ready_while_they_go() {
    let set = settled(2);
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", true),
    ];
    let status = compute(
        &memcached(2, 2),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.servers.len(), 2);
    assert_eq!(status.nodes.len(), 3, "nodes are the pods that exist");
}

#[test]
fn a_server_that_cannot_start_degrades_the_cache_in_its_own_words() {
    let set = settled(2);
    let pods = [
        pod("cache-0", true),
        waiting_pod(
            "cache-1",
            "ImagePullBackOff",
            "Back-off pulling image \"x\"",
        ),
    ];
    let status = compute(
        &memcached(2, 2),
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(1),
    );
    let degraded = condition(&status, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, reasons::SERVER_FAILING);
    assert_eq!(
        degraded.message,
        "pod cache-1: ImagePullBackOff: Back-off pulling image \"x\""
    );
    assert_eq!(failing(&waiting_pod("c-0", "ContainerCreating", "")), None);
}

#[test]
fn an_invalid_spec_or_a_refused_apply_is_degraded_and_not_progressing() {
    let set = settled(3);
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", true),
    ];
    let observed = Observed {
        stateful_set: Some(&set),
        pods: &pods,
    };
    let invalid = compute(
        &memcached(3, 4),
        observed,
        &Outcome::InvalidSpec("spec.size: 0 is below the minimum of 1".into()),
        &at(1),
    );
    assert_eq!(
        summary(&invalid, DEGRADED),
        pair("True", reasons::INVALID_SPEC)
    );
    assert_eq!(
        summary(&invalid, PROGRESSING),
        pair("False", reasons::INVALID_SPEC)
    );
    assert_eq!(
        summary(&invalid, READY),
        pair("True", reasons::ALL_SERVERS_READY),
        "the servers of the last valid spec still serve"
    );
    assert_eq!(invalid.observed_generation, Some(4));

    let refused = compute(
        &memcached(3, 4),
        observed,
        &Outcome::ApplyFailed("StatefulSet cache: forbidden".into()),
        &at(1),
    );
    assert_eq!(
        summary(&refused, DEGRADED),
        pair("True", reasons::APPLY_FAILED)
    );
    assert_eq!(
        condition(&refused, DEGRADED).message,
        "StatefulSet cache: forbidden"
    );
}

#[test]
fn an_unchanged_cache_computes_the_stored_status_again() {
    let set = settled(3);
    let pods = [
        pod("cache-0", true),
        pod("cache-1", true),
        pod("cache-2", true),
    ];
    let mut stored = memcached(3, 2);
    let first = compute(
        &stored,
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(100),
    );
    stored.status = Some(first.clone());
    let again = compute(
        &stored,
        Observed {
            stateful_set: Some(&set),
            pods: &pods,
        },
        &Outcome::Applied,
        &at(200),
    );
    assert_eq!(again, first, "no write, and the transition times hold");
    assert!(announcements(&first.conditions, &again.conditions).is_empty());

    let fewer = [
        pod("cache-0", true),
        pod("cache-1", false),
        pod("cache-2", true),
    ];
    let later = compute(
        &stored,
        Observed {
            stateful_set: Some(&set),
            pods: &fewer,
        },
        &Outcome::Applied,
        &at(300),
    );
    let ready = condition(&later, READY);
    assert_eq!(ready.last_transition_time, at(300));
    let told: Vec<(bool, String)> = announcements(&first.conditions, &later.conditions)
        .into_iter()
        .map(|a| (a.warning, a.reason))
        .collect();
    assert_eq!(told, [(true, "NotReady".to_string())]);
}

#[test]
fn a_first_status_announces_only_what_is_worth_hearing() {
    let fresh = compute(
        &memcached(3, 1),
        Observed::default(),
        &Outcome::Applied,
        &at(1),
    );
    assert!(
        announcements(&[], &fresh.conditions).is_empty(),
        "not ready yet is no news"
    );
    let invalid = compute(
        &memcached(3, 1),
        Observed::default(),
        &Outcome::InvalidSpec("spec.size: 0 is below the minimum of 1".into()),
        &at(1),
    );
    let told = announcements(&[], &invalid.conditions);
    assert_eq!(told.len(), 1);
    assert!(told[0].warning);
    assert_eq!(told[0].reason, reasons::INVALID_SPEC);
    assert_eq!(told[0].note, "spec.size: 0 is below the minimum of 1");
    assert!(announcements(&invalid.conditions, &invalid.conditions).is_empty());
    let recovered: Vec<String> = announcements(&invalid.conditions, &fresh.conditions)
        .into_iter()
        .map(|a| a.reason)
        .collect();
    assert_eq!(recovered, ["Recovered"]);
}

proptest! {
    #[test]
    fn nodes_are_in_ordinal_order_whatever_order_pods_are_listed_in(
        ordinals in proptest::collection::btree_set(0u32..200, 0..20),
        seed in any::<u64>(),
    ) {
        let mut names: Vec<String> = ordinals.iter().map(|o| format!("cache-{o}")).collect();
        // A deterministic shuffle from the seed.
        let len = names.len();
        for i in (1..len).rev() {
            let j = usize::try_from(seed.rotate_left(i as u32) % (i as u64 + 1)).unwrap_or(0);
            names.swap(i, j);
        }
        let pods: Vec<Pod> = names.iter().map(|n| pod(n, true)).collect();
        let set = settled(200);
        let status = compute(
            &memcached(64, 2),
            Observed { stateful_set: Some(&set), pods: &pods },
            &Outcome::Applied,
            &at(1),
        );
        let expected: Vec<String> = ordinals.iter().map(|o| format!("cache-{o}")).collect();
        prop_assert_eq!(&status.nodes, &expected);
        prop_assert_eq!(status.ready_replicas as usize, expected.len());
    }
}
