//! The test fixture: every end-to-end test of every crate reaches the dev
//! cluster through it. It connects to the cluster named by
//! `BOSUN_KUBECONFIG` (the test script starts one cluster for the whole
//! run); without it, it starts a detached dev cluster in the default state
//! directory once and leaves it running for later tests (`bosun dev down`
//! stops it). Each test gets its own namespace, deleted when it ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use crate::readiness::wait_until;
use crate::tools::Tools;

/// Where `bosun dev up` installs the operator, and the Lease its replicas
/// elect a leader on (deploy/operator).
pub const OPERATOR_NAMESPACE: &str = "bosun-system";
const OPERATOR_LEASE: &str = "bosun-operator";
const OPERATOR_DEPLOYMENT: &str = "bosun-operator";

/// Whether a pod is Ready and not being deleted.
fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A connection to the dev cluster for one test.
pub struct TestCluster {
    /// A client with admin rights.
    pub client: Client,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The tools (kubectl, etcdctl, ...).
    pub tools: Tools,
}

impl TestCluster {
    /// Connects, starting a cluster first when none is named.
    ///
    /// # Panics
    /// When no cluster can be reached: a test without its cluster cannot run.
    pub async fn connect() -> Self {
        let tools = Tools::load(Tools::default_dir())
            .expect("dev cluster tools are built (scripts/setup.sh --cluster)");
        let kubeconfig = match std::env::var_os("BOSUN_KUBECONFIG") {
            Some(path) => PathBuf::from(path),
            None => start_shared_cluster(),
        };
        let client = crate::cluster::client_from(&kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("connecting with {}: {e}", kubeconfig.display()));
        TestCluster {
            client,
            kubeconfig,
            tools,
        }
    }

