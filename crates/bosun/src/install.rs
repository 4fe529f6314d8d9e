//! `bosun install` and `bosun uninstall`: put the operator into a cluster,
//! or take it out, as kubebuilder's `make deploy` and `make undeploy` do.
//!
//! The manifests are `deploy/` itself, compiled into the binary, so that
//! the binary installs exactly what the repository tests. `install` applies
//! them with server-side apply (the runtime's `apply`, which bosun dev uses
//! too) in dependency order: the namespace, the CRDs (and waits until the
//! API server serves them), RBAC, the metrics and webhook Services, the
//! etcd API's ValidatingWebhookConfiguration (without a `caBundle`: the
//! operator's Lease holder writes that field, and the installer never
//! touches it), then the Deployment (and waits for its rollout).
//! `--dry-run` asks the API server to check every object without storing
//! any. `uninstall` deletes the webhook configuration first, so that
//! nothing is refused for want of an operator, then the rest in the reverse
//! order, the Deployment first so that no operator acts while its
//! permissions go.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bosun_runtime::apply::{self, ApplyOptions, Deletion, Manifest, Progress};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, HostPathVolumeSource, Pod, Volume, VolumeMount};
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt};

/// The field manager of every object `bosun install` applies.
pub const FIELD_MANAGER: &str = "bosun-install";

/// The namespace the operator runs in.
pub const NAMESPACE: &str = "bosun-system";

/// The operator's Deployment, and the container in it that runs `bosun`.
const DEPLOYMENT: &str = "bosun-operator";
const CONTAINER: &str = "operator";

/// The label every pod of the operator carries.
const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "bosun-operator");

/// The environment variable that names the image of restore init
/// containers; the operator's own image.
const IMAGE_ENV: &str = "BOSUN_IMAGE";

/// How long the operator's pods may take to become ready, image pull included.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(180);
/// How long the operator's pods may take to stop (their grace period is 30 s).
const DELETE_DEADLINE: Duration = Duration::from_secs(90);

/// The files of `deploy/`, by their path in the repository.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "deploy/crds/etcdbackups.etcd.bosun.dev.yaml",
        include_str!("../../../deploy/crds/etcdbackups.etcd.bosun.dev.yaml"),
    ),
    (
        "deploy/crds/etcdclusters.etcd.bosun.dev.yaml",
        include_str!("../../../deploy/crds/etcdclusters.etcd.bosun.dev.yaml"),
    ),
    (
        "deploy/crds/etcdrestores.etcd.bosun.dev.yaml",
        include_str!("../../../deploy/crds/etcdrestores.etcd.bosun.dev.yaml"),
    ),
    (
        "deploy/crds/memcacheds.cache.bosun.dev.yaml",
        include_str!("../../../deploy/crds/memcacheds.cache.bosun.dev.yaml"),
    ),
    (
        "deploy/operator/namespace.yaml",
        include_str!("../../../deploy/operator/namespace.yaml"),
    ),
    (
        "deploy/operator/service-account.yaml",
        include_str!("../../../deploy/operator/service-account.yaml"),
    ),
    (
        "deploy/operator/cluster-role.yaml",
        include_str!("../../../deploy/operator/cluster-role.yaml"),
    ),
    (
        "deploy/operator/cluster-role-binding.yaml",
        include_str!("../../../deploy/operator/cluster-role-binding.yaml"),
    ),
    (
        "deploy/operator/leader-election-role.yaml",
        include_str!("../../../deploy/operator/leader-election-role.yaml"),
    ),
    (
        "deploy/operator/leader-election-role-binding.yaml",
        include_str!("../../../deploy/operator/leader-election-role-binding.yaml"),
    ),
    (
        "deploy/operator/metrics-service.yaml",
        include_str!("../../../deploy/operator/metrics-service.yaml"),
    ),
    (
        "deploy/operator/webhook-role.yaml",
        include_str!("../../../deploy/operator/webhook-role.yaml"),
    ),
    (
        "deploy/operator/webhook-role-binding.yaml",
        include_str!("../../../deploy/operator/webhook-role-binding.yaml"),
    ),
    (
        "deploy/operator/webhook-cluster-role.yaml",
        include_str!("../../../deploy/operator/webhook-cluster-role.yaml"),
    ),
    (
        "deploy/operator/webhook-cluster-role-binding.yaml",
        include_str!("../../../deploy/operator/webhook-cluster-role-binding.yaml"),
    ),
    (
        "deploy/operator/webhook-service.yaml",
        include_str!("../../../deploy/operator/webhook-service.yaml"),
    ),
    (
        "deploy/operator/webhook-configuration.yaml",
        include_str!("../../../deploy/operator/webhook-configuration.yaml"),
    ),
    (
        "deploy/operator/memcached-webhook-configuration.yaml",
        include_str!("../../../deploy/operator/memcached-webhook-configuration.yaml"),
    ),
    (
        "deploy/operator/deployment.yaml",
        include_str!("../../../deploy/operator/deployment.yaml"),
    ),
];

