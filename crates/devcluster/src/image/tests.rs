//! Archives are read back with `tar` and every digest and size is checked
//! against the blob it names, as containerd does on import.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::archive::hex;
use super::*;

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bosun-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One file of a layer, as read back.
#[derive(Debug)]
struct LayerFile {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

/// An archive read back and checked: the index, manifest and config, and
/// the layer's files by path.
struct ReadBack {
    index: Value,
    manifest_digest: String,
    config: Value,
    layer_paths: Vec<String>,
    layer: BTreeMap<String, LayerFile>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Reads an archive and checks every descriptor against its blob.
fn read_back(path: &Path) -> ReadBack {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open archive"));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        assert_eq!(entry.header().mtime().expect("mtime"), 0, "{name}");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        files.insert(name, data);
    }
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let blob = |descriptor: &Value| -> Vec<u8> {
        let digest = descriptor["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let data = files[&format!("blobs/sha256/{hex}")].clone();
        assert_eq!(sha256(&data), digest, "blob content matches its digest");
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(data.len() as u64),
            "size of {digest}"
        );
        data
    };

    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index.json");
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1);
    let manifest_descriptor = &manifests[0];
    assert_eq!(
        manifest_descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest: Value = serde_json::from_slice(&blob(manifest_descriptor)).expect("manifest");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).expect("config");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");

    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    let stored = blob(&layers[0]);
    let raw = match layers[0]["mediaType"].as_str() {
        Some("application/vnd.oci.image.layer.v1.tar") => stored,
        Some("application/vnd.oci.image.layer.v1.tar+gzip") => {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(stored.as_slice())
                .read_to_end(&mut raw)
                .expect("gunzip layer");
            raw
        }
        other => panic!("unexpected layer media type {other:?}"),
    };
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str(),
        Some(sha256(&raw).as_str())
    );

    let mut layer = BTreeMap::new();
    let mut layer_paths = Vec::new();
    let mut tar = tar::Archive::new(raw.as_slice());
    for entry in tar.entries().expect("layer entries") {
        let mut entry = entry.expect("layer entry");
        let header = entry.header().clone();
        let path = entry
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let link = entry
            .link_name()
            .expect("link")
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read layer file");
        layer_paths.push(path.clone());
        layer.insert(
            path,
            LayerFile {
                kind: header.entry_type(),
                mode: header.mode().expect("mode"),
                uid: header.uid().expect("uid"),
                mtime: header.mtime().expect("mtime"),
                link,
                data,
            },
        );
    }
    ReadBack {
        manifest_digest: manifest_descriptor["digest"]
            .as_str()
            .expect("digest")
            .to_string(),
        index,
        config,
        layer_paths,
        layer,
    }
}

fn sample_spec(dir: &Path, compression: Compression) -> ImageSpec {
    let binary = dir.join("program");
    if !binary.exists() {
        std::fs::write(&binary, vec![7u8; 300_000]).expect("write input");
    }
    ImageSpec {
        name: "example.test/team/tool:v1.2.3".to_string(),
        config: ImageConfig {
            entrypoint: vec!["/usr/local/bin/tool".into()],
            cmd: vec!["--serve".into()],
            env: vec!["MODE=test".into()],
            working_dir: "/work".into(),
            user: "65532:65532".into(),
            labels: BTreeMap::from([("org.opencontainers.image.version".into(), "v1.2.3".into())]),
        },
        entries: vec![
            Entry::file(&binary, "/usr/local/bin/tool", 0o755),
            Entry::contents("hello\n", "/etc/greeting", 0o644),
            Entry::symlink("/bin/tool", "/usr/local/bin/tool"),
            Entry::dir("/work", 0o750).owned_by(65532, 65532),
            Entry::dir("/tmp", 0o1777),
        ],
        compression,
    }
}

