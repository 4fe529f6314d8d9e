//! The EtcdCluster reconciler: observe (etcd membership and health, member
//! pods, volumes), decide one step with [`plan::next_step`], carry it out,
//! and write status. Every pass starts from what is observed, so killing
//! the operator between any two calls leads to a correct finish after a
//! restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bosun_api::EtcdCluster;
use bosun_api::cluster::ClusterPhase;
use bosun_api::conditions::{self, reasons};
use bosun_api::validation::{check_version_change, validate_cluster};
use bosun_api::version::EtcdVersion;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::telemetry::{ClusterLabels, EtcdMetrics, Telemetry};

mod halt;
mod in_place_restore;
mod nospace;
mod observation;
mod status_report;

use observation::{Observation, storage_migrated_to};
use status_report::{describe, member_statuses, phase_of};

use super::degraded;
use super::objects::{self, MemberPodParams, PodStart, RestoreIntent, SeedRestore};
use super::plan::{self, Desired, RemoveReason, Start, Step};
use crate::backup::policy::StoragePolicy;
use crate::controller::{self, Scope, Settings};
use crate::members::{EtcdError, EtcdMembers};
use crate::restore::source::{self, SourceError};
use crate::status::set_condition;
use in_place_restore::InPlace;
use nospace::SpaceOutcome;

/// The image of a restoring seed's init container: `bosun` with etcd's
/// `etcdutl`. `BOSUN_IMAGE` names it (an installed operator sets it to its
/// own image); the default is the dev cluster's locally built image.
pub fn restore_image() -> String {
    std::env::var("BOSUN_IMAGE").unwrap_or_else(|_| "bosun.dev/bosun:dev".to_string())
}

/// The name the operator applies objects and publishes events as.
pub const MANAGER: &str = "bosun-etcd-operator";

/// How soon a cluster that waits on etcd or on a pod is looked at again:
/// watch events do not tell when a learner has caught up or when etcd's
/// strict reconfiguration check is satisfied.
const WAIT_REQUEUE: Duration = Duration::from_millis(500);

/// How soon a cluster whose NOSPACE cannot be cleared yet is looked at
/// again: whether keys were deleted is seen only by asking etcd.
const NOSPACE_RECHECK: Duration = Duration::from_secs(10);

/// What the reconciler needs: no globals.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events on EtcdClusters.
    pub recorder: Recorder,
    /// The etcd series of `/metrics`.
    pub metrics: EtcdMetrics,
    /// What a bootstrap restore's source may be.
    pub storage: StoragePolicy,
}

/// Why a pass failed; the controller retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An etcd call failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The EtcdCluster lacks namespace or uid.
    #[error(transparent)]
    Identity(#[from] objects::ObjectError),
    /// Neither the spec nor any member names a usable etcd version.
    #[error("spec.version {0:?} is not an etcd version, and no member runs one")]
    NoVersion(String),
    /// A volume made for a restore does not say what to restore from.
    #[error("{0}")]
    VolumeIntent(String),
}

