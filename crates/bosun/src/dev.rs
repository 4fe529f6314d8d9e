//! `bosun dev`: start, stop and inspect the local real Kubernetes cluster.
//! The work is in `bosun_devcluster`; this module is the command line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bosun_devcluster::cluster::{self, DevCluster, UpOptions};
use bosun_devcluster::supervisor::ComponentState;
use bosun_devcluster::tools::Tools;
use clap::{Args, Subcommand, ValueEnum};

/// `bosun dev` subcommands.
#[derive(Subcommand)]
pub enum DevCommand {
    /// Start the cluster; runs until Ctrl-C or SIGTERM (or returns once ready with --detach).
    Up(UpArgs),
    /// Stop a detached cluster and remove everything it made on the host (its data is kept).
    Down(StateArgs),
    /// Say whether the cluster runs and what each component is doing.
    Status(StateArgs),
    /// Print a component's log (etcd, containerd, kube-apiserver, kubelet, ...).
    Logs {
        #[command(flatten)]
        state: StateArgs,
        /// The component.
        component: String,
    },
}

/// Where the cluster keeps its files.
#[derive(Args, Clone)]
pub struct StateArgs {
    /// State directory: certificates, data, logs, kubeconfig.
    #[arg(long, value_name = "DIR", env = "BOSUN_DEV_STATE_DIR", default_value_os_t = bosun_devcluster::layout::Layout::default_root())]
    pub state_dir: PathBuf,
}

/// Options of `bosun dev up`.
#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Also write the admin kubeconfig here (it is always in <state-dir>/kubeconfig).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Delete the cluster's data (objects, volumes) before starting.
    #[arg(long)]
    fresh: bool,
    /// Return once the cluster is ready and leave it running; stop it with `bosun dev down`.
    #[arg(long)]
    detach: bool,
    /// Where the bosun operator runs: in the cluster, installed as `bosun
    /// install` does from the image built of this binary; on this host, as
    /// a supervised process with the admin kubeconfig; or not at all (run
    /// `bosun operator` yourself, e.g. from a debugger).
    #[arg(long, value_enum, default_value_t = OperatorMode::Cluster)]
    operator: OperatorMode,
    /// Directory of the upstream programs built by scripts/setup.sh --cluster.
    #[arg(long, value_name = "DIR", env = "BOSUN_TOOLS_DIR", default_value_os_t = Tools::default_dir())]
    tools_dir: PathBuf,
    /// Internal: this process is the detached supervisor.
    #[arg(long, hide = true)]
    supervised: bool,
}

/// Where `bosun dev up` runs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorMode {
    /// The Deployment of deploy/operator, under its own RBAC.
    Cluster,
    /// A process on this host with the admin kubeconfig.
    Host,
    /// None.
    None,
}

/// Runs a `bosun dev` subcommand.
pub fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Up(args) if args.detach => detach(&args),
        DevCommand::Up(args) => runtime()?.block_on(up_foreground(args)),
        DevCommand::Down(state) => runtime()?.block_on(down(&state.state_dir)),
        DevCommand::Status(state) => status(&state.state_dir),
        DevCommand::Logs { state, component } => logs(&state.state_dir, &component),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn ready_marker(state_dir: &Path) -> PathBuf {
    state_dir.join("run").join("ready")
}

async fn up_foreground(args: UpArgs) -> anyhow::Result<()> {
    let opts = UpOptions {
        state_dir: args.state.state_dir.clone(),
        fresh: args.fresh,
        kubeconfig: args.kubeconfig.clone(),
        tools_dir: args.tools_dir.clone(),
        bosun_binary: std::env::current_exe().ok(),
        host_operator: args.operator == OperatorMode::Host,
    };
    let started = std::time::Instant::now();
    let running = cluster::up(&opts).await?;
    let kubeconfig = running.kubeconfig();
    if args.operator == OperatorMode::Cluster
        && let Err(e) = install_operator(&running).await
    {
        running.stop().await;
        return Err(e.context("installing the bosun operator into the dev cluster"));
    }
    std::fs::write(
        ready_marker(&opts.state_dir),
        kubeconfig.to_string_lossy().as_bytes(),
    )
    .context("writing the ready marker")?;
    println!(
        "ready in {:.1}s: export KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        kubeconfig.display()
    );
    if !args.supervised {
        eprintln!("bosun dev: running; Ctrl-C stops the cluster");
    }
    let status_file = opts.state_dir.join("run").join("status.json");
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = crate::signals::terminated() => break,
            _ = tick.tick() => {
                let snapshot = running.status().snapshot();
                if let Ok(json) = serde_json::to_vec_pretty(&snapshot) {
                    let _ = std::fs::write(&status_file, json);
                }
            }
        }
    }
    eprintln!("bosun dev: stopping");
    running.stop().await;
    eprintln!(
        "bosun dev: stopped; data kept in {}",
        opts.state_dir.display()
    );
    Ok(())
}

