//! Applying manifests: what an installer, a test fixture or an operator's
//! own setup does with YAML or built objects, as `kubectl apply
//! --server-side` does it.
//!
//! - [`parse`] reads a multi-document YAML stream into [`Manifest`]s (each
//!   object with its GroupVersionKind), refusing what cannot be applied;
//!   [`Manifest::from_resource`] does the same for a typed object;
//! - [`api_for`] finds an object's API by discovery, namespaced or cluster
//!   scoped as the server says;
//! - [`apply`] applies one object with server-side apply: the caller's
//!   field manager, forced (the caller owns what it applies), strict field
//!   validation (a misspelt field is an error, not a warning nobody reads),
//!   and optionally as a server dry run; [`apply_resource`] applies a typed
//!   object;
//! - [`apply_all`] applies a list in its order and waits for CRDs to be
//!   Established before anything after them;
//! - [`delete`] deletes one object, telling "deleted" from "not there".
//!
//! The order of a list is the caller's. There is no general order every
//! caller would accept: Helm, for one, installs webhook configurations
//! last, while an operator whose replicas become ready only once its CA is
//! in its webhook configuration needs the configuration before its
//! Deployment; and a fixed table would have to refuse, or silently place,
//! every kind it does not list. So the applier keeps to the one rule that
//! holds for everyone: a CustomResourceDefinition is served before anything
//! that follows it is applied.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, TypeMeta,
    ValidationDirective,
};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

/// How long [`apply_all`] waits for the API server to serve new CRDs.
pub const CRD_ESTABLISHED_DEADLINE: Duration = Duration::from_secs(60);

/// Why objects could not be parsed, applied or deleted.
///
/// Each message carries its cause (the YAML, JSON or API error), so that it
/// says everything printed alone; the cause is therefore not also the
/// error's `source()`, which printers of error chains would repeat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A document is not YAML.
    #[error("{at}: not YAML: {error}")]
    Yaml {
        /// The source and document.
        at: String,
        /// The YAML error.
        error: serde_yaml_ng::Error,
    },
    /// A document, or a typed object, is not a Kubernetes object.
    #[error("{at}: not a Kubernetes object: {error}")]
    NotAnObject {
        /// The source and document, or the object's type.
        at: String,
        /// The JSON error.
        error: serde_json::Error,
    },
    /// An object without `apiVersion` or `kind`.
    #[error("{at}: an object without apiVersion and kind")]
    NoType {
        /// The source and document, or the object's type.
        at: String,
    },
    /// An object without a name.
    #[error("{at}: a {kind} without a name")]
    NoName {
        /// The source and document, or the object's type.
        at: String,
        /// The object's kind.
        kind: String,
    },
    /// The API server does not serve the object's kind.
    #[error("finding {api_version} {kind} in the API server: {error}")]
    Discovery {
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's kind.
        kind: String,
        /// The API error.
        error: kube::Error,
    },
    /// An object of a namespaced kind without a namespace.
    #[error("{source_name}: {object} has no namespace, and its kind is namespaced")]
    NoNamespace {
        /// [`Manifest::source`].
        source_name: String,
        /// [`Manifest::describe`].
        object: String,
    },
    /// The API server refused to apply an object.
    #[error("applying {object} ({source_name}): {error}")]
    Apply {
        /// [`Manifest::describe`].
        object: String,
        /// [`Manifest::source`].
        source_name: String,
        /// The API error.
        error: kube::Error,
    },
    /// The API server refused to delete an object.
    #[error("deleting {object}: {error}")]
    Delete {
        /// [`Manifest::describe`].
        object: String,
        /// The API error.
        error: kube::Error,
    },
    /// A namespace could not be read (a dry run checks that it exists).
    #[error("reading namespace {namespace}: {error}")]
    ReadNamespace {
        /// The namespace.
        namespace: String,
        /// The API error.
        error: kube::Error,
    },
    /// A CRD was not Established in time.
    #[error("CRD {name} not Established within {deadline:?}")]
    CrdNotEstablished {
        /// The CRD's name.
        name: String,
        /// How long it was waited for.
        deadline: Duration,
    },
    /// Watching a CRD failed.
    #[error("watching CRD {name}: {error}")]
    CrdWatch {
        /// The CRD's name.
        name: String,
        /// The watch error.
        error: kube::runtime::wait::Error,
    },
}