/// Options of `bosun install`.
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The operator's image (also the image of restore init containers)
    /// [default: the one in deploy/operator/deployment.yaml].
    #[arg(long, value_name = "IMAGE", value_parser = non_empty)]
    image: Option<String>,
    /// How many replicas of the operator run; one leads at a time [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    replicas: Option<i32>,
    /// A directory of the nodes to mount, at the same path, into the
    /// operator's pods, for EtcdBackups to the `file` backend (it must be
    /// writable by uid 65532; a `file://` restore reads the same path on
    /// the seed pod's node).
    #[arg(long, value_name = "DIR", value_parser = absolute_dir)]
    host_backup_dir: Option<PathBuf>,
    /// Have the API server check every object (server-side dry run) and store none.
    #[arg(long)]
    dry_run: bool,
}

/// Options of `bosun uninstall`.
#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Kubeconfig to use; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Leave the CRDs, and so every EtcdCluster, EtcdBackup and EtcdRestore, in place.
    #[arg(long)]
    keep_crds: bool,
    /// Have the API server check every deletion (server-side dry run) and carry out none.
    #[arg(long)]
    dry_run: bool,
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(text.to_string())
}

fn absolute_dir(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() || path.parent().is_none() {
        return Err("must be an absolute path below /".into());
    }
    Ok(path)
}

/// Where a kind goes in the install order: what others need comes first
/// (the namespace holds the rest; a binding names its role and account;
/// the operator needs all of it). Kinds not listed are refused, so that a
/// new file in `deploy/` gets a place on purpose.
fn stage(kind: &str) -> Option<u8> {
    Some(match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" => 2,
        "ClusterRole" => 3,
        "ClusterRoleBinding" => 4,
        "Role" => 5,
        "RoleBinding" => 6,
        "Service" => 7,
        // Before the operator: its replicas are ready only once the
        // configuration carries their CA, and the Lease holder writes the
        // CA only into a configuration that exists.
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => 8,
        "Deployment" => 9,
        _ => return None,
    })
}

/// The objects of one YAML file of `deploy/`, each of a kind with a stage.
fn parse(source: &str, text: &str) -> anyhow::Result<Vec<Manifest>> {
    let manifests = apply::parse(source, text)?;
    if let Some(unplaced) = manifests.iter().find(|m| stage(m.kind()).is_none()) {
        bail!(
            "{source}: bosun install does not know where a {} goes",
            unplaced.kind()
        );
    }
    Ok(manifests)
}

/// Every object of `deploy/`, in install order.
fn embedded() -> anyhow::Result<Vec<Manifest>> {
    let mut manifests = vec![];
    for (source, text) in EMBEDDED {
        manifests.extend(parse(source, text)?);
    }
    // A stable sort: within a stage, the order of EMBEDDED.
    manifests.sort_by_key(|m| stage(m.kind()));
    Ok(manifests)
}