    /// Creates a namespace named after the test, deleted when the returned
    /// guard is dropped.
    pub async fn namespace(&self, test: &str) -> TestNamespace {
        let name = format!(
            "t-{}-{:x}",
            test.replace('_', "-").chars().take(40).collect::<String>(),
            std::process::id()
        );
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"bosun.dev/test": "true"}}
        }))
        .expect("namespace object");
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        // The ServiceAccount controller must have made `default` before pods can be created.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &name);
        wait_until(
            "the namespace's default ServiceAccount",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let accounts = accounts.clone();
                async move {
                    accounts
                        .get_opt("default")
                        .await
                        .map(|a| a.is_some())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// The state directory of the cluster: `BOSUN_DEV_STATE_DIR` if set,
    /// else the kubeconfig's directory when it is one (`up` writes the admin
    /// kubeconfig there), else the default.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("BOSUN_DEV_STATE_DIR") {
            return PathBuf::from(dir);
        }
        match self.kubeconfig.parent() {
            Some(dir) if dir.join("data").join("STATE").is_file() => dir.to_path_buf(),
            _ => crate::layout::Layout::default_root(),
        }
    }

    /// The cluster's S3 object store, made ready first if it is not (so
    /// that tests also run on a cluster started before it existed).
    ///
    /// # Panics
    /// When it cannot be made ready.
    pub async fn object_store(&self) -> crate::s3::ObjectStore {
        let layout = crate::layout::Layout::new(self.state_dir());
        crate::s3::ensure(&self.client, &self.tools, &layout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The holder of the operator's Lease (`bosun-system/bosun-operator`)
    /// while it is held, with the time of the last transition count.
    pub async fn operator_lease_holder(&self) -> Result<(Option<String>, i32), String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let lease = leases
            .get_opt(OPERATOR_LEASE)
            .await
            .map_err(|e| format!("reading the operator's Lease: {e}"))?;
        let spec = lease.and_then(|l| l.spec).unwrap_or_default();
        Ok((
            spec.holder_identity.filter(|h| !h.is_empty()),
            spec.lease_transitions.unwrap_or(0),
        ))
    }

    /// The operator's pods (of the Deployment `bosun install` makes).
    pub async fn operator_pods(&self) -> Result<Vec<Pod>, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=bosun-operator"))
            .await
            .map_err(|e| format!("listing the operator's pods: {e}"))?;
        Ok(list.items)
    }

    /// Waits until the operator's Deployment runs `replicas` ready pods of
    /// its current spec and no other pod (none still stopping), and returns
    /// them.
    pub async fn wait_for_operator_replicas(
        &self,
        replicas: i32,
        within: Duration,
    ) -> Result<Vec<Pod>, String> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        wait_until(
            &format!("{replicas} ready replicas of the operator"),
            within,
            Duration::from_millis(200),
            || async {
                let deployment = deployments
                    .get(OPERATOR_DEPLOYMENT)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = deployment.status.unwrap_or_default();
                let pods = self.operator_pods().await?;
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                Ok(status.observed_generation >= deployment.metadata.generation
                    && status.replicas == Some(replicas)
                    && status.updated_replicas == Some(replicas)
                    && status.available_replicas == Some(replicas)
                    && pods.len() == ready
                    && i32::try_from(ready) == Ok(replicas))
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        self.operator_pods().await
    }

    /// The operator's pod that holds the Lease, once one does (within `within`).
    pub async fn operator_leader(&self, within: Duration) -> Result<Pod, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (holder, _) = self.operator_lease_holder().await?;
            let pods = self.operator_pods().await?;
            let leader = holder
                .as_deref()
                .and_then(|h| pods.iter().find(|p| p.metadata.name.as_deref() == Some(h)));
            if let Some(leader) = leader {
                return Ok(leader.clone());
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<_> = pods
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                return Err(format!(
                    "no pod of the operator held its Lease within {within:?} (holder {holder:?}, pods {names:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the leading operator's process with SIGKILL from the host (see
    /// [`kill_container_from_host`]) and returns the pod's name, the host
    /// PID and the moment of the kill.
    pub async fn kill_operator_leader(&self) -> Result<(String, i32, Timestamp), String> {
        let leader = self.operator_leader(Duration::from_secs(60)).await?;
        let pid = kill_container_from_host(&leader, "operator")?;
        // After the kill: a renewal stamped later is a live process's.
        let killed_at = Timestamp::now();
        Ok((leader.metadata.name.unwrap_or_default(), pid, killed_at))
    }

    /// Waits until a live process leads the operator: the Lease is renewed
    /// (or acquired) at or after `since`, which a process killed before it
    /// cannot do. Returns the holder and how long the wait took.
    pub async fn wait_for_operator_leader_since(
        &self,
        since: Timestamp,
        within: Duration,
    ) -> Result<(String, Duration), String> {
        let started = tokio::time::Instant::now();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        loop {
            let spec = leases
                .get_opt(OPERATOR_LEASE)
                .await
                .map_err(|e| format!("reading the operator's Lease: {e}"))?
                .and_then(|l| l.spec)
                .unwrap_or_default();
            let renewed = spec.renew_time.as_ref().is_some_and(|t| t.0 >= since);
            if let (true, Some(holder)) = (renewed, spec.holder_identity.clone())
                && !holder.is_empty()
            {
                return Ok((holder, started.elapsed()));
            }
            if started.elapsed() > within {
                return Err(format!(
                    "nobody renewed the operator's Lease within {within:?} of {since}: {spec:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin kubeconfig with every user's credentials replaced by a
    /// one-hour token of ServiceAccount `account` in `ns`: a kubeconfig (as
    /// YAML) that acts with exactly that account's RBAC.
    pub fn service_account_kubeconfig(&self, ns: &str, account: &str) -> String {
        let token = self.kubectl_ok(&["create", "token", account, "-n", ns, "--duration=1h"]);
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("admin kubeconfig");
        let mut config: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&admin).expect("admin kubeconfig is YAML");
        let users = config
            .get_mut("users")
            .and_then(|u| u.as_sequence_mut())
            .expect("kubeconfig users");
        for user in users {
            let mut credentials = serde_yaml_ng::Mapping::new();
            credentials.insert("token".into(), token.trim().into());
            user["user"] = serde_yaml_ng::Value::Mapping(credentials);
        }
        serde_yaml_ng::to_string(&config).expect("kubeconfig serialises")
    }

    /// Runs the cluster's own kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let kubectl = self.tools.bin("kubectl").expect("kubectl is built");
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns its standard output, panicking with its
    /// standard error when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A directory for one test's `file` backups, below the cluster's backups
/// directory (which the operator's pods mount at the same path), removed
/// when dropped. Not created: the operator creates it on its first backup.
pub struct BackupDir(pub PathBuf);

impl BackupDir {
    /// The directory of `test`, emptied.
    pub fn new(cluster: &TestCluster, test: &str) -> Self {
        let path = crate::layout::Layout::new(cluster.state_dir())
            .backups()
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        BackupDir(path)
    }

    /// Every file below the directory, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for BackupDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace that is deleted when dropped (also when its test panics).
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // The test's runtime is ending (or blocked in this very drop), so the
        // delete runs on a thread of its own, with its own runtime and
        // client, and the drop waits for the API server's answer.
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let client = crate::cluster::client_from(&kubeconfig)
                    .await
                    .map_err(|e| e.to_string())?;
                let api: Api<Namespace> = Api::all(client);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = outcome.map_err(|_| "the delete thread panicked".to_string()) {
            eprintln!("deleting test namespace {}: {e}", self.name);
        }
    }
}

/// Kills the main process of `container` in `pod` with SIGKILL from the
/// host, the way the kernel's OOM killer ends it, and returns its host PID.
///
/// `kubectl exec <pod> -- kill -9 1` cannot do this: etcd is PID 1 of the
/// container's PID namespace, and the kernel drops signals sent to a
/// namespace's init from inside the namespace unless the process handles
/// them, which SIGKILL cannot be. From the host's PID namespace (the test
/// runs on the node, as root, like the kubelet) the signal is delivered.
/// The process is found by the container ID in its cgroup path and by being
/// PID 1 in its own namespace (`NSpid`).
pub fn kill_container_from_host(pod: &Pod, container: &str) -> Result<i32, String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
        .ok_or_else(|| format!("container {container} has no container ID yet"))?;
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let in_container = std::fs::read_to_string(entry.path().join("cgroup"))
            .is_ok_and(|cgroups| cgroups.contains(&id));
        let is_init = std::fs::read_to_string(entry.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|pids| pids.split_whitespace().last())
                == Some("1")
        });
        if in_container && is_init {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(|e| format!("kill -9 {pid}: {e}"))?;
            return Ok(pid);
        }
    }
    Err(format!(
        "no process on this host is PID 1 of container {id}; is the test running on the dev cluster's node as root?"
    ))
}

/// Starts (once, under a lock) a detached cluster in the default state dir.
fn start_shared_cluster() -> PathBuf {
    let layout = crate::layout::Layout::new(crate::layout::Layout::default_root());
    let kubeconfig = layout.admin_kubeconfig();
    std::fs::create_dir_all(layout.root()).expect("state dir");
    let lock_path = layout.root().join("fixture.lock");
    let lock = std::fs::File::create(&lock_path).expect("fixture lock file");
    let _guard =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("fixture lock");
    let dev = crate::cluster::DevCluster::new(layout.root());
    if dev.running_supervisor().is_none() {
        let bosun = bosun_binary();
        let status = Command::new(&bosun)
            .args(["dev", "up", "--detach"])
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", bosun.display()));
        assert!(status.success(), "bosun dev up --detach failed");
    }
    kubeconfig
}

/// The `bosun` binary of this workspace's target directory.
pub fn bosun_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BOSUN_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug").join("bosun")
}