/// One object to apply or delete, with its GroupVersionKind.
///
/// Built by [`parse`] or [`Manifest::from_resource`], which check that it
/// has a kind and a name; a caller that changes `object` keeps `gvk` true.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where the object comes from (a file, a stream's name, a Rust type),
    /// for messages.
    pub source: String,
    /// The object's group, version and kind.
    pub gvk: GroupVersionKind,
    /// The object.
    pub object: DynamicObject,
}

impl Manifest {
    /// The object of a typed resource (a k8s-openapi or kube-derived type),
    /// its source the Rust type.
    pub fn from_resource<K>(resource: &K) -> Result<Manifest, ApplyError>
    where
        K: serde::Serialize + kube::Resource<DynamicType = ()>,
    {
        let at = std::any::type_name::<K>().to_string();
        let not_an_object = |error| ApplyError::NotAnObject {
            at: at.clone(),
            error,
        };
        let value = serde_json::to_value(resource).map_err(not_an_object)?;
        let mut object: DynamicObject = serde_json::from_value(value).map_err(not_an_object)?;
        object.types = Some(TypeMeta {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
        });
        Manifest::checked(at.clone(), at, object)
    }

    /// A manifest of `object`, refused without a kind or a name; `at` says
    /// where it is in messages.
    fn checked(source: String, at: String, object: DynamicObject) -> Result<Manifest, ApplyError> {
        let Some(types) = object
            .types
            .as_ref()
            .filter(|t| !t.api_version.is_empty() && !t.kind.is_empty())
        else {
            return Err(ApplyError::NoType { at });
        };
        // Parsing a GroupVersion cannot fail for a non-empty apiVersion.
        let gvk =
            GroupVersionKind::try_from(types).map_err(|_| ApplyError::NoType { at: at.clone() })?;
        if object
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            return Err(ApplyError::NoName { at, kind: gvk.kind });
        }
        Ok(Manifest {
            source,
            gvk,
            object,
        })
    }

    /// The object's kind.
    pub fn kind(&self) -> &str {
        &self.gvk.kind
    }

    /// The object's name.
    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// `kind name` or `kind namespace/name`, as messages show it.
    pub fn describe(&self) -> String {
        match self.object.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// Whether the object is a CustomResourceDefinition.
    pub fn is_crd(&self) -> bool {
        self.gvk.group == "apiextensions.k8s.io" && self.gvk.kind == "CustomResourceDefinition"
    }
}

/// The objects of a multi-document YAML stream, in its order; empty
/// documents are skipped. `source` names the stream in messages, which
/// also give the document's number (from 1, empty documents counted).
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>, ApplyError> {
    let mut manifests = vec![];
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("{source}, document {}", index + 1);
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).map_err(|error| ApplyError::Yaml {
                at: at.clone(),
                error,
            })?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|error| ApplyError::NotAnObject {
                at: at.clone(),
                error,
            })?;
        manifests.push(Manifest::checked(source.to_string(), at, object)?);
    }
    Ok(manifests)
}

/// How [`apply`] and [`apply_all`] apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The field manager that owns what is applied.
    pub field_manager: String,
    /// Have the API server check every object and store none.
    pub dry_run: bool,
}

impl ApplyOptions {
    /// Applying for real as `field_manager`.
    pub fn new(field_manager: impl Into<String>) -> ApplyOptions {
        ApplyOptions {
            field_manager: field_manager.into(),
            dry_run: false,
        }
    }

    /// The server-side apply parameters: forced, strict field validation,
    /// dry run when asked.
    pub fn patch_params(&self) -> PatchParams {
        let mut params = PatchParams::apply(&self.field_manager).force();
        params.dry_run = self.dry_run;
        params.field_validation = Some(ValidationDirective::Strict);
        params
    }
}

/// The API of a manifest's kind, namespaced or cluster scoped as the API
/// server's discovery says (a namespace on a cluster-scoped object is
/// ignored, as the server does).
pub async fn api_for(
    client: &Client,
    manifest: &Manifest,
) -> Result<Api<DynamicObject>, ApplyError> {
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &manifest.gvk)
        .await
        .map_err(|error| ApplyError::Discovery {
            api_version: manifest.gvk.api_version(),
            kind: manifest.gvk.kind.clone(),
            error,
        })?;
    Ok(match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let namespace = manifest
                .object
                .namespace()
                .ok_or_else(|| ApplyError::NoNamespace {
                    source_name: manifest.source.clone(),
                    object: manifest.describe(),
                })?;
            Api::namespaced_with(client.clone(), &namespace, &resource)
        }
    })
}

