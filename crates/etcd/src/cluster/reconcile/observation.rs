//! What one pass of the EtcdCluster reconciler observes — the member pods
//! and volumes the API server lists, etcd's membership and each member's
//! own status — and how it is observed. The plan decides from
//! [`Observation::plan`]; the rest feeds the status.

use std::collections::BTreeMap;

use bosun_api::version::EtcdVersion;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};

use super::{Error, Pass};
use crate::cluster::objects::{self, RestoreIntent};
use crate::cluster::plan::{MemberView, Observed, PodView, VolumeView};
use crate::members;

/// What one pass observed.
pub(super) struct Observation {
    pub(super) plan: Observed,
    /// Member name → pod IP, for pods that have one.
    pub(super) pod_ips: BTreeMap<String, String>,
    /// The membership as etcd lists it (with URLs), when known.
    pub(super) listed: Option<Vec<members::Member>>,
    /// Member name → its own status, when it answered.
    pub(super) statuses: BTreeMap<String, members::MemberStatus>,
    /// Member name → the restore its volume was made for.
    pub(super) restore_intents: BTreeMap<String, Result<RestoreIntent, String>>,
    /// Member name → why its pod's init container (restore or data guard)
    /// failed, in the container's own words.
    pub(super) start_failures: BTreeMap<String, String>,
    /// Member name → why its pod is not running, in the pod's own words.
    pub(super) pod_troubles: BTreeMap<String, String>,
    /// Member name → the image a member last ran healthy on its volume.
    pub(super) last_images: BTreeMap<String, String>,
    /// Member name → the image and version its running pod was made with.
    pub(super) pod_images: BTreeMap<String, (String, String)>,
}

impl Observation {
    /// Member name → the alarms it reports (NOSPACE, CORRUPT).
    pub(super) fn alarms(&self) -> BTreeMap<String, Vec<String>> {
        self.statuses
            .iter()
            .map(|(name, s)| {
                let alarms: Vec<String> = s
                    .errors
                    .iter()
                    .filter(|e| members::is_alarm(e))
                    .cloned()
                    .collect();
                (name.clone(), alarms)
            })
            .filter(|(_, alarms)| !alarms.is_empty())
            .collect()
    }
}

impl Observation {
    pub(super) fn members(&self) -> &[MemberView] {
        self.plan.members.as_deref().unwrap_or_default()
    }
    pub(super) fn voters(&self) -> usize {
        self.members().iter().filter(|m| !m.learner).count()
    }
    pub(super) fn healthy_voters(&self) -> usize {
        self.members()
            .iter()
            .filter(|m| !m.learner && m.healthy)
            .count()
    }
    pub(super) fn endpoint(&self, member: &str) -> Option<String> {
        self.pod_ips
            .get(member)
            .map(|ip| format!("http://{ip}:{}", objects::CLIENT_PORT))
    }
}

/// The name of a member: etcd's, or for a learner that has not started yet
/// (etcd knows only its peer URL), the host part of that URL.
pub(super) fn member_name(member: &members::Member) -> String {
    if !member.name.is_empty() {
        return member.name.clone();
    }
    member
        .peer_urls
        .first()
        .and_then(|url| url.split("://").nth(1))
        .and_then(|host| host.split(['.', ':']).next())
        .unwrap_or_default()
        .to_string()
}

