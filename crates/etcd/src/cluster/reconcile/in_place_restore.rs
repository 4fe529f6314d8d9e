//! The cluster controller's half of an in-place restore (an EtcdRestore;
//! the protocol is described in `restore::reconcile`).
//!
//! What must never happen here: wiping a cluster for a mark that names no
//! live, pinned EtcdRestore (deleted, finished, or copied from another
//! object); wiping before the restore is acknowledged in status; seeding
//! from anything but the pinned, verified snapshot; and an EtcdRestore
//! called done before the cluster holds its data at full size.

use std::time::Duration;

use bosun_api::EtcdRestore;
use bosun_api::cluster::{ClusterPhase, RestoreAcknowledgement, RestoreOutcome};
use bosun_api::conditions;
use bosun_api::restore::PinnedSnapshot;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Error, Observation, Pass, WAIT_REQUEUE};
use crate::cluster::objects::{self, RestoreIntent};
use crate::cluster::plan::Step;
use crate::restore::reconcile::live_pin;
use crate::status::set_condition;
use bosun_api::EtcdVersion;

/// What the restore needs of this pass.
pub(super) enum InPlace {
    /// The restore has the pass to itself; look again after this.
    Busy(Action),
    /// The seed runs on the restored data: the usual plan regrows the
    /// cluster, and when it is done the restore is acknowledged.
    Regrowing(TakenOn),
}

/// A restore this controller has taken on.
pub(super) struct TakenOn {
    name: String,
    uid: String,
    revision: Option<i64>,
}

