//! The dev cluster's own lifecycle on the host: `bosun dev down` leaves no
//! process, mount, network device, network namespace, iptables rule or
//! kernel switch behind, and `bosun dev up` after a `kill -9` of the
//! supervisor comes back with the objects it had.
//!
//! These tests start and stop clusters of their own, so they need the host's
//! ports to themselves: they are `#[ignore]`d in the shared run and
//! `scripts/test.sh` runs them afterwards with `--run-ignored only`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bosun_devcluster::cluster::{DevCluster, client_from};
use bosun_devcluster::fixture::bosun_binary;
use bosun_devcluster::readiness::wait_until;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;

/// What the host looks like, in the respects a dev cluster changes.
#[derive(Debug, PartialEq)]
struct HostState {
    links: Vec<String>,
    netns: Vec<String>,
    mounts: Vec<String>,
    iptables: Vec<String>,
    ip6tables: Vec<String>,
    sysctls: Vec<String>,
    processes: Vec<String>,
}

fn lines_of(program: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(program).args(args).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines().map(str::to_string).collect()
}

/// iptables-save without its comments and packet counters, which change by themselves.
fn rules(program: &str) -> Vec<String> {
    lines_of(program, &[])
        .into_iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_string(),
            _ => l,
        })
        .collect()
}

fn host_state(state_dir: &Path) -> HostState {
    let needle = state_dir.to_string_lossy().into_owned();
    HostState {
        links: lines_of("ip", &["-br", "link"])
            .into_iter()
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect(),
        netns: lines_of("ip", &["netns", "list"]),
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect(),
        iptables: rules("iptables-save"),
        ip6tables: rules("ip6tables-save"),
        sysctls: ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"]
            .iter()
            .map(|s| std::fs::read_to_string(format!("/proc/sys/{s}")).unwrap_or_default())
            .collect(),
        processes: std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .filter(|c| c.contains(&needle))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn bosun(args: &[&str], state_dir: &Path) {
    let status = Command::new(bosun_binary())
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .status()
        .expect("bosun runs");
    assert!(status.success(), "bosun {args:?} failed");
}

/// Takes a test's cluster down and removes its state directory when the
/// test ends, also when it fails, so that no failed run leaves the host
/// changed for the next one.
struct ClusterGuard(PathBuf);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new(bosun_binary())
            .args(["dev", "down", "--state-dir"])
            .arg(&self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `bosun dev up` expecting it to fail; returns what it printed on stderr.
fn refused_up(state_dir: &Path) -> String {
    let out = Command::new(bosun_binary())
        .args(["dev", "up", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("bosun runs");
    assert!(!out.status.success(), "bosun dev up succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn state_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bosun-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
#[ignore = "starts its own cluster: run by scripts/test.sh with --run-ignored only"]
async fn down_leaves_the_host_as_it_was_and_up_survives_a_killed_supervisor() {
    let dir = state_dir("lifecycle");
    let before = host_state(&dir);
    let _guard = ClusterGuard(dir.clone());

    bosun(&["dev", "up", "--detach"], &dir);
    let running = host_state(&dir);
    assert!(
        running.links.iter().any(|l| l == "bosun0"),
        "the bridge exists while running"
    );
    assert!(!running.processes.is_empty(), "components run");

    let client = client_from(&dir.join("kubeconfig")).await.expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let marker: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "survives-restart"}, "data": {"key": "value"}
    }))
    .expect("configmap");
    maps.create(&PostParams::default(), &marker)
        .await
        .expect("create marker");

    // A supervisor killed without a chance to clean up.
    let pid = DevCluster::new(&dir)
        .running_supervisor()
        .expect("supervisor runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    wait_until(
        "the supervisor to be gone",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let dir = dir.clone();
            async move { Ok(DevCluster::new(&dir).running_supervisor().is_none()) }
        },
    )
    .await
    .expect("supervisor gone");

    bosun(&["dev", "up", "--detach"], &dir);
    let client = client_from(&dir.join("kubeconfig"))
        .await
        .expect("client after restart");
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let kept = maps
        .get("survives-restart")
        .await
        .expect("the marker survived the crash");
    assert_eq!(
        kept.data.and_then(|d| d.get("key").cloned()).as_deref(),
        Some("value")
    );

    bosun(&["dev", "down"], &dir);
    let after = host_state(&dir);
    assert_eq!(after, before, "bosun dev down left the host changed");
}

#[tokio::test]
#[ignore = "needs the host's ports: run by scripts/test.sh with --run-ignored only"]
async fn a_port_in_use_is_named_and_nothing_is_changed() {
    let dir = state_dir("port");
    let before = host_state(&dir);
    let _guard = ClusterGuard(dir.clone());
    let _holder = std::net::TcpListener::bind("127.0.0.1:12379").expect("take etcd's port");
    let stderr = refused_up(&dir);
    assert!(
        stderr.contains("port 12379 (etcd client) is in use"),
        "{stderr}"
    );
    assert_eq!(host_state(&dir), before);
}

#[tokio::test]
#[ignore = "needs the host's ports: run by scripts/test.sh with --run-ignored only"]
async fn a_state_dir_of_another_version_is_refused_and_kept() {
    let dir = state_dir("stale");
    let _guard = ClusterGuard(dir.clone());
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    std::fs::write(
        dir.join("data").join("STATE"),
        "format=0 kubernetes=v1.20.0 etcd=3.4.0",
    )
    .expect("stamp");
    std::fs::write(dir.join("data").join("precious"), "keep me").expect("marker");
    let stderr = refused_up(&dir);
    assert!(
        stderr.contains("another bosun version") && stderr.contains("--fresh"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("data").join("precious")).expect("kept"),
        "keep me"
    );
}