/// Applies one object with server-side apply.
pub async fn apply(
    client: &Client,
    manifest: &Manifest,
    options: &ApplyOptions,
) -> Result<(), ApplyError> {
    let api = api_for(client, manifest).await?;
    api.patch(
        &manifest.name(),
        &options.patch_params(),
        &Patch::Apply(&manifest.object),
    )
    .await
    .map_err(|error| ApplyError::Apply {
        object: manifest.describe(),
        source_name: manifest.source.clone(),
        error,
    })?;
    Ok(())
}

/// Applies a typed object (a k8s-openapi or kube-derived resource).
pub async fn apply_resource<K>(
    client: &Client,
    resource: &K,
    options: &ApplyOptions,
) -> Result<(), ApplyError>
where
    K: serde::Serialize + kube::Resource<DynamicType = ()>,
{
    apply(client, &Manifest::from_resource(resource)?, options).await
}

/// What [`apply_all`] has done, for a caller that shows progress.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// The object was applied (or, in a dry run, accepted).
    Applied(&'a Manifest),
    /// A dry run could not check the object: its namespace does not exist
    /// yet, and a dry run creates none.
    NotChecked {
        /// The object.
        manifest: &'a Manifest,
        /// Its namespace.
        namespace: &'a str,
    },
    /// The API server serves these CRDs, the run of CRDs just applied.
    CrdsEstablished(&'a [Manifest]),
}

/// Applies `manifests` in their order. After each run of consecutive CRDs
/// (not in a dry run, which creates none) it waits until the API server
/// serves them, up to [`CRD_ESTABLISHED_DEADLINE`] each, so that the
/// objects after them, custom resources included, can be applied. Stops
/// at the first error.
pub async fn apply_all(
    client: &Client,
    manifests: &[Manifest],
    options: &ApplyOptions,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<(), ApplyError> {
    // Whether each namespace exists, read once, in a dry run only.
    let mut namespaces: BTreeMap<String, bool> = BTreeMap::new();
    for (index, manifest) in manifests.iter().enumerate() {
        if options.dry_run
            && let Some(namespace) = manifest.object.metadata.namespace.as_deref()
        {
            if !namespaces.contains_key(namespace) {
                let exists = namespace_exists(client, namespace).await?;
                namespaces.insert(namespace.to_string(), exists);
            }
            if namespaces.get(namespace) == Some(&false) {
                progress(Progress::NotChecked {
                    manifest,
                    namespace,
                });
                continue;
            }
        }
        apply(client, manifest, options).await?;
        progress(Progress::Applied(manifest));
        if let Some(crds) = crd_run_ending_at(manifests, index)
            && !options.dry_run
        {
            for crd in crds {
                wait_until_established(client, &crd.name()).await?;
            }
            progress(Progress::CrdsEstablished(crds));
        }
    }
    Ok(())
}

/// The run of consecutive CRDs that ends at `index`, when one does: the
/// object there is a CRD and the next one is not (or there is none).
fn crd_run_ending_at(manifests: &[Manifest], index: usize) -> Option<&[Manifest]> {
    let is_crd = |i: usize| manifests.get(i).is_some_and(Manifest::is_crd);
    if !is_crd(index) || is_crd(index + 1) {
        return None;
    }
    let start = (0..index).rev().find(|&i| !is_crd(i)).map_or(0, |i| i + 1);
    manifests.get(start..=index)
}

async fn namespace_exists(client: &Client, namespace: &str) -> Result<bool, ApplyError> {
    let found = Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(|error| ApplyError::ReadNamespace {
            namespace: namespace.to_string(),
            error,
        })?;
    Ok(found.is_some())
}

/// Waits until the API server serves the CRD `name`.
async fn wait_until_established(client: &Client, name: &str) -> Result<(), ApplyError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    tokio::time::timeout(
        CRD_ESTABLISHED_DEADLINE,
        await_condition(api, name, conditions::is_crd_established()),
    )
    .await
    .map_err(|_| ApplyError::CrdNotEstablished {
        name: name.to_string(),
        deadline: CRD_ESTABLISHED_DEADLINE,
    })?
    .map_err(|error| ApplyError::CrdWatch {
        name: name.to_string(),
        error,
    })?;
    Ok(())
}

/// What [`delete`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The object was there, and is deleted (or is being deleted, or in a
    /// dry run would be).
    Deleted,
    /// The object was not there.
    NotThere,
}