impl Pass<'_> {
    pub(super) async fn observe(&self) -> Result<Observation, Error> {
        let (pods, pvcs) = self.list_member_objects().await?;

        let mut pod_ips = BTreeMap::new();
        let mut views = vec![];
        let mut start_failures = BTreeMap::new();
        let mut pod_troubles = BTreeMap::new();
        let mut pod_images = BTreeMap::new();
        let deadline = self.cluster.spec.member_start_deadline();
        let now = k8s_openapi::jiff::Timestamp::now();
        for pod in &pods {
            let Some(member) = objects::member_of_pod(pod) else {
                continue;
            };
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone())
                && running
                && !terminating
            {
                pod_ips.insert(member.clone(), ip);
            }
            let failure = objects::init_failure(pod);
            if let Some(failure) = &failure {
                start_failures.insert(member.clone(), failure.message.clone());
            }
            if let Some(trouble) = objects::pod_trouble(pod) {
                pod_troubles.insert(member.clone(), trouble);
            }
            let version = objects::version_of_pod(pod).map(|v| v.to_string());
            if let (Some(image), Some(version)) = (objects::etcd_image_of(pod), &version)
                && !terminating
            {
                pod_images.insert(member.clone(), (image, version.clone()));
            }
            views.push(PodView {
                member,
                terminating,
                version,
                data_lost: failure.is_some_and(|f| f.data_lost),
                ready: objects::pod_ready(pod),
                overdue: !terminating && objects::pod_overdue(pod, deadline, now),
            });
        }
        let mut restore_intents = BTreeMap::new();
        let mut last_images = BTreeMap::new();
        let mut volumes = vec![];
        if !self.cluster.spec.storage.empty_dir {
            for pvc in &pvcs {
                let intent = objects::restore_intent_of(pvc);
                let annotation = |key: &str| pvc.annotations().get(key).cloned();
                if let Some(image) = annotation(objects::LAST_IMAGE_ANNOTATION) {
                    last_images.insert(pvc.name_any(), image);
                }
                volumes.push(VolumeView {
                    member: pvc.name_any(),
                    terminating: pvc.metadata.deletion_timestamp.is_some(),
                    restore: intent.is_some(),
                    held_member: objects::held_member(pvc),
                    last_version: annotation(objects::LAST_VERSION_ANNOTATION),
                });
                if let Some(intent) = intent {
                    restore_intents.insert(pvc.name_any(), intent);
                }
            }
        }

        let endpoints: Vec<String> = pod_ips
            .values()
            .map(|ip| format!("http://{ip}:{}", objects::CLIENT_PORT))
            .collect();
        let listed = members::list_through_any(&endpoints).await;

        let mut statuses = BTreeMap::new();
        if let Some(listed) = &listed {
            let checks = listed.iter().filter_map(|m| {
                let name = member_name(m);
                let ip = pod_ips.get(&name)?;
                let endpoint = format!("http://{ip}:{}", objects::CLIENT_PORT);
                Some(async move { (name, members::member_status(&endpoint).await) })
            });
            for (name, status) in futures::future::join_all(checks).await {
                if let Ok(status) = status {
                    statuses.insert(name, status);
                }
            }
        }
        let leader = statuses
            .values()
            .map(|s| s.leader)
            .find(|l| *l != 0)
            .unwrap_or(0);
        let member_views = listed.as_ref().map(|listed| {
            listed
                .iter()
                .map(|m| {
                    let name = member_name(m);
                    // Alarms are reported on their own (Degraded,
                    // AlarmRaised), not as ill health.
                    let healthy = statuses
                        .get(&name)
                        .is_some_and(members::MemberStatus::serves);
                    MemberView {
                        id: m.id,
                        learner: m.is_learner,
                        healthy,
                        leader: m.id == leader,
                        name,
                    }
                })
                .collect()
        });
        Ok(Observation {
            plan: Observed {
                pods: views,
                volumes,
                members: member_views,
            },
            pod_ips,
            listed,
            statuses,
            restore_intents,
            start_failures,
            pod_troubles,
            last_images,
            pod_images,
        })
    }

    /// The cluster's member pods and volumes: selected by the labels only
    /// bosun sets (managed-by and the cluster's uid) and checked against
    /// their controller owner, so nothing of other software is ever taken
    /// for a member, deleted or wiped.
    pub(super) async fn list_member_objects(
        &self,
    ) -> Result<(Vec<Pod>, Vec<PersistentVolumeClaim>), Error> {
        let selector = ListParams::default().labels(&objects::member_selector(self.cluster));
        let mut pods = self.pods.list(&selector).await?.items;
        let mut pvcs = self.pvcs.list(&selector).await?.items;
        pods.retain(|p| objects::is_ours(&p.metadata, self.cluster));
        pvcs.retain(|p| objects::is_ours(&p.metadata, self.cluster));
        Ok((pods, pvcs))
    }

    /// Marks the volume of every member that is running healthy as one
    /// that held a member, with the version and image it runs: from then on
    /// a pod on it starts only on its data, and an upgrade of it that cannot
    /// start knows where to go back to. Done before any step, so no member
    /// is replaced or restarted before its volume says what it must hold.
    pub(super) async fn record_held_volumes(
        &self,
        observation: &mut Observation,
    ) -> Result<(), Error> {
        let healthy: Vec<String> = observation
            .members()
            .iter()
            .filter(|m| m.healthy)
            .map(|m| m.name.clone())
            .collect();
        for volume in observation.plan.volumes.iter_mut() {
            if volume.terminating || !healthy.contains(&volume.member) {
                continue;
            }
            let running = observation.pod_images.get(&volume.member);
            let running_version = running.map(|(_, version)| version);
            if volume.held_member && volume.last_version.as_ref() == running_version {
                continue;
            }
            let mut annotations = serde_json::Map::new();
            annotations.insert(objects::HELD_MEMBER_ANNOTATION.into(), "true".into());
            if let Some((image, version)) = running {
                annotations.insert(
                    objects::LAST_VERSION_ANNOTATION.into(),
                    version.clone().into(),
                );
                annotations.insert(objects::LAST_IMAGE_ANNOTATION.into(), image.clone().into());
            }
            let patch = serde_json::json!({"metadata": {"annotations": annotations}});
            crate::crash_point!("cluster.mark-held.before");
            match self
                .pvcs
                .patch(
                    &volume.member,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    crate::crash_point!("cluster.mark-held.after");
                    volume.held_member = true;
                    if let Some((image, version)) = running {
                        volume.last_version = Some(version.clone());
                        observation
                            .last_images
                            .insert(volume.member.clone(), image.clone());
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Whether every member that reports a storage version (etcd 3.6 and
/// later) has migrated its data to `running`'s minor version. Members of
/// older versions report none and need no migration to be read by the next.
pub(super) fn storage_migrated_to(observation: &Observation, running: &EtcdVersion) -> bool {
    observation.statuses.values().all(|status| {
        status.storage_version.is_empty()
            || status
                .storage_version
                .parse::<EtcdVersion>()
                .is_ok_and(|v| v.minor_line() >= running.minor_line())
    })
}
