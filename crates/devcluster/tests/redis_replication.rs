//! The Redis primary/replica example (`examples/redis-replication/redis.yaml`),
//! applied as a user applies it (`kubectl apply -n <namespace> -f`), keeps
//! its data. Every verdict comes from redis itself (`redis-cli` through
//! `kubectl exec`), never from pod status alone:
//!
//! - the three pods replicate: redis-0 is the master of two online replicas,
//!   which are linked to it by its headless-Service name; keys written on
//!   the primary are read back from each replica; replicas refuse writes
//!   (READONLY);
//! - the primary refuses writes when no replica is connected (NOREPLICAS).
//!   How: both replicas are detached with `REPLICAOF NO ONE`, which closes
//!   their links, so the primary counts no replica at all; a write on it is
//!   then refused and not applied. Re-attaching them makes writes succeed
//!   again. (This proves `min-replicas-to-write`; the 10 s lag bound of
//!   `min-replicas-max-lag` is redis's documented behaviour, not tested.)
//! - a primary that crashes (SIGKILL of redis from the host, so it can save
//!   nothing on the way out; the kubelet restarts it on the same volume)
//!   and a primary whose pod is deleted (the StatefulSet creates it again on
//!   the same claim) comes back as the primary with every key, and no
//!   replica is wiped: after replication is up again, each replica holds
//!   every key at every sample of a window of several seconds.
//!
//! The crash is what catches a primary without an append-only file: a
//! deleted pod's redis gets SIGTERM and writes an RDB snapshot before it
//! stops, but a crashed one restarts from its last snapshot, here none, and
//! its replicas then resync to the emptied primary.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bosun_devcluster::fixture::{TestCluster, kill_container_from_host};
use bosun_devcluster::image::REDIS_IMAGE_REPOSITORY;
use bosun_devcluster::readiness::wait_until;
use common::{POLL, describe, is_ready, restart_count, wait_for_pod};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};

/// The example, as users apply it.
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/redis-replication/redis.yaml"
);
/// The StatefulSet's pods; redis-0 is the primary.
const PRIMARY: &str = "redis-0";
const REPLICAS: [&str; 2] = ["redis-1", "redis-2"];
/// The container of each pod.
const CONTAINER: &str = "redis";
/// Keys per batch written on the primary.
const KEYS: usize = 100;
/// Three pods started one after the other, each with a new volume.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(180);
/// Replicas connect and complete a (diskless, delayed by 5 s) full sync.
const REPLICATION_DEADLINE: Duration = Duration::from_secs(90);
/// How long the replicas must keep every key once the primary is back.
const HOLD_WINDOW: Duration = Duration::from_secs(10);

/// The example's StatefulSet container image, checked against the image the
/// dev cluster's node holds, so that the test fails when the example names
/// a redis version the cluster no longer builds.
async fn example_image_is_on_the_node(cluster: &TestCluster) -> String {
    let text = std::fs::read_to_string(EXAMPLE).expect("the example is readable");
    let mut images = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_json::Value =
            serde::Deserialize::deserialize(doc).expect("every document of the example is YAML");
        if doc["kind"] == "StatefulSet" {
            for container in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .expect("the StatefulSet has containers")
            {
                assert_eq!(
                    container["imagePullPolicy"], "IfNotPresent",
                    "nothing can be pulled on the dev cluster"
                );
                images.push(container["image"].as_str().expect("an image").to_string());
            }
        }
    }
    let [image] = images.as_slice() else {
        panic!("the example's StatefulSet has one container, found images {images:?}");
    };
    assert!(
        image.starts_with(&format!("{REDIS_IMAGE_REPOSITORY}:")),
        "the example runs {image}, not the locally built {REDIS_IMAGE_REPOSITORY}"
    );
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let on_nodes: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("listing nodes")
        .items
        .into_iter()
        .flat_map(|n| n.status.and_then(|s| s.images).unwrap_or_default())
        .flat_map(|i| i.names.unwrap_or_default())
        .filter(|name| name.starts_with(REDIS_IMAGE_REPOSITORY))
        .collect();
    assert!(
        on_nodes.contains(image),
        "examples/redis-replication/redis.yaml runs {image}, but the dev cluster holds {on_nodes:?}: \
         set the example's tag to the redis version the cluster builds"
    );
    image.clone()
}

