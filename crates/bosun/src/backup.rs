//! `bosun backup`: an EtcdCluster's backups for people. `list` shows every
//! backup its EtcdBackups recorded, newest first, and the runs that failed;
//! `now` takes one at once by creating a one-shot EtcdBackup that copies an
//! existing EtcdBackup's storage, and follows it to its outcome.
//!
//! The operator does the backup; this module only reads and creates
//! EtcdBackups. What it shows and decides is computed by the pure functions
//! at the top, which the unit tests below cover; `run` does the I/O.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bosun_api::EtcdBackup;
use bosun_api::backup::{BackupPhase, BackupRecord, EtcdBackupSpec};
use bosun_api::conditions::FAILED;
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

use crate::duration::{human_duration, parse_duration};

/// Label of the EtcdBackups `bosun backup now` creates: they are not
/// candidates for the storage of the next one.
const MANUAL_LABEL: &str = "etcd.bosun.dev/manual-backup";
/// Annotation naming the EtcdBackup a manual backup copied its storage from.
const STORAGE_FROM_ANNOTATION: &str = "etcd.bosun.dev/storage-from";
/// How often `now` looks at the EtcdBackup it follows.
const POLL: Duration = Duration::from_secs(1);
/// How often `now` says it is still waiting when nothing changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `bosun backup` subcommands.
#[derive(Subcommand)]
pub enum BackupCommand {
    /// List every backup of an EtcdCluster, newest first, and the runs that failed.
    List(ListArgs),
    /// Take a backup now: a one-shot EtcdBackup with the storage of an existing one.
    ///
    /// Waits until it succeeds (and prints where it is) or fails (and exits
    /// non-zero with the reason), unless --no-wait.
    Now(NowArgs),
}

/// Which cluster, and how to reach it.
#[derive(Args)]
pub struct Target {
    /// Name of the EtcdCluster.
    cluster: String,
    /// Namespace of the EtcdCluster; default: the kubeconfig's namespace, or "default".
    #[arg(short, long)]
    namespace: Option<String>,
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

/// Options of `bosun backup list`.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: Target,
}

/// Options of `bosun backup now`.
#[derive(Args)]
pub struct NowArgs {
    #[command(flatten)]
    target: Target,
    /// The EtcdBackup whose storage to use; needed when the cluster has several.
    #[arg(long, value_name = "ETCDBACKUP")]
    from: Option<String>,
    /// How long to wait for the outcome: 90s, 10m, 1h (a bare number is seconds).
    #[arg(long, default_value = "10m", value_parser = parse_timeout)]
    timeout: Duration,
    /// Create the EtcdBackup and return without waiting for its outcome.
    #[arg(long)]
    no_wait: bool,
}

/// One backup in the table: the EtcdBackup that recorded it, and its record.
#[derive(Debug, PartialEq)]
struct Row<'a> {
    backup: &'a str,
    record: &'a BackupRecord,
}

/// Every backup recorded by the EtcdBackups of `cluster`, newest first.
fn rows_of<'a>(cluster: &str, backups: &'a [EtcdBackup]) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster)
        .flat_map(|b| {
            let name = b.metadata.name.as_deref().unwrap_or_default();
            b.status
                .iter()
                .flat_map(|s| s.backups.iter())
                .map(move |record| Row {
                    backup: name,
                    record,
                })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.record
            .completion_time
            .0
            .cmp(&a.record.completion_time.0)
            .then_with(|| a.backup.cmp(b.backup))
    });
    rows
}