/// What `--image`, `--replicas` and `--host-backup-dir` change, and the
/// image's digest when the caller knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// The operator's image (and `BOSUN_IMAGE`).
    pub image: Option<String>,
    /// The number of replicas.
    pub replicas: Option<i32>,
    /// A node directory mounted at the same path for `file` backups.
    pub host_backup_dir: Option<PathBuf>,
    /// The image's digest, written to the pod template, so that a new image
    /// under the same tag (as `bosun dev up` builds it) rolls the pods.
    pub image_digest: Option<String>,
}

/// The pod-template annotation that carries [`Overrides::image_digest`].
const IMAGE_DIGEST_ANNOTATION: &str = "bosun.dev/image-digest";

/// The volume that carries [`Overrides::host_backup_dir`].
const BACKUP_VOLUME: &str = "host-backups";

/// The objects to apply, in order, with the overrides made.
fn install_plan(overrides: &Overrides) -> anyhow::Result<Vec<Manifest>> {
    let mut manifests = embedded()?;
    let deployment = manifests
        .iter_mut()
        .find(|m| m.kind() == "Deployment" && m.name() == DEPLOYMENT)
        .context("deploy/operator has no operator Deployment")?;
    override_deployment(deployment, overrides)?;
    Ok(manifests)
}

/// The objects to delete, in order: the webhook configurations first (with
/// `failurePolicy: Fail` and no operator to answer, one left behind would
/// refuse every EtcdCluster, EtcdBackup and EtcdRestore), then the reverse
/// of the install, without the CRDs when they are kept.
fn uninstall_plan(keep_crds: bool) -> anyhow::Result<Vec<Manifest>> {
    let mut manifests = embedded()?;
    manifests.reverse();
    manifests.retain(|m| !(keep_crds && m.kind() == "CustomResourceDefinition"));
    // A stable sort: the rest keeps its reverse order.
    manifests.sort_by_key(|m| !m.kind().ends_with("WebhookConfiguration"));
    Ok(manifests)
}

/// Sets the operator container's image and `BOSUN_IMAGE` (the two always
/// name the same image), and the replicas.
fn override_deployment(manifest: &mut Manifest, overrides: &Overrides) -> anyhow::Result<()> {
    let mut deployment: Deployment =
        serde_json::from_value(serde_json::to_value(&manifest.object)?)
            .with_context(|| format!("{}: not a Deployment", manifest.source))?;
    let spec = deployment
        .spec
        .as_mut()
        .with_context(|| format!("{}: a Deployment without spec", manifest.source))?;
    if let Some(replicas) = overrides.replicas {
        spec.replicas = Some(replicas);
    }
    let container = spec
        .template
        .spec
        .as_mut()
        .and_then(|pod| pod.containers.iter_mut().find(|c| c.name == CONTAINER))
        .with_context(|| format!("{}: no container {CONTAINER}", manifest.source))?;
    let image = match &overrides.image {
        Some(image) => image.clone(),
        None => container
            .image
            .clone()
            .with_context(|| format!("{}: container {CONTAINER} has no image", manifest.source))?,
    };
    container.image = Some(image.clone());
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != IMAGE_ENV);
    env.push(EnvVar {
        name: IMAGE_ENV.into(),
        value: Some(image),
        value_from: None,
    });
    if let Some(dir) = &overrides.host_backup_dir {
        let path = dir.to_string_lossy().into_owned();
        // The operator lets file backups and restores use this directory only.
        let args = container.args.get_or_insert_with(Vec::new);
        args.retain(|a| !a.starts_with("--backup-dir="));
        args.push(format!("--backup-dir={path}"));
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: BACKUP_VOLUME.into(),
                mount_path: path.clone(),
                ..VolumeMount::default()
            });
        let pod = spec.template.spec.as_mut().context("checked above")?;
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: BACKUP_VOLUME.into(),
            host_path: Some(HostPathVolumeSource {
                path,
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        });
    }
    if let Some(digest) = &overrides.image_digest {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(IMAGE_DIGEST_ANNOTATION.into(), digest.clone());
    }
    manifest.object = serde_json::from_value(serde_json::to_value(&deployment)?)?;
    Ok(())
}