/// Installs the operator from the image `up` built and imported, with the
/// cluster's backups directory for `file` backups.
async fn install_operator(running: &cluster::RunningCluster) -> anyhow::Result<()> {
    let image = running
        .operator_image()
        .context("no bosun image was built (is this binary readable?)")?;
    let client = bosun_devcluster::cluster::client_from(&running.kubeconfig()).await?;
    let overrides = crate::install::Overrides {
        image: Some(image.name.clone()),
        replicas: None,
        host_backup_dir: Some(running.backups_dir()),
        image_digest: Some(image.digest.clone()),
    };
    crate::install::install_with(&client, &overrides).await
}

/// Starts a supervisor in the background and returns when it is ready.
fn detach(args: &UpArgs) -> anyhow::Result<()> {
    let state_dir = &args.state.state_dir;
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let _ = std::fs::remove_file(ready_marker(state_dir));
    let log_path = logs.join("supervisor.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command =
        std::process::Command::new(std::env::current_exe().context("finding the bosun binary")?);
    command.args(["dev", "up", "--supervised"]);
    command.arg("--state-dir").arg(state_dir);
    command.arg("--tools-dir").arg(&args.tools_dir);
    if let Some(path) = &args.kubeconfig {
        command.arg("--kubeconfig").arg(path);
    }
    if args.fresh {
        command.arg("--fresh");
    }
    if let Some(mode) = args.operator.to_possible_value() {
        command.arg("--operator").arg(mode.get_name());
    }
    use std::os::unix::process::CommandExt;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the supervisor")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(kubeconfig) = std::fs::read_to_string(ready_marker(state_dir)) {
            println!(
                "ready: export KUBECONFIG={kubeconfig} (supervisor pid {}; stop with `bosun dev down`)",
                child.id()
            );
            return Ok(());
        }
        if let Some(exit) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the dev cluster did not start ({exit}):\n{}",
                tail.join("\n")
            );
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the dev cluster was not ready within 10 minutes; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn down(state_dir: &Path) -> anyhow::Result<()> {
    let dev = DevCluster::new(state_dir);
    if let Some(pid) = dev.running_supervisor() {
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM)
            .context("signalling the supervisor")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while dev.running_supervisor().is_some() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the supervisor (pid {pid}) did not stop within 2 minutes; see {}/logs/supervisor.log",
                    state_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Whether it stopped cleanly or had crashed: make sure nothing is left.
    let tools = Tools::load(Tools::default_dir()).ok();
    dev.clean_host(tools.as_ref()).await;
    println!("stopped; data kept in {}", state_dir.display());
    Ok(())
}

fn status(state_dir: &Path) -> anyhow::Result<()> {
    let dev = DevCluster::new(state_dir);
    let Some(pid) = dev.running_supervisor() else {
        println!("not running (state directory {})", state_dir.display());
        return Ok(());
    };
    let ready = std::fs::read_to_string(ready_marker(state_dir)).ok();
    println!(
        "running (supervisor pid {pid}){}",
        ready
            .map(|k| format!(", ready: KUBECONFIG={k}"))
            .unwrap_or_else(|| ", starting".into())
    );
    let table: std::collections::BTreeMap<String, ComponentState> =
        std::fs::read(state_dir.join("run").join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    println!(
        "{:<26} {:>8} {:>9}  LAST EXIT",
        "COMPONENT", "PID", "RESTARTS"
    );
    for (name, state) in table {
        println!(
            "{:<26} {:>8} {:>9}  {}",
            name,
            state.pid.map_or("-".into(), |p| p.to_string()),
            state.restarts,
            state.last_exit.unwrap_or_default()
        );
    }
    Ok(())
}

fn logs(state_dir: &Path, component: &str) -> anyhow::Result<()> {
    let path = state_dir.join("logs").join(format!("{component}.log"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        let known: Vec<String> = std::fs::read_dir(state_dir.join("logs"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".log")
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "no log for {component:?} in {} (known: {})",
            path.display(),
            known.join(", ")
        )
    })?;
    print!("{text}");
    Ok(())
}
