//! What goes into each image (documented for humans in `images/README.md`):
//! pure functions from their inputs to an [`ImageSpec`], plus the small
//! amount of host inspection the inputs need (busybox's applets, `ldd`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::archive::{Compression, Entry, ImageConfig, ImageSpec};
use super::debian::{self, Package, PackageCache};
use super::{
    BOSUN_IMAGE, COREDNS_IMAGE_REPOSITORY, ImageError, MEMCACHED_IMAGE_REPOSITORY, PAUSE_IMAGE,
};
use super::{REDIS_IMAGE_REPOSITORY, etcd_image, seaweedfs_image};

/// The static files every image with a shell gets.
const PASSWD: &str = include_str!("../../../../images/base/passwd");
const GROUP: &str = include_str!("../../../../images/base/group");
const NSSWITCH: &str = include_str!("../../../../images/base/nsswitch.conf");
const REDIS_CONF: &str = include_str!("../../../../images/redis/redis.conf");

/// The non-root user of distroless images (`nonroot`), which ours share.
pub(crate) const NONROOT: u32 = 65532;

/// Layers are stored uncompressed: nothing crosses a network, and a plain tar
/// is written and unpacked several times faster than a gzip one (which
/// matters in unoptimized test builds).
const LAYER_COMPRESSION: Compression = Compression::None;

/// The Debian packages the images are made from (their library
/// dependencies are found as they are fetched).
pub(crate) const DEBIAN_PACKAGES: &[&str] = &["memcached", "redis-server", "redis-tools"];

/// The OCI label carrying an image's upstream version.
const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// A static busybox and the applets it provides.
#[derive(Clone, Debug)]
pub(crate) struct Busybox {
    /// The binary on the host.
    pub(crate) binary: PathBuf,
    /// Absolute in-image paths of its applets (`/bin/sh`, `/usr/bin/wget`, …).
    pub(crate) applets: Vec<String>,
}

impl Busybox {
    /// The host's `busybox-static` if installed, otherwise the package
    /// fetched into `packages`.
    pub(crate) fn find(packages: &PackageCache) -> Result<Self, ImageError> {
        let binary = if debian::installed_version("busybox-static")?.is_some()
            && Path::new("/bin/busybox").is_file()
        {
            PathBuf::from("/bin/busybox")
        } else {
            let package = packages.fetch("busybox-static")?;
            ["/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .map(|p| package.file(p))
                .find(|p| p.is_file())
                .ok_or_else(|| ImageError::Package {
                    package: "busybox-static".to_string(),
                    message: "it has no bin/busybox".to_string(),
                })?
        };
        Self::at(binary)
    }

    /// The busybox at `binary`, asked for its applets.
    pub(crate) fn at(binary: PathBuf) -> Result<Self, ImageError> {
        let mut list = std::process::Command::new(&binary);
        list.arg("--list-full");
        let output = debian::run(list, std::time::Duration::from_secs(30))?;
        let mut applets: Vec<String> = output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "bin/busybox" && !l.contains(".."))
            .map(|l| format!("/{}", l.trim_start_matches('/')))
            .collect();
        applets.sort();
        applets.dedup();
        Ok(Busybox { binary, applets })
    }

    /// `/bin/busybox` and a symlink to it for each applet.
    fn entries(&self) -> Vec<Entry> {
        let mut entries = vec![Entry::file(&self.binary, "/bin/busybox", 0o755)];
        entries.extend(
            self.applets
                .iter()
                .map(|a| Entry::symlink(a, "/bin/busybox")),
        );
        entries
    }
}

/// The base of images with a shell: busybox with its applets, users and
/// groups (root, nonroot 65532, nobody), `/tmp`, and home directories.
fn base_entries(busybox: &Busybox) -> Vec<Entry> {
    let mut entries = busybox.entries();
    entries.extend(etc_entries());
    entries.extend([
        Entry::dir("/root", 0o700),
        Entry::dir("/home/nonroot", 0o755).owned_by(NONROOT, NONROOT),
    ]);
    entries
}

/// `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf` and `/tmp`.
fn etc_entries() -> Vec<Entry> {
    vec![
        Entry::contents(PASSWD, "/etc/passwd", 0o644),
        Entry::contents(GROUP, "/etc/group", 0o644),
        Entry::contents(NSSWITCH, "/etc/nsswitch.conf", 0o644),
        Entry::dir("/tmp", 0o1777),
    ]
}

