//! Where a dev cluster keeps its files: one state directory (default
//! `~/.bosun/dev`) holding certificates, kubeconfigs, component data, logs
//! and persistent volumes. Every path the cluster uses comes from here.

use std::path::{Path, PathBuf};

/// The files of one dev cluster, under its state directory.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The default state directory: `$HOME/.bosun/dev`.
    pub fn default_root() -> PathBuf {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".bosun").join("dev")
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The admin kubeconfig users and tests read.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    /// Certificates and keys.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// Kubeconfigs of the components.
    pub fn kubeconfigs(&self) -> PathBuf {
        self.root.join("kubeconfigs")
    }

    /// Generated configuration files (kubelet, scheduler, containerd, CNI, ...).
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }

    /// One log file per component.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Persistent data that survives a restart: etcd, kubelet state, volumes.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Directories backing PersistentVolumes of the local-path StorageClass.
    pub fn volumes(&self) -> PathBuf {
        self.data().join("volumes")
    }

    /// The directory `file` backups go to when the operator runs in the
    /// cluster: mounted at the same path into the operator's pods, so that
    /// a `file://` location means the same file to the operator, to a
    /// restore's init container (which reads it through `hostPath`) and to
    /// a user on this host. Kept with the data.
    pub fn backups(&self) -> PathBuf {
        self.data().join("backups")
    }

    /// The object store's S3 credentials (made once, kept with the data).
    pub fn s3_credentials(&self) -> PathBuf {
        self.data().join("s3-credentials.json")
    }

    /// Locally built image archives (OCI layout tarballs) and their stamps.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Runtime files: sockets, pid files. Wiped on every start.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.run().join("containerd.sock")
    }
}