/// The table of `bosun backup list`, aligned in columns as kubectl does.
fn render_table(rows: &[Row<'_>]) -> String {
    let header = [
        "BACKUP",
        "COMPLETED",
        "REVISION",
        "SIZE",
        "ETCD",
        "SHA256",
        "LOCATION",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
    for row in rows {
        let r = row.record;
        lines.push(vec![
            row.backup.to_string(),
            rfc3339(r.completion_time.0),
            r.revision.to_string(),
            human_size(r.size_bytes),
            r.etcd_version.clone().unwrap_or_else(|| "-".into()),
            short_sha(&r.sha256).to_string(),
            r.location.clone(),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}   ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Why the last run of an EtcdBackup failed (reason, message), if it did:
/// its Failed condition is True (a schedule's phase stays Scheduled), or
/// its phase is Failed.
fn last_failure(backup: &EtcdBackup) -> Option<(String, String)> {
    let status = backup.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == FAILED && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .or_else(|| {
            (status.phase == Some(BackupPhase::Failed))
                .then(|| ("Failed".into(), "no message in its conditions".into()))
        })
}

/// Everything `bosun backup list` prints.
fn render_list(cluster: &str, namespace: &str, backups: &[EtcdBackup]) -> String {
    let mine: Vec<&EtcdBackup> = backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster)
        .collect();
    if mine.is_empty() {
        return format!(
            "No EtcdBackup in namespace {namespace} backs up EtcdCluster {cluster}: create one \
             (see examples/etcd-backup.yaml) to say where backups go.\n"
        );
    }
    let rows = rows_of(cluster, backups);
    let mut out = if rows.is_empty() {
        let names: Vec<String> = mine.iter().map(|b| b.name_any()).collect();
        format!(
            "No completed backup of EtcdCluster {cluster} in namespace {namespace} yet \
             (EtcdBackups: {}).\n",
            names.join(", ")
        )
    } else {
        render_table(&rows)
    };
    let failures: Vec<String> = mine
        .iter()
        .filter_map(|b| {
            let (reason, message) = last_failure(b)?;
            Some(format!(
                "EtcdBackup {}: last run failed ({reason}): {message}\n",
                b.name_any()
            ))
        })
        .collect();
    if !failures.is_empty() {
        out.push('\n');
        out.extend(failures);
    }
    out
}

/// A size in bytes for people: 512 B, 1.5 KiB, 20.0 MiB, 1.2 GiB. A
/// negative size (a status written by hand) prints as it is.
fn human_size(bytes: i64) -> String {
    u64::try_from(bytes).map_or_else(|_| format!("{bytes} B"), |b| ByteSize(b).to_string())
}

/// The first 12 hex digits of a SHA-256, enough to tell backups apart.
fn short_sha(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// A time as RFC 3339 in UTC, to the second.
fn rfc3339(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The name of a manual backup of `cluster` taken at `now`.
fn manual_backup_name(cluster: &str, now: Timestamp) -> String {
    format!("{cluster}-manual-{}", now.strftime("%Y%m%d-%H%M%S"))
}

/// Whether `bosun backup now` created this EtcdBackup.
fn is_manual(backup: &EtcdBackup) -> bool {
    backup.labels().get(MANUAL_LABEL).map(String::as_str) == Some("true")
}

/// The EtcdBackup whose storage a manual backup of `cluster` copies: the
/// one named by `--from`, or else the only EtcdBackup of the cluster that is
/// not itself a manual backup.
fn choose_source<'a>(
    cluster: &str,
    namespace: &str,
    from: Option<&str>,
    backups: &'a [EtcdBackup],
) -> Result<&'a EtcdBackup, String> {
    if let Some(from) = from {
        let source = backups
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(from))
            .ok_or_else(|| format!("there is no EtcdBackup {from} in namespace {namespace}"))?;
        if source.spec.cluster_name != cluster {
            return Err(format!(
                "EtcdBackup {from} backs up EtcdCluster {}, not {cluster}",
                source.spec.cluster_name
            ));
        }
        return Ok(source);
    }
    let candidates: Vec<&EtcdBackup> = backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster && !is_manual(b))
        .collect();
    match candidates.as_slice() {
        [only] => Ok(only),
        [] => Err(format!(
            "EtcdCluster {cluster} in namespace {namespace} has no EtcdBackup to take the storage \
             from: create one (see examples/etcd-backup.yaml), or name one with --from"
        )),
        several => {
            let names: Vec<String> = several.iter().map(|b| b.name_any()).collect();
            Err(format!(
                "EtcdCluster {cluster} in namespace {namespace} has several EtcdBackups ({}): \
                 choose where the backup goes with --from <ETCDBACKUP>",
                names.join(", ")
            ))
        }
    }
}

/// The one-shot EtcdBackup `name` with the storage of `source`; no
/// schedule and no retention, so it deletes nothing.
fn manual_backup(source: &EtcdBackup, name: &str, namespace: &str) -> EtcdBackup {
    EtcdBackup {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([(MANUAL_LABEL.to_string(), "true".to_string())].into()),
            annotations: Some([(STORAGE_FROM_ANNOTATION.to_string(), source.name_any())].into()),
            ..ObjectMeta::default()
        },
        spec: EtcdBackupSpec {
            cluster_name: source.spec.cluster_name.clone(),
            storage: source.spec.storage.clone(),
            schedule: None,
            retention: None,
            timeout_seconds: source.spec.timeout_seconds,
        },
        status: None,
    }
}

/// Where a one-shot EtcdBackup stands, as `now` reports it.
#[derive(Debug, PartialEq)]
enum Progress<'a> {
    /// Not finished; the phase to show.
    Waiting(&'static str),
    /// Stored and verified.
    Succeeded(&'a BackupRecord),
    /// Failed: reason and message.
    Failed(String, String),
}

/// Where the one-shot `backup` stands.
fn progress(backup: &EtcdBackup) -> Progress<'_> {
    let Some(status) = &backup.status else {
        return Progress::Waiting("waiting for the operator");
    };
    match status.phase {
        None => Progress::Waiting("waiting for the operator"),
        Some(BackupPhase::Pending) => Progress::Waiting("Pending"),
        Some(BackupPhase::Running) => Progress::Waiting("Running"),
        // A one-shot is never Scheduled; shown as is if a schedule appears.
        Some(BackupPhase::Scheduled) => Progress::Waiting("Scheduled"),
        Some(BackupPhase::Succeeded) => match status.backups.first() {
            Some(record) => Progress::Succeeded(record),
            None => Progress::Failed(
                "NoRecord".into(),
                "the EtcdBackup succeeded but records no backup".into(),
            ),
        },
        Some(BackupPhase::Failed) => {
            let (reason, message) = last_failure(backup)
                .unwrap_or_else(|| ("Failed".into(), "no message in its conditions".into()));
            Progress::Failed(reason, message)
        }
    }
}

/// What `now` prints when the backup succeeded.
fn render_success(name: &str, record: &BackupRecord, elapsed: Duration) -> String {
    format!(
        "EtcdBackup {name} succeeded in {}\n  location  {}\n  size      {} ({} bytes)\n  \
         sha256    {}\n  revision  {}\n  etcd      {}\n",
        human_duration(elapsed),
        record.location,
        human_size(record.size_bytes),
        record.size_bytes,
        record.sha256,
        record.revision,
        record.etcd_version.as_deref().unwrap_or("-"),
    )
}

/// Parses `--timeout`: a duration flag (see [`parse_duration`]) or a bare
/// number of seconds, longer than zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let timeout = if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        let seconds: u64 = text
            .parse()
            .map_err(|_| format!("{text:?} is too long a timeout"))?;
        Duration::from_secs(seconds)
    } else {
        parse_duration(text)?
    };
    match timeout {
        Duration::ZERO => Err("the timeout must be longer than 0s".into()),
        timeout => Ok(timeout),
    }
}

