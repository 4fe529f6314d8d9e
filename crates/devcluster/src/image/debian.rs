//! What the images take from the host's Debian: packages fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` (no root, nothing
//! installed), and the shared libraries `ldd` says a binary needs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ImageError;
use super::archive::unique_suffix;

/// How long one `apt-get download` or `dpkg-deb` may take.
const APT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one query (`apt-cache`, `dpkg-query`, `ldd`) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where glibc's loader looks first; every library an image needs goes here.
pub(crate) const IMAGE_LIBRARY_DIR: &str = "/lib/x86_64-linux-gnu";

/// One Debian package unpacked on the host.
#[derive(Clone, Debug)]
pub(crate) struct Package {
    /// The package name.
    pub(crate) name: String,
    /// Its Debian version, e.g. `5:7.0.15-1~deb12u10`.
    pub(crate) version: String,
    /// Where it is unpacked: its files are below this directory.
    pub(crate) root: PathBuf,
}

impl Package {
    /// The host path of a file of the package, e.g. `/usr/bin/memcached`.
    pub(crate) fn file(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The directories of the package that hold shared libraries.
    pub(crate) fn library_dirs(&self) -> Vec<PathBuf> {
        ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| self.root.join(d))
            .filter(|d| d.is_dir())
            .collect()
    }
}

/// Fetches and unpacks Debian packages into a cache directory.
#[derive(Debug)]
pub(crate) struct PackageCache {
    dir: PathBuf,
    /// Candidate versions already asked of apt, which takes half a second
    /// per question however many packages it names.
    candidates: Mutex<BTreeMap<String, String>>,
}

impl PackageCache {
    /// A cache in `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        PackageCache {
            dir,
            candidates: Mutex::new(BTreeMap::new()),
        }
    }

    /// Asks apt for the candidate versions of all `names` it was not asked
    /// about yet, in one question.
    pub(crate) fn resolve_candidates(&self, names: &[&str]) -> Result<(), ImageError> {
        let mut known = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        let unknown: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !known.contains_key(*n))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut policy = Command::new("apt-cache");
        policy.arg("policy").args(&unknown);
        let output = run(policy, QUERY_TIMEOUT).map_err(|e| e.for_package(&unknown.join(" ")))?;
        known.extend(parse_policy(&output));
        Ok(())
    }

    /// The version `apt-get download` would fetch.
    fn candidate_version(&self, name: &str) -> Result<String, ImageError> {
        self.resolve_candidates(&[name])?;
        let known = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        known.get(name).cloned().ok_or_else(|| ImageError::Package {
            package: name.to_string(),
            message: "apt knows no candidate version; run `apt-get update` (as root) and retry"
                .to_string(),
        })
    }

    /// The packages named, unpacked, with every `lib*` package they depend on
    /// (transitively) that the host does not have installed: `ldd` finds
    /// the installed ones on the host.
    pub(crate) fn fetch_with_libraries(&self, names: &[&str]) -> Result<Vec<Package>, ImageError> {
        let mut seen: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        let mut queue: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut packages = Vec::new();
        while !queue.is_empty() {
            let level: Vec<&str> = queue.iter().map(String::as_str).collect();
            self.resolve_candidates(&level)?;
            let mut next = Vec::new();
            for name in &queue {
                let package = self.fetch(name)?;
                for dependency in self.library_dependencies(&package)? {
                    if !seen.contains(&dependency) && installed_version(&dependency)?.is_none() {
                        seen.insert(dependency.clone());
                        next.push(dependency);
                    }
                }
                packages.push(package);
            }
            queue = next;
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(packages)
    }

    /// The candidate version of `name`, downloaded and unpacked (reused when
    /// already in the cache).
    pub(crate) fn fetch(&self, name: &str) -> Result<Package, ImageError> {
        let version = self.candidate_version(name)?;
        let stem = format!("{name}_{}", safe_version(&version));
        let root = self.dir.join(&stem);
        let deb = self.dir.join(format!("{stem}.deb"));
        let package = Package {
            name: name.to_string(),
            version: version.clone(),
            root: root.clone(),
        };
        if root.is_dir() && deb.is_file() {
            return Ok(package);
        }
        // Unique scratch names: another build may fetch the same package now.
        let unique = unique_suffix();
        let scratch = self.dir.join(format!("{stem}.{unique}.download"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).map_err(ImageError::io("create", &scratch))?;
        tracing::info!(package = name, %version, "downloading Debian package");
        let mut download = Command::new("apt-get");
        download
            .args(["download", "-q"])
            .arg(format!("{name}={version}"))
            .current_dir(&scratch);
        let downloaded = run(download, APT_TIMEOUT)
            .map_err(|e| e.for_package(name))
            .and_then(|_| {
                let fetched = std::fs::read_dir(&scratch)
                    .map_err(ImageError::io("read", &scratch))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "deb"))
                    .ok_or_else(|| ImageError::Package {
                        package: name.to_string(),
                        message: "apt-get download reported success but wrote no .deb file"
                            .to_string(),
                    })?;
                std::fs::rename(&fetched, &deb).map_err(ImageError::io("move into place", &deb))
            });
        let _ = std::fs::remove_dir_all(&scratch);
        downloaded?;

        let unpacking = self.dir.join(format!("{stem}.{unique}.unpack"));
        let _ = std::fs::remove_dir_all(&unpacking);
        let mut extract = Command::new("dpkg-deb");
        extract.arg("-x").arg(&deb).arg(&unpacking);
        run(extract, APT_TIMEOUT).map_err(|e| e.for_package(name))?;
        if let Err(error) = std::fs::rename(&unpacking, &root) {
            let _ = std::fs::remove_dir_all(&unpacking);
            // Someone else unpacked the same package first: theirs is as good.
            if !root.is_dir() {
                return Err(ImageError::io("move into place", &root)(error));
            }
        }
        Ok(package)
    }

    /// The `lib*` packages `Depends`/`Pre-Depends` of a fetched package names.
    fn library_dependencies(&self, package: &Package) -> Result<Vec<String>, ImageError> {
        let stem = format!("{}_{}", package.name, safe_version(&package.version));
        let deb = self.dir.join(format!("{stem}.deb"));
        let mut fields = Command::new("dpkg-deb");
        fields.arg("-f").arg(&deb).args(["Depends", "Pre-Depends"]);
        let output = run(fields, QUERY_TIMEOUT).map_err(|e| e.for_package(&package.name))?;
        Ok(output
            .lines()
            .filter_map(|line| line.split_once(':').map(|(_, v)| v))
            .flat_map(parse_depends)
            .filter(|name| name.starts_with("lib"))
            .collect())
    }
}