/// Runs the EtcdCluster controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
    telemetry: Telemetry,
) {
    let scope = settings.scope;
    let context = Arc::new(Context {
        metrics: telemetry.etcd.clone(),
        recorder: controller::recorder(&client, MANAGER),
        client: client.clone(),
        storage: settings.storage,
    });
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        objects::MANAGED_BY_LABEL,
        objects::MANAGER
    ));
    let clusters = Controller::new(scope.clusters(client.clone()), watcher::Config::default())
        .owns(scope.pods(client.clone()), owned.clone())
        .owns(scope.pvcs(client), owned);
    // Members made by an earlier operator get the labels this one selects
    // by before it looks at any cluster: unseen, they would look like an
    // empty cluster.
    loop {
        match super::adopt::adopt_legacy_members(&context.client, &scope).await {
            Ok(0) => break,
            Ok(n) => {
                tracing::info!("labelled {n} member objects of an earlier operator");
                break;
            }
            Err(e) => {
                tracing::warn!("labelling member objects of an earlier operator: {e}; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
    tokio::spawn(forget_deleted_clusters(
        context.client.clone(),
        scope,
        context.metrics.clone(),
        shutdown.clone(),
    ));
    controller::drive(
        clusters,
        shutdown,
        telemetry,
        reconcile,
        error_policy,
        context,
    )
    .await;
}

/// How often the series of deleted clusters are looked for.
const FORGET_PERIOD: Duration = Duration::from_secs(10);

/// Removes the metric series of clusters that are gone. A deleted cluster
/// gets no reconcile (its members go by garbage collection), so the
/// clusters with series are compared with a list of the existing ones (names
/// only) every [`FORGET_PERIOD`].
async fn forget_deleted_clusters(
    client: Client,
    scope: Scope,
    metrics: EtcdMetrics,
    shutdown: CancellationToken,
) {
    let api = scope.clusters(client);
    tracing::debug!("removing the series of deleted clusters every {FORGET_PERIOD:?}");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(FORGET_PERIOD) => {}
        }
        let existing: HashSet<(String, String)> =
            match api.list_metadata(&ListParams::default()).await {
                Ok(list) => list
                    .items
                    .iter()
                    .map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
                    .collect(),
                Err(e) => {
                    tracing::debug!("listing clusters to find deleted ones: {e}");
                    continue;
                }
            };
        metrics.forget_clusters_unless(|labels| {
            let exists = existing.contains(&(labels.namespace.clone(), labels.cluster.clone()));
            if !exists {
                tracing::info!(namespace = %labels.namespace, cluster = %labels.cluster, "the cluster is gone; removing its metric series");
            }
            exists
        });
    }
}

/// Retries a failed pass after a short back-off.
pub fn error_policy(cluster: Arc<EtcdCluster>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(2))
}

