//! What the dev cluster's end-to-end tests share: etcd pod builders (a
//! single member that advertises its pod IP, a member of a cluster that finds
//! its peers by DNS), an `etcdctl` runner on the host, waits for pods, and a
//! crash of a container's main process as the kernel's OOM killer makes it.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bosun_devcluster::fixture::TestCluster;
use bosun_devcluster::readiness::wait_until;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// The etcd release the tests run, in pods and as `etcdctl` on the host.
pub const ETCD_VERSION: &str = "3.6.16";
/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// How long a pod may take to become Ready: image unpacking, a volume
/// being provisioned and etcd electing a leader all fit in well under this.
pub const POD_DEADLINE: Duration = Duration::from_secs(120);
/// How often waits look again.
pub const POLL: Duration = Duration::from_millis(250);
/// Where an etcd pod mounts its data volume; etcd's data directory is a
/// subdirectory so that etcd creates it with the permissions it wants.
const DATA_MOUNT: &str = "/var/lib/etcd";

/// The etcd image of [`ETCD_VERSION`].
pub fn etcd_image() -> String {
    bosun_devcluster::image::etcd_image(ETCD_VERSION)
}

/// The DNS name a pod with `hostname` and `subdomain` gets from a headless
/// Service named like the subdomain.
pub fn member_fqdn(name: &str, service: &str, namespace: &str) -> String {
    format!("{name}.{service}.{namespace}.svc.cluster.local")
}

/// etcd's command line for one member that advertises `host` for both its
/// client and its peer URL and listens on every address.
fn etcd_command(name: &str, host: &str, initial_cluster: &str) -> Vec<String> {
    vec![
        "/usr/local/bin/etcd".into(),
        format!("--name={name}"),
        format!("--data-dir={DATA_MOUNT}/data"),
        format!("--listen-client-urls=http://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{host}:{PEER_PORT}"),
        format!("--initial-cluster={initial_cluster}"),
        "--initial-cluster-state=new".into(),
        "--log-level=warn".into(),
    ]
}

/// The etcd container: the pod's IP from the downward API (so `$(POD_IP)`
/// works in the command), and Ready only once `/health` says the member
/// has a leader.
fn etcd_container(command: Vec<String>) -> serde_json::Value {
    json!({
        "name": "etcd",
        "image": etcd_image(),
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        ],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "peer", "containerPort": PEER_PORT}
        ],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": CLIENT_PORT},
            "periodSeconds": 1,
            "failureThreshold": 3
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}]
    })
}

/// A one-member etcd cluster in a pod named `name`, labelled `app: <app>`,
/// advertising its pod IP; its data on the PersistentVolumeClaim `claim`, or
/// in an emptyDir without one.
pub fn single_member_pod(name: &str, app: &str, claim: Option<&str>) -> Pod {
    let command = etcd_command(
        name,
        "$(POD_IP)",
        &format!("{name}=http://$(POD_IP):{PEER_PORT}"),
    );
    let volume = match claim {
        Some(claim) => json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}),
        None => json!({"name": "data", "emptyDir": {}}),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [etcd_container(command)],
            "volumes": [volume]
        }
    }))
    .expect("single-member etcd pod")
}

