//! Reclaiming: when the claim of one of our volumes is deleted, the PV
//! controller marks the volume Released and, seeing an external provisioner
//! in `pv.kubernetes.io/provisioned-by`, leaves the deletion to us. We remove
//! the host directory, then the PersistentVolume.
//!
//! Directory first: if we crash in between, the Released PV is still there
//! and the next reconcile finishes the job (removing a missing directory is
//! success). The other order would leak the directory for ever.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::Instrument;

use super::provision::PROVISIONED_BY;
use super::{Context, PROVISIONER_NAME, StorageError, api_call, host_dir, is_not_found};

/// What to do about one PersistentVolume.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum VolumeDecision {
    /// Not ours, still in use, or to be kept: nothing to do.
    Keep(&'static str),
    /// Ours and Released with policy Delete, but its path is not one we
    /// would have made: touch nothing and say why.
    Refuse(String),
    /// Remove `dir`, then the PersistentVolume.
    Delete {
        /// The volume's directory, checked to be inside the volumes directory.
        dir: PathBuf,
    },
}

/// Decides what to do about `pv`, given the volumes directory.
pub(super) fn decide_volume(pv: &PersistentVolume, volumes_dir: &Path) -> VolumeDecision {
    if pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER_NAME) {
        return VolumeDecision::Keep("not provisioned by us");
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
        return VolumeDecision::Keep("not Released");
    }
    let spec = pv.spec.clone().unwrap_or_default();
    // An absent policy is the API's default for hand-made volumes, Retain:
    // keeping data is the safe reading.
    if spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
        return VolumeDecision::Keep("reclaim policy is not Delete");
    }
    let Some(host_path) = spec.host_path else {
        return VolumeDecision::Refuse(
            "volume has no hostPath, so the provisioner did not make it; delete it by hand"
                .to_owned(),
        );
    };
    match host_dir::owned_volume_dir(volumes_dir, &pv.name_any(), &host_path.path) {
        Ok(dir) => VolumeDecision::Delete { dir },
        Err(why) => VolumeDecision::Refuse(why),
    }
}

/// The volume reconciler: one span per volume.
pub(super) async fn reconcile(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Context>,
) -> Result<Action, StorageError> {
    let span = tracing::info_span!("reclaim", name = pv.name_any());
    reclaim(&pv, &ctx).instrument(span).await
}

async fn reclaim(pv: &PersistentVolume, ctx: &Context) -> Result<Action, StorageError> {
    let dir = match decide_volume(pv, &ctx.volumes_dir) {
        VolumeDecision::Keep(why) => {
            tracing::trace!(why, "nothing to do");
            return Ok(Action::await_change());
        }
        VolumeDecision::Refuse(why) => {
            tracing::warn!(%why, "not deleting the volume's data");
            ctx.event(pv, EventType::Warning, "VolumeFailedDelete", why)
                .await;
            return Ok(Action::await_change());
        }
        VolumeDecision::Delete { dir } => dir,
    };

    host_dir::remove_volume_dir(&dir).await?;
    let name = pv.name_any();
    let volumes = Api::<PersistentVolume>::all(ctx.client.clone());
    // The uid precondition makes sure we delete the volume whose directory we
    // just removed, not a newer one that took its name.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pv.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api_call(
        format!("deleting PersistentVolume {name}"),
        volumes.delete(&name, &params),
    )
    .await
    {
        Ok(_) => {}
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(err),
    }
    tracing::info!(dir = %dir.display(), "deleted volume and its data");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, PersistentVolumeSpec, PersistentVolumeStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// One change to a test object, applied in a table of cases.
    type Change = fn(&mut PersistentVolume);

    const VOLUMES: &str = "/srv/volumes";

    /// One of our volumes after its claim was deleted.
    fn released_volume() -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".to_owned()),
                annotations: Some(
                    [(PROVISIONED_BY.to_owned(), PROVISIONER_NAME.to_owned())].into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                host_path: Some(HostPathVolumeSource {
                    path: "/srv/volumes/pvc-1".to_owned(),
                    type_: Some("Directory".to_owned()),
                }),
                persistent_volume_reclaim_policy: Some("Delete".to_owned()),
                ..PersistentVolumeSpec::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Released".to_owned()),
                ..PersistentVolumeStatus::default()
            }),
        }
    }

    fn decide(pv: &PersistentVolume) -> VolumeDecision {
        decide_volume(pv, Path::new(VOLUMES))
    }

    fn set_path(pv: &mut PersistentVolume, path: &str) {
        if let Some(host_path) = pv.spec.as_mut().and_then(|s| s.host_path.as_mut()) {
            host_path.path = path.to_owned();
        }
    }

    #[test]
    fn a_released_volume_of_ours_with_policy_delete_is_deleted() {
        assert_eq!(
            decide(&released_volume()),
            VolumeDecision::Delete {
                dir: PathBuf::from("/srv/volumes/pvc-1")
            }
        );
    }

    #[test]
    fn volumes_in_use_retained_or_not_ours_are_kept() {
        let cases: &[(&str, Change)] = &[
            ("bound", |pv| {
                pv.status.get_or_insert_default().phase = Some("Bound".to_owned())
            }),
            ("available", |pv| {
                pv.status.get_or_insert_default().phase = Some("Available".to_owned())
            }),
            ("failed", |pv| {
                pv.status.get_or_insert_default().phase = Some("Failed".to_owned())
            }),
            ("no status", |pv| pv.status = None),
            ("retain", |pv| {
                pv.spec
                    .get_or_insert_default()
                    .persistent_volume_reclaim_policy = Some("Retain".to_owned())
            }),
            ("no policy", |pv| {
                pv.spec
                    .get_or_insert_default()
                    .persistent_volume_reclaim_policy = None
            }),
            ("no annotation", |pv| pv.metadata.annotations = None),
            ("another provisioner", |pv| {
                pv.metadata.annotations.get_or_insert_default().insert(
                    PROVISIONED_BY.to_owned(),
                    "rancher.io/local-path".to_owned(),
                );
            }),
        ];
        for (case, change) in cases {
            let mut pv = released_volume();
            change(&mut pv);
            assert!(matches!(decide(&pv), VolumeDecision::Keep(_)), "{case}");
        }
    }

    #[test]
    fn a_volume_pointing_outside_its_directory_is_refused() {
        for path in [
            "/",
            "/srv/volumes",
            "/srv/volumes/pvc-2",
            "/srv/volumes/pvc-1/../pvc-2",
            "/etc",
        ] {
            let mut pv = released_volume();
            set_path(&mut pv, path);
            assert!(matches!(decide(&pv), VolumeDecision::Refuse(_)), "{path}");
        }
    }

    #[test]
    fn a_volume_without_host_path_is_refused() {
        let mut pv = released_volume();
        pv.spec.get_or_insert_default().host_path = None;
        assert!(matches!(decide(&pv), VolumeDecision::Refuse(_)));
    }

    #[test]
    fn a_volume_made_by_provision_is_reclaimable() {
        // The builder and the guard must agree on where a volume lives.
        let dir = host_dir::volume_dir(Path::new(VOLUMES), "pvc-1").expect("a dir");
        let mut pv = released_volume();
        set_path(&mut pv, dir.to_str().expect("utf-8"));
        assert_eq!(decide(&pv), VolumeDecision::Delete { dir });
    }
}
