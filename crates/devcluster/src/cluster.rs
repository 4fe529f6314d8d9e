//! `bosun dev up` from start to teardown: check the machine, clear what a
//! crashed run left, prepare the host network, make certificates and
//! configuration, start the components in order (waiting for each one that
//! the next needs), install the add-ons (the object store while the rest of
//! the cluster settles), wait until the cluster is usable, report `ready`,
//! and on shutdown take everything down again.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

use crate::components::{ClusterFiles, IDENTITIES, NODE_NAME, Ports, write_configs};
use crate::layout::Layout;
use crate::network::{self, Network};
use crate::pki::Pki;
use crate::readiness::{self, wait_until};
use crate::supervisor::{self, StatusTable, Supervised};
use crate::tools::Tools;
use crate::{addons, image, s3, storage, teardown};

/// The etcd version that stores the cluster's own objects.
pub const CLUSTER_ETCD_VERSION: &str = "3.6.16";
/// Bumped when the state directory's layout changes incompatibly.
const STATE_FORMAT: u32 = 1;

/// How `bosun dev up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Wipe the cluster's data before starting.
    pub fresh: bool,
    /// Also write the admin kubeconfig here.
    pub kubeconfig: Option<PathBuf>,
    /// The tools directory.
    pub tools_dir: PathBuf,
    /// The bosun binary to put into the operator image, if any.
    pub bosun_binary: Option<PathBuf>,
    /// Run `bosun operator` (this binary) on this host, as a supervised
    /// process, against the cluster once it is ready. (The usual way, the
    /// operator in the cluster, is installed by the caller once `up` returns.)
    pub host_operator: bool,
}

