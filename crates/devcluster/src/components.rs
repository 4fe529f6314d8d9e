//! What each Kubernetes component is started with: its program, flags and
//! configuration files, computed from the layout, the network and the tools.
//! Pure functions return the text of each file and the command of each
//! component; [`write_configs`] puts the files on disk.

use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::network::Network;
use crate::pki::{CertFiles, ClientIdentity};

/// The node's name in the API.
pub const NODE_NAME: &str = "bosun-dev";
/// Where Debian's CNI plugins live.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The cgroup under which the kubelet puts every pod, so teardown finds them.
pub const CGROUP_ROOT: &str = "/bosun";

/// Ports the components listen on; all are checked to be free before start.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// The cluster's own etcd, client side (loopback).
    pub etcd_client: u16,
    /// The cluster's own etcd, peer side (loopback).
    pub etcd_peer: u16,
    /// kube-apiserver (node IP).
    pub apiserver: u16,
    /// kube-controller-manager's secure port (loopback).
    pub controller_manager: u16,
    /// kube-scheduler's secure port (loopback).
    pub scheduler: u16,
    /// kubelet API (node IP).
    pub kubelet: u16,
    /// kubelet healthz (loopback).
    pub kubelet_healthz: u16,
    /// kube-proxy healthz (loopback).
    pub proxy_healthz: u16,
    /// kube-proxy metrics (loopback).
    pub proxy_metrics: u16,
}

impl Default for Ports {
    fn default() -> Self {
        // etcd runs on ports other than 2379/2380 so that a user's own etcd
        // (or one of bosun's tests) on the host does not collide with it.
        Ports {
            etcd_client: 12379,
            etcd_peer: 12380,
            apiserver: 6443,
            controller_manager: 10257,
            scheduler: 10259,
            kubelet: 10250,
            kubelet_healthz: 10248,
            proxy_healthz: 10256,
            proxy_metrics: 10249,
        }
    }
}

/// One supervised process.
#[derive(Clone, Debug)]
pub struct ComponentSpec {
    /// Short name, also the log file's stem.
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// Client identities of the components, as the bootstrap RBAC roles know them.
pub const IDENTITIES: &[ClientIdentity<'static>] = &[
    ClientIdentity {
        file: "admin",
        user: "kubernetes-admin",
        group: Some("system:masters"),
    },
    ClientIdentity {
        file: "controller-manager",
        user: "system:kube-controller-manager",
        group: None,
    },
    ClientIdentity {
        file: "scheduler",
        user: "system:kube-scheduler",
        group: None,
    },
    ClientIdentity {
        file: "kubelet",
        user: "system:node:bosun-dev",
        group: Some("system:nodes"),
    },
    ClientIdentity {
        file: "kube-proxy",
        user: "system:kube-proxy",
        group: None,
    },
    ClientIdentity {
        file: "apiserver-kubelet-client",
        user: "kube-apiserver-kubelet-client",
        group: Some("system:masters"),
    },
];

/// Everything the component builders need to know.
#[derive(Clone, Debug)]
pub struct ClusterFiles {
    /// The state directory layout.
    pub layout: Layout,
    /// The network.
    pub network: Network,
    /// The ports.
    pub ports: Ports,
    /// The tools' `bin/` directory.
    pub tools_bin: PathBuf,
    /// The directory of the etcd version that stores the cluster's own data.
    pub etcd_dir: PathBuf,
}

impl ClusterFiles {
    fn pki(&self, name: &str) -> String {
        path(&self.layout.pki().join(name))
    }

    fn config(&self, name: &str) -> String {
        path(&self.layout.config().join(name))
    }

    fn kubeconfig(&self, name: &str) -> String {
        path(&self.layout.kubeconfigs().join(format!("{name}.kubeconfig")))
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.network.node_ip, self.ports.apiserver)
    }

    /// The SANs of the API server's serving certificate.
    pub fn apiserver_hosts(&self) -> Vec<String> {
        vec![
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
            "localhost".into(),
            "127.0.0.1".into(),
            self.network.node_ip.to_string(),
            self.network.kubernetes_service_ip.to_string(),
        ]
    }