/// The first alternative of each dependency in a `Depends` value, without
/// version constraints or architecture qualifiers.
fn parse_depends(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|group| group.split('|').next())
        .map(|dep| {
            dep.split(['(', '[', ' '])
                .find(|s| !s.is_empty())
                .unwrap_or("")
        })
        .map(|dep| dep.split(':').next().unwrap_or(dep).trim().to_string())
        .filter(|dep| !dep.is_empty())
        .collect()
}

/// The version of `name` installed on the host, if it is installed.
pub(crate) fn installed_version(name: &str) -> Result<Option<String>, ImageError> {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${db:Status-Status} ${Version}", name]);
    // dpkg-query fails for packages it has never heard of: not installed.
    let Ok(output) = run(query, QUERY_TIMEOUT) else {
        return Ok(None);
    };
    Ok(output
        .strip_prefix("installed ")
        .map(|version| version.trim().to_string()))
}

/// The candidate version of each package in `apt-cache policy` output.
fn parse_policy(output: &str) -> BTreeMap<String, String> {
    let mut candidates = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in output.lines() {
        if !line.starts_with(char::is_whitespace) && line.ends_with(':') {
            let name = line.trim_end_matches(':');
            current = Some(name.split(':').next().unwrap_or(name));
        } else if let (Some(name), Some(version)) =
            (current, line.trim().strip_prefix("Candidate:"))
        {
            let version = version.trim();
            if !version.is_empty() && version != "(none)" {
                candidates.insert(name.to_string(), version.to_string());
            }
        }
    }
    candidates
}

/// A Debian version usable in a file name.
fn safe_version(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The upstream part of a Debian version: `5:7.0.15-1~deb12u10` → `7.0.15`.
pub(crate) fn upstream_version(version: &str) -> &str {
    let without_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(v, _)| v)
}

/// A shared library a binary needs, and where it goes in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SharedLibrary {
    /// The path in the image.
    pub(crate) image_path: String,
    /// The file on the host.
    pub(crate) host_path: PathBuf,
}