#[test]
fn archive_descriptors_match_their_blobs() {
    for compression in [Compression::None, Compression::Gzip] {
        let dir = TempDir::new(&format!("blobs-{compression:?}"));
        let spec = sample_spec(&dir.0, compression);
        let dest = dir.0.join("tool.tar");
        let written = write_archive(&spec, &dest).expect("write archive");
        assert_eq!(
            written.size,
            std::fs::metadata(&dest).expect("archive").len()
        );

        let back = read_back(&dest);
        assert_eq!(back.manifest_digest, written.digest);
        let annotations = &back.index["manifests"][0]["annotations"];
        assert_eq!(
            annotations["io.containerd.image.name"],
            "example.test/team/tool:v1.2.3"
        );
        assert_eq!(annotations["org.opencontainers.image.ref.name"], "v1.2.3");

        let runtime = &back.config["config"];
        assert_eq!(
            runtime["Entrypoint"],
            serde_json::json!(["/usr/local/bin/tool"])
        );
        assert_eq!(runtime["Cmd"], serde_json::json!(["--serve"]));
        assert_eq!(runtime["User"], "65532:65532");
        assert_eq!(runtime["WorkingDir"], "/work");
        let env = runtime["Env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with("PATH=")))
        );
        assert!(env.contains(&Value::from("MODE=test")));

        // Parents come first and are created; every entry is sorted and dated 0.
        let mut sorted = back.layer_paths.clone();
        sorted.sort();
        assert_eq!(back.layer_paths, sorted);
        assert_eq!(
            back.layer_paths,
            [
                "bin",
                "bin/tool",
                "etc",
                "etc/greeting",
                "tmp",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/tool",
                "work"
            ]
        );
        assert!(back.layer.values().all(|f| f.mtime == 0));
        let tool = &back.layer["usr/local/bin/tool"];
        assert_eq!(
            (tool.kind, tool.mode, tool.data.len()),
            (tar::EntryType::Regular, 0o755, 300_000)
        );
        assert_eq!(back.layer["etc/greeting"].data, b"hello\n");
        let link = &back.layer["bin/tool"];
        assert_eq!(
            (link.kind, link.link.as_deref()),
            (tar::EntryType::Symlink, Some("/usr/local/bin/tool"))
        );
        let work = &back.layer["work"];
        assert_eq!(
            (work.kind, work.mode, work.uid),
            (tar::EntryType::Directory, 0o750, 65532)
        );
        assert_eq!(back.layer["tmp"].mode, 0o1777);
        assert_eq!(back.layer["usr/local"].mode, 0o755);

        // Nothing is left behind but the archive.
        let mut left: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["program", "tool.tar"]);
    }
}

#[test]
fn identical_inputs_give_identical_digests() {
    let dir = TempDir::new("determinism");
    let mut spec = sample_spec(&dir.0, Compression::Gzip);
    let first = write_archive(&spec, &dir.0.join("a.tar")).expect("first");
    // Entry order in the spec and input mtimes do not matter.
    spec.entries.reverse();
    let program = dir.0.join("program");
    std::fs::write(&program, std::fs::read(&program).expect("read")).expect("rewrite");
    let second = write_archive(&spec, &dir.0.join("b.tar")).expect("second");
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(dir.0.join("a.tar")).expect("a"),
        std::fs::read(dir.0.join("b.tar")).expect("b")
    );

    spec.config.cmd = vec!["--other".into()];
    let third = write_archive(&spec, &dir.0.join("c.tar")).expect("third");
    assert_ne!(first.digest, third.digest);
}

#[test]
fn cached_builds_are_reused_until_an_input_changes() {
    let dir = TempDir::new("cache");
    let out = dir.0.join("out");
    let spec = sample_spec(&dir.0, Compression::None);
    let first = build_cached(&spec, &out).expect("build");
    assert_eq!(first.archive, out.join("example.test_team_tool_v1.2.3.tar"));
    let modified = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let written_at = modified(&first.archive);

    let again = build_cached(&spec, &out).expect("reuse");
    assert_eq!(again, first);
    assert_eq!(
        modified(&again.archive),
        written_at,
        "archive was not rewritten"
    );

    std::fs::write(dir.0.join("program"), b"a new build").expect("change input");
    let rebuilt = build_cached(&spec, &out).expect("rebuild");
    assert_ne!(rebuilt.digest, first.digest);
    let back = read_back(&rebuilt.archive);
    assert_eq!(back.manifest_digest, rebuilt.digest);
    assert_eq!(back.layer["usr/local/bin/tool"].data, b"a new build");
}

#[test]
fn bad_names_and_entries_are_refused() {
    let dir = TempDir::new("refused");
    let dest = dir.0.join("x.tar");
    for name in [
        "tool:v1",
        "example.test/tool",
        "example.test/tool:",
        "example.test/Tool:v1",
        "example.test/tool:-x",
    ] {
        let mut spec = sample_spec(&dir.0, Compression::None);
        spec.name = name.to_string();
        assert!(
            matches!(
                write_archive(&spec, &dest),
                Err(ImageError::InvalidName { .. })
            ),
            "{name}"
        );
    }
    let bad_entries = [
        vec![Entry::dir("relative", 0o755)],
        vec![Entry::dir("/a/../b", 0o755)],
        vec![Entry::dir("/a", 0o755), Entry::contents("x", "/a/", 0o644)],
        vec![
            Entry::contents("x", "/a", 0o644),
            Entry::contents("y", "/a/b", 0o644),
        ],
    ];
    for entries in bad_entries {
        let mut spec = sample_spec(&dir.0, Compression::None);
        spec.entries = entries.clone();
        assert!(
            matches!(
                write_archive(&spec, &dest),
                Err(ImageError::InvalidEntry { .. })
            ),
            "{entries:?}"
        );
    }
    assert!(!dest.exists());
}