    /// The components, in start order.
    pub fn components(&self) -> Vec<ComponentSpec> {
        vec![
            self.etcd(),
            self.containerd(),
            self.apiserver(),
            self.controller_manager(),
            self.scheduler(),
            self.kubelet(),
            self.kube_proxy(),
        ]
    }

    fn kube(&self, name: &'static str, args: Vec<String>) -> ComponentSpec {
        ComponentSpec {
            name,
            program: self.tools_bin.join(name),
            args,
            env: vec![],
        }
    }

    fn etcd(&self) -> ComponentSpec {
        let client = format!("http://127.0.0.1:{}", self.ports.etcd_client);
        let peer = format!("http://127.0.0.1:{}", self.ports.etcd_peer);
        ComponentSpec {
            name: "etcd",
            program: self.etcd_dir.join("etcd"),
            args: vec![
                "--name=bosun-dev".into(),
                format!("--data-dir={}", path(&self.layout.data().join("etcd"))),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=bosun-dev={peer}"),
                "--listen-metrics-urls=".into(),
                "--log-level=warn".into(),
            ],
            env: vec![],
        }
    }

    fn containerd(&self) -> ComponentSpec {
        let search_path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            path(&self.tools_bin)
        );
        ComponentSpec {
            name: "containerd",
            program: self.tools_bin.join("containerd"),
            args: vec![format!("--config={}", self.config("containerd.toml"))],
            // containerd finds its shim (and the shim finds runc) on PATH.
            env: vec![("PATH".into(), search_path)],
        }
    }

    fn apiserver(&self) -> ComponentSpec {
        let net = &self.network;
        self.kube(
            "kube-apiserver",
            vec![
                format!("--etcd-servers=http://127.0.0.1:{}", self.ports.etcd_client),
                format!("--bind-address={}", net.node_ip),
                format!("--advertise-address={}", net.node_ip),
                format!("--secure-port={}", self.ports.apiserver),
                format!("--service-cluster-ip-range={}", net.service_cidr),
                "--authorization-mode=Node,RBAC".into(),
                "--anonymous-auth=true".into(),
                format!("--client-ca-file={}", self.pki("ca.crt")),
                format!("--tls-cert-file={}", self.pki("apiserver.crt")),
                format!("--tls-private-key-file={}", self.pki("apiserver.key")),
                format!(
                    "--kubelet-client-certificate={}",
                    self.pki("apiserver-kubelet-client.crt")
                ),
                format!(
                    "--kubelet-client-key={}",
                    self.pki("apiserver-kubelet-client.key")
                ),
                format!("--kubelet-certificate-authority={}", self.pki("ca.crt")),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", self.pki("sa.pub")),
                format!("--service-account-signing-key-file={}", self.pki("sa.key")),
                "--allow-privileged=true".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--endpoint-reconciler-type=lease".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )
    }

    fn controller_manager(&self) -> ComponentSpec {
        self.kube(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", self.kubeconfig("controller-manager")),
                format!(
                    "--authentication-kubeconfig={}",
                    self.kubeconfig("controller-manager")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    self.kubeconfig("controller-manager")
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", self.ports.controller_manager),
                format!("--service-account-private-key-file={}", self.pki("sa.key")),
                format!("--root-ca-file={}", self.pki("ca.crt")),
                format!("--cluster-signing-cert-file={}", self.pki("ca.crt")),
                format!("--cluster-signing-key-file={}", self.pki("ca.key")),
                "--use-service-account-credentials=true".into(),
                format!("--service-cluster-ip-range={}", self.network.service_cidr),
                "--allocate-node-cidrs=true".into(),
                format!("--cluster-cidr={}", self.network.pod_cidr),
                "--node-cidr-mask-size=16".into(),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )
    }

    fn scheduler(&self) -> ComponentSpec {
        self.kube(
            "kube-scheduler",
            vec![
                format!("--config={}", self.config("scheduler.yaml")),
                format!(
                    "--authentication-kubeconfig={}",
                    self.kubeconfig("scheduler")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    self.kubeconfig("scheduler")
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", self.ports.scheduler),
                "--v=1".into(),
            ],
        )
    }

    fn kubelet(&self) -> ComponentSpec {
        self.kube(
            "kubelet",
            vec![
                format!("--config={}", self.config("kubelet.yaml")),
                format!("--kubeconfig={}", self.kubeconfig("kubelet")),
                format!("--root-dir={}", path(&self.layout.data().join("kubelet"))),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", self.network.node_ip),
                "--v=1".into(),
            ],
        )
    }

    fn kube_proxy(&self) -> ComponentSpec {
        self.kube(
            "kube-proxy",
            vec![
                format!("--config={}", self.config("kube-proxy.yaml")),
                "--v=1".into(),
            ],
        )
    }

    /// containerd's configuration (format version 3, containerd 2.x).
    pub fn containerd_toml(&self) -> String {
        let root = path(&self.layout.data().join("containerd"));
        let state = path(&self.layout.run().join("containerd"));
        let socket = path(&self.layout.containerd_socket());
        let cni_conf = self.config("cni");
        let runc = path(&self.tools_bin.join("runc"));
        let sandbox = crate::image::PAUSE_IMAGE;
        format!(
            r#"# Written by bosun dev: containerd for the dev cluster's kubelet.
version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox}"

[plugins.'io.containerd.cri.v1.runtime']
  # Pod network namespaces live under containerd's state directory, so that
  # teardown finds every one of them there.
  netns_mounts_under_state_dir = true
  # Some machines (VMs, sandboxes) withhold CAP_SYS_RESOURCE even from root,
  # so the kubelet's negative OOM scores for sandboxes cannot be set; keep
  # every container at or above containerd's own score instead of failing.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni_conf}"
"#
        )
    }

    /// The CNI network: a bridge with host-local addresses, no masquerade.
    pub fn cni_conflist(&self) -> String {
        let net = &self.network;
        let ipam_dir = path(&self.layout.run().join("cni-ipam"));
        serde_json::to_string_pretty(&serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bosun-dev",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": ipam_dir,
                        "ranges": [[{"subnet": net.pod_cidr, "gateway": net.node_ip.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }))
        .unwrap_or_default()
    }

    /// The kubelet's configuration.
    pub fn kubelet_yaml(&self) -> String {
        let socket = path(&self.layout.containerd_socket());
        let value = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.network.node_ip.to_string(),
            "port": self.ports.kubelet,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports.kubelet_healthz,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": self.pki("ca.crt")}
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": self.pki("kubelet-serving.crt"),
            "tlsPrivateKeyFile": self.pki("kubelet-serving.key"),
            "containerRuntimeEndpoint": format!("unix://{socket}"),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            // The machine has cgroup v1 hierarchies; from 1.35 the kubelet
            // refuses them unless told otherwise.
            "failCgroupV1": false,
            "failSwapOn": false,
            "clusterDNS": [self.network.dns_service_ip.to_string()],
            "clusterDomain": "cluster.local",
            // Pods with dnsPolicy Default get this (empty) file, not the
            // host's resolvers: nothing in the cluster resolves outside names.
            "resolvConf": self.config("resolv.conf"),
            "registerNode": true,
            "serializeImagePulls": false,
            "podPidsLimit": 4096,
            // A developer's disk is often fuller than a server's; evict only
            // when it is really full.
            "evictionHard": {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s"
        });
        serde_yaml_ng::to_string(&value).unwrap_or_default()
    }

    /// kube-scheduler's configuration.
    pub fn scheduler_yaml(&self) -> String {
        let value = serde_json::json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig("scheduler")},
            "leaderElection": {"leaderElect": false}
        });
        serde_yaml_ng::to_string(&value).unwrap_or_default()
    }

    /// kube-proxy's configuration.
    pub fn kube_proxy_yaml(&self) -> String {
        let value = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig("kube-proxy")},
            "hostnameOverride": NODE_NAME,
            "bindAddress": self.network.node_ip.to_string(),
            "healthzBindAddress": format!("127.0.0.1:{}", self.ports.proxy_healthz),
            "metricsBindAddress": format!("127.0.0.1:{}", self.ports.proxy_metrics),
            "clusterCIDR": self.network.pod_cidr,
            "mode": "iptables",
            // Leave the host's conntrack table sizes alone.
            "conntrack": {"maxPerCore": 0}
        });
        serde_yaml_ng::to_string(&value).unwrap_or_default()
    }

    /// Every configuration file, as (path, contents).
    pub fn config_files(&self) -> Vec<(PathBuf, String)> {
        let config = self.layout.config();
        vec![
            (config.join("containerd.toml"), self.containerd_toml()),
            (
                config.join("cni").join("10-bosun.conflist"),
                self.cni_conflist(),
            ),
            (config.join("kubelet.yaml"), self.kubelet_yaml()),
            (config.join("scheduler.yaml"), self.scheduler_yaml()),
            (config.join("kube-proxy.yaml"), self.kube_proxy_yaml()),
            (
                config.join("resolv.conf"),
                "# no resolvers: the dev cluster reaches nothing outside\n".into(),
            ),
        ]
    }
}