/// The image and replicas a Deployment manifest asks for, as progress shows them.
fn deployment_summary(manifest: &Manifest) -> Option<(String, i32)> {
    let deployment: Deployment =
        serde_json::from_value(serde_json::to_value(&manifest.object).ok()?).ok()?;
    let spec = deployment.spec?;
    let image = spec
        .template
        .spec?
        .containers
        .into_iter()
        .find(|c| c.name == CONTAINER)?
        .image?;
    Some((image, spec.replicas.unwrap_or(1)))
}

/// Whether the Deployment's current spec runs on every replica and every
/// replica is available (a standby counts: its readiness does not wait
/// for leadership).
fn rolled_out(deployment: &Deployment) -> bool {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) == wanted
        && status.replicas.unwrap_or(0) == wanted
        && status.available_replicas.unwrap_or(0) == wanted
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `bosun install`.
pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        image: args.image,
        replicas: args.replicas,
        host_backup_dir: args.host_backup_dir,
        image_digest: None,
    };
    let plan = install_plan(&overrides)?;
    runtime()?.block_on(async move {
        let client = crate::client::client(args.kubeconfig.as_deref()).await?;
        apply_all(&client, &plan, args.dry_run).await
    })
}

/// Installs the operator with `overrides` and waits for its rollout: what
/// `bosun dev up` does with the image it built.
pub async fn install_with(client: &Client, overrides: &Overrides) -> anyhow::Result<()> {
    apply_all(client, &install_plan(overrides)?, false).await
}

async fn apply_all(client: &Client, plan: &[Manifest], dry_run: bool) -> anyhow::Result<()> {
    let suffix = if dry_run { " (server dry run)" } else { "" };
    let options = ApplyOptions {
        field_manager: FIELD_MANAGER.into(),
        dry_run,
    };
    println!("installing the bosun operator into namespace {NAMESPACE}{suffix}");
    // The applier waits for the CRDs before the objects after them, and in
    // a dry run skips objects of a namespace that does not exist yet (a dry
    // run creates none, so the server cannot check them).
    apply::apply_all(client, plan, &options, |step| match step {
        Progress::Applied(manifest) => {
            match deployment_summary(manifest).filter(|_| manifest.kind() == "Deployment") {
                Some((image, replicas)) => println!(
                    "  {}: applied (image {image}, {replicas} replicas){suffix}",
                    manifest.describe()
                ),
                None => println!("  {}: applied{suffix}", manifest.describe()),
            }
        }
        Progress::NotChecked {
            manifest,
            namespace,
        } => println!(
            "  {}: not checked, namespace {namespace} does not exist yet",
            manifest.describe()
        ),
        Progress::CrdsEstablished(_) => println!("  CRDs Established"),
    })
    .await?;
    if dry_run {
        println!("dry run: the API server accepted every object and stored none");
        return Ok(());
    }
    wait_for_rollout(client).await?;
    println!("the bosun operator runs in namespace {NAMESPACE}");
    Ok(())
}

/// Waits until every replica of the operator runs the applied spec and is ready.
async fn wait_for_rollout(client: &Client) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    println!("  waiting for Deployment {NAMESPACE}/{DEPLOYMENT} to roll out");
    let done = |d: Option<&Deployment>| d.is_some_and(rolled_out);
    tokio::time::timeout(ROLLOUT_DEADLINE, await_condition(api, DEPLOYMENT, done))
        .await
        .with_context(|| {
            format!(
                "Deployment {NAMESPACE}/{DEPLOYMENT} did not roll out within {ROLLOUT_DEADLINE:?}; \
                 `kubectl -n {NAMESPACE} describe pods -l {}={}` says why",
                APP_LABEL.0, APP_LABEL.1
            )
        })?
        .context("watching the operator's Deployment")?;
    Ok(())
}

