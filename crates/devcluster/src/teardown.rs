//! Removing everything a dev cluster put on the host: pod processes, the
//! components and containerd shims, mounts under the state directory, pod
//! cgroups, kube-proxy's iptables chains, the bridge and the guard rule, and
//! the kernel switches. Used by `bosun dev down`, at the end of `bosun dev
//! up`, and before a start, to clear what a crashed run left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::components::CGROUP_ROOT;
use crate::layout::Layout;
use crate::network::{self, Network};
use crate::supervisor;

/// The cgroup v1 hierarchies (and the v2 one, if mounted) under which the
/// kubelet may have made pod cgroups.
fn cgroup_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path().join(CGROUP_ROOT.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect()
}

/// Creates the cgroup under which the kubelet puts pods, in every
/// hierarchy (the kubelet refuses a cgroup root that is missing in one).
pub fn create_pod_cgroups() -> std::io::Result<()> {
    let name = CGROUP_ROOT.trim_start_matches('/');
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.filter_map(Result::ok) {
        let hierarchy = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || hierarchy.join(name).is_dir() {
            continue;
        }
        std::fs::create_dir(hierarchy.join(name))?;
        // A new cgroup v1 cpuset starts with no CPUs and no memory nodes:
        // give it its parent's, or nothing could run in it.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(hierarchy.join(name).join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Every process ID in a cgroup tree.
fn pids_in(dir: &Path) -> Vec<i32> {
    let mut pids = vec![];
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_in(&entry.path()));
            }
        }
    }
    pids
}

/// Stops every process in the pods' cgroups: SIGTERM, then SIGKILL.
pub async fn kill_pods() {
    let all = || {
        let mut pids: Vec<i32> = cgroup_dirs().iter().flat_map(|d| pids_in(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    for pid in all() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in all() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Removes the (now empty) pod cgroups, deepest first.
fn remove_cgroups() {
    fn remove_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
        }
        // rmdir is how cgroups are removed; their "files" are not real.
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_dirs() {
        remove_tree(&dir);
    }
}

/// Mount points at or under `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn unmount_all(root: &Path) {
    // A mount can hide others; repeat until nothing is left (bounded).
    for _ in 0..5 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return;
        }
        for mount in mounts {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                tracing::debug!("unmounting {}: {e}", mount.display());
            }
        }
    }
}

/// Removes everything the cluster made on the host, keeping its data.
/// Safe to run when nothing is left.
pub async fn tear_down(layout: &Layout, network: &Network, kube_proxy: Option<&Path>) {
    kill_pods().await;
    let _ = supervisor::kill_processes_using(layout.root()).await;
    kill_pods().await;
    unmount_all(layout.root());
    remove_cgroups();
    if let Some(kube_proxy) = kube_proxy {
        // kube-proxy knows its own chains (iptables and nftables) best.
        if let Err(e) = network::run(&kube_proxy.to_string_lossy(), &["--cleanup", "--v=0"]) {
            tracing::warn!("kube-proxy --cleanup: {e}");
        }
    }
    network::remove_kube_chains();
    if let Err(e) = network::tear_down(network, &layout.root().join("saved-sysctls")) {
        tracing::warn!("restoring the host network: {e}");
    }
    let _ = std::fs::remove_dir_all(layout.run());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn finds_no_mounts_under_a_fresh_directory() {
        assert!(mounts_under(Path::new("/nonexistent-bosun-test")).is_empty());
    }
}