/// The shared libraries and the dynamic loader `binary` needs, as `ldd`
/// resolves them with `library_dirs` searched first. Empty for a static
/// binary.
pub(crate) fn shared_libraries(
    binary: &Path,
    library_dirs: &[PathBuf],
) -> Result<Vec<SharedLibrary>, ImageError> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    if !library_dirs.is_empty() {
        let joined = std::env::join_paths(library_dirs).map_err(|e| ImageError::Command {
            command: "ldd".to_string(),
            message: e.to_string(),
        })?;
        ldd.env("LD_LIBRARY_PATH", joined);
    }
    let output = match run(ldd, QUERY_TIMEOUT) {
        Ok(output) => output,
        Err(ImageError::Command { message, .. })
            if message.contains("not a dynamic executable")
                || message.contains("statically linked") =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    parse_ldd(binary, &output)
}

fn parse_ldd(binary: &Path, output: &str) -> Result<Vec<SharedLibrary>, ImageError> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.contains("statically linked") {
            return Ok(Vec::new());
        }
        if let Some((soname, resolved)) = line.split_once(" => ") {
            let host = resolved.split(" (").next().unwrap_or(resolved).trim();
            if !host.starts_with('/') {
                return Err(ImageError::MissingLibrary {
                    binary: binary.to_path_buf(),
                    library: soname.trim().to_string(),
                });
            }
            libraries.push(SharedLibrary {
                image_path: format!("{IMAGE_LIBRARY_DIR}/{}", soname.trim()),
                host_path: PathBuf::from(host),
            });
        } else if line.starts_with('/') {
            // The dynamic loader, which must be exactly where the binary's
            // PT_INTERP says.
            let loader = line.split(" (").next().unwrap_or(line).trim();
            libraries.push(SharedLibrary {
                image_path: loader.to_string(),
                host_path: PathBuf::from(loader),
            });
        }
        // Anything else (linux-vdso.so.1) is provided by the kernel.
    }
    Ok(libraries)
}

/// Runs a command to completion within `timeout`, returning its stdout, or
/// an error with its stderr.
pub(crate) fn run(mut command: Command, timeout: Duration) -> Result<String, ImageError> {
    let shown = format!("{command:?}");
    let failed = |message: String| ImageError::Command {
        command: shown.clone(),
        message,
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start it: {e}")))?;
    let readers = [
        child.stdout.take().map(drain),
        child.stderr.take().map(drain),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("timed out after {timeout:?}")));
            }
            Err(e) => return Err(failed(format!("cannot wait for it: {e}"))),
        }
    };
    let [stdout, stderr] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    if status.success() {
        Ok(stdout)
    } else {
        let detail = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        Err(failed(format!("{status}: {}", detail.trim())))
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depends() {
        let value = " adduser, perl:any, libc6 (>= 2.34), libevent-2.1-7 (>= 2.1.8-stable) | libevent-x, libssl3";
        assert_eq!(
            parse_depends(value),
            ["adduser", "perl", "libc6", "libevent-2.1-7", "libssl3"]
        );
    }

    #[test]
    fn parses_policy() {
        let output = "memcached:\n  Installed: (none)\n  Candidate: 1.6.18-1+deb12u1\n  Version table:\n     1.6.18-1+deb12u1 500\n\
                      redis-tools:amd64:\n  Installed: (none)\n  Candidate: 5:7.0.15-1~deb12u10\n\
                      gone:\n  Installed: (none)\n  Candidate: (none)\n";
        let parsed = parse_policy(output);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed["memcached"], "1.6.18-1+deb12u1");
        assert_eq!(parsed["redis-tools"], "5:7.0.15-1~deb12u10");
    }

    #[test]
    fn upstream_versions() {
        assert_eq!(upstream_version("5:7.0.15-1~deb12u10"), "7.0.15");
        assert_eq!(upstream_version("1.6.18-1+deb12u1"), "1.6.18");
        assert_eq!(upstream_version("1.2"), "1.2");
    }

    #[test]
    fn parses_ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(Path::new("/x"), output).expect("parses");
        let paths: Vec<_> = libs.iter().map(|l| l.image_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let missing = parse_ldd(Path::new("/x"), "\tliblzf.so.1 => not found\n");
        assert!(
            matches!(missing, Err(ImageError::MissingLibrary { library, .. }) if library == "liblzf.so.1")
        );
    }
}