/// Runs `bosun uninstall`.
pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let plan = uninstall_plan(args.keep_crds)?;
    runtime()?.block_on(async move {
        let client = crate::client::client(args.kubeconfig.as_deref()).await?;
        delete_all(&client, &plan, args.keep_crds, args.dry_run).await
    })
}

async fn delete_all(
    client: &Client,
    plan: &[Manifest],
    keep_crds: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let suffix = if dry_run { " (server dry run)" } else { "" };
    println!("uninstalling the bosun operator from namespace {NAMESPACE}{suffix}");
    if keep_crds {
        println!("  keeping the CRDs and every EtcdCluster, EtcdBackup and EtcdRestore");
    } else {
        eprintln!(
            "warning: deleting the CRDs deletes every EtcdCluster, EtcdBackup and EtcdRestore \
             in the cluster, and with them the etcd members' pods and volumes \
             (--keep-crds keeps them)"
        );
    }
    for manifest in plan {
        if manifest.kind() == "Namespace"
            && let Some(reason) = foreign_pods(client).await?
        {
            println!("  {}: kept, {reason}", manifest.describe());
            continue;
        }
        let params = DeleteParams {
            dry_run,
            // The Deployment goes with its pods, so that no operator runs
            // once its permissions are gone.
            propagation_policy: Some(if manifest.kind() == "Deployment" {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }),
            ..DeleteParams::default()
        };
        match apply::delete(client, manifest, &params).await? {
            Deletion::Deleted => println!("  {}: deleted{suffix}", manifest.describe()),
            Deletion::NotThere => {
                println!("  {}: not there", manifest.describe());
                continue;
            }
        }
        if manifest.kind() == "Deployment" && !dry_run {
            wait_until_gone(client, manifest).await?;
        }
    }
    Ok(())
}

/// Why the namespace must stay: pods in it that are not the operator's
/// (another program installed there, as the dev cluster's object store).
async fn foreign_pods(client: &Client) -> anyhow::Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("{}!={}", APP_LABEL.0, APP_LABEL.1);
    let others = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .context("listing the pods of the operator's namespace")?;
    if others.items.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = others.items.iter().map(|p| p.name_any()).collect();
    Ok(Some(format!(
        "it holds pods bosun did not install: {}",
        names.join(", ")
    )))
}