/// One pass over one EtcdCluster.
#[tracing::instrument(skip_all, fields(namespace = cluster.namespace().unwrap_or_default(), name = cluster.name_any()))]
pub async fn reconcile(cluster: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    objects::check_identity(&cluster)?;
    let pass = Pass::new(&cluster, &ctx);

    if let Err(errors) = validate_cluster(&cluster.spec) {
        let message = errors.to_string();
        pass.event(EventType::Warning, reasons::INVALID_SPEC, &message)
            .await;
        pass.write_status(ClusterPhase::Invalid, None, |c| {
            set_condition(
                c,
                conditions::DEGRADED,
                true,
                reasons::INVALID_SPEC,
                &message,
                pass.generation,
            );
            set_condition(
                c,
                conditions::PROGRESSING,
                false,
                reasons::INVALID_SPEC,
                "the spec is invalid; nothing is changed",
                pass.generation,
            );
        })
        .await?;
        return Ok(Action::await_change());
    }

    pass.apply_services().await?;
    let mut observation = pass.observe().await?;
    ctx.metrics.observe_cluster(
        &ClusterLabels {
            namespace: pass.ns(),
            cluster: pass.name.clone(),
        },
        observation.members().len(),
        observation.healthy_voters(),
        observation
            .statuses
            .values()
            .map(|s| s.leader)
            .find(|l| *l != 0),
        observation
            .statuses
            .values()
            .map(|s| s.db_size)
            .max()
            .unwrap_or_default(),
    );

    if cluster.spec.paused {
        let message = "spec.paused is set: the operator changes nothing";
        pass.write_status(ClusterPhase::Paused, Some(&observation), |c| {
            set_condition(
                c,
                conditions::PROGRESSING,
                false,
                reasons::PAUSED,
                message,
                pass.generation,
            );
        })
        .await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    pass.record_held_volumes(&mut observation).await?;
    pass.forget_stale_halt().await?;
    let (mut target, mut refusal, mut held) = pass.target_version(&observation)?;
    let halt = pass.halt().cloned();
    // A halted upgrade moves nothing on: its target is where it went back to.
    if let Some(back_to) = halt
        .as_ref()
        .and_then(|h| h.rolled_back_to.as_deref()?.parse::<EtcdVersion>().ok())
    {
        (target, refusal, held) = (back_to, None, false);
    }
    let mut regrowing = None;
    if let Some((restore_name, restore_uid)) = objects::restore_in_progress(&cluster) {
        match pass
            .restore_in_place(&restore_name, &restore_uid, &observation, &target)
            .await?
        {
            InPlace::Busy(action) => return Ok(action),
            InPlace::Regrowing(restore) => regrowing = Some(restore),
        }
    }
    if let Some(message) = &refusal {
        pass.event(EventType::Warning, reasons::VERSION_CHANGE_REFUSED, message)
            .await;
    }
    let mut size = usize::try_from(cluster.spec.size).unwrap_or(1);
    // A halted scale-up holds the cluster at the voters it had.
    if let Some(held_size) = halt.as_ref().and_then(|h| h.held_size) {
        size = size.min(usize::try_from(held_size).unwrap_or(size));
    }
    let desired = Desired {
        size,
        version: target.to_string(),
    };
    let step = plan::next_step(&desired, &observation.plan);
    tracing::debug!(?step, "next step");
    // A seed that starts from a backup: its snapshot is checked before any
    // pod exists, and a source that fails says why and creates nothing.
    let seed_restore = match &step {
        Step::CreateSeed => match pass.seed_restore().await {
            Ok(restore) => restore,
            Err(e) => {
                pass.event(EventType::Warning, e.reason, &e.message).await;
                pass.write_status(ClusterPhase::Degraded, Some(&observation), |c| {
                    set_condition(
                        c,
                        conditions::DEGRADED,
                        true,
                        e.reason,
                        &e.message,
                        pass.generation,
                    );
                    set_condition(
                        c,
                        conditions::PROGRESSING,
                        false,
                        e.reason,
                        "no member is created until the restore source is usable",
                        pass.generation,
                    );
                })
                .await?;
                return Ok(Action::requeue(Duration::from_secs(15)));
            }
        },
        _ => None,
    };
    let mut requeue = pass
        .carry_out(&step, &observation, &target, seed_restore)
        .await?;
    if step == Step::Done
        && let Some(restore) = &regrowing
    {
        // Restored and grown to full size: acknowledged first, then the
        // cluster is the user's again.
        pass.finish_restore(restore).await?;
    }
    let step = match step {
        Step::Done if held => {
            requeue = Action::requeue(Duration::from_secs(2));
            Step::Wait {
                reason: "etcd to migrate its data format before the next minor version".into(),
            }
        }
        step => step,
    };

    // Space is won back only from a cluster at rest: never while
    // membership changes or a restore runs.
    let space = if step == Step::Done {
        pass.win_space_back(&observation).await?
    } else {
        SpaceOutcome::NoAlarm
    };
    let space_note = match &space {
        SpaceOutcome::NoAlarm => None,
        SpaceOutcome::Working | SpaceOutcome::Disarmed => {
            requeue = Action::requeue(WAIT_REQUEUE);
            None
        }
        SpaceOutcome::Blocked(why) => {
            // Nothing tells the operator when keys are deleted: look again.
            requeue = Action::requeue(NOSPACE_RECHECK);
            Some(why.as_str())
        }
    };
    let alarms = observation.alarms();
    if !alarms.is_empty() {
        pass.event(
            EventType::Warning,
            degraded::ALARM_RAISED,
            &degraded::alarm_message(&alarms),
        )
        .await;
    }
    let phase = phase_of(&step, &observation);
    let healthy = observation.healthy_voters();
    let voters = observation.voters();
    pass.write_status(phase, Some(&observation), |c| {
        let available = voters > 0 && healthy * 2 > voters;
        set_condition(
            c,
            conditions::AVAILABLE,
            available,
            if available {
                "QuorumHealthy"
            } else {
                "QuorumUnhealthy"
            },
            &format!("{healthy} of {voters} voting members are healthy"),
            pass.generation,
        );
        let (progressing, reason, message) = describe(&step);
        set_condition(
            c,
            conditions::PROGRESSING,
            progressing,
            reason,
            &message,
            pass.generation,
        );
        let (status, reason, message) = degraded::degraded(&degraded::Report {
            step: &step,
            refusal: refusal.as_deref(),
            halted: halt.as_ref(),
            start_failures: &observation.start_failures,
            alarms: &alarms,
            space: space_note,
            members: observation.plan.members.as_deref(),
            has_member_objects: !observation.plan.pods.is_empty()
                || !observation.plan.volumes.is_empty(),
        });
        set_condition(
            c,
            conditions::DEGRADED,
            status,
            reason,
            &message,
            pass.generation,
        );
    })
    .await?;
    Ok(requeue)
}

/// One reconcile pass's handles.
struct Pass<'a> {
    cluster: &'a EtcdCluster,
    ctx: &'a Context,
    name: String,
    generation: Option<i64>,
    pods: Api<Pod>,
    pvcs: Api<PersistentVolumeClaim>,
    /// The uid of the EtcdRestore restoring the cluster in place, if any:
    /// pods and volumes made now carry it.
    restore_id: Option<String>,
}