/// Deletes one object with `params` (propagation, dry run); an object that
/// is not there is not an error.
pub async fn delete(
    client: &Client,
    manifest: &Manifest,
    params: &DeleteParams,
) -> Result<Deletion, ApplyError> {
    let api = api_for(client, manifest).await?;
    match api.delete(&manifest.name(), params).await {
        Ok(_) => Ok(Deletion::Deleted),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Deletion::NotThere),
        Err(error) => Err(ApplyError::Delete {
            object: manifest.describe(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(manifests: &[Manifest]) -> Vec<&str> {
        manifests.iter().map(Manifest::kind).collect()
    }

    #[test]
    fn a_stream_gives_its_objects_in_order_and_skips_empty_documents() {
        let text = "\
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
# only a comment
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: a}
spec: {replicas: 1}
";
        let manifests = parse("stream.yaml", text).expect("parses");
        assert_eq!(kinds(&manifests), ["Namespace", "Deployment"]);
        let deployment = &manifests[1];
        assert_eq!(deployment.source, "stream.yaml");
        assert_eq!(
            deployment.gvk,
            GroupVersionKind::gvk("apps", "v1", "Deployment")
        );
        assert_eq!(deployment.describe(), "Deployment a/d");
        assert_eq!(manifests[0].describe(), "Namespace a");
        assert_eq!(deployment.object.data["spec"]["replicas"], 1);
        assert!(parse("empty.yaml", "").expect("parses").is_empty());
        assert!(
            parse("empty.yaml", "---\n---\n")
                .expect("parses")
                .is_empty()
        );
    }

    #[test]
    fn objects_without_kind_or_name_are_refused_naming_source_and_document() {
        let error = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n",
        )
        .expect_err("no name");
        assert_eq!(
            error.to_string(),
            "x.yaml, document 2: a Service without a name"
        );
        let error = parse("x.yaml", "apiVersion: v1\nmetadata: {name: s}\n").expect_err("no kind");
        assert_eq!(
            error.to_string(),
            "x.yaml, document 1: an object without apiVersion and kind"
        );
        let error =
            parse("x.yaml", "apiVersion: v1\nkind: ''\nmetadata: {name: s}\n").expect_err("empty");
        assert!(matches!(error, ApplyError::NoType { .. }), "{error}");
        let error = parse("x.yaml", "- a list\n").expect_err("not an object");
        assert!(
            error
                .to_string()
                .starts_with("x.yaml, document 1: not a Kubernetes object"),
            "{error}"
        );
        let error = parse("x.yaml", "kind: [\n").expect_err("not YAML");
        assert!(
            error
                .to_string()
                .starts_with("x.yaml, document 1: not YAML"),
            "{error}"
        );
    }

    #[test]
    fn a_typed_object_keeps_its_kind_and_is_named_by_its_type() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let config_map = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("c".into()),
                namespace: Some("n".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let manifest = Manifest::from_resource(&config_map).expect("converts");
        assert_eq!(manifest.gvk, GroupVersionKind::gvk("", "v1", "ConfigMap"));
        assert_eq!(manifest.describe(), "ConfigMap n/c");
        assert!(
            manifest.source.ends_with("ConfigMap"),
            "{}",
            manifest.source
        );
        let error = Manifest::from_resource(&ConfigMap::default()).expect_err("no name");
        assert!(
            error.to_string().ends_with("a ConfigMap without a name"),
            "{error}"
        );
    }

    #[test]
    fn options_apply_forced_and_strict_and_dry_run_only_when_asked() {
        let mut options = ApplyOptions::new("me");
        let params = options.patch_params();
        assert_eq!(params.field_manager.as_deref(), Some("me"));
        assert!(params.force);
        assert!(!params.dry_run);
        assert!(matches!(
            params.field_validation,
            Some(ValidationDirective::Strict)
        ));
        options.dry_run = true;
        assert!(options.patch_params().dry_run);
    }

    #[test]
    fn crds_are_waited_for_where_each_run_of_them_ends() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: n}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: a.example.com}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: b.example.com}
---
apiVersion: example.com/v1
kind: CustomResourceDefinition
metadata: {name: not-a-crd}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: c.example.com}
";
        let manifests = parse("crds.yaml", text).expect("parses");
        let runs: Vec<(usize, Vec<String>)> = (0..manifests.len())
            .filter_map(|i| {
                crd_run_ending_at(&manifests, i)
                    .map(|run| (i, run.iter().map(Manifest::name).collect()))
            })
            .collect();
        assert_eq!(
            runs,
            [
                (2, vec!["a.example.com".into(), "b.example.com".into()]),
                (4, vec!["c.example.com".to_string()]),
            ]
        );
        assert!(crd_run_ending_at(&manifests, 9).is_none());
        assert!(crd_run_ending_at(&[], 0).is_none());
    }
}
