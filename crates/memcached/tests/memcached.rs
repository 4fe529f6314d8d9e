//! The Memcached operator as `bosun install` runs it on the dev cluster,
//! judged by the API server's objects and by memcached itself (a client
//! pod talks to every server of `status.servers` through the headless
//! Service), never by the operator's conditions alone:
//!
//! - a Memcached of size 3 gets 3 ready pods, `status.nodes` names them,
//!   and every address of `status.servers` stores and returns a value;
//! - two Memcached objects in one namespace each own exactly their pods: a
//!   change of one's template (its memory) rolls only its pods, deleting
//!   one leaves the other's pods as they were over a window;
//! - it scales 3 → 5 → 2, and the API server refuses a size of 0 and a
//!   negative memory with messages that name the field.

use std::collections::BTreeMap;
use std::time::Duration;

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use bosun_memcached::Memcached;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

const CLIENT_POD: &str = "client";

/// A Memcached manifest of `size` servers.
fn memcached(name: &str, size: i32, memory_mib: i32) -> Memcached {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "cache.bosun.dev/v1alpha1",
        "kind": "Memcached",
        "metadata": {"name": name},
        "spec": {"size": size, "memoryLimitMiB": memory_mib}
    }))
    .expect("a Memcached")
}

/// The pods of Memcached `name`, by the label its StatefulSet selects on.
async fn pods_of(cluster: &TestCluster, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let mut items = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
        .await
        .expect("listing pods")
        .items;
    items.sort_by_key(|p| p.metadata.name.clone());
    items
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// (name, uid) of each pod.
fn identities(pods: &[Pod]) -> Vec<(String, String)> {
    pods.iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until Memcached `name` has `size` ready pods, its status names
/// them and counts them ready, and every pod runs the StatefulSet's
/// current revision. (The status follows the pods a moment later: it is
/// written on the pass a pod's change wakes.)
async fn wait_for_size(cluster: &TestCluster, ns: &str, name: &str, size: usize) -> Memcached {
    let api: Api<Memcached> = Api::namespaced(cluster.client.clone(), ns);
    wait_until(
        &format!("Memcached {name} to have {size} ready pods named in its status"),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let pods = pods_of(cluster, ns, name).await;
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            let status = object.status.clone().unwrap_or_default();
            let names: Vec<String> = pods
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let revisions: Vec<String> = pods
                .iter()
                .filter_map(|p| p.labels().get("controller-revision-hash").cloned())
                .collect();
            let updated = revisions.windows(2).all(|w| w[0] == w[1]);
            let mut listed = status.nodes.clone();
            listed.sort();
            Ok(pods.len() == size
                && pods.iter().all(ready)
                && updated
                && listed == names
                && status.servers.len() == size
                && usize::try_from(status.ready_replicas).ok() == Some(size))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    api.get(name).await.expect("the Memcached")
}

/// A pod to run memcached's text protocol from, with the image's busybox.
async fn start_client(cluster: &TestCluster, ns: &str) {
    let image = format!(
        "{}:{}",
        bosun_memcached::api::DEFAULT_IMAGE_REPOSITORY,
        bosun_memcached::api::DEFAULT_VERSION
    );
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": CLIENT_POD},
        "spec": {
            "containers": [{
                "name": "client",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sleep", "3600"],
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532}
            }],
            "terminationGracePeriodSeconds": 0
        }
    }))
    .expect("a Pod");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the client pod");
    wait_until(
        "the client pod to run",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let pod = pods.get(CLIENT_POD).await.map_err(|e| e.to_string())?;
            Ok(ready(&pod))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Sends `request` (memcached's text protocol) to `server` from the client
/// pod; returns the answer.
fn ask(cluster: &TestCluster, ns: &str, server: &str, request: &str) -> String {
    let (host, port) = server.rsplit_once(':').expect("host:port");
    let script = format!("printf '{request}quit\\r\\n' | nc -w 2 {host} {port}");
    let out = tokio::task::block_in_place(|| {
        cluster.kubectl(&["-n", ns, "exec", CLIENT_POD, "--", "sh", "-c", &script])
    });
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_of_three_serves_from_every_address_in_its_status() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("memcached_serves").await;
    let api: Api<Memcached> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &memcached("cache", 3, 32))
        .await
        .expect("creating the Memcached");
    let object = wait_for_size(&cluster, &ns.name, "cache", 3).await;
    let status = object.status.expect("a status");
    assert_eq!(
        status.nodes,
        ["cache-0", "cache-1", "cache-2"],
        "status.nodes names the pods"
    );
    assert_eq!(status.ready_replicas, 3);

    start_client(&cluster, &ns.name).await;
    for (n, server) in status.servers.iter().enumerate() {
        assert!(
            server.starts_with(&format!("cache-{n}.cache.{}.svc", ns.name)),
            "servers are in ordinal order of stable names: {:?}",
            status.servers
        );
        let value = format!("value-{n}");
        let stored = ask(
            &cluster,
            &ns.name,
            server,
            &format!("set key 0 0 {}\\r\\n{value}\\r\\n", value.len()),
        );
        assert!(stored.contains("STORED"), "{server} answered {stored:?}");
        let got = ask(&cluster, &ns.name, server, "get key\\r\\n");
        assert!(
            got.contains(&format!("VALUE key 0 {}\r\n{value}\r\n", value.len())),
            "{server} answered {got:?}"
        );
    }
    // Each server holds its own value: they are three servers, not one.
    for (n, server) in status.servers.iter().enumerate() {
        let got = ask(&cluster, &ns.name, server, "get key\\r\\n");
        assert!(got.contains(&format!("value-{n}")), "{server}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_memcacheds_in_one_namespace_each_own_exactly_their_pods() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("memcached_two").await;
    let api: Api<Memcached> = Api::namespaced(cluster.client.clone(), &ns.name);
    for name in ["left", "right"] {
        api.create(&PostParams::default(), &memcached(name, 2, 32))
            .await
            .expect("creating a Memcached");
    }
    wait_for_size(&cluster, &ns.name, "left", 2).await;
    wait_for_size(&cluster, &ns.name, "right", 2).await;
    let right_before = identities(&pods_of(&cluster, &ns.name, "right").await);
    let left_before = identities(&pods_of(&cluster, &ns.name, "left").await);
    assert_eq!(left_before.len() + right_before.len(), 4);

    // A template change of one rolls only its pods.
    api.patch(
        "left",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"memoryLimitMiB": 48}})),
    )
    .await
    .expect("changing left's memory");
    wait_until(
        "left's pods to be replaced by the new template",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let now = pods_of(&cluster, &ns.name, "left").await;
            let renewed = identities(&now)
                .iter()
                .all(|(name, uid)| !left_before.iter().any(|(n, u)| n == name && u == uid));
            let args_changed = now.iter().all(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .any(|c| c.args.iter().flatten().any(|a| a == "48"))
                })
            });
            Ok(now.len() == 2 && renewed && args_changed && now.iter().all(ready))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        identities(&pods_of(&cluster, &ns.name, "right").await),
        right_before,
        "right's pods are untouched by left's roll-out"
    );

    // Deleting one leaves the other's pods as they were, over a window.
    api.delete("left", &DeleteParams::foreground())
        .await
        .expect("deleting left");
    wait_until(
        "left's pods to be gone",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async { Ok(pods_of(&cluster, &ns.name, "left").await.is_empty()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let right = pods_of(&cluster, &ns.name, "right").await;
        assert_eq!(identities(&right), right_before, "right's pods changed");
        assert!(right.iter().all(ready), "a pod of right went unready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_scales_up_and_down_and_bad_sizes_are_refused_with_the_field() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("memcached_scale").await;
    let api: Api<Memcached> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &memcached("cache", 3, 32))
        .await
        .expect("creating the Memcached");
    wait_for_size(&cluster, &ns.name, "cache", 3).await;
    for size in [5, 2] {
        api.patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"size": size}})),
        )
        .await
        .expect("scaling");
        let object = wait_for_size(&cluster, &ns.name, "cache", size as usize).await;
        assert_eq!(object.status.expect("status").servers.len(), size as usize);
    }

    let refusals: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
        ("spec.size", serde_json::json!({"spec": {"size": 0}})),
        (
            "spec.memoryLimitMiB",
            serde_json::json!({"spec": {"memoryLimitMiB": -1}}),
        ),
    ]);
    for (field, patch) in refusals {
        let error = api
            .patch("cache", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect_err("refused");
        let message = match error {
            kube::Error::Api(status) => status.message,
            other => panic!("{field}: not an API refusal: {other}"),
        };
        assert!(message.contains(field), "{field}: {message}");
    }
    // Nothing changed: still two servers.
    let object = api.get("cache").await.expect("the Memcached");
    assert_eq!(object.spec.size, 2);
}
