//! Runs the components as supervised host processes: each one logs to its
//! own file, is restarted with back-off when it dies, and is stopped
//! (SIGTERM, then SIGKILL after a grace period) when its token is cancelled.
//! The state of every component is kept in a shared table that `bosun dev
//! status` reads from `<state>/run/status.json`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::components::ComponentSpec;

/// How long a component may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Back-off after a crash: doubles from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A component that ran this long is considered healthy again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What one component is doing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentState {
    /// Its process ID while running.
    pub pid: Option<u32>,
    /// How often it was restarted after a crash.
    pub restarts: u32,
    /// The last way it exited, if it did.
    pub last_exit: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// The state of every component, shared between the supervisor's tasks.
#[derive(Clone, Default)]
pub struct StatusTable(Arc<Mutex<BTreeMap<String, ComponentState>>>);

impl StatusTable {
    fn update(&self, name: &str, f: impl FnOnce(&mut ComponentState)) {
        if let Ok(mut table) = self.0.lock()
            && let Some(state) = table.get_mut(name)
        {
            f(state);
        }
    }

    /// A copy of the table.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentState> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// A component started under supervision.
pub struct Supervised {
    /// Its name.
    pub name: &'static str,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    /// Stops it and waits until its process is gone.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts `spec` and keeps it running until [`Supervised::stop`].
pub fn start(spec: ComponentSpec, logs: &Path, status: StatusTable) -> std::io::Result<Supervised> {
    std::fs::create_dir_all(logs)?;
    let log = logs.join(format!("{}.log", spec.name));
    if let Ok(mut table) = status.0.lock() {
        table.insert(
            spec.name.to_string(),
            ComponentState {
                pid: None,
                restarts: 0,
                last_exit: None,
                log: log.clone(),
            },
        );
    }
    // Spawn the first process now, so that a missing program is an error
    // of `start` and not a restart loop.
    let first = spawn(&spec, &log)?;
    let stop = CancellationToken::new();
    let name = spec.name;
    let task = tokio::spawn(keep_running(spec, log, first, stop.clone(), status));
    Ok(Supervised { name, stop, task })
}

fn spawn(spec: &ComponentSpec, log: &Path) -> std::io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Our own process group: Ctrl-C in the terminal reaches only the
        // supervisor, which stops the components in order.
        .process_group(0)
        .kill_on_drop(true);
    command.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("starting {} ({}): {e}", spec.name, spec.program.display()),
        )
    })
}

async fn keep_running(
    spec: ComponentSpec,
    log: PathBuf,
    mut child: Child,
    stop: CancellationToken,
    status: StatusTable,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        status.update(spec.name, |s| s.pid = child.id());
        tokio::select! {
            exit = child.wait() => {
                let how = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                status.update(spec.name, |s| { s.pid = None; s.last_exit = Some(how.clone()); s.restarts += 1; });
                if started.elapsed() > STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(component = spec.name, exit = %how, log = %log.display(),
                    "component exited; restarting in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                match spawn(&spec, &log) {
                    Ok(next) => child = next,
                    Err(e) => {
                        tracing::error!(component = spec.name, "cannot restart: {e}");
                        return;
                    }
                }
            }
            _ = stop.cancelled() => {
                terminate(&mut child, spec.name).await;
                status.update(spec.name, |s| s.pid = None);
                return;
            }
        }
    }
}

/// SIGTERM, then SIGKILL when the grace period runs out.
async fn terminate(child: &mut Child, name: &str) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            component = name,
            "did not stop within {STOP_GRACE:?}; killing it"
        );
        let _ = child.kill().await;
    }
}

/// Finds processes whose command line mentions `state_dir` (every component
/// and containerd shim of a dev cluster does), other than this process.
pub fn processes_using(state_dir: &Path) -> Vec<(i32, String)> {
    let needle = format!("{}/", state_dir.display());
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Whether a process still exists with open files. A multi-threaded
/// program's main thread can already be a zombie (empty command line) while
/// its other threads still hold its sockets; only an empty `fd` table means
/// its ports and files are released.
fn holds_files(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|mut fds| fds.next().is_some())
}

/// Stops every process [`processes_using`] finds: SIGTERM, then SIGKILL, and
/// returns (how many there were) once they have released their files.
pub async fn kill_processes_using(state_dir: &Path) -> usize {
    let found = processes_using(state_dir);
    for (pid, cmdline) in &found {
        tracing::info!(
            "stopping leftover process {pid}: {}",
            cmdline.chars().take(120).collect::<String>()
        );
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let pids: Vec<i32> = found.iter().map(|(pid, _)| *pid).collect();
    let released_within = |limit: Duration| {
        let pids = pids.clone();
        async move {
            let deadline = Instant::now() + limit;
            while pids.iter().any(|pid| holds_files(*pid)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Leftovers of a crashed run get a short grace period: their data is
    // safe on disk, and waiting longer only delays the restart.
    released_within(Duration::from_secs(5)).await;
    for pid in pids.iter().filter(|pid| holds_files(**pid)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    released_within(Duration::from_secs(10)).await;
    found.len()
}