fn labels(version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(VERSION_LABEL.to_string(), version.to_string())])
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The sandbox ("pause") image: a static busybox sleeping until it is
/// killed. containerd stops sandboxes with SIGKILL, so it needs no signal
/// handling.
pub(crate) fn pause(busybox: &Busybox) -> ImageSpec {
    ImageSpec {
        name: PAUSE_IMAGE.to_string(),
        config: ImageConfig {
            entrypoint: strings(&["/bin/busybox", "sleep", "infinity"]),
            user: "65535:65535".to_string(),
            ..ImageConfig::default()
        },
        entries: vec![Entry::file(&busybox.binary, "/bin/busybox", 0o755)],
        compression: LAYER_COMPRESSION,
    }
}

/// etcd as upstream ships it (`/usr/local/bin/{etcd,etcdctl,etcdutl}`,
/// working directory `/var/lib/etcd`, `CMD ["/usr/local/bin/etcd"]`), plus
/// busybox so that init containers and `kubectl exec` have a shell.
pub(crate) fn etcd(version: &str, etcd_dir: &Path, busybox: &Busybox) -> ImageSpec {
    let mut entries = base_entries(busybox);
    for program in ["etcd", "etcdctl", "etcdutl"] {
        entries.push(Entry::file(
            etcd_dir.join(program),
            format!("/usr/local/bin/{program}"),
            0o755,
        ));
    }
    entries.extend([
        Entry::dir("/var/etcd", 0o755),
        Entry::dir("/var/lib/etcd", 0o755),
    ]);
    ImageSpec {
        name: etcd_image(version),
        config: ImageConfig {
            cmd: strings(&["/usr/local/bin/etcd"]),
            working_dir: "/var/lib/etcd".to_string(),
            labels: labels(&format!("v{version}")),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    }
}

/// CoreDNS as upstream ships it: `/coredns` as entrypoint, run as nonroot
/// (containerd 2 lets pods bind port 53 unprivileged), no shell.
pub(crate) fn coredns(version: &str, binary: &Path) -> ImageSpec {
    let mut entries = etc_entries();
    entries.push(Entry::file(binary, "/coredns", 0o755));
    ImageSpec {
        name: format!("{COREDNS_IMAGE_REPOSITORY}:{version}"),
        config: ImageConfig {
            entrypoint: strings(&["/coredns"]),
            working_dir: "/".to_string(),
            user: format!("{NONROOT}:{NONROOT}"),
            labels: labels(version),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    }
}

/// Where Debian (the host, and the bosun image) keeps its CA bundle.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The bosun operator: the `bosun` binary at `/usr/local/bin/bosun`, the
/// shared libraries and loader it links, busybox for debugging, run as
/// nonroot; and etcd's `etcdutl` of each shipped minor version as
/// `/usr/local/bin/etcdutl-<major>.<minor>`, which `bosun restore-member`
/// runs to restore a snapshot with the cluster's own etcd release.
pub(crate) fn bosun(
    binary: &Path,
    busybox: &Busybox,
    etcdutls: &[(String, std::path::PathBuf)],
) -> Result<ImageSpec, ImageError> {
    if !binary.is_file() {
        return Err(ImageError::MissingInput {
            what: "the bosun binary (build it with `cargo build -p bosun`)".to_string(),
            path: binary.to_path_buf(),
        });
    }
    let mut entries = base_entries(busybox);
    // Searchable (not readable) by nonroot: a host directory mounted at its
    // own path below /root, as the dev cluster mounts the `file` backups
    // directory of its default state dir, must be reachable by the
    // operator, which runs as nonroot.
    for entry in entries.iter_mut().filter(|e| e.path == "/root") {
        *entry = Entry::dir("/root", 0o711);
    }
    entries.push(Entry::file(binary, "/usr/local/bin/bosun", 0o755));
    // The CA bundle: object storage over HTTPS (and any TLS client in the
    // operator) verifies servers against it; without one, reqwest's
    // platform verifier refuses to build a client at all.
    let ca_bundle = Path::new(HOST_CA_BUNDLE);
    if ca_bundle.is_file() {
        entries.push(Entry::file(ca_bundle, HOST_CA_BUNDLE, 0o644));
    }
    for (minor, etcdutl) in etcdutls {
        entries.push(Entry::file(
            etcdutl,
            format!("/usr/local/bin/etcdutl-{minor}"),
            0o755,
        ));
    }
    entries.extend(library_entries(&[binary.to_path_buf()], &[])?);
    Ok(ImageSpec {
        name: BOSUN_IMAGE.to_string(),
        config: ImageConfig {
            entrypoint: strings(&["/usr/local/bin/bosun"]),
            user: format!("{NONROOT}:{NONROOT}"),
            working_dir: "/home/nonroot".to_string(),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    })
}

/// memcached from Debian's package, run as nonroot.
pub(crate) fn memcached(
    packages: &PackageCache,
    busybox: &Busybox,
) -> Result<ImageSpec, ImageError> {
    let fetched = packages.fetch_with_libraries(&["memcached"])?;
    let main = find_package(&fetched, "memcached")?;
    let binary = main.file("/usr/bin/memcached");
    let mut entries = base_entries(busybox);
    entries.push(Entry::file(&binary, "/usr/bin/memcached", 0o755));
    entries.extend(library_entries(&[binary], &fetched)?);
    Ok(ImageSpec {
        name: format!(
            "{MEMCACHED_IMAGE_REPOSITORY}:{}",
            debian::upstream_version(&main.version)
        ),
        config: ImageConfig {
            entrypoint: strings(&["/usr/bin/memcached"]),
            user: format!("{NONROOT}:{NONROOT}"),
            labels: labels(&main.version),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    })
}

/// redis from Debian's packages (`redis-server` is a link to the
/// `redis-check-rdb` multi-call binary, as in Debian), with `redis-cli`, a
/// configuration for a pod network (`images/redis/redis.conf`) and `/data`,
/// run as nonroot.
pub(crate) fn redis(packages: &PackageCache, busybox: &Busybox) -> Result<ImageSpec, ImageError> {
    let fetched = packages.fetch_with_libraries(&["redis-server", "redis-tools"])?;
    let tools = find_package(&fetched, "redis-tools")?;
    let server = find_package(&fetched, "redis-server")?;
    let binaries = [
        tools.file("/usr/bin/redis-check-rdb"),
        tools.file("/usr/bin/redis-cli"),
    ];
    let mut entries = base_entries(busybox);
    entries.extend([
        Entry::file(&binaries[0], "/usr/bin/redis-check-rdb", 0o755),
        Entry::file(&binaries[1], "/usr/bin/redis-cli", 0o755),
        Entry::symlink("/usr/bin/redis-server", "redis-check-rdb"),
        Entry::contents(REDIS_CONF, "/etc/redis/redis.conf", 0o644),
        Entry::dir("/data", 0o755).owned_by(NONROOT, NONROOT),
    ]);
    entries.extend(library_entries(&binaries, &fetched)?);
    Ok(ImageSpec {
        name: format!(
            "{REDIS_IMAGE_REPOSITORY}:{}",
            debian::upstream_version(&server.version)
        ),
        config: ImageConfig {
            entrypoint: strings(&["/usr/bin/redis-server", "/etc/redis/redis.conf"]),
            working_dir: "/data".to_string(),
            user: format!("{NONROOT}:{NONROOT}"),
            labels: labels(&server.version),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    })
}

/// SeaweedFS's static `weed` at `/usr/bin/weed` (where upstream's image has
/// it) as entrypoint, busybox for a shell, `/data` for its files, run as
/// nonroot.
pub(crate) fn seaweedfs(version: &str, weed: &Path, busybox: &Busybox) -> ImageSpec {
    let mut entries = base_entries(busybox);
    entries.extend([
        Entry::file(weed, "/usr/bin/weed", 0o755),
        Entry::dir("/data", 0o755).owned_by(NONROOT, NONROOT),
    ]);
    ImageSpec {
        name: seaweedfs_image(version),
        config: ImageConfig {
            entrypoint: strings(&["/usr/bin/weed"]),
            working_dir: "/data".to_string(),
            user: format!("{NONROOT}:{NONROOT}"),
            labels: labels(version),
            ..ImageConfig::default()
        },
        entries,
        compression: LAYER_COMPRESSION,
    }
}

fn find_package<'a>(packages: &'a [Package], name: &str) -> Result<&'a Package, ImageError> {
    packages
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ImageError::Package {
            package: name.to_string(),
            message: "it was not fetched".to_string(),
        })
}

/// The libraries and loader `binaries` need, found first in the fetched
/// `packages`, then on the host; one entry per in-image path.
fn library_entries(binaries: &[PathBuf], packages: &[Package]) -> Result<Vec<Entry>, ImageError> {
    let library_dirs: Vec<PathBuf> = packages.iter().flat_map(Package::library_dirs).collect();
    let mut by_path = BTreeMap::new();
    for binary in binaries {
        for library in debian::shared_libraries(binary, &library_dirs)? {
            by_path
                .entry(library.image_path)
                .or_insert(library.host_path);
        }
    }
    Ok(by_path
        .into_iter()
        .map(|(image_path, host_path)| Entry::file(host_path, image_path, 0o755))
        .collect())
}