/// Runs a `bosun backup` subcommand.
pub fn run(command: BackupCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            BackupCommand::List(args) => list(args).await,
            BackupCommand::Now(args) => now(args).await,
        }
    })
}

/// A client and the namespace to work in.
async fn connect(target: &Target) -> anyhow::Result<(Client, String)> {
    let client = crate::client::client(target.kubeconfig.as_deref()).await?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, namespace))
}

async fn list_backups(api: &Api<EtcdBackup>, namespace: &str) -> anyhow::Result<Vec<EtcdBackup>> {
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing the EtcdBackups of namespace {namespace}"))?
        .items)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<EtcdBackup> = Api::namespaced(client, &namespace);
    let backups = list_backups(&api, &namespace).await?;
    print!(
        "{}",
        render_list(&args.target.cluster, &namespace, &backups)
    );
    Ok(())
}

async fn now(args: NowArgs) -> anyhow::Result<()> {
    let cluster = &args.target.cluster;
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<EtcdBackup> = Api::namespaced(client, &namespace);
    let backups = list_backups(&api, &namespace).await?;
    let source = choose_source(cluster, &namespace, args.from.as_deref(), &backups)
        .map_err(|e| anyhow::anyhow!(e))?;
    let name = create_manual_backup(&api, source, cluster, &namespace).await?;
    if args.no_wait {
        println!(
            "created EtcdBackup {name} in namespace {namespace} (storage of {})",
            source.name_any()
        );
        return Ok(());
    }
    println!(
        "created EtcdBackup {name} in namespace {namespace} (storage of {}); waiting up to {} \
         (Ctrl-C stops the waiting, not the backup)",
        source.name_any(),
        human_duration(args.timeout)
    );
    follow(&api, &name, &namespace, args.timeout).await
}

