//! Provisioning: a claim handed to us becomes a host directory and a
//! PersistentVolume pre-bound to the claim.
//!
//! Level-triggered: every step is safe to repeat. A crash after the
//! directory is made and before the PV exists is finished by the next
//! reconcile; a PV that already exists (ours, named after the claim's uid)
//! means the work is done and the PV controller will bind it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::Instrument;

use super::{
    Context, PROVISIONER_NAME, StorageError, api_call, host_dir, is_already_exists, node_hostname,
};

/// Set by the scheduler on a `WaitForFirstConsumer` claim: the node of its first pod.
pub(super) const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by the PV controller: the provisioner that should serve the claim.
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The same, under the older name the PV controller still writes too.
const STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The pre-`storageClassName` way to name a claim's class; still honoured by
/// the PV controller, and it wins over the field.
const STORAGE_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
/// On a PV: who provisioned it. The PV controller leaves the deletion of
/// volumes whose provisioner it does not know to that provisioner.
pub(super) const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The node label PersistentVolume node affinity matches.
pub(super) const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// How long a refused claim waits before it is looked at again.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What to do about one claim, from the claim alone.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClaimDecision {
    /// Not ours, or not ready for us yet: wait for the claim to change.
    Wait(&'static str),
    /// Ours, but we cannot serve it; the message tells the user why.
    Refuse(String),
    /// Make the volume `pv_name` of class `class_name`.
    Provision {
        /// `pvc-<claim uid>`, as the external-provisioner names volumes.
        pv_name: String,
        /// The claim's StorageClass.
        class_name: String,
    },
}

/// Decides, from the claim alone, whether it is ours and ready to provision.
pub(super) fn decide_claim(pvc: &PersistentVolumeClaim, node_name: &str) -> ClaimDecision {
    let annotations = pvc.annotations();
    let provisioner = annotations
        .get(STORAGE_PROVISIONER)
        .or_else(|| annotations.get(STORAGE_PROVISIONER_BETA));
    if provisioner.map(String::as_str) != Some(PROVISIONER_NAME) {
        return ClaimDecision::Wait("not handed to this provisioner");
    }
    let spec = pvc.spec.as_ref();
    if spec
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
    {
        return ClaimDecision::Wait("already bound to a volume");
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if !matches!(phase, None | Some("Pending")) {
        return ClaimDecision::Wait("not Pending");
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return ClaimDecision::Wait("being deleted");
    }
    let Some(selected) = annotations.get(SELECTED_NODE) else {
        return ClaimDecision::Wait(
            "no node selected yet; the scheduler picks one when a pod uses the claim",
        );
    };
    if selected != node_name {
        return ClaimDecision::Refuse(format!(
            "the scheduler selected node {selected}, but local-path volumes can only be made on node {node_name}"
        ));
    }
    let Some(uid) = pvc.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
        return ClaimDecision::Wait("no uid yet");
    };
    let class_name = annotations
        .get(STORAGE_CLASS_BETA)
        .cloned()
        .or_else(|| spec.and_then(|s| s.storage_class_name.clone()))
        .filter(|c| !c.is_empty());
    let Some(class_name) = class_name else {
        return ClaimDecision::Wait("no StorageClass");
    };
    ClaimDecision::Provision {
        pv_name: format!("pvc-{uid}"),
        class_name,
    }
}

