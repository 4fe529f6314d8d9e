//! The upstream programs `scripts/build-tools.sh` builds (Kubernetes, etcd,
//! CoreDNS, containerd, runc) or fetches (SeaweedFS), found in
//! `$BOSUN_TOOLS_DIR` (default `~/.bosun/tools`) together with the versions
//! it recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the tools cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    /// A program is not where the build puts it.
    #[error(
        "{program} is missing from {dir}: run `scripts/setup.sh --cluster` to build the dev cluster's programs"
    )]
    Missing {
        /// The program's name.
        program: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// `versions.env` is missing or unreadable.
    #[error("cannot read {path}: {source}; run `scripts/setup.sh --cluster`")]
    Versions {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The built programs and their versions.
#[derive(Clone, Debug)]
pub struct Tools {
    dir: PathBuf,
    versions: BTreeMap<String, String>,
}

impl Tools {
    /// The tools directory named by `$BOSUN_TOOLS_DIR`, or `~/.bosun/tools`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("BOSUN_TOOLS_DIR") {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".bosun").join("tools")
    }

    /// Reads the tools in `dir`.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Self, ToolsError> {
        let dir = dir.into();
        let path = dir.join("versions.env");
        let text = std::fs::read_to_string(&path).map_err(|source| ToolsError::Versions {
            path: path.clone(),
            source,
        })?;
        Ok(Tools {
            versions: parse_env(&text),
            dir,
        })
    }

    /// The tools directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a program in `bin/`, checked to exist.
    pub fn bin(&self, program: &str) -> Result<PathBuf, ToolsError> {
        let path = self.dir.join("bin").join(program);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ToolsError::Missing {
                program: program.to_string(),
                dir: self.dir.join("bin"),
            })
        }
    }

    /// The directory holding `etcd`, `etcdctl` and `etcdutl` of one etcd version.
    pub fn etcd_dir(&self, version: &str) -> Result<PathBuf, ToolsError> {
        let dir = self.dir.join(format!("etcd-{version}"));
        if dir.join("etcd").is_file() {
            Ok(dir)
        } else {
            Err(ToolsError::Missing {
                program: format!("etcd {version}"),
                dir,
            })
        }
    }

    /// SeaweedFS's `weed` (`seaweedfs/weed`) and its version, both checked
    /// to exist.
    pub fn seaweedfs(&self) -> Result<(PathBuf, &str), ToolsError> {
        let path = self.dir.join("seaweedfs").join("weed");
        match self.version("SEAWEEDFS_VERSION") {
            Some(version) if path.is_file() => Ok((path, version)),
            _ => Err(ToolsError::Missing {
                program: "seaweedfs (weed)".to_string(),
                dir: self.dir.join("seaweedfs"),
            }),
        }
    }

    /// A recorded version, e.g. `version("KUBERNETES_VERSION")` = `v1.37.2`.
    pub fn version(&self, key: &str) -> Option<&str> {
        self.versions.get(key).map(String::as_str)
    }

    /// Every etcd version built, oldest first.
    pub fn etcd_versions(&self) -> Vec<String> {
        self.version("ETCD_VERSIONS")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }
}

/// Parses `KEY=value` and `KEY="a b"` lines, skipping comments.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_how_to_build_it() {
        let dir = std::env::temp_dir().join(format!("bosun-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("versions.env"), "KUBERNETES_VERSION=v1.37.2\n").expect("versions");
        let tools = Tools::load(&dir).expect("tools load");
        let err = tools.bin("kube-apiserver").expect_err("nothing is built");
        assert!(
            err.to_string().contains("kube-apiserver is missing"),
            "{err}"
        );
        assert!(
            err.to_string().contains("scripts/setup.sh --cluster"),
            "{err}"
        );
        assert!(tools.etcd_dir("3.6.16").is_err());
        let weed = tools.seaweedfs().expect_err("nothing is fetched");
        assert!(
            weed.to_string().contains("seaweedfs (weed) is missing"),
            "{weed}"
        );
        let missing = Tools::load(dir.join("nowhere")).expect_err("no versions.env");
        assert!(
            missing.to_string().contains("scripts/setup.sh --cluster"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn reads_versions_env() {
        let parsed =
            parse_env("# comment\nKUBERNETES_VERSION=v1.37.2\nETCD_VERSIONS=\"3.5.35 3.6.16\"\n");
        assert_eq!(parsed["KUBERNETES_VERSION"], "v1.37.2");
        assert_eq!(parsed["ETCD_VERSIONS"], "3.5.35 3.6.16");
    }
}