#[test]
fn image_names() {
    assert_eq!(etcd_image("3.6.16"), "gcr.io/etcd-development/etcd:v3.6.16");
    assert_eq!(
        coredns_image("v1.15.0"),
        "registry.k8s.io/coredns/coredns:v1.15.0"
    );
    for name in [
        PAUSE_IMAGE,
        BOSUN_IMAGE,
        &etcd_image("3.5.35"),
        &coredns_image("v1.15.0"),
        &seaweedfs_image("4.48"),
    ] {
        assert!(archive::image_tag(name).is_ok(), "{name}");
    }
    assert_eq!(seaweedfs_image("4.48"), "bosun.dev/seaweedfs:4.48");
    assert_eq!(
        safe_file_name("gcr.io/etcd-development/etcd:v3.6.16"),
        "gcr.io_etcd-development_etcd_v3.6.16"
    );
}

/// The host's static busybox, if `busybox-static` is installed.
fn host_busybox() -> Option<recipe::Busybox> {
    let installed = debian::installed_version("busybox-static")
        .ok()
        .flatten()
        .is_some();
    if !installed {
        eprintln!("skipped: busybox-static is not installed (scripts/setup.sh installs it)");
        return None;
    }
    recipe::Busybox::at(PathBuf::from("/bin/busybox")).ok()
}

#[test]
fn etcd_image_has_the_three_binaries_and_a_shell() {
    let Ok(tools) = crate::tools::Tools::load(crate::tools::Tools::default_dir()) else {
        eprintln!("skipped: the dev cluster's tools are not built (scripts/setup.sh --cluster)");
        return;
    };
    let Some(version) = tools.etcd_versions().into_iter().next() else {
        eprintln!("skipped: no etcd version is built");
        return;
    };
    let Some(busybox) = host_busybox() else {
        return;
    };
    let etcd_dir = tools.etcd_dir(&version).expect("etcd dir");
    let spec = recipe::etcd(&version, &etcd_dir, &busybox);
    assert_eq!(spec.name, etcd_image(&version));

    let dir = TempDir::new("etcd");
    let built = build_cached(&spec, &dir.0).expect("build etcd image");
    let back = read_back(&built.archive);
    for program in ["etcd", "etcdctl", "etcdutl"] {
        let file = &back.layer[&format!("usr/local/bin/{program}")];
        let size = std::fs::metadata(etcd_dir.join(program))
            .expect("etcd binary")
            .len();
        assert_eq!(
            (file.kind, file.mode, file.data.len() as u64),
            (tar::EntryType::Regular, 0o755, size)
        );
    }
    for applet in [
        "bin/sh",
        "bin/ls",
        "bin/cat",
        "bin/sleep",
        "usr/bin/nslookup",
        "usr/bin/wget",
    ] {
        assert_eq!(
            back.layer[applet].link.as_deref(),
            Some("/bin/busybox"),
            "{applet}"
        );
    }
    assert_eq!(back.layer["bin/busybox"].kind, tar::EntryType::Regular);
    assert_eq!(back.layer["tmp"].kind, tar::EntryType::Directory);
    assert_eq!(back.layer["var/lib/etcd"].kind, tar::EntryType::Directory);
    assert_eq!(
        back.config["config"]["Cmd"],
        serde_json::json!(["/usr/local/bin/etcd"])
    );
    assert_eq!(back.config["config"]["WorkingDir"], "/var/lib/etcd");
}

#[test]
fn pause_image_sleeps_with_busybox_alone() {
    let Some(busybox) = host_busybox() else {
        return;
    };
    let dir = TempDir::new("pause");
    let built = build_cached(&recipe::pause(&busybox), &dir.0).expect("build pause image");
    let back = read_back(&built.archive);
    assert_eq!(back.layer_paths, ["bin", "bin/busybox"]);
    assert_eq!(
        back.config["config"]["Entrypoint"],
        serde_json::json!(["/bin/busybox", "sleep", "infinity"])
    );
}

#[test]
fn seaweedfs_image_runs_weed_as_nonroot_with_a_data_directory() {
    let busybox = recipe::Busybox {
        binary: PathBuf::from("/bin/busybox"),
        applets: vec!["/bin/sh".to_string()],
    };
    let spec = recipe::seaweedfs("4.48", Path::new("/tools/seaweedfs/weed"), &busybox);
    assert_eq!(spec.name, "bosun.dev/seaweedfs:4.48");
    assert_eq!(spec.config.entrypoint, ["/usr/bin/weed"]);
    assert_eq!(spec.config.user, "65532:65532");
    let entry = |path: &str| {
        spec.entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} is in the image"))
    };
    assert_eq!(
        entry("/usr/bin/weed").kind,
        EntryKind::File(PathBuf::from("/tools/seaweedfs/weed"))
    );
    assert_eq!(entry("/usr/bin/weed").mode, 0o755);
    let data = entry("/data");
    assert_eq!((data.uid, data.gid), (recipe::NONROOT, recipe::NONROOT));
    // The pod's command is a shell line (it clears SeaweedFS's saved options).
    assert_eq!(
        entry("/bin/sh").kind,
        EntryKind::Symlink("/bin/busybox".into())
    );
}