/// Waits until the operator's Deployment, and so its pods, are gone.
async fn wait_until_gone(client: &Client, deployment: &Manifest) -> anyhow::Result<()> {
    let api = apply::api_for(client, deployment).await?;
    let name = deployment.name();
    let deadline = tokio::time::Instant::now() + DELETE_DEADLINE;
    while api.get_opt(&name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            bail!("the operator's Deployment {name} is still there after {DELETE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(plan: &[Manifest]) -> Vec<&str> {
        plan.iter().map(Manifest::kind).collect()
    }

    #[test]
    fn every_file_of_deploy_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut on_disk = vec![];
        for dir in ["deploy/crds", "deploy/operator"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("deploy/ is there") {
                let name = entry.expect("a directory entry").file_name();
                on_disk.push(format!("{dir}/{}", name.to_string_lossy()));
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn install_order_puts_what_others_need_first() {
        let plan = install_plan(&Overrides::default()).expect("the manifests parse");
        assert_eq!(
            kinds(&plan),
            [
                "Namespace",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRole",
                "ClusterRoleBinding",
                "ClusterRoleBinding",
                "Role",
                "Role",
                "RoleBinding",
                "RoleBinding",
                "Service",
                "Service",
                "ValidatingWebhookConfiguration",
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration",
                "Deployment",
            ]
        );
        let crds: Vec<String> = plan
            .iter()
            .filter(|m| m.kind() == "CustomResourceDefinition")
            .map(Manifest::name)
            .collect();
        assert_eq!(
            crds,
            [
                "etcdbackups.etcd.bosun.dev",
                "etcdclusters.etcd.bosun.dev",
                "etcdrestores.etcd.bosun.dev",
                "memcacheds.cache.bosun.dev"
            ]
        );
    }

    #[test]
    fn namespaced_objects_live_in_the_operators_namespace() {
        for manifest in embedded().expect("the manifests parse") {
            let cluster_scoped = matches!(
                manifest.kind(),
                "Namespace"
                    | "CustomResourceDefinition"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "ValidatingWebhookConfiguration"
                    | "MutatingWebhookConfiguration"
            );
            let expected = (!cluster_scoped).then(|| NAMESPACE.to_string());
            assert_eq!(
                manifest.object.namespace(),
                expected,
                "{}",
                manifest.describe()
            );
        }
    }

    #[test]
    fn uninstall_reverses_the_install_and_can_keep_the_crds() {
        let mut install = kinds(&install_plan(&Overrides::default()).expect("plan"))
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        install.reverse();
        let configurations: Vec<String> = install
            .iter()
            .filter(|k| k.ends_with("WebhookConfiguration"))
            .cloned()
            .collect();
        install.retain(|k| !k.ends_with("WebhookConfiguration"));
        install.splice(0..0, configurations);
        let all = uninstall_plan(false).expect("plan");
        assert_eq!(kinds(&all), install);
        // The webhook configurations go first: with failurePolicy Fail and
        // no operator, they would refuse every object of bosun's kinds.
        assert_eq!(
            kinds(&all)[..4],
            [
                "ValidatingWebhookConfiguration",
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration",
                "Deployment"
            ]
        );
        assert_eq!(all.last().map(Manifest::kind), Some("Namespace"));

        let kept = uninstall_plan(true).expect("plan");
        assert!(!kinds(&kept).contains(&"CustomResourceDefinition"));
        assert_eq!(
            kept.first().map(Manifest::kind),
            Some("ValidatingWebhookConfiguration")
        );
        assert_eq!(kept.len(), all.len() - 4);
    }

    fn operator(plan: &[Manifest]) -> Deployment {
        let manifest = plan
            .iter()
            .find(|m| m.kind() == "Deployment")
            .expect("a Deployment");
        serde_json::from_value(serde_json::to_value(&manifest.object).expect("serialises"))
            .expect("a Deployment")
    }

    fn image_and_env(deployment: &Deployment) -> (String, Vec<String>) {
        let container = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
            .expect("the operator container");
        let env = container
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == IMAGE_ENV)
            .filter_map(|e| e.value.clone())
            .collect();
        (container.image.clone().unwrap_or_default(), env)
    }

    #[test]
    fn by_default_the_operator_and_its_restores_use_the_dev_image() {
        let deployment = operator(&install_plan(&Overrides::default()).expect("plan"));
        let (image, env) = image_and_env(&deployment);
        assert_eq!(image, "bosun.dev/bosun:dev");
        assert_eq!(env, [image]);
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
    }

    #[test]
    fn image_override_changes_the_container_and_bosun_image_together() {
        let overrides = Overrides {
            image: Some("bosun.dev/bosun:v1.2.3".into()),
            replicas: Some(3),
            ..Overrides::default()
        };
        let plan = install_plan(&overrides).expect("plan");
        let deployment = operator(&plan);
        let (image, env) = image_and_env(&deployment);
        assert_eq!(image, "bosun.dev/bosun:v1.2.3");
        assert_eq!(env, ["bosun.dev/bosun:v1.2.3"]);
        assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
        // The rest of the Deployment is untouched.
        let untouched = operator(&install_plan(&Overrides::default()).expect("plan"));
        let pod = |d: &Deployment| {
            let mut pod = d.spec.clone().expect("spec").template;
            for c in pod.spec.as_mut().expect("pod spec").containers.iter_mut() {
                c.image = None;
                c.env = None;
            }
            pod
        };
        assert_eq!(pod(&deployment), pod(&untouched));
        let manifest = plan
            .iter()
            .find(|m| m.kind() == "Deployment")
            .expect("a Deployment");
        assert_eq!(
            deployment_summary(manifest),
            Some(("bosun.dev/bosun:v1.2.3".to_string(), 3))
        );
    }

    #[test]
    fn a_host_backup_dir_is_mounted_at_its_own_path_and_a_digest_marks_the_pods() {
        let overrides = Overrides {
            host_backup_dir: Some("/var/lib/etcd-backups".into()),
            image_digest: Some("sha256:abc".into()),
            ..Overrides::default()
        };
        let deployment = operator(&install_plan(&overrides).expect("plan"));
        let template = deployment.spec.expect("spec").template;
        let annotations = template.metadata.and_then(|m| m.annotations);
        assert_eq!(
            annotations.and_then(|a| a.get(IMAGE_DIGEST_ANNOTATION).cloned()),
            Some("sha256:abc".to_string())
        );
        let pod = template.spec.expect("pod spec");
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == BACKUP_VOLUME)
            .expect("the backup volume");
        assert_eq!(
            volume.host_path.map(|h| (h.path, h.type_)),
            Some(("/var/lib/etcd-backups".into(), Some("Directory".into())))
        );
        let container = pod
            .containers
            .iter()
            .find(|c| c.name == CONTAINER)
            .expect("container");
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == BACKUP_VOLUME)
            .expect("the backup mount");
        assert_eq!(mount.mount_path, "/var/lib/etcd-backups");
        // ... and the operator lets file backups and restores use it, only it.
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("--backup-dir="))
                .collect::<Vec<_>>(),
            vec!["--backup-dir=/var/lib/etcd-backups"]
        );
        assert!(absolute_dir("relative/dir").is_err());
        assert!(absolute_dir("/").is_err());
    }

    /// The webhook configurations `deploy/operator/` holds, generated from
    /// the code: (file, what builds it, its configurations).
    fn generated_configurations()
    -> anyhow::Result<Vec<(&'static str, &'static str, Vec<serde_json::Value>)>> {
        use bosun_runtime::webhook::Endpoint;
        let endpoint = || Endpoint::Service {
            namespace: NAMESPACE.into(),
            name: bosun_etcd::admission::DEFAULT_SERVICE.into(),
            port: 443,
        };
        let etcd = bosun_etcd::admission::configurations(NAMESPACE, endpoint())?;
        let memcached = bosun_memcached::admission::configurations(NAMESPACE, endpoint())?;
        Ok(vec![
            (
                "deploy/operator/webhook-configuration.yaml",
                "bosun_etcd::admission::configurations",
                vec![serde_json::to_value(etcd.validating())?],
            ),
            (
                "deploy/operator/memcached-webhook-configuration.yaml",
                "bosun_memcached::admission::configurations",
                vec![
                    serde_json::to_value(memcached.mutating())?,
                    serde_json::to_value(memcached.validating())?,
                ],
            ),
        ])
    }

    /// A generated file: a header naming its source, then the
    /// configurations with the operator's labels and no `caBundle` (the
    /// operator's Lease holder writes it, and the installer must not take
    /// the field back).
    fn render_configurations(
        source: &str,
        objects: Vec<serde_json::Value>,
    ) -> anyhow::Result<String> {
        let mut out = format!(
            "# Generated from {source} (the install tests'\n\
             # `generated_configurations`); a test of bosun install fails when the two differ.\n\
             # No caBundle: the operator's Lease holder writes it, and the installer must\n\
             # not take the field back.\n"
        );
        for (index, mut value) in objects.into_iter().enumerate() {
            value["metadata"]["labels"] = serde_json::json!({
                APP_LABEL.0: APP_LABEL.1,
                "app.kubernetes.io/part-of": "bosun",
            });
            if index > 0 {
                out.push_str("---\n");
            }
            out.push_str(&serde_yaml_ng::to_string(&value)?);
        }
        Ok(out)
    }

    /// `BOSUN_WRITE_DEPLOY=1` rewrites the files from the code instead.
    #[test]
    fn the_webhook_configurations_in_deploy_are_what_the_code_builds() {
        for (file, source, objects) in generated_configurations().expect("the configurations build")
        {
            let generated = render_configurations(source, objects).expect("they render");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(file);
            if std::env::var_os("BOSUN_WRITE_DEPLOY").is_some() {
                std::fs::write(&path, &generated).expect("writing the configuration");
            }
            let committed = std::fs::read_to_string(&path).expect("the file is there");
            assert!(
                committed == generated,
                "{file} is stale: run `BOSUN_WRITE_DEPLOY=1 cargo test -p bosun \
                 --bin bosun the_webhook_configurations`; the code builds:\n{generated}"
            );
        }
        // What the installer applies must leave caBundle to the operator,
        // and fail closed for bosun's own kinds only.
        let plan = install_plan(&Overrides::default()).expect("plan");
        let mut webhooks = Vec::new();
        for manifest in plan
            .iter()
            .filter(|m| m.kind().ends_with("WebhookConfiguration"))
        {
            let value = serde_json::to_value(&manifest.object).expect("json");
            for webhook in value["webhooks"].as_array().expect("webhooks") {
                webhooks.push(webhook.clone());
            }
        }
        // The etcd API's three kinds, and Memcached's defaulting and validation.
        assert_eq!(webhooks.len(), 5);
        for webhook in webhooks {
            let name = webhook["name"].as_str().unwrap_or_default().to_string();
            assert!(webhook["clientConfig"].get("caBundle").is_none(), "{name}");
            assert_eq!(webhook["failurePolicy"], "Fail", "{name}");
            assert_eq!(
                webhook["clientConfig"]["service"]["namespace"], NAMESPACE,
                "{name}"
            );
            assert_eq!(
                webhook["clientConfig"]["service"]["name"],
                bosun_etcd::admission::DEFAULT_SERVICE,
                "{name}"
            );
            for rule in webhook["rules"].as_array().expect("rules") {
                let groups = rule["apiGroups"].as_array().expect("groups");
                assert!(
                    groups == &[serde_json::json!("etcd.bosun.dev")]
                        || groups == &[serde_json::json!("cache.bosun.dev")],
                    "{name}: {groups:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_kinds_and_nameless_objects_are_refused() {
        let error = parse(
            "x.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n",
        )
        .expect_err("a Job has no place");
        assert!(error.to_string().contains("Job"), "{error}");
        let error =
            parse("x.yaml", "apiVersion: v1\nkind: Service\nmetadata: {}\n").expect_err("no name");
        assert!(error.to_string().contains("without a name"), "{error}");
        let two = parse(
            "x.yaml",
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n",
        )
        .expect("two documents and an empty one");
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn a_rollout_is_done_when_every_replica_runs_the_new_spec_and_is_available() {
        let deployment = |generation: i64, observed: i64, updated: i32, available: i32| {
            serde_json::from_value::<Deployment>(serde_json::json!({
                "metadata": {"generation": generation},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {
                    "observedGeneration": observed,
                    "replicas": 2,
                    "updatedReplicas": updated,
                    "availableReplicas": available,
                },
            }))
            .expect("a Deployment")
        };
        assert!(rolled_out(&deployment(2, 2, 2, 2)));
        assert!(!rolled_out(&deployment(3, 2, 2, 2)), "spec not yet seen");
        assert!(!rolled_out(&deployment(2, 2, 1, 2)), "an old replica left");
        assert!(!rolled_out(&deployment(2, 2, 2, 1)), "one not ready");
    }
}