/// The example running in one test namespace, reached with `redis-cli`
/// inside its pods.
struct RedisSet<'a> {
    cluster: &'a TestCluster,
    namespace: String,
}

impl RedisSet<'_> {
    /// The name the replicas are told to replicate.
    fn primary_fqdn(&self) -> String {
        format!("{PRIMARY}.redis.{}.svc.cluster.local", self.namespace)
    }

    /// `kubectl exec <pod> -- <command>` with `stdin`; its standard output,
    /// or why it failed.
    fn exec(&self, pod: &str, command: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let kubectl = self.cluster.tools.bin("kubectl").expect("kubectl is built");
        let mut child = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&self.cluster.kubeconfig)
            .args(["--namespace", &self.namespace, "exec"])
            .args(stdin.map(|_| "-i"))
            .args([pod, "--container", CONTAINER, "--"])
            .args(command)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        // The pipe is closed (dropped) before the wait, so redis-cli sees
        // the end of its input; kubectl is waited for even when writing failed.
        let written = stdin.map_or(Ok(()), |input| {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
        });
        let out = child.wait_with_output().expect("kubectl exec finishes");
        written.map_err(|e| format!("writing to kubectl exec {pod}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl exec {pod} -- {}: {}",
                command.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis-cli <args>` against the pod's own redis. redis-cli exits 0 on
    /// an error reply, so callers read the reply.
    fn cli(&self, pod: &str, args: &[&str]) -> Result<String, String> {
        let command: Vec<&str> = ["redis-cli"].iter().chain(args).copied().collect();
        self.exec(pod, &command, None)
            .map(|out| out.trim_end().to_string())
    }

    /// `INFO <section>` as fields.
    fn info(&self, pod: &str, section: &str) -> Result<BTreeMap<String, String>, String> {
        let out = self.cli(pod, &["INFO", section])?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The id of the running redis process, new at every start.
    fn run_id(&self, pod: &str) -> Result<String, String> {
        self.info(pod, "server")?
            .remove("run_id")
            .ok_or_else(|| format!("{pod}: INFO server has no run_id"))
    }

    /// Writes `data` on `pod`, one `SET` per key; every reply must be OK.
    fn write(&self, pod: &str, data: &Dataset) -> Result<(), String> {
        let script: String = data
            .pairs
            .iter()
            .map(|(k, v)| format!("SET {k} {v}\n"))
            .collect();
        let out = self.exec(pod, &["redis-cli"], Some(&script))?;
        let replies: Vec<&str> = out.lines().collect();
        if replies.len() == data.pairs.len() && replies.iter().all(|r| *r == "OK") {
            Ok(())
        } else {
            Err(format!("{pod}: SET replies {replies:?}"))
        }
    }

    /// What `pod` holds differently from `data`: empty when it holds every
    /// key with its value.
    fn differences(&self, pod: &str, data: &Dataset) -> Result<Vec<String>, String> {
        let args = data.pairs.iter().map(|(k, _)| k.as_str());
        let mut command = vec!["redis-cli", "MGET"];
        command.extend(args);
        let out = self.exec(pod, &command, None)?;
        // One line per key, an empty one for a missing key: only the last
        // newline is not a separator.
        let values: Vec<&str> = out.strip_suffix('\n').unwrap_or(&out).split('\n').collect();
        if values.len() != data.pairs.len() {
            return Err(format!(
                "{pod}: MGET of {} keys answered {} lines: {out:?}",
                data.pairs.len(),
                values.len()
            ));
        }
        Ok(data
            .pairs
            .iter()
            .zip(values)
            .filter(|((_, want), got)| want != got)
            .map(|((key, want), got)| format!("{key}={got:?} (want {want:?})"))
            .collect())
    }

    /// Err with a summary unless `pod` holds every key of `data`.
    fn holds(&self, pod: &str, data: &Dataset) -> Result<(), String> {
        let wrong = self.differences(pod, data)?;
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{pod} lacks {} of {} keys of batch {:?}, e.g. {:?}",
            wrong.len(),
            data.pairs.len(),
            data.batch,
            &wrong[..wrong.len().min(3)]
        ))
    }

    /// Err unless redis-0 is a master with both replicas online and each
    /// replica's link to redis-0 (by its DNS name) is up.
    fn replication_up(&self) -> Result<(), String> {
        let primary = self.info(PRIMARY, "replication")?;
        let online = primary
            .iter()
            .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
            .count();
        if primary.get("role").map(String::as_str) != Some("master")
            || primary.get("connected_slaves").map(String::as_str) != Some("2")
            || online != 2
        {
            return Err(format!("{PRIMARY}: {primary:?}"));
        }
        for replica in REPLICAS {
            let info = self.info(replica, "replication")?;
            let field = |k: &str| info.get(k).map(String::as_str);
            if field("role") != Some("slave")
                || field("master_host") != Some(&self.primary_fqdn())
                || field("master_link_status") != Some("up")
                || field("master_sync_in_progress") != Some("0")
            {
                return Err(format!("{replica}: {info:?}"));
            }
        }
        Ok(())
    }

    /// Waits until replication is up, with a deadline.
    async fn wait_replication_up(&self, when: &str) {
        let start = Instant::now();
        wait_until(
            &format!("{when}: redis-0 master of two online replicas linked to it"),
            REPLICATION_DEADLINE,
            POLL,
            || async { self.replication_up().map(|()| true) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{when}: replication up after {:?}", start.elapsed());
    }

    /// Waits until each replica holds every key of `data`, with a deadline.
    async fn wait_replicas_hold(&self, data: &Dataset) {
        for replica in REPLICAS {
            let start = Instant::now();
            wait_until(
                &format!("{replica} to hold batch {:?}", data.batch),
                REPLICATION_DEADLINE,
                POLL,
                || async { self.holds(replica, data).map(|()| true) },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "{replica} holds batch {:?} after {:?}",
                data.batch,
                start.elapsed()
            );
        }
    }

    /// Every sample over [`HOLD_WINDOW`] finds every key of every batch on
    /// every pod: one sample could miss a resync that empties a replica a
    /// moment later.
    async fn assert_every_pod_keeps_every_key(&self, when: &str, batches: &[&Dataset]) {
        let start = Instant::now();
        let mut samples = 0;
        while start.elapsed() < HOLD_WINDOW || samples < 3 {
            for pod in [PRIMARY].iter().chain(&REPLICAS) {
                for data in batches {
                    if let Err(e) = self.holds(pod, data) {
                        panic!(
                            "{when}: sample {samples} at {:?} of the window: {e}",
                            start.elapsed()
                        );
                    }
                }
            }
            if let Err(e) = self.replication_up() {
                panic!(
                    "{when}: sample {samples} at {:?}: replication went down: {e}",
                    start.elapsed()
                );
            }
            samples += 1;
            tokio::time::sleep(POLL).await;
        }
        eprintln!("{when}: every pod kept every key over {samples} samples");
    }
}

/// One batch of keys with values no earlier run can have written.
struct Dataset {
    batch: &'static str,
    pairs: Vec<(String, String)>,
}

impl Dataset {
    fn new(batch: &'static str) -> Self {
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let pairs = (0..KEYS)
            .map(|i| (format!("{batch}:{i:03}"), format!("{batch}-{i}-{nonce:x}")))
            .collect();
        Dataset { batch, pairs }
    }
}

/// Applies the example into the test namespace as a user does, waits for
/// three Ready pods, checks that redis-1 reaches the primary by name, and
/// waits until replication is up.
async fn apply_example<'a>(cluster: &'a TestCluster, namespace: &str) -> RedisSet<'a> {
    let image = example_image_is_on_the_node(cluster).await;
    eprintln!("the example runs {image}");
    cluster.kubectl_ok(&["apply", "--namespace", namespace, "--filename", EXAMPLE]);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    for pod in [PRIMARY].iter().chain(&REPLICAS) {
        wait_for_pod(&pods, pod, "to be Ready", ROLLOUT_DEADLINE, is_ready).await;
    }
    let redis = RedisSet {
        cluster,
        namespace: namespace.to_string(),
    };
    let pong = redis
        .exec(
            REPLICAS[0],
            &["redis-cli", "-h", "redis-0.redis", "ping"],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pong.trim(), "PONG", "redis-1 reaches redis-0.redis");
    redis.wait_replication_up("after apply").await;
    redis
}

/// Deletes the namespace and waits until it and the volumes of its claims
/// are gone, so that no test leaves a volume behind. The namespace guard
/// deletes it too when a test fails earlier.
async fn delete_namespace_and_volumes(cluster: &TestCluster, namespace: &str) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let volumes: Vec<String> = claims
        .list(&ListParams::default())
        .await
        .expect("listing claims")
        .items
        .into_iter()
        .filter_map(|c| c.spec.and_then(|s| s.volume_name))
        .collect();
    assert_eq!(volumes.len(), 3, "one bound volume per pod: {volumes:?}");
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces
        .delete(namespace, &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("deleting namespace {namespace}: {e}"));
    let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let start = Instant::now();
    wait_until(
        &format!("namespace {namespace} and its volumes {volumes:?} to be gone"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            if namespaces
                .get_opt(namespace)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err("the namespace is still there".into());
            }
            for volume in &volumes {
                if pvs
                    .get_opt(volume)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Err(format!("volume {volume} is still there"));
                }
            }
            Ok(true)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("namespace and volumes gone after {:?}", start.elapsed());
}

#[tokio::test]
async fn replicas_copy_every_key_refuse_writes_and_the_primary_refuses_writes_without_replicas() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("redis_replicas_copy_and_refuse").await;
    let redis = apply_example(&cluster, &ns.name).await;

    let data = Dataset::new("first");
    redis
        .write(PRIMARY, &data)
        .unwrap_or_else(|e| panic!("{e}"));
    redis.wait_replicas_hold(&data).await;

    // A replica refuses a write and keeps the primary's value.
    let (key, value) = &data.pairs[0];
    for replica in REPLICAS {
        let reply = redis
            .cli(replica, &["SET", key, "written-on-a-replica"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            reply.starts_with("READONLY"),
            "{replica} answered a write with {reply:?}"
        );
        assert_eq!(
            redis.cli(replica, &["GET", key]).as_deref(),
            Ok(value.as_str()),
            "{replica} kept the primary's value"
        );
    }

    // No replica connected: the primary refuses writes and applies none.
    for replica in REPLICAS {
        let reply = redis
            .cli(replica, &["REPLICAOF", "NO", "ONE"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply, "OK", "{replica}: REPLICAOF NO ONE");
    }
    wait_until(
        "redis-0 to count no connected replica",
        Duration::from_secs(30),
        POLL,
        || async {
            let info = redis.info(PRIMARY, "replication")?;
            match info.get("connected_slaves").map(String::as_str) {
                Some("0") => Ok(true),
                _ => Err(format!("{info:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = "written-without-replicas";
    let reply = redis
        .cli(PRIMARY, &["SET", refused, "lost"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        reply.starts_with("NOREPLICAS"),
        "redis-0 without replicas answered a write with {reply:?}"
    );
    assert_eq!(
        redis.cli(PRIMARY, &["EXISTS", refused]).as_deref(),
        Ok("0"),
        "the refused write was not applied"
    );

    // Re-attached, the replicas resync and writes are accepted again.
    for replica in REPLICAS {
        let reply = redis
            .cli(replica, &["REPLICAOF", &redis.primary_fqdn(), "6379"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply, "OK", "{replica}: REPLICAOF redis-0");
    }
    redis.wait_replication_up("after re-attaching").await;
    let again = Dataset::new("again");
    redis
        .write(PRIMARY, &again)
        .unwrap_or_else(|e| panic!("{e}"));
    redis.wait_replicas_hold(&again).await;
    redis
        .assert_every_pod_keeps_every_key("after re-attaching", &[&data, &again])
        .await;

    delete_namespace_and_volumes(&cluster, &ns.name).await;
}

#[tokio::test]
async fn a_primary_that_crashes_or_is_deleted_comes_back_with_every_key_and_no_replica_is_wiped() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("redis_primary_restarts").await;
    let redis = apply_example(&cluster, &ns.name).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);

    let before_crash = Dataset::new("before-crash");
    redis
        .write(PRIMARY, &before_crash)
        .unwrap_or_else(|e| panic!("{e}"));
    redis.wait_replicas_hold(&before_crash).await;

    // A crash: SIGKILL leaves redis no chance to save anything, so it comes
    // back with what it had on disk when the writes were acknowledged.
    let run_id = redis.run_id(PRIMARY).unwrap_or_else(|e| panic!("{e}"));
    let pod = pods.get(PRIMARY).await.expect("reading redis-0");
    let start = Instant::now();
    let pid = kill_container_from_host(&pod, CONTAINER).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("killed redis-0's redis (host PID {pid})");
    let pod = wait_for_pod(
        &pods,
        PRIMARY,
        "to restart its container",
        ROLLOUT_DEADLINE,
        |p| restart_count(p, CONTAINER) >= 1,
    )
    .await;
    let last = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("the restarted container's last state: {}", describe(&pod)));
    assert_eq!(last.exit_code, 137, "killed by SIGKILL: {last:?}");
    wait_primary_restarted(&redis, &run_id, "after the crash").await;
    eprintln!("redis-0 answers again after {:?}", start.elapsed());
    // As soon as it answers, before any replica could have sent it anything.
    redis
        .holds(PRIMARY, &before_crash)
        .unwrap_or_else(|e| panic!("after the crash, the restarted primary: {e}"));
    redis.wait_replication_up("after the crash").await;
    redis
        .assert_every_pod_keeps_every_key("after the crash", &[&before_crash])
        .await;

    let before_delete = Dataset::new("before-delete");
    redis
        .write(PRIMARY, &before_delete)
        .unwrap_or_else(|e| panic!("{e}"));
    redis.wait_replicas_hold(&before_delete).await;

    // The pod deleted: the StatefulSet creates redis-0 again on its claim.
    let run_id = redis.run_id(PRIMARY).unwrap_or_else(|e| panic!("{e}"));
    let old_uid = pods
        .get(PRIMARY)
        .await
        .expect("reading redis-0")
        .uid()
        .expect("a pod has a uid");
    let start = Instant::now();
    cluster.kubectl_ok(&["delete", "pod", PRIMARY, "--namespace", &ns.name]);
    wait_for_pod(
        &pods,
        PRIMARY,
        "to be created again and Ready",
        ROLLOUT_DEADLINE,
        |p| p.uid().as_deref() != Some(old_uid.as_str()) && is_ready(p),
    )
    .await;
    wait_primary_restarted(&redis, &run_id, "after the pod's deletion").await;
    eprintln!("new redis-0 answers after {:?}", start.elapsed());
    for data in [&before_crash, &before_delete] {
        redis
            .holds(PRIMARY, data)
            .unwrap_or_else(|e| panic!("after the pod's deletion, the new primary: {e}"));
    }
    redis.wait_replication_up("after the pod's deletion").await;
    redis
        .assert_every_pod_keeps_every_key(
            "after the pod's deletion",
            &[&before_crash, &before_delete],
        )
        .await;

    delete_namespace_and_volumes(&cluster, &ns.name).await;
}

/// Waits until redis-0 answers PING from a process other than `old_run_id`
/// and says it is a master.
async fn wait_primary_restarted(redis: &RedisSet<'_>, old_run_id: &str, when: &str) {
    wait_until(
        &format!("{when}: a new redis process on redis-0 that answers as master"),
        ROLLOUT_DEADLINE,
        POLL,
        || async {
            let pong = redis.cli(PRIMARY, &["PING"])?;
            if pong != "PONG" {
                return Err(format!("PING answered {pong:?}"));
            }
            let run_id = redis.run_id(PRIMARY)?;
            if run_id == old_run_id {
                return Err("still the process from before".into());
            }
            let info = redis.info(PRIMARY, "replication")?;
            match info.get("role").map(String::as_str) {
                Some("master") => Ok(true),
                _ => Err(format!("{info:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