impl Pass<'_> {
    /// Carries an in-place restore one step further.
    pub(super) async fn restore_in_place(
        &self,
        restore_name: &str,
        restore_uid: &str,
        observation: &Observation,
        version: &EtcdVersion,
    ) -> Result<InPlace, Error> {
        let mark = objects::restore_mark(restore_name, restore_uid);
        let restores: Api<EtcdRestore> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let restore = restores.get_opt(restore_name).await?;
        let acknowledged = self
            .cluster
            .status
            .as_ref()
            .and_then(|s| s.restore.as_ref())
            .filter(|ack| ack.uid == restore_uid);
        if acknowledged.is_some_and(|ack| ack.outcome == RestoreOutcome::Succeeded) {
            // Done and acknowledged; only the mark's removal was interrupted.
            self.remove_restore_mark(&mark).await?;
            return Ok(InPlace::Busy(Action::requeue(WAIT_REQUEUE)));
        }
        let Some(pin) = restore
            .as_ref()
            .and_then(|r| live_pin(r, restore_uid))
            .cloned()
        else {
            self.event(
                EventType::Warning,
                "StaleRestoreMark",
                &format!(
                    "the restore mark {mark} names no live, pinned EtcdRestore (it was deleted, has finished, or the mark was copied with the object): nothing is wiped, and the mark is removed"
                ),
            )
            .await;
            self.remove_restore_mark(&mark).await?;
            return Ok(InPlace::Busy(Action::requeue(WAIT_REQUEUE)));
        };
        let taken_on = TakenOn {
            name: restore_name.to_string(),
            uid: restore_uid.to_string(),
            revision: pin.revision,
        };
        if acknowledged.is_none() {
            // Taken on, in status, before anything is wiped.
            crate::crash_point!("restore-in-place.acknowledge.before");
            self.acknowledge(&taken_on, RestoreOutcome::InProgress, &pin)
                .await?;
            crate::crash_point!("restore-in-place.acknowledge.after");
            return Ok(InPlace::Busy(Action::requeue(WAIT_REQUEUE)));
        }

        let (pods, pvcs) = self.list_member_objects().await?;
        let old_pods: Vec<&Pod> = pods
            .iter()
            .filter(|p| !self.is_marked(&p.metadata))
            .collect();
        let old_pvcs: Vec<&PersistentVolumeClaim> = pvcs
            .iter()
            .filter(|p| !self.is_marked(&p.metadata))
            .collect();
        if !old_pods.is_empty() || !old_pvcs.is_empty() {
            crate::crash_point!("restore-in-place.wipe.before");
            self.wipe(restore_name, &old_pods, &old_pvcs, observation)
                .await?;
            crate::crash_point!("restore-in-place.wipe.after");
            return Ok(InPlace::Busy(Action::requeue(Duration::from_secs(1))));
        }
        if !pods.is_empty() || !pvcs.is_empty() {
            return Ok(InPlace::Regrowing(taken_on));
        }

        // Nothing left: the seed, from exactly the pinned snapshot (its
        // volume carries it, so a lost seed pod restores again).
        let intent = RestoreIntent {
            source: pin.location.clone(),
            cluster_token: format!("{}-{restore_uid}", self.name),
        };
        let action = self
            .carry_out(&Step::CreateSeed, observation, version, Some(intent))
            .await?;
        Ok(InPlace::Busy(action))
    }

    /// Acknowledges a finished restore, then gives the cluster back.
    pub(super) async fn finish_restore(&self, restore: &TakenOn) -> Result<(), Error> {
        let ack = RestoreAcknowledgement {
            name: restore.name.clone(),
            uid: restore.uid.clone(),
            outcome: RestoreOutcome::Succeeded,
            revision: restore.revision,
            message: "restored and back to full size".to_string(),
        };
        crate::crash_point!("restore-in-place.finish.before");
        self.write_acknowledgement(&ack).await?;
        crate::crash_point!("restore-in-place.finish.after-acknowledge");
        self.remove_restore_mark(&objects::restore_mark(&restore.name, &restore.uid))
            .await?;
        crate::crash_point!("restore-in-place.finish.after-unmark");
        self.event(
            EventType::Normal,
            "Restored",
            &format!(
                "restored from EtcdRestore {} and back to full size",
                restore.name
            ),
        )
        .await;
        Ok(())
    }

    async fn acknowledge(
        &self,
        restore: &TakenOn,
        outcome: RestoreOutcome,
        pin: &PinnedSnapshot,
    ) -> Result<(), Error> {
        let ack = RestoreAcknowledgement {
            name: restore.name.clone(),
            uid: restore.uid.clone(),
            outcome,
            revision: restore.revision,
            message: format!(
                "taken on: the members are stopped and wiped, then seeded from {} (sha256 {})",
                pin.location.url,
                pin.location.sha256.as_deref().unwrap_or("-")
            ),
        };
        self.write_acknowledgement(&ack).await
    }

    async fn write_acknowledgement(&self, ack: &RestoreAcknowledgement) -> Result<(), Error> {
        let api: Api<bosun_api::EtcdCluster> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let patch = serde_json::json!({"status": {"restore": ack}});
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Removes the restore mark if it is still `mark`, guarded by the
    /// resourceVersion read just before: a mark set meanwhile by another
    /// restore is never removed.
    async fn remove_restore_mark(&self, mark: &str) -> Result<(), Error> {
        let api: Api<bosun_api::EtcdCluster> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let Some(fresh) = api.get_opt(&self.name).await? else {
            return Ok(());
        };
        if fresh
            .annotations()
            .get(objects::RESTORE_ANNOTATION)
            .map(String::as_str)
            != Some(mark)
        {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": fresh.resource_version(),
            "annotations": {objects::RESTORE_ANNOTATION: null},
        }});
        api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Stops every member of before the restore and deletes its volume.
    async fn wipe(
        &self,
        restore_name: &str,
        old_pods: &[&Pod],
        old_pvcs: &[&PersistentVolumeClaim],
        observation: &Observation,
    ) -> Result<(), Error> {
        for pod in old_pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            self.delete_ignoring_absent(
                self.pods
                    .delete(&pod.name_any(), &DeleteParams::default())
                    .await
                    .map(drop),
            )?;
        }
        for pvc in old_pvcs
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            self.delete_ignoring_absent(
                self.pvcs
                    .delete(&pvc.name_any(), &DeleteParams::default())
                    .await
                    .map(drop),
            )?;
        }
        let message = format!(
            "restoring from EtcdRestore {restore_name}: stopping {} member pod(s) and deleting {} volume(s)",
            old_pods.len(),
            old_pvcs.len()
        );
        self.write_status(ClusterPhase::Restoring, Some(observation), |c| {
            set_condition(
                c,
                conditions::PROGRESSING,
                true,
                "Restoring",
                &message,
                self.generation,
            );
            set_condition(
                c,
                conditions::AVAILABLE,
                false,
                "Restoring",
                &message,
                self.generation,
            );
        })
        .await
    }
}