/// Writes the configuration files and kubeconfigs, creating directories.
pub fn write_configs(
    files: &ClusterFiles,
    ca_cert: &Path,
    clients: &[(ClientIdentity<'_>, CertFiles)],
) -> std::io::Result<()> {
    for (file, contents) in files.config_files() {
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, contents)?;
    }
    let dir = files.layout.kubeconfigs();
    std::fs::create_dir_all(&dir)?;
    for (identity, certs) in clients {
        let text = crate::kubeconfig::render(&files.server_url(), ca_cert, certs, identity.user);
        std::fs::write(dir.join(format!("{}.kubeconfig", identity.file)), text)?;
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> ClusterFiles {
        ClusterFiles {
            layout: Layout::new("/state"),
            network: Network::default(),
            ports: Ports::default(),
            tools_bin: PathBuf::from("/tools/bin"),
            etcd_dir: PathBuf::from("/tools/etcd-3.6.16"),
        }
    }

    #[test]
    fn components_start_in_dependency_order() {
        let names: Vec<&str> = files().components().iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "containerd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy"
            ]
        );
    }

    #[test]
    fn every_component_names_the_state_dir_on_its_command_line() {
        // Teardown after a crash recognises leftover processes by this.
        for component in files().components() {
            assert!(
                component.args.iter().any(|a| a.contains("/state/")),
                "{} has no state path in {:?}",
                component.name,
                component.args
            );
        }
    }

    #[test]
    fn kubelet_is_configured_for_cgroup_v1_and_cluster_dns() {
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&files().kubelet_yaml()).expect("yaml");
        assert_eq!(yaml["failCgroupV1"], false);
        assert_eq!(yaml["cgroupDriver"], "cgroupfs");
        assert_eq!(yaml["clusterDNS"][0], "10.96.0.10");
        assert_eq!(
            yaml["containerRuntimeEndpoint"],
            "unix:///state/run/containerd.sock"
        );
    }

    #[test]
    fn cni_never_masquerades() {
        let conf: serde_json::Value = serde_json::from_str(&files().cni_conflist()).expect("json");
        assert_eq!(conf["plugins"][0]["ipMasq"], false);
        assert_eq!(conf["plugins"][0]["bridge"], "bosun0");
    }

    #[test]
    fn apiserver_certificate_covers_service_and_node_addresses() {
        let hosts = files().apiserver_hosts();
        for host in [
            "10.96.0.1",
            "10.88.0.1",
            "kubernetes.default.svc",
            "localhost",
        ] {
            assert!(hosts.iter().any(|h| h == host), "{host}");
        }
    }
}