/// The PersistentVolume for `pvc` at host directory `dir` on the node whose
/// hostname label is `node_hostname`, or why the claim cannot be served.
pub(super) fn persistent_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    pv_name: &str,
    dir: &Path,
    node_hostname: &str,
) -> Result<PersistentVolume, String> {
    let class_name = class.name_any();
    if class.provisioner != PROVISIONER_NAME {
        return Err(format!(
            "StorageClass {class_name} names provisioner {}, not {PROVISIONER_NAME}",
            class.provisioner
        ));
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    // A host directory is a filesystem; a raw block device cannot be faked.
    if spec
        .volume_mode
        .as_deref()
        .is_some_and(|m| m != "Filesystem")
    {
        return Err("local-path volumes are directories: use volumeMode: Filesystem".to_owned());
    }
    // As the external-provisioner does: a selector asks for a particular
    // existing volume, which a provisioner cannot honour.
    if spec.selector.is_some() {
        return Err(
            "a claim with a selector cannot be dynamically provisioned; remove spec.selector"
                .to_owned(),
        );
    }
    // Silently handing out an empty volume for a clone or restore request
    // would look like data loss.
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return Err(
            "local-path cannot clone or restore volumes; remove spec.dataSource".to_owned(),
        );
    }
    let Some(storage) = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    else {
        return Err(
            "the claim requests no storage; set spec.resources.requests.storage".to_owned(),
        );
    };
    let access_modes = spec.access_modes.clone().unwrap_or_default();
    if access_modes.is_empty() {
        return Err("the claim has no access modes; set spec.accessModes".to_owned());
    }
    let Some(path) = dir.to_str() else {
        return Err(format!(
            "the volume directory {} is not UTF-8",
            dir.display()
        ));
    };

    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_owned()),
            annotations: Some([(PROVISIONED_BY.to_owned(), PROVISIONER_NAME.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            // Capacity is what was asked for; a host directory enforces no
            // size, it shares the host's disk.
            capacity: Some([("storage".to_owned(), storage.clone())].into()),
            access_modes: Some(access_modes),
            volume_mode: Some("Filesystem".to_owned()),
            // `Directory`, not `DirectoryOrCreate`: if the directory vanished,
            // a pod should fail to start rather than get an empty root-owned
            // directory in place of its data.
            host_path: Some(HostPathVolumeSource {
                path: path.to_owned(),
                type_: Some("Directory".to_owned()),
            }),
            // The data exists on this node only; the scheduler must keep
            // every pod of the claim here.
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![node_hostname.to_owned()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            // Pre-bound: the PV controller binds this PV to this claim (by
            // uid, so a re-created claim of the same name is not confused
            // with it) and to no other.
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: pvc.namespace(),
                name: Some(pvc.name_any()),
                uid: pvc.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            storage_class_name: Some(class_name),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_owned()),
            ),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

/// The claim reconciler: one span per claim.
pub(super) async fn reconcile(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, StorageError> {
    let span = tracing::info_span!(
        "provision",
        namespace = pvc.namespace().unwrap_or_default(),
        name = pvc.name_any()
    );
    provision(&pvc, &ctx).instrument(span).await
}

async fn provision(pvc: &PersistentVolumeClaim, ctx: &Context) -> Result<Action, StorageError> {
    let (pv_name, class_name) = match decide_claim(pvc, &ctx.node_name) {
        ClaimDecision::Wait(why) => {
            tracing::trace!(why, "nothing to do");
            return Ok(Action::await_change());
        }
        ClaimDecision::Refuse(why) => return refuse(pvc, ctx, why).await,
        ClaimDecision::Provision {
            pv_name,
            class_name,
        } => (pv_name, class_name),
    };

    let volumes = Api::<PersistentVolume>::all(ctx.client.clone());
    // Our cache of claims may lag behind: if the PV is there, the work is
    // done, and touching the directory again could undo a pod's chmod.
    if api_call(
        format!("reading PersistentVolume {pv_name}"),
        volumes.get_opt(&pv_name),
    )
    .await?
    .is_some()
    {
        tracing::debug!(pv = %pv_name, "volume exists; waiting for the PV controller to bind it");
        return Ok(Action::await_change());
    }

    let classes = Api::<StorageClass>::all(ctx.client.clone());
    let Some(class) = api_call(
        format!("reading StorageClass {class_name}"),
        classes.get_opt(&class_name),
    )
    .await?
    else {
        return refuse(
            pvc,
            ctx,
            format!("StorageClass {class_name} does not exist"),
        )
        .await;
    };
    let hostname = node_hostname(ctx).await?;
    let dir = match host_dir::volume_dir(&ctx.volumes_dir, &pv_name) {
        Ok(dir) => dir,
        Err(why) => return refuse(pvc, ctx, why).await,
    };
    let pv = match persistent_volume(pvc, &class, &pv_name, &dir, &hostname) {
        Ok(pv) => pv,
        Err(why) => return refuse(pvc, ctx, why).await,
    };

    // Directory first: a PV must never point at a directory that is not there.
    host_dir::create_volume_dir(&dir).await?;
    match api_call(
        format!("creating PersistentVolume {pv_name}"),
        volumes.create(&PostParams::default(), &pv),
    )
    .await
    {
        Ok(_) => {}
        // Another reconcile of the same claim won; the PV is the same.
        Err(err) if is_already_exists(&err) => {}
        Err(err) => return Err(err),
    }
    tracing::info!(pv = %pv_name, dir = %dir.display(), "provisioned volume");
    ctx.event(
        pvc,
        EventType::Normal,
        "ProvisioningSucceeded",
        format!(
            "Successfully provisioned volume {pv_name} at {}",
            dir.display()
        ),
    )
    .await;
    Ok(Action::await_change())
}

/// Tells the claim's owner why it stays Pending. Most reasons are in the
/// claim's immutable spec, so retrying soon would only repeat the event; a
/// slow retry still catches what can change elsewhere (a missing class
/// being created).
async fn refuse(
    pvc: &PersistentVolumeClaim,
    ctx: &Context,
    why: String,
) -> Result<Action, StorageError> {
    tracing::warn!(%why, "cannot provision");
    ctx.event(pvc, EventType::Warning, "ProvisioningFailed", why)
        .await;
    Ok(Action::requeue(REFUSED_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, TypedLocalObjectReference,
        VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;

    /// One change to a test object, applied in a table of cases.
    type Change = fn(&mut PersistentVolumeClaim);
    use crate::storage::storage_class;

    const NODE: &str = "dev-node";
    const UID: &str = "0b6a1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";

    /// A claim as the API server shows it once the scheduler and the PV
    /// controller have done their part.
    fn ready_claim() -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-etcd-0".to_owned()),
                namespace: Some("team".to_owned()),
                uid: Some(UID.to_owned()),
                annotations: Some(
                    [
                        (SELECTED_NODE.to_owned(), NODE.to_owned()),
                        (STORAGE_PROVISIONER.to_owned(), PROVISIONER_NAME.to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_owned(), Quantity("1Gi".to_owned()))].into()),
                    limits: None,
                }),
                storage_class_name: Some("local-path".to_owned()),
                volume_mode: Some("Filesystem".to_owned()),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".to_owned()),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn annotate(pvc: &mut PersistentVolumeClaim, key: &str, value: Option<&str>) {
        let annotations = pvc.metadata.annotations.get_or_insert_default();
        match value {
            Some(value) => annotations.insert(key.to_owned(), value.to_owned()),
            None => annotations.remove(key),
        };
    }

    fn spec(pvc: &mut PersistentVolumeClaim) -> &mut PersistentVolumeClaimSpec {
        pvc.spec.get_or_insert_default()
    }

    fn pv_for(pvc: &PersistentVolumeClaim) -> Result<PersistentVolume, String> {
        let dir = PathBuf::from(format!("/volumes/pvc-{UID}"));
        persistent_volume(
            pvc,
            &storage_class(),
            &format!("pvc-{UID}"),
            &dir,
            "dev-host",
        )
    }

    #[test]
    fn a_ready_claim_is_provisioned_under_its_uid() {
        assert_eq!(
            decide_claim(&ready_claim(), NODE),
            ClaimDecision::Provision {
                pv_name: format!("pvc-{UID}"),
                class_name: "local-path".to_owned()
            }
        );
    }

    #[test]
    fn the_beta_provisioner_annotation_is_enough() {
        let mut pvc = ready_claim();
        annotate(&mut pvc, STORAGE_PROVISIONER, None);
        annotate(&mut pvc, STORAGE_PROVISIONER_BETA, Some(PROVISIONER_NAME));
        assert!(matches!(
            decide_claim(&pvc, NODE),
            ClaimDecision::Provision { .. }
        ));
    }

    #[test]
    fn the_beta_class_annotation_wins_over_the_field() {
        let mut pvc = ready_claim();
        annotate(&mut pvc, STORAGE_CLASS_BETA, Some("other"));
        assert!(matches!(
            decide_claim(&pvc, NODE),
            ClaimDecision::Provision { class_name, .. } if class_name == "other"
        ));
    }

    #[test]
    fn claims_not_ready_or_not_ours_wait() {
        let cases: &[(&str, Change)] = &[
            ("no provisioner", |p| annotate(p, STORAGE_PROVISIONER, None)),
            ("another provisioner", |p| {
                annotate(p, STORAGE_PROVISIONER, Some("rancher.io/local-path"))
            }),
            ("no selected node", |p| annotate(p, SELECTED_NODE, None)),
            ("bound", |p| spec(p).volume_name = Some("pvc-x".to_owned())),
            ("phase Bound", |p| {
                p.status.get_or_insert_default().phase = Some("Bound".to_owned())
            }),
            ("being deleted", |p| {
                p.metadata.deletion_timestamp = Some(Time(Default::default()))
            }),
            ("no class", |p| spec(p).storage_class_name = None),
            ("no uid", |p| p.metadata.uid = None),
        ];
        for (case, change) in cases {
            let mut pvc = ready_claim();
            change(&mut pvc);
            assert!(
                matches!(decide_claim(&pvc, NODE), ClaimDecision::Wait(_)),
                "{case}"
            );
        }
    }

    #[test]
    fn a_claim_for_another_node_is_refused() {
        let mut pvc = ready_claim();
        annotate(&mut pvc, SELECTED_NODE, Some("elsewhere"));
        assert!(
            matches!(decide_claim(&pvc, NODE), ClaimDecision::Refuse(why) if why.contains("elsewhere"))
        );
    }

    #[test]
    fn a_claim_without_status_counts_as_pending() {
        let mut pvc = ready_claim();
        pvc.status = None;
        assert!(matches!(
            decide_claim(&pvc, NODE),
            ClaimDecision::Provision { .. }
        ));
    }

    #[test]
    fn the_volume_is_a_pre_bound_host_directory_on_this_node() {
        let pv = pv_for(&ready_claim()).expect("a volume");
        assert_eq!(
            pv.metadata.name.as_deref(),
            Some(format!("pvc-{UID}").as_str())
        );
        assert_eq!(
            pv.annotations().get(PROVISIONED_BY).map(String::as_str),
            Some(PROVISIONER_NAME)
        );
        let spec = pv.spec.expect("a spec");
        assert_eq!(
            spec.capacity.expect("capacity")["storage"],
            Quantity("1Gi".to_owned())
        );
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );

        let host_path = spec.host_path.expect("a host path");
        assert_eq!(host_path.path, format!("/volumes/pvc-{UID}"));
        assert_eq!(host_path.type_.as_deref(), Some("Directory"));

        let claim = spec.claim_ref.expect("a claim ref");
        assert_eq!(claim.kind.as_deref(), Some("PersistentVolumeClaim"));
        assert_eq!(claim.namespace.as_deref(), Some("team"));
        assert_eq!(claim.name.as_deref(), Some("data-etcd-0"));
        assert_eq!(claim.uid.as_deref(), Some(UID));

        let terms = spec
            .node_affinity
            .and_then(|a| a.required)
            .expect("required affinity")
            .node_selector_terms;
        assert_eq!(
            terms,
            vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: HOSTNAME_LABEL.to_owned(),
                    operator: "In".to_owned(),
                    values: Some(vec!["dev-host".to_owned()]),
                }]),
                match_fields: None,
            }]
        );
    }

    #[test]
    fn the_volume_takes_the_claims_access_modes_and_the_class_reclaim_policy() {
        let mut pvc = ready_claim();
        spec(&mut pvc).access_modes = Some(vec![
            "ReadWriteOncePod".to_owned(),
            "ReadOnlyMany".to_owned(),
        ]);
        let mut class = storage_class();
        class.reclaim_policy = Some("Retain".to_owned());
        let pv =
            persistent_volume(&pvc, &class, "pvc-1", Path::new("/v/pvc-1"), "h").expect("a volume");
        let spec = pv.spec.expect("a spec");
        assert_eq!(
            spec.access_modes,
            Some(vec![
                "ReadWriteOncePod".to_owned(),
                "ReadOnlyMany".to_owned()
            ])
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
    }

    #[test]
    fn claims_a_directory_cannot_serve_are_refused() {
        let cases: &[(&str, Change)] = &[
            ("block", |p| spec(p).volume_mode = Some("Block".to_owned())),
            ("selector", |p| {
                spec(p).selector = Some(LabelSelector::default())
            }),
            ("data source", |p| {
                spec(p).data_source = Some(TypedLocalObjectReference {
                    api_group: None,
                    kind: "PersistentVolumeClaim".to_owned(),
                    name: "src".to_owned(),
                });
            }),
            ("no request", |p| spec(p).resources = None),
            ("no access modes", |p| spec(p).access_modes = Some(vec![])),
        ];
        for (case, change) in cases {
            let mut pvc = ready_claim();
            change(&mut pvc);
            assert!(pv_for(&pvc).is_err(), "{case}");
        }
    }

    #[test]
    fn a_class_of_another_provisioner_is_refused() {
        let mut class = storage_class();
        class.provisioner = "rancher.io/local-path".to_owned();
        assert!(
            persistent_volume(&ready_claim(), &class, "pvc-1", Path::new("/v/pvc-1"), "h").is_err()
        );
    }
}