/// One member of the etcd cluster `members`, in a pod named `name` behind
/// the headless Service `service`: the pod's `hostname`/`subdomain` give it
/// the DNS name [`member_fqdn`], which it advertises, and `--initial-cluster`
/// names every member by DNS only. An init container waits until the pod's
/// own name resolves: etcd exits when it cannot resolve the name it
/// advertises, which the DNS record lags behind (the etcd-operator pattern).
pub fn peer_member_pod(name: &str, service: &str, namespace: &str, members: &[&str]) -> Pod {
    let initial_cluster = members
        .iter()
        .map(|m| {
            format!(
                "{m}=http://{}:{PEER_PORT}",
                member_fqdn(m, service, namespace)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let own = member_fqdn(name, service, namespace);
    let command = etcd_command(name, &own, &initial_cluster);
    let wait_for_dns =
        format!("until nslookup {own} >/dev/null 2>&1; do echo waiting for {own}; sleep 1; done");
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": service}},
        "spec": {
            "hostname": name,
            "subdomain": service,
            "terminationGracePeriodSeconds": 5,
            "initContainers": [{
                "name": "wait-for-dns",
                "image": etcd_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", wait_for_dns]
            }],
            "containers": [etcd_container(command)],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }))
    .expect("etcd peer pod")
}

/// Creates `pod`, panicking when the API server refuses it.
pub async fn create_pod(pods: &Api<Pod>, pod: &Pod) -> Pod {
    pods.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {}: {e}", pod.name_any()))
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP, once it has one.
pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// How often the kubelet restarted `container`.
pub fn restart_count(pod: &Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}

/// A line saying where a pod is: its phase and each container's state, for
/// the message of a wait that ran out.
pub fn describe(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.as_ref();
            let state = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
                format!(
                    "waiting {} {}",
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                )
            } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                format!(
                    "terminated {} (exit {})",
                    t.reason.as_deref().unwrap_or(""),
                    t.exit_code
                )
            } else {
                "running".into()
            };
            format!(
                "{}: {state}, ready={}, restarts={}",
                c.name, c.ready, c.restart_count
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "phase {}; {containers}",
        status.phase.as_deref().unwrap_or("?")
    )
}

/// Waits until pod `name` satisfies `wanted` and returns it as it was then;
/// panics after `deadline` with the pod's last state.
pub async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    deadline: Duration,
    wanted: impl Fn(&Pod) -> bool,
) -> Pod {
    let found: Arc<Mutex<Option<Pod>>> = Arc::default();
    let wanted = &wanted;
    let start = Instant::now();
    wait_until(&format!("pod {name} {what}"), deadline, POLL, || {
        let found = found.clone();
        async move {
            match pods.get_opt(name).await.map_err(|e| e.to_string())? {
                Some(pod) if wanted(&pod) => {
                    *found.lock().expect("pod cell") = Some(pod);
                    Ok(true)
                }
                Some(pod) => Err(describe(&pod)),
                None => Err("no such pod".into()),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pod {name} {what} after {:?}", start.elapsed());
    let pod = found.lock().expect("pod cell").take();
    pod.expect("the wait found the pod")
}

/// Waits until pod `name` is Ready and returns it.
pub async fn wait_ready(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for_pod(pods, name, "to be Ready", POD_DEADLINE, is_ready).await
}

/// Deletes pod `name` and waits until it is gone from the API.
pub async fn delete_pod_and_wait(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
    let start = Instant::now();
    wait_until(
        &format!("pod {name} to be gone"),
        POD_DEADLINE,
        POLL,
        || async move {
            pods.get_opt(name)
                .await
                .map(|p| p.is_none())
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pod {name} gone after {:?}", start.elapsed());
}

/// The `etcdctl` of [`ETCD_VERSION`] from the tools, run on the host.
pub struct Etcdctl {
    program: PathBuf,
}

impl Etcdctl {
    /// The tools' etcdctl.
    pub fn new(cluster: &TestCluster) -> Self {
        let dir = cluster
            .tools
            .etcd_dir(ETCD_VERSION)
            .unwrap_or_else(|e| panic!("{e}"));
        Etcdctl {
            program: dir.join("etcdctl"),
        }
    }

    /// Runs `etcdctl --endpoints=<endpoints> <args>` and returns its
    /// standard output, or an error with its standard error.
    pub async fn run(&self, endpoints: &[String], args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .map_err(|_| format!("etcdctl {args:?} did not finish within 20s"))?
            .map_err(|e| format!("running {}: {e}", self.program.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?} against {endpoints:?}: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Writes `key`.
    pub async fn put(&self, endpoints: &[String], key: &str, value: &str) -> Result<(), String> {
        self.run(endpoints, &["put", key, value]).await.map(drop)
    }

    /// Reads `key`: `None` when it does not exist.
    pub async fn get(&self, endpoints: &[String], key: &str) -> Result<Option<String>, String> {
        let out = self
            .run(endpoints, &["get", key, "--print-value-only"])
            .await?;
        let value = out.strip_suffix('\n').unwrap_or(&out);
        Ok((!out.is_empty()).then(|| value.to_string()))
    }
}

/// The client endpoint of an etcd member at `ip`.
pub fn client_endpoint(ip: &str) -> String {
    format!("http://{ip}:{CLIENT_PORT}")
}
