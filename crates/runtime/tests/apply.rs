//! The manifest applier against the dev cluster's real API server: a custom
//! resource listed right after its CRD is applied once the CRD is served; a
//! dry run stores nothing and skips objects of a namespace that does not
//! exist; strict field validation refuses a misspelt field; a namespaced
//! object needs a namespace; deleting tells "deleted" from "not there".
//!
//! The CRD is of a group of this process's own, and is deleted at the end,
//! also when a check fails.

use bosun_devcluster::fixture::TestCluster;
use bosun_runtime::apply::{self, ApplyError, ApplyOptions, Deletion, Manifest, Progress};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::DeleteParams;

const FIELD_MANAGER: &str = "bosun-apply-test";

/// What `apply_all` reported, one line a step.
fn record(steps: &mut Vec<String>) -> impl FnMut(Progress<'_>) + '_ {
    |step| {
        steps.push(match step {
            Progress::Applied(m) => format!("applied {}", m.describe()),
            Progress::NotChecked { manifest, .. } => format!("not checked {}", manifest.describe()),
            Progress::CrdsEstablished(crds) => {
                let names: Vec<String> = crds.iter().map(Manifest::name).collect();
                format!("established {}", names.join(","))
            }
        })
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

#[tokio::test]
async fn a_custom_resource_after_its_crd_applies_and_a_dry_run_stores_nothing() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("apply_custom_resource_after_crd").await;
    let group = format!("t{:x}.apply.bosun.dev", std::process::id());
    let text = format!(
        "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: probes.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: probes, singular: probe, kind: Probe}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{size: {{type: integer}}}}}}
---
apiVersion: {group}/v1
kind: Probe
metadata: {{name: p, namespace: {ns}}}
spec: {{size: 3}}
",
        ns = ns.name
    );
    let manifests = apply::parse("probe.yaml", &text).expect("the manifests parse");
    let crd = manifests[0].clone();
    let outcome = checks(&cluster, &ns.name, &manifests).await;
    let cleanup = apply::delete(&cluster.client, &crd, &DeleteParams::background()).await;
    outcome.unwrap_or_else(|e| panic!("{e}"));
    cleanup.unwrap_or_else(|e| panic!("deleting the CRD: {e}"));
}

async fn checks(cluster: &TestCluster, ns: &str, manifests: &[Manifest]) -> Result<(), String> {
    let client = &cluster.client;
    let options = ApplyOptions::new(FIELD_MANAGER);
    let mut steps = vec![];
    apply::apply_all(client, manifests, &options, record(&mut steps))
        .await
        .map_err(|e| e.to_string())?;
    let crd = manifests[0].name();
    ensure(
        steps
            == [
                format!("applied CustomResourceDefinition {crd}"),
                format!("established {crd}"),
                format!("applied Probe {ns}/p"),
            ],
        || format!("apply_all reported {steps:?}"),
    )?;
    let probe = apply::api_for(client, &manifests[1])
        .await
        .map_err(|e| e.to_string())?
        .get("p")
        .await
        .map_err(|e| format!("reading the probe: {e}"))?;
    ensure(probe.data["spec"]["size"] == 3, || {
        format!("the probe holds {:?}", probe.data)
    })?;

    // A dry run: checked, stored nowhere; where the namespace is missing,
    // not checked at all.
    let config_maps = apply::parse(
        "config-maps.yaml",
        &format!(
            "\
apiVersion: v1
kind: ConfigMap
metadata: {{name: dry, namespace: {ns}}}
data: {{a: b}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: dry, namespace: {ns}-missing}}
"
        ),
    )
    .map_err(|e| e.to_string())?;
    let dry_run = ApplyOptions {
        dry_run: true,
        ..options.clone()
    };
    let mut steps = vec![];
    apply::apply_all(client, &config_maps, &dry_run, record(&mut steps))
        .await
        .map_err(|e| e.to_string())?;
    ensure(
        steps
            == [
                format!("applied ConfigMap {ns}/dry"),
                format!("not checked ConfigMap {ns}-missing/dry"),
            ],
        || format!("the dry run reported {steps:?}"),
    )?;
    let stored = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt("dry")
        .await
        .map_err(|e| format!("reading the ConfigMap: {e}"))?;
    ensure(stored.is_none(), || {
        "the dry run stored the ConfigMap".into()
    })?;

    // Strict field validation, and a namespaced kind without a namespace.
    let misspelt = apply::parse(
        "misspelt.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m, namespace: {ns}}}\ndatta: {{a: b}}\n"),
    )
    .map_err(|e| e.to_string())?;
    match apply::apply(client, &misspelt[0], &options).await {
        Err(ApplyError::Apply { error, .. }) if error.to_string().contains("datta") => {}
        other => return Err(format!("a misspelt field was answered {other:?}")),
    }
    let homeless = apply::parse(
        "homeless.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: h}\n",
    )
    .map_err(|e| e.to_string())?;
    match apply::apply(client, &homeless[0], &options).await {
        Err(ApplyError::NoNamespace { .. }) => {}
        other => {
            return Err(format!(
                "a ConfigMap without a namespace was answered {other:?}"
            ));
        }
    }

    // Deleting: once it is there, then it is not.
    let params = DeleteParams::background();
    for expected in [Deletion::Deleted, Deletion::NotThere] {
        let deletion = apply::delete(client, &manifests[1], &params)
            .await
            .map_err(|e| e.to_string())?;
        ensure(deletion == expected, || {
            format!("deleting the probe: {deletion:?}, expected {expected:?}")
        })?;
    }
    Ok(())
}
