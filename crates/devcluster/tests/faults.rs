//! Faults of the dev cluster that a user meets, each answered with a message
//! that says what is wrong and what to do: not being root, and a component
//! that dies (it is restarted and reported). Runs against the shared
//! cluster of the test run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bosun_devcluster::fixture::{TestCluster, bosun_binary};
use bosun_devcluster::readiness::{self, wait_until};
use bosun_devcluster::supervisor::{ComponentState, processes_using};

#[test]
fn bosun_dev_up_as_a_normal_user_says_it_needs_root() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bosun_binary())
        .args(["dev", "up", "--state-dir", "/tmp/bosun-not-root-test"])
        .output()
        .expect("setpriv runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}

fn component_states(
    state_dir: &std::path::Path,
) -> std::collections::BTreeMap<String, ComponentState> {
    std::fs::read(state_dir.join("run").join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_scheduler_is_restarted_and_reported() {
    let cluster = TestCluster::connect().await;
    let state_dir: PathBuf = cluster
        .kubeconfig
        .parent()
        .expect("state dir")
        .to_path_buf();
    let (pid, _) = processes_using(&state_dir)
        .into_iter()
        .find(|(_, cmdline)| {
            cmdline.contains("kube-scheduler ") || cmdline.starts_with("kube-scheduler")
        })
        .expect("the scheduler runs");
    let restarts_before = component_states(&state_dir)
        .get("kube-scheduler")
        .map_or(0, |s| s.restarts);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");

    wait_until(
        "the scheduler's restart to be reported",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let state_dir = state_dir.clone();
            async move {
                let states = component_states(&state_dir);
                let scheduler = states
                    .get("kube-scheduler")
                    .ok_or("no scheduler in status")?;
                Ok(scheduler.restarts > restarts_before
                    && scheduler.pid.is_some_and(|p| p as i32 != pid)
                    && scheduler
                        .last_exit
                        .as_deref()
                        .is_some_and(|e| e.contains("signal: 9")))
            }
        },
    )
    .await
    .expect("restart reported");

    let status = Command::new(bosun_binary())
        .args(["dev", "status", "--state-dir"])
        .arg(&state_dir)
        .output()
        .expect("bosun dev status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("kube-scheduler"))
        .expect("scheduler line");
    assert!(line.contains("signal: 9"), "{text}");

    // And the restarted scheduler schedules again: the API still answers
    // and the cluster stays usable.
    assert_eq!(readiness::api_ready(&cluster.client).await, Ok(true));
}
