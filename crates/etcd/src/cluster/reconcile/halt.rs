//! Giving up a change whose new member cannot start within
//! `spec.memberStartDeadlineSeconds`, so that the cluster is never stuck
//! for good. The plan decides when ([`Step::HaltUpgrade`],
//! [`Step::HaltScaleUp`]); this records the decision in
//! `EtcdCluster.status.halted` for the spec generation it was made for, and
//! the following passes act on the record: an upgrade's target becomes the
//! version (and image) that last ran on the stuck member's volume, a
//! scale-up's size the voters there were. Any spec change tries again.

use bosun_api::EtcdCluster;
use bosun_api::cluster::{HaltedChange, HaltedKind};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::observation::Observation;
use super::{Error, Pass};
use crate::cluster::degraded::{SCALE_UP_HALTED, UPGRADE_HALTED, halted_message};
use crate::cluster::plan::Step;

impl Pass<'_> {
    /// The halt that holds for the spec generation this pass works on.
    pub(super) fn halt(&self) -> Option<&HaltedChange> {
        let halted = self.cluster.status.as_ref()?.halted.as_ref()?;
        (Some(halted.generation) == self.generation).then_some(halted)
    }

    /// The image member pods are made with instead of the spec's: the one
    /// an upgraded member went back to, while that upgrade stays halted.
    pub(super) fn image_override(&self) -> Option<String> {
        self.halt()
            .filter(|h| h.change == HaltedKind::Upgrade)
            .and_then(|h| h.rolled_back_image.clone())
    }

    /// Records a halt the plan decided, with an Event in the pod's own words.
    pub(super) async fn record_halt(
        &self,
        step: &Step,
        observation: &Observation,
    ) -> Result<(), Error> {
        let generation = self.generation.unwrap_or_default();
        let (halted, reason) = match step {
            Step::HaltUpgrade { member, back_to } => (
                HaltedChange {
                    change: HaltedKind::Upgrade,
                    generation,
                    member: member.clone(),
                    rolled_back_to: Some(back_to.clone()),
                    rolled_back_image: observation.last_images.get(member).cloned(),
                    held_size: None,
                    message: trouble(observation, member),
                },
                UPGRADE_HALTED,
            ),
            Step::HaltScaleUp { member } => (
                HaltedChange {
                    change: HaltedKind::ScaleUp,
                    generation,
                    member: member.clone(),
                    rolled_back_to: None,
                    rolled_back_image: None,
                    held_size: Some(i32::try_from(observation.voters()).unwrap_or(i32::MAX)),
                    message: trouble(observation, member),
                },
                SCALE_UP_HALTED,
            ),
            _ => return Ok(()),
        };
        crate::crash_point!("cluster.halt.before");
        self.patch_halted(Some(&halted)).await?;
        crate::crash_point!("cluster.halt.after");
        self.event(EventType::Warning, reason, &halted_message(&halted))
            .await;
        Ok(())
    }

    /// Removes a halt recorded for an earlier generation: the spec changed,
    /// so the change is tried again.
    pub(super) async fn forget_stale_halt(&self) -> Result<(), Error> {
        let stale = self
            .cluster
            .status
            .as_ref()
            .and_then(|s| s.halted.as_ref())
            .is_some_and(|h| Some(h.generation) != self.generation);
        if stale {
            self.patch_halted(None).await?;
        }
        Ok(())
    }

    async fn patch_halted(&self, halted: Option<&HaltedChange>) -> Result<(), Error> {
        let api: Api<EtcdCluster> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let patch = serde_json::json!({"status": {"halted": halted}});
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Why `member`'s pod is not running, or a plain statement when the pod
/// says nothing.
fn trouble(observation: &Observation, member: &str) -> String {
    observation
        .pod_troubles
        .get(member)
        .or_else(|| observation.start_failures.get(member))
        .cloned()
        .unwrap_or_else(|| "its pod did not become ready".to_string())
}
