//! `bosun crds`: the CustomResourceDefinitions as YAML, printed or written to
//! `deploy/crds/`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CRD bosun ships: the etcd API's and the Memcached API's.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = bosun_api::crd::all();
    crds.push(bosun_memcached::crd());
    crds
}

/// Every CRD as one multi-document YAML stream.
pub fn render_all() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&render(&crd)?);
    }
    Ok(out)
}

fn render(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    serde_yaml_ng::to_string(crd).context("serializing a CRD to YAML")
}

/// The file name a CRD is stored under in `deploy/crds/`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Prints every CRD.
pub fn print(out: &mut impl Write) -> anyhow::Result<()> {
    out.write_all(render_all()?.as_bytes())
        .context("writing CRDs to standard output")
}

/// Writes one file per CRD into `dir`.
pub fn write_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in all() {
        let path = dir.join(file_name(&crd));
        std::fs::write(&path, render(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
