//! Loading image archives into containerd with `ctr`, into the `k8s.io`
//! namespace the CRI plugin (and so the kubelet) uses.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{BuiltImage, ImageError};

/// containerd's namespace for Kubernetes.
const NAMESPACE: &str = "k8s.io";
/// How long one import may take (the largest archives are ~100 MB).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long listing images may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long ctr may wait for containerd's socket.
const CONNECT_TIMEOUT: &str = "10s";

/// An image containerd holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PresentImage {
    digest: String,
    /// All content is present and unpacked for the default snapshotter.
    ready: bool,
}

/// Imports each archive into containerd's `k8s.io` namespace, unpacked for
/// the default snapshotter, skipping images containerd already holds with
/// the same digest; then checks that containerd lists every image with its
/// digest.
pub async fn import(
    ctr: &Path,
    containerd_socket: &Path,
    images: &[BuiltImage],
) -> Result<(), ImageError> {
    let present = match list(ctr, containerd_socket).await {
        Ok(present) => present,
        Err(error) => {
            tracing::warn!(%error, "cannot tell which images containerd has; importing all");
            HashMap::new()
        }
    };
    for image in images {
        if present
            .get(&image.name)
            .is_some_and(|p| p.ready && p.digest == image.digest)
        {
            tracing::info!(image = %image.name, digest = %image.digest, "image already in containerd");
            continue;
        }
        let started = Instant::now();
        let args: Vec<OsString> = vec![
            "images".into(),
            "import".into(),
            "--no-unpack=false".into(),
            image.archive.clone().into_os_string(),
        ];
        let failed = |message| ImageError::Import {
            image: image.name.clone(),
            archive: image.archive.clone(),
            message,
        };
        let output = run_ctr(ctr, containerd_socket, &args, IMPORT_TIMEOUT)
            .await
            .map_err(failed)?;
        if !output.status.success() {
            return Err(failed(output.failure()));
        }
        tracing::info!(image = %image.name, elapsed = ?started.elapsed(), "image imported into containerd");
    }

    let present = list(ctr, containerd_socket).await?;
    for image in images {
        match present.get(&image.name) {
            Some(p) if p.digest == image.digest => {}
            other => {
                return Err(ImageError::ImportMismatch {
                    image: image.name.clone(),
                    expected: image.digest.clone(),
                    found: other.map_or_else(|| "no image".to_string(), |p| p.digest.clone()),
                });
            }
        }
    }
    Ok(())
}

/// The images in the namespace, from `ctr images check`.
async fn list(
    ctr: &Path,
    containerd_socket: &Path,
) -> Result<HashMap<String, PresentImage>, ImageError> {
    let args: Vec<OsString> = vec!["images".into(), "check".into()];
    let output = run_ctr(ctr, containerd_socket, &args, LIST_TIMEOUT)
        .await
        .map_err(|message| ImageError::List { message })?;
    // ctr exits non-zero when any image of the namespace fails its check,
    // yet still lists them all: a table is an answer.
    if output.status.success() || output.stdout.starts_with("REF") {
        Ok(parse_check(&output.stdout))
    } else {
        Err(ImageError::List {
            message: output.failure(),
        })
    }
}

/// Parses `ctr images check`: `REF TYPE DIGEST STATUS SIZE UNPACKED`, where
/// STATUS is e.g. `complete (3/3)` and SIZE `1.9 MiB/1.9 MiB`.
fn parse_check(stdout: &str) -> HashMap<String, PresentImage> {
    stdout
        .lines()
        .filter(|line| !line.starts_with("REF"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, digest, status) = (fields.first()?, fields.get(2)?, fields.get(3)?);
            let unpacked = fields.last() == Some(&"true");
            Some((
                name.to_string(),
                PresentImage {
                    digest: digest.to_string(),
                    ready: *status == "complete" && unpacked,
                },
            ))
        })
        .collect()
}

/// What a finished ctr said.
struct CtrOutput {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl CtrOutput {
    /// The exit status and stderr (or stdout, if stderr is empty).
    fn failure(&self) -> String {
        let detail = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        format!("ctr exited with {}: {detail}", self.status)
    }
}

/// Runs `ctr --address <socket> --namespace k8s.io <args>` to completion;
/// an error only when it cannot run or times out.
async fn run_ctr(
    ctr: &Path,
    socket: &Path,
    args: &[OsString],
    timeout: Duration,
) -> Result<CtrOutput, String> {
    let mut command = tokio::process::Command::new(ctr);
    command
        .arg("--address")
        .arg(socket)
        .args([
            "--namespace",
            NAMESPACE,
            "--connect-timeout",
            CONNECT_TIMEOUT,
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", ctr.display())),
        Err(_) => return Err(format!("ctr did not finish within {timeout:?}")),
    };
    Ok(CtrOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_images_check() {
        let stdout = "REF                                 TYPE                                       DIGEST                                                                  STATUS         SIZE              UNPACKED \n\
            registry.k8s.io/pause:3.10 application/vnd.oci.image.manifest.v1+json sha256:aa complete (2/2) 1.9 MiB/1.9 MiB true\n\
            bosun.dev/redis:7.0.15 application/vnd.oci.image.manifest.v1+json sha256:bb incomplete (1/2) 1.0 MiB/2.0 MiB false\n";
        let parsed = parse_check(stdout);
        assert_eq!(
            parsed["registry.k8s.io/pause:3.10"],
            PresentImage {
                digest: "sha256:aa".into(),
                ready: true
            }
        );
        assert_eq!(
            parsed["bosun.dev/redis:7.0.15"],
            PresentImage {
                digest: "sha256:bb".into(),
                ready: false
            }
        );
        assert_eq!(parsed.len(), 2);
    }
}