impl<'a> Pass<'a> {
    fn new(cluster: &'a EtcdCluster, ctx: &'a Context) -> Self {
        let ns = cluster.namespace().unwrap_or_default();
        Pass {
            cluster,
            ctx,
            name: cluster.name_any(),
            generation: cluster.metadata.generation,
            pods: Api::namespaced(ctx.client.clone(), &ns),
            pvcs: Api::namespaced(ctx.client.clone(), &ns),
            restore_id: objects::restore_in_progress(cluster).map(|(_, uid)| uid),
        }
    }

    /// Marks an object made during an in-place restore.
    fn mark(&self, meta: &mut ObjectMeta) {
        if let Some(id) = &self.restore_id {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(objects::RESTORE_ID_ANNOTATION.to_string(), id.clone());
        }
    }

    fn is_marked(&self, meta: &ObjectMeta) -> bool {
        self.restore_id.is_some()
            && meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(objects::RESTORE_ID_ANNOTATION))
                == self.restore_id.as_ref()
    }

    fn delete_ignoring_absent(&self, result: Result<(), kube::Error>) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn ns(&self) -> String {
        self.cluster.namespace().unwrap_or_default()
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        controller::publish(
            &self.ctx.recorder,
            self.cluster,
            type_,
            reason,
            reason,
            note,
        )
        .await;
    }

    async fn apply_services(&self) -> Result<(), Error> {
        let params = PatchParams::apply(MANAGER).force();
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        for service in [
            objects::peer_service(self.cluster),
            objects::client_service(self.cluster),
        ] {
            services
                .patch(&service.name_any(), &params, &Patch::Apply(&service))
                .await?;
        }
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let pdb = objects::pod_disruption_budget(self.cluster);
        pdbs.patch(&pdb.name_any(), &params, &Patch::Apply(&pdb))
            .await?;
        Ok(())
    }

    /// The version to run: the spec's, unless moving there from what runs
    /// now is not allowed (then what runs now, and why not).
    /// Also says whether the upgrade is held until etcd migrates its data.
    fn target_version(
        &self,
        observation: &Observation,
    ) -> Result<(EtcdVersion, Option<String>, bool), Error> {
        let wanted: Option<EtcdVersion> = self.cluster.spec.version.parse().ok();
        let running: Option<EtcdVersion> = observation
            .plan
            .pods
            .iter()
            .filter_map(|p| p.version.as_deref()?.parse().ok())
            .min();
        Ok(match (running, wanted) {
            (Some(running), Some(wanted)) => match check_version_change(&running, &wanted) {
                Ok(())
                    if wanted.minor_line() > running.minor_line()
                        && !storage_migrated_to(observation, &running) =>
                {
                    // Not refused, only not yet: etcd migrates its data format
                    // after a minor upgrade, and the next minor version will
                    // not start on data that is not migrated.
                    (running, None, true)
                }
                Ok(()) => (wanted, None, false),
                Err(message) => (running, Some(format!("spec.version: {message}")), false),
            },
            (None, Some(wanted)) => (wanted, None, false),
            (Some(running), None) => (running, None, false),
            // Validation passed, so the spec's version parses; should it
            // not, this pass fails and is retried rather than the process.
            (None, None) => {
                return Err(Error::NoVersion(self.cluster.spec.version.clone()));
            }
        })
    }

    fn initial_cluster(
        &self,
        observation: &Observation,
        extra: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut names: Vec<String> = observation
            .members()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        if observation.plan.members.is_none() {
            names = observation
                .plan
                .volumes
                .iter()
                .filter(|v| !v.terminating)
                .map(|v| v.member.clone())
                .collect();
        }
        if let Some(extra) = extra
            && !names.iter().any(|n| n == extra)
        {
            names.push(extra.to_string());
        }
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let url = objects::peer_url(self.cluster, &n);
                (n, url)
            })
            .collect()
    }

    /// Creates a member's volume unless it exists; a volume for a restore's
    /// seed carries the restore's intent.
    async fn ensure_volume(
        &self,
        member: &str,
        restore: Option<&RestoreIntent>,
    ) -> Result<(), Error> {
        if self.cluster.spec.storage.empty_dir {
            return Ok(());
        }
        let mut pvc = objects::member_pvc(self.cluster, member, restore);
        self.mark(&mut pvc.metadata);
        match self.pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn create_pod(&self, params: &MemberPodParams) -> Result<(), Error> {
        let mut pod = objects::member_pod(self.cluster, params);
        self.mark(&mut pod.metadata);
        match self.pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_member_objects(&self, member: &str) -> Result<(), Error> {
        for result in [
            self.pods
                .delete(member, &DeleteParams::default())
                .await
                .map(drop),
            if self.cluster.spec.storage.empty_dir {
                Ok(())
            } else {
                self.pvcs
                    .delete(member, &DeleteParams::default())
                    .await
                    .map(drop)
            },
        ] {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn new_member_name(&self, observation: &Observation) -> String {
        loop {
            let name = objects::member_name(&self.name, &objects::random_suffix());
            let taken = observation.plan.pods.iter().any(|p| p.member == name)
                || observation.plan.volumes.iter().any(|v| v.member == name)
                || observation.members().iter().any(|m| m.name == name);
            if !taken {
                return name;
            }
        }
    }

    async fn etcd(&self, observation: &Observation) -> Result<EtcdMembers, Error> {
        let endpoints: Vec<String> = observation
            .members()
            .iter()
            .filter(|m| m.healthy)
            .filter_map(|m| observation.endpoint(&m.name))
            .collect();
        Ok(EtcdMembers::connect(&endpoints).await?)
    }

    /// What the seed restores, when it starts from a backup: the source
    /// resolved and its snapshot verified, pinned to the SHA-256 checked.
    async fn seed_restore(&self) -> Result<Option<RestoreIntent>, SourceError> {
        let Some(source) = self
            .cluster
            .spec
            .bootstrap
            .as_ref()
            .and_then(|b| b.restore.as_ref())
            .map(|r| &r.source)
        else {
            return Ok(None);
        };
        let namespace = self.ns();
        let mut resolved =
            source::resolve(&self.ctx.client, &namespace, source, &self.ctx.storage).await?;
        let summary = source::verify(&self.ctx.client, &namespace, &resolved).await?;
        resolved.location.sha256 = Some(summary.sha256);
        Ok(Some(RestoreIntent {
            source: resolved.location,
            cluster_token: objects::cluster_token(self.cluster),
        }))
    }

    /// Carries out one step; returns when to look again.
    async fn carry_out(
        &self,
        step: &Step,
        observation: &Observation,
        version: &EtcdVersion,
        seed_restore: Option<RestoreIntent>,
    ) -> Result<Action, Error> {
        let soon = Action::requeue(WAIT_REQUEUE);
        match step {
            Step::CreateSeed => {
                let restored_from = seed_restore.as_ref().map(|r| r.source.url.clone());
                let member = self.new_member_name(observation);
                // The volume first, carrying the restore's intent: whatever
                // happens to the pod, every pod on this volume restores from
                // exactly this source until the data is there.
                crate::crash_point!("cluster.create-seed.before-volume");
                self.ensure_volume(&member, seed_restore.as_ref()).await?;
                crate::crash_point!("cluster.create-seed.after-volume");
                let start = match seed_restore {
                    Some(intent) => PodStart::Restore(SeedRestore {
                        intent,
                        image: restore_image(),
                    }),
                    None => PodStart::Bootstrap,
                };
                let params = MemberPodParams {
                    initial_cluster: vec![(
                        member.clone(),
                        objects::peer_url(self.cluster, &member),
                    )],
                    member: member.clone(),
                    start,
                    version: version.clone(),
                    image: self.image_override(),
                };
                self.create_pod(&params).await?;
                crate::crash_point!("cluster.create-seed.after-pod");
                let note = match restored_from {
                    Some(url) => format!("created seed member {member}, restored from {url}"),
                    None => format!("created seed member {member}"),
                };
                self.event(EventType::Normal, "SeedCreated", &note).await;
                Ok(soon)
            }
            Step::CreatePod { member, start } => {
                let start = match start {
                    Start::New => PodStart::Bootstrap,
                    Start::Restore => match observation.restore_intents.get(member) {
                        Some(Ok(intent)) => PodStart::Restore(SeedRestore {
                            intent: intent.clone(),
                            image: restore_image(),
                        }),
                        Some(Err(message)) => return Err(Error::VolumeIntent(message.clone())),
                        None => {
                            return Err(Error::VolumeIntent(format!(
                                "volume {member} was made for a restore, but its source is not readable"
                            )));
                        }
                    },
                    // A learner that never started: the only member that may
                    // be given a new, empty volume.
                    Start::Join => {
                        self.ensure_volume(member, None).await?;
                        PodStart::Join
                    }
                    Start::Resume => PodStart::Resume {
                        image: restore_image(),
                    },
                };
                let params = MemberPodParams {
                    member: member.clone(),
                    initial_cluster: self.initial_cluster(observation, Some(member)),
                    start,
                    version: version.clone(),
                    image: self.image_override(),
                };
                crate::crash_point!("cluster.create-pod.before");
                self.create_pod(&params).await?;
                crate::crash_point!("cluster.create-pod.after");
                self.event(
                    EventType::Normal,
                    "MemberPodCreated",
                    &format!("created the pod of member {member} ({version})"),
                )
                .await;
                Ok(soon)
            }
            Step::AddLearner => {
                let member = self.new_member_name(observation);
                // The member first, then its volume and pod: etcd may refuse
                // the add (its strict reconfiguration check wants every voter
                // connected for 5 s), and a volume made before that would be
                // an orphan. A crash after the add leaves a learner without
                // a pod, which the plan gives its volume and pod.
                let mut etcd = self.etcd(observation).await?;
                crate::crash_point!("cluster.add-learner.before-add");
                match etcd
                    .add_learner(&objects::peer_url(self.cluster, &member))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_yet_ready_for_reconfiguration() => {
                        tracing::debug!("adding a learner: {e}");
                        return Ok(Action::requeue(WAIT_REQUEUE));
                    }
                    Err(e) => return Err(e.into()),
                }
                crate::crash_point!("cluster.add-learner.after-add");
                self.ensure_volume(&member, None).await?;
                crate::crash_point!("cluster.add-learner.after-volume");
                self.event(
                    EventType::Normal,
                    "MemberAdded",
                    &format!("added member {member} as a learner"),
                )
                .await;
                let params = MemberPodParams {
                    member: member.clone(),
                    initial_cluster: self.initial_cluster(observation, Some(&member)),
                    start: PodStart::Join,
                    version: version.clone(),
                    image: self.image_override(),
                };
                self.create_pod(&params).await?;
                crate::crash_point!("cluster.add-learner.after-pod");
                Ok(soon)
            }
            Step::Promote { id, member } => {
                let mut etcd = self.etcd(observation).await?;
                crate::crash_point!("cluster.promote.before");
                match etcd.promote(*id).await {
                    Ok(()) => {
                        crate::crash_point!("cluster.promote.after");
                        self.event(
                            EventType::Normal,
                            "MemberPromoted",
                            &format!("promoted learner {member} to voter"),
                        )
                        .await;
                        Ok(soon)
                    }
                    // etcd refuses until the learner has caught up: look again shortly.
                    Err(e) => {
                        tracing::debug!("promoting {member}: {e}");
                        Ok(Action::requeue(WAIT_REQUEUE))
                    }
                }
            }
            Step::RemoveMember { id, member, reason } => {
                // The plan decided on a member list read from whichever
                // member answered first, which may lag. The leader's list
                // is the truth: remove only if it is the same membership.
                let Some(leader) = observation
                    .members()
                    .iter()
                    .find(|m| m.leader)
                    .and_then(|l| observation.endpoint(&l.name))
                else {
                    return Ok(soon);
                };
                let mut etcd = EtcdMembers::connect(&[leader]).await?;
                let current = etcd.list().await?;
                if !plan::same_membership(observation.members(), &current, *id) {
                    tracing::info!(%member, "the leader's member list differs from the one observed; observing again before a removal");
                    return Ok(soon);
                }
                crate::crash_point!("cluster.remove-member.before-remove");
                etcd.remove(*id).await?;
                crate::crash_point!("cluster.remove-member.after-remove");
                let why = match reason {
                    RemoveReason::ScaleDown => "the spec asks for fewer members",
                    RemoveReason::DataLost => "its data volume is gone; a new member replaces it",
                    RemoveReason::NotNeeded => {
                        "a learner that never became healthy, no longer needed by the spec"
                    }
                };
                self.event(
                    EventType::Normal,
                    "MemberRemoved",
                    &format!("removed member {member}: {why}"),
                )
                .await;
                self.delete_member_objects(member).await?;
                crate::crash_point!("cluster.remove-member.after-delete");
                Ok(soon)
            }
            Step::MoveLeader { to } => {
                let leader = observation.members().iter().find(|m| m.leader);
                if let Some(endpoint) = leader.and_then(|l| observation.endpoint(&l.name)) {
                    let mut etcd = EtcdMembers::connect(&[endpoint]).await?;
                    crate::crash_point!("cluster.move-leader.before");
                    etcd.move_leader(*to).await?;
                    crate::crash_point!("cluster.move-leader.after");
                    self.event(
                        EventType::Normal,
                        "LeaderMoved",
                        "moved leadership before upgrading the leader",
                    )
                    .await;
                }
                Ok(soon)
            }
            Step::DeleteOrphan { member } => {
                crate::crash_point!("cluster.delete-orphan.before");
                self.delete_member_objects(member).await?;
                crate::crash_point!("cluster.delete-orphan.after");
                self.event(
                    EventType::Normal,
                    "OrphanDeleted",
                    &format!("deleted pod and volume {member}, which belong to no member"),
                )
                .await;
                Ok(soon)
            }
            Step::Upgrade { member } => {
                crate::crash_point!("cluster.upgrade.before-delete");
                match self.pods.delete(member, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                crate::crash_point!("cluster.upgrade.after-delete");
                self.event(
                    EventType::Normal,
                    "MemberUpgrading",
                    &format!("replacing the pod of member {member} to run {version}"),
                )
                .await;
                Ok(soon)
            }
            // Waits are short: a starting member becomes healthy without any
            // Kubernetes event to wake the controller.
            Step::Wait { .. } => Ok(Action::requeue(WAIT_REQUEUE)),
            Step::QuorumLost { message } => {
                self.event(EventType::Warning, reasons::QUORUM_LOST, message)
                    .await;
                Ok(Action::requeue(Duration::from_secs(5)))
            }
            Step::HaltUpgrade { .. } | Step::HaltScaleUp { .. } => {
                self.record_halt(step, observation).await?;
                Ok(soon)
            }
            Step::Done => Ok(Action::requeue(Duration::from_secs(30))),
        }
    }

    async fn write_status(
        &self,
        phase: ClusterPhase,
        observation: Option<&Observation>,
        conditions: impl FnOnce(&mut Vec<Condition>),
    ) -> Result<(), Error> {
        let mut status = self.cluster.status.clone().unwrap_or_default();
        // The restore acknowledgement is written on its own (see
        // in_place_restore); this pass's copy may be stale.
        status.restore = None;
        status.phase = Some(phase);
        status.observed_generation = self.generation;
        status.client_endpoint = Some(objects::client_endpoint(self.cluster));
        status.target_version = Some(self.cluster.spec.version.clone());
        if let Some(observation) = observation {
            status.members = member_statuses(observation);
            status.ready_members = i32::try_from(observation.healthy_voters()).unwrap_or(i32::MAX);
            status.current_version = observation
                .statuses
                .values()
                .filter_map(|s| s.version.parse::<EtcdVersion>().ok())
                .min()
                .map(|v| v.to_string());
        }
        conditions(&mut status.conditions);
        let api: Api<EtcdCluster> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let patch = serde_json::json!({"status": status});
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}