/// Creates the manual backup and returns its name. Two in the same second
/// would share a name: the later one waits for the next second.
async fn create_manual_backup(
    api: &Api<EtcdBackup>,
    source: &EtcdBackup,
    cluster: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let mut attempts = 0;
    loop {
        let name = manual_backup_name(cluster, Timestamp::now());
        let object = manual_backup(source, &name, namespace);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return Ok(name),
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 3 => {
                attempts += 1;
                let into_second = Timestamp::now().subsec_nanosecond();
                let rest = 1_000_000_000 - u64::try_from(into_second).unwrap_or_default();
                tokio::time::sleep(Duration::from_nanos(rest)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating EtcdBackup {name} in namespace {namespace}")
                });
            }
        }
    }
}

/// Waits for the outcome of EtcdBackup `name`, printing phase changes and,
/// while nothing changes, the time waited every few seconds.
async fn follow(
    api: &Api<EtcdBackup>,
    name: &str,
    namespace: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut shown: Option<&'static str> = None;
    let mut last_line = start;
    loop {
        let fetched = match tokio::time::timeout_at(deadline, api.get_opt(name)).await {
            Ok(result) => result.with_context(|| format!("reading EtcdBackup {name}"))?,
            Err(_) => bail!(
                "gave up waiting for EtcdBackup {name} after {}: the API server did not answer",
                human_duration(start.elapsed())
            ),
        };
        let backup = fetched
            .with_context(|| format!("EtcdBackup {name} was deleted while waiting for it"))?;
        let elapsed = start.elapsed();
        match progress(&backup) {
            Progress::Succeeded(record) => {
                print!("{}", render_success(name, record, elapsed));
                return Ok(());
            }
            Progress::Failed(reason, message) => {
                bail!(
                    "EtcdBackup {name} failed after {} ({reason}): {message}",
                    human_duration(elapsed)
                );
            }
            Progress::Waiting(phase) => {
                let now = Instant::now();
                if shown != Some(phase) {
                    println!("[{:>6}] {phase}", human_duration(elapsed));
                    shown = Some(phase);
                    last_line = now;
                } else if now.duration_since(last_line) >= PROGRESS_EVERY {
                    println!("[{:>6}] still {phase}", human_duration(elapsed));
                    last_line = now;
                }
                if now >= deadline {
                    let hint = if backup.status.and_then(|s| s.phase).is_none() {
                        "; no operator has picked it up: is the bosun operator running?"
                    } else {
                        "; it goes on in the cluster"
                    };
                    bail!(
                        "gave up waiting for EtcdBackup {name} after {} ({phase}){hint} \
                         (kubectl get etcdbackup {name} -n {namespace} -w)",
                        human_duration(elapsed)
                    );
                }
            }
        }
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_api::EtcdBackupStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn at(text: &str) -> Time {
        Time(text.parse().expect("timestamp"))
    }

    fn record(location: &str, completed: &str, size: i64) -> BackupRecord {
        BackupRecord {
            location: location.into(),
            revision: 42,
            size_bytes: size,
            sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            etcd_version: Some("3.6.5".into()),
            start_time: at(completed),
            completion_time: at(completed),
        }
    }

    fn backup(name: &str, cluster: &str, records: Vec<BackupRecord>) -> EtcdBackup {
        let mut backup: EtcdBackup = serde_json::from_value(serde_json::json!({
            "apiVersion": "etcd.bosun.dev/v1alpha1", "kind": "EtcdBackup",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "clusterName": cluster,
                "storage": {"file": {"path": "/backups"}},
                "schedule": "0 * * * *",
                "retention": {"maxBackups": 3},
                "timeoutSeconds": 120,
            },
        }))
        .expect("backup object");
        backup.status = Some(EtcdBackupStatus {
            backups: records,
            ..EtcdBackupStatus::default()
        });
        backup
    }

    fn failed(mut backup: EtcdBackup, phase: BackupPhase, message: &str) -> EtcdBackup {
        let status = backup.status.get_or_insert_with(Default::default);
        status.phase = Some(phase);
        status.conditions.push(Condition {
            type_: FAILED.into(),
            status: "True".into(),
            reason: "Timeout".into(),
            message: message.into(),
            last_transition_time: at("2025-01-01T00:00:00Z"),
            observed_generation: None,
        });
        backup
    }

    fn manual(name: &str, cluster: &str) -> EtcdBackup {
        let mut backup = backup(name, cluster, vec![]);
        backup.metadata.labels = Some([(MANUAL_LABEL.to_string(), "true".to_string())].into());
        backup
    }

    #[test]
    fn rows_are_every_record_of_the_cluster_newest_first() {
        let backups = vec![
            backup(
                "hourly",
                "main",
                vec![
                    record("file:///b/3.db", "2025-03-01T12:00:00Z", 1),
                    record("file:///b/1.db", "2025-03-01T10:00:00Z", 1),
                ],
            ),
            backup(
                "other",
                "elsewhere",
                vec![record("file:///o.db", "2025-03-02T00:00:00Z", 1)],
            ),
            backup(
                "manual",
                "main",
                vec![record("file:///b/2.db", "2025-03-01T11:00:00Z", 1)],
            ),
        ];
        let rows = rows_of("main", &backups);
        let seen: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.backup, r.record.location.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("hourly", "file:///b/3.db"),
                ("manual", "file:///b/2.db"),
                ("hourly", "file:///b/1.db")
            ]
        );
    }

    #[test]
    fn table_has_aligned_columns_short_sha_and_human_size() {
        let backups = vec![backup(
            "hourly",
            "main",
            vec![
                record("s3://bucket/a.db", "2025-03-01T12:00:00Z", 5 * 1024 * 1024),
                record("s3://bucket/b.db", "2025-03-01T11:00:00Z", 900),
            ],
        )];
        let table = render_table(&rows_of("main", &backups));
        let expected = "\
BACKUP   COMPLETED              REVISION   SIZE      ETCD    SHA256         LOCATION
hourly   2025-03-01T12:00:00Z   42         5.0 MiB   3.6.5   0123456789ab   s3://bucket/a.db
hourly   2025-03-01T11:00:00Z   42         900 B     3.6.5   0123456789ab   s3://bucket/b.db
";
        assert_eq!(table, expected);
    }

    #[test]
    fn list_says_so_when_no_etcdbackup_names_the_cluster() {
        let backups = vec![backup("other", "elsewhere", vec![])];
        let out = render_list("main", "prod", &backups);
        assert!(
            out.contains("No EtcdBackup in namespace prod backs up EtcdCluster main"),
            "{out}"
        );
    }

    #[test]
    fn list_says_so_when_no_backup_completed_and_shows_failed_runs() {
        let backups = vec![
            failed(
                backup("hourly", "main", vec![]),
                BackupPhase::Scheduled,
                "too slow",
            ),
            backup("daily", "main", vec![]),
        ];
        let out = render_list("main", "prod", &backups);
        assert_eq!(
            out,
            "No completed backup of EtcdCluster main in namespace prod yet (EtcdBackups: hourly, daily).\n\
             \n\
             EtcdBackup hourly: last run failed (Timeout): too slow\n"
        );
    }

    #[test]
    fn list_shows_the_table_then_the_failed_runs() {
        let backups = vec![
            backup(
                "hourly",
                "main",
                vec![record("file:///a.db", "2025-03-01T12:00:00Z", 1)],
            ),
            failed(
                manual("main-manual-1", "main"),
                BackupPhase::Failed,
                "no space",
            ),
        ];
        let out = render_list("main", "prod", &backups);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("BACKUP"), "{out}");
        assert!(lines[1].starts_with("hourly"), "{out}");
        assert_eq!(lines[2], "");
        assert_eq!(
            lines[3],
            "EtcdBackup main-manual-1: last run failed (Timeout): no space"
        );
        assert_eq!(lines.len(), 4, "{out}");
    }

    #[test]
    fn phase_failed_without_a_condition_is_still_a_failure() {
        let mut b = backup("x", "main", vec![]);
        b.status.get_or_insert_with(Default::default).phase = Some(BackupPhase::Failed);
        assert!(last_failure(&b).is_some());
        let ok = backup("y", "main", vec![]);
        assert_eq!(last_failure(&ok), None);
    }

    #[test]
    fn sizes_are_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_size(5 * 1024_i64.pow(4)), "5.0 TiB");
        assert_eq!(human_size(-1), "-1 B");
    }

    #[test]
    fn short_sha_is_twelve_digits_or_what_there_is() {
        assert_eq!(short_sha("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_sha("abc"), "abc");
        // Not hex: shown whole rather than cut inside a character.
        assert_eq!(short_sha("0123456789aé"), "0123456789aé");
    }

    #[test]
    fn manual_backup_name_is_the_cluster_and_the_utc_time() {
        let now: Timestamp = "2025-06-01T09:08:07.654Z".parse().expect("timestamp");
        assert_eq!(
            manual_backup_name("main", now),
            "main-manual-20250601-090807"
        );
    }

    #[test]
    fn manual_backup_copies_storage_without_schedule_or_retention() {
        let source = backup("hourly", "main", vec![]);
        let copy = manual_backup(&source, "main-manual-1", "prod");
        assert_eq!(copy.spec.cluster_name, "main");
        assert_eq!(copy.spec.storage, source.spec.storage);
        assert_eq!(copy.spec.schedule, None);
        assert_eq!(copy.spec.retention, None);
        assert_eq!(copy.spec.timeout_seconds, 120);
        assert!(is_manual(&copy));
        assert_eq!(copy.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(
            copy.annotations()
                .get(STORAGE_FROM_ANNOTATION)
                .map(String::as_str),
            Some("hourly")
        );
        assert!(copy.status.is_none());
    }

    #[test]
    fn the_only_etcdbackup_of_the_cluster_is_the_source_and_manual_ones_do_not_count() {
        let backups = vec![
            backup("other", "elsewhere", vec![]),
            backup("hourly", "main", vec![]),
            manual("main-manual-1", "main"),
        ];
        let source = choose_source("main", "prod", None, &backups).expect("a source");
        assert_eq!(source.name_any(), "hourly");
    }

    #[test]
    fn several_or_no_candidates_are_errors_that_say_what_to_do() {
        let backups = vec![
            backup("hourly", "main", vec![]),
            backup("offsite", "main", vec![]),
        ];
        let error = choose_source("main", "prod", None, &backups).expect_err("ambiguous");
        assert!(
            error.contains("hourly, offsite") && error.contains("--from"),
            "{error}"
        );

        let only_manual = vec![manual("main-manual-1", "main")];
        let error = choose_source("main", "prod", None, &only_manual).expect_err("none");
        assert!(
            error.contains("has no EtcdBackup") && error.contains("examples/etcd-backup.yaml"),
            "{error}"
        );
    }

    #[test]
    fn from_names_the_source_and_must_back_up_the_cluster() {
        let backups = vec![
            backup("hourly", "main", vec![]),
            backup("offsite", "main", vec![]),
            backup("theirs", "elsewhere", vec![]),
            manual("main-manual-1", "main"),
        ];
        let pick = |from| choose_source("main", "prod", Some(from), &backups);
        assert_eq!(pick("offsite").expect("offsite").name_any(), "offsite");
        assert_eq!(
            pick("main-manual-1")
                .expect("a manual one may be named")
                .name_any(),
            "main-manual-1"
        );
        let error = pick("theirs").expect_err("other cluster");
        assert!(error.contains("backs up EtcdCluster elsewhere"), "{error}");
        let error = pick("nope").expect_err("missing");
        assert!(
            error.contains("no EtcdBackup nope in namespace prod"),
            "{error}"
        );
    }

    #[test]
    fn progress_follows_the_phase_to_an_outcome() {
        let mut b = backup("x", "main", vec![]);
        b.status = None;
        assert_eq!(progress(&b), Progress::Waiting("waiting for the operator"));
        b.status.get_or_insert_with(Default::default).phase = Some(BackupPhase::Running);
        assert_eq!(progress(&b), Progress::Waiting("Running"));

        let done_record = record("file:///a.db", "2025-03-01T12:00:00Z", 7);
        let mut done = backup("x", "main", vec![done_record.clone()]);
        done.status.get_or_insert_with(Default::default).phase = Some(BackupPhase::Succeeded);
        assert_eq!(progress(&done), Progress::Succeeded(&done_record));

        let bad = failed(backup("x", "main", vec![]), BackupPhase::Failed, "slow");
        assert_eq!(
            progress(&bad),
            Progress::Failed("Timeout".into(), "slow".into())
        );
    }

    #[test]
    fn success_shows_location_size_sha_and_revision() {
        let r = record("file:///a.db", "2025-03-01T12:00:00Z", 2048);
        let out = render_success("main-manual-1", &r, Duration::from_secs(65));
        assert!(
            out.starts_with("EtcdBackup main-manual-1 succeeded in 1m05s\n"),
            "{out}"
        );
        assert!(out.contains("location  file:///a.db\n"), "{out}");
        assert!(out.contains("size      2.0 KiB (2048 bytes)\n"), "{out}");
        assert!(out.contains(&format!("sha256    {}\n", r.sha256)), "{out}");
        assert!(out.contains("revision  42\n"), "{out}");
    }

    #[test]
    fn the_timeout_is_a_duration_longer_than_zero() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_timeout("99999999999999999999").is_err());
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("m").is_err());
        assert!(parse_timeout("").is_err());
    }
}