/// What can stop `bosun dev up`.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Not root.
    #[error(
        "bosun dev must run as root: it starts a kubelet, containerd and a network bridge (try `sudo bosun dev up`)"
    )]
    NotRoot,
    /// Another supervisor runs from this state directory.
    #[error(
        "a dev cluster already runs from {state_dir} (supervisor pid {pid}); stop it with `bosun dev down` or use another --state-dir"
    )]
    AlreadyRunning {
        /// The state directory.
        state_dir: PathBuf,
        /// The running supervisor.
        pid: i32,
    },
    /// The state directory was written by an incompatible version.
    #[error(
        "{state_dir} holds a dev cluster of another bosun version ({found}; this one writes {expected}); keep it by using that version, or start over with `bosun dev up --fresh` (deletes its data)"
    )]
    StaleState {
        /// The state directory.
        state_dir: PathBuf,
        /// What it holds.
        found: String,
        /// What this version writes.
        expected: String,
    },
    /// A port a component needs is taken.
    #[error("port {port} ({component}) is in use by another program; stop it and try again")]
    PortInUse {
        /// The port.
        port: u16,
        /// Which component needs it.
        component: &'static str,
    },
    /// Missing tools.
    #[error(transparent)]
    Tools(#[from] crate::tools::ToolsError),
    /// Host network.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Images.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Add-ons.
    #[error(transparent)]
    Addon(#[from] bosun_runtime::apply::ApplyError),
    /// The object store.
    #[error(transparent)]
    ObjectStore(#[from] s3::ObjectStoreError),
    /// A wait ran out.
    #[error("{0}; see the logs in {1}")]
    Wait(readiness::Timeout, PathBuf),
    /// A component could not be started.
    #[error("{0}")]
    Start(std::io::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The admin kubeconfig could not be used.
    #[error("connecting to the dev cluster: {0}")]
    Client(String),
}

/// The fixed parts of a dev cluster under one state directory.
#[derive(Clone, Debug)]
pub struct DevCluster {
    /// Its files.
    pub layout: Layout,
    /// Its network.
    pub network: Network,
    /// Its ports.
    pub ports: Ports,
}

impl DevCluster {
    /// The dev cluster of `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        DevCluster {
            layout: Layout::new(state_dir),
            network: Network::default(),
            ports: Ports::default(),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.layout.root().join("supervisor.pid")
    }

    /// The PID of a live supervisor of this state directory, if one runs.
    pub fn running_supervisor(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("bosun") && pid != std::process::id() as i32).then_some(pid)
    }

    /// Removes everything of this cluster from the host except its data.
    pub async fn clean_host(&self, tools: Option<&Tools>) {
        let kube_proxy = tools.and_then(|t| t.bin("kube-proxy").ok());
        teardown::tear_down(&self.layout, &self.network, kube_proxy.as_deref()).await;
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn state_stamp(tools: &Tools) -> String {
    format!(
        "format={STATE_FORMAT} kubernetes={} etcd={CLUSTER_ETCD_VERSION}",
        tools.version("KUBERNETES_VERSION").unwrap_or("unknown")
    )
}

/// Refuses a state directory written by another version, unless it is empty.
fn check_state_stamp(layout: &Layout, tools: &Tools) -> Result<(), DevError> {
    let stamp_file = layout.data().join("STATE");
    let expected = state_stamp(tools);
    match std::fs::read_to_string(&stamp_file) {
        Ok(found) if found.trim() == expected => Ok(()),
        Ok(found) => Err(DevError::StaleState {
            state_dir: layout.root().to_path_buf(),
            found: found.trim().to_string(),
            expected,
        }),
        Err(_) => {
            std::fs::create_dir_all(layout.data()).map_err(io_error(&layout.data()))?;
            std::fs::write(&stamp_file, &expected).map_err(io_error(&stamp_file))
        }
    }
}

fn check_ports(dev: &DevCluster) -> Result<(), DevError> {
    let p = dev.ports;
    let loopback = Ipv4Addr::LOCALHOST;
    let wanted = [
        (loopback, p.etcd_client, "etcd client"),
        (loopback, p.etcd_peer, "etcd peer"),
        (Ipv4Addr::UNSPECIFIED, p.apiserver, "kube-apiserver"),
        (loopback, p.controller_manager, "kube-controller-manager"),
        (loopback, p.scheduler, "kube-scheduler"),
        (Ipv4Addr::UNSPECIFIED, p.kubelet, "kubelet"),
        (loopback, p.kubelet_healthz, "kubelet healthz"),
        (loopback, p.proxy_healthz, "kube-proxy healthz"),
        (loopback, p.proxy_metrics, "kube-proxy metrics"),
    ];
    for (addr, port, component) in wanted {
        if TcpListener::bind(SocketAddr::from((addr, port))).is_err() {
            return Err(DevError::PortInUse { port, component });
        }
    }
    Ok(())
}

/// Connects with a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<Client, DevError> {
    let config = Kubeconfig::read_from(kubeconfig).map_err(|e| DevError::Client(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| DevError::Client(e.to_string()))?;
    Client::try_from(config).map_err(|e| DevError::Client(e.to_string()))
}

/// A running dev cluster, until [`RunningCluster::stop`].
pub struct RunningCluster {
    dev: DevCluster,
    tools: Tools,
    components: Vec<Supervised>,
    status: StatusTable,
    provisioner: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    operator_image: Option<image::BuiltImage>,
}

impl RunningCluster {
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dev.layout.admin_kubeconfig()
    }

    /// The components' state.
    pub fn status(&self) -> &StatusTable {
        &self.status
    }

    /// The bosun image imported into containerd, when a bosun binary was given.
    pub fn operator_image(&self) -> Option<&image::BuiltImage> {
        self.operator_image.as_ref()
    }

    /// Where `file` backups go (see [`Layout::backups`]).
    pub fn backups_dir(&self) -> PathBuf {
        self.dev.layout.backups()
    }

    /// Stops the components in reverse order and removes everything from the host.
    pub async fn stop(mut self) {
        if let Some((token, task)) = self.provisioner.take() {
            token.cancel();
            let _ = task.await;
        }
        // Pods first, while the kubelet cannot restart them any more.
        while let Some(component) = self.components.pop() {
            if component.name == "containerd" {
                teardown::kill_pods().await;
            }
            tracing::info!("stopping {}", component.name);
            component.stop().await;
        }
        self.dev.clean_host(Some(&self.tools)).await;
        let _ = std::fs::remove_file(self.dev.pid_file());
    }
}

/// Brings the cluster up and returns once it is ready.
pub async fn up(opts: &UpOptions) -> Result<RunningCluster, DevError> {
    if !is_root() {
        return Err(DevError::NotRoot);
    }
    let dev = DevCluster::new(&opts.state_dir);
    if let Some(pid) = dev.running_supervisor() {
        return Err(DevError::AlreadyRunning {
            state_dir: opts.state_dir.clone(),
            pid,
        });
    }
    let tools = Tools::load(&opts.tools_dir)?;
    let layout = dev.layout.clone();

    // Leftover processes of this state directory (a crashed run) hold the
    // ports; stop them first. Then the ports must be free: if another
    // cluster holds them, touching the host network would break it.
    let leftovers = supervisor::kill_processes_using(layout.root()).await;
    if leftovers > 0 {
        // The kernel may still be closing the sockets of the processes just
        // stopped; give it a moment before calling a port taken.
        let _ = wait_until(
            "the stopped processes' ports to be free",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let dev = dev.clone();
                async move { Ok(check_ports(&dev).is_ok()) }
            },
        )
        .await;
    }
    check_ports(&dev)?;
    tracing::info!("clearing what an earlier run left on the host");
    dev.clean_host(Some(&tools)).await;
    if opts.fresh {
        let data = layout.data();
        if data.exists() {
            tracing::info!("--fresh: deleting {}", data.display());
            std::fs::remove_dir_all(&data).map_err(io_error(&data))?;
        }
    }
    check_state_stamp(&layout, &tools)?;
    create_backups_dir(&layout.backups())?;
    std::fs::create_dir_all(layout.run()).map_err(io_error(&layout.run()))?;
    std::fs::write(dev.pid_file(), std::process::id().to_string())
        .map_err(io_error(&dev.pid_file()))?;

    let files = ClusterFiles {
        layout: layout.clone(),
        network: dev.network.clone(),
        ports: dev.ports,
        tools_bin: tools.dir().join("bin"),
        etcd_dir: tools.etcd_dir(CLUSTER_ETCD_VERSION)?,
    };
    // Every program must exist before anything is changed on the host.
    for component in files.components() {
        if !component.program.is_file() {
            return Err(crate::tools::ToolsError::Missing {
                program: component.name.to_string(),
                dir: component
                    .program
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            }
            .into());
        }
    }

    tracing::info!("certificates and configuration");
    let pki = Pki::open(&layout.pki())?;
    pki.serving("apiserver", "kube-apiserver", &files.apiserver_hosts())?;
    pki.serving(
        "kubelet-serving",
        &format!("system:node:{NODE_NAME}"),
        &[
            NODE_NAME.to_string(),
            dev.network.node_ip.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
    )?;
    pki.service_account_key()?;
    let mut clients = vec![];
    for identity in IDENTITIES {
        clients.push((*identity, pki.client(*identity)?));
    }
    write_configs(&files, &pki.ca_cert(), &clients).map_err(io_error(&layout.config()))?;
    let admin_src = layout.kubeconfigs().join("admin.kubeconfig");

    tracing::info!("images");
    let images = image::build_all(&tools, &layout.images(), opts.bosun_binary.as_deref())?;

    teardown::create_pod_cgroups().map_err(io_error(Path::new("/sys/fs/cgroup")))?;
    tracing::info!("host network");
    network::set_up(&dev.network, &layout.root().join("saved-sysctls"))?;

    let status = StatusTable::default();
    let mut running = RunningCluster {
        dev: dev.clone(),
        tools: tools.clone(),
        components: vec![],
        status: status.clone(),
        provisioner: None,
        operator_image: images
            .iter()
            .find(|i| i.name == image::BOSUN_IMAGE)
            .cloned(),
    };
    let result = start_components(&mut running, &files, &images, &admin_src).await;
    if let Err(e) = result {
        tracing::error!("{e}; taking the cluster down again");
        running.stop().await;
        return Err(e);
    }
    if opts.host_operator
        && let Some(bosun) = &opts.bosun_binary
    {
        tracing::info!("starting the bosun operator");
        let spec = crate::components::ComponentSpec {
            name: "bosun-operator",
            program: bosun.clone(),
            args: vec![
                "operator".into(),
                "--kubeconfig".into(),
                admin_src.to_string_lossy().into_owned(),
                format!("--backup-dir={}", layout.backups().display()),
            ],
            env: vec![],
        };
        match supervisor::start(spec, &layout.logs(), running.status.clone()) {
            Ok(operator) => running.components.push(operator),
            Err(e) => {
                running.stop().await;
                return Err(DevError::Start(e));
            }
        }
    }
    std::fs::copy(&admin_src, layout.admin_kubeconfig())
        .map_err(io_error(&layout.admin_kubeconfig()))?;
    if let Some(extra) = &opts.kubeconfig {
        std::fs::copy(&admin_src, extra).map_err(io_error(extra))?;
    }
    Ok(running)
}

/// The user the operator's container runs as (`runAsUser` in
/// deploy/operator/deployment.yaml).
const OPERATOR_UID: u32 = 65532;

/// Makes the `file` backups directory, owned by the operator's user so that
/// the operator in its pod (not root, no capabilities) can write to it.
fn create_backups_dir(dir: &Path) -> Result<(), DevError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let operator = Some(nix::unistd::Uid::from_raw(OPERATOR_UID));
    let group = Some(nix::unistd::Gid::from_raw(OPERATOR_UID));
    nix::unistd::chown(dir, operator, group).map_err(|e| DevError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

async fn start_components(
    running: &mut RunningCluster,
    files: &ClusterFiles,
    images: &[image::BuiltImage],
    admin_kubeconfig: &Path,
) -> Result<(), DevError> {
    let layout = &files.layout;
    let logs = layout.logs();
    let wait_error = |e| DevError::Wait(e, logs.clone());
    let fast = Duration::from_millis(100);
    for spec in files.components() {
        let name = spec.name;
        tracing::info!("starting {name}");
        running
            .components
            .push(supervisor::start(spec, &logs, running.status.clone()).map_err(DevError::Start)?);
        match name {
            "etcd" => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, files.ports.etcd_client));
                wait_until(
                    "etcd to accept connections",
                    Duration::from_secs(30),
                    fast,
                    || async move { Ok(tokio::net::TcpStream::connect(addr).await.is_ok()) },
                )
                .await
                .map_err(wait_error)?;
            }
            "containerd" => {
                let socket = layout.containerd_socket();
                wait_until("containerd's socket", Duration::from_secs(30), fast, || {
                    let socket = socket.clone();
                    async move { Ok(tokio::net::UnixStream::connect(&socket).await.is_ok()) }
                })
                .await
                .map_err(wait_error)?;
                let ctr = running.tools.bin("ctr")?;
                image::import(&ctr, &layout.containerd_socket(), images).await?;
            }
            "kube-apiserver" => {
                let client = client_from(admin_kubeconfig).await?;
                wait_until(
                    "the API server's /readyz",
                    Duration::from_secs(60),
                    fast,
                    || {
                        let client = client.clone();
                        async move { readiness::api_ready(&client).await }
                    },
                )
                .await
                .map_err(wait_error)?;
            }
            _ => {}
        }
    }
    let client = client_from(admin_kubeconfig).await?;
    wait_until(
        &format!("node {NODE_NAME} to be Ready"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let client = client.clone();
            async move { readiness::node_ready(&client, NODE_NAME).await }
        },
    )
    .await
    .map_err(wait_error)?;

    tracing::info!("add-ons: storage, DNS, bosun CRDs, object store");
    addons::apply_resource(&client, &storage::storage_class()).await?;
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let client = client.clone();
        let volumes = layout.volumes();
        let token = token.clone();
        async move {
            if let Err(e) =
                storage::run_provisioner(client, volumes, NODE_NAME.to_string(), token).await
            {
                tracing::error!("local-path provisioner stopped: {e}");
            }
        }
    });
    running.provisioner = Some((token, task));
    addons::apply_yaml(
        &client,
        "coredns",
        &addons::coredns_manifests(
            &files.network,
            &image::coredns_image(
                running
                    .tools
                    .version("COREDNS_VERSION")
                    .unwrap_or("v1.15.0"),
            ),
        ),
    )
    .await?;
    for crd in bosun_api::crd::all() {
        addons::apply_resource(&client, &crd).await?;
    }

    // The object store's pod starts while the cluster settles, so that it
    // adds its image import and start to `up` only where they take longer.
    let object_store = async {
        s3::ensure(&client, &running.tools, layout)
            .await
            .map_err(DevError::from)
    };
    let settled = async {
        wait_until(
            "the default ServiceAccount",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let client = client.clone();
                async move { readiness::default_service_account(&client).await }
            },
        )
        .await
        .map_err(wait_error)?;
        let dns = files.network.dns_service_ip;
        wait_until(
            "cluster DNS to answer kubernetes.default.svc.cluster.local",
            Duration::from_secs(90),
            Duration::from_millis(250),
            || async move {
                readiness::dns_lookup(
                    dns,
                    "kubernetes.default.svc.cluster.local",
                    Duration::from_millis(500),
                )
                .await
                .map(|addrs| !addrs.is_empty())
            },
        )
        .await
        .map_err(wait_error)
    };
    tokio::try_join!(settled, object_store)?;
    Ok(())
}
