//! Validation of bosun's resources: plain functions over the spec types, the
//! single home of every rule. The operator calls them before acting, the
//! admission webhook calls them to refuse bad objects, and the CRD schema
//! mirrors the subset the API server can check by itself.
//!
//! Each error names the field, what was wrong and what is allowed.

use std::fmt;

use crate::backup::{BackupStorage, EtcdBackupSpec};
use crate::cluster::{
    EtcdClusterSpec, MAX_ETCD_OPTIONS, MAX_SIZE, MIN_SIZE, OPERATOR_OWNED_ETCD_FLAGS,
};
use crate::restore::{EtcdRestoreSpec, RestoreSource};
use crate::version::{EtcdVersion, VersionChange};

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.size`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything wrong with an object; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&messages.join("; "))
    }
}

impl ValidationErrors {
    /// Whether any error concerns `field` (exactly, or one of its children).
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|e| {
            e.field == field
                || e.field.starts_with(&format!("{field}."))
                || e.field.starts_with(&format!("{field}["))
        })
    }
}

/// Collects errors while walking a spec.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Validates an EtcdCluster spec on its own (creation, or any read).
pub fn validate_cluster(spec: &EtcdClusterSpec) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    if !(MIN_SIZE..=MAX_SIZE).contains(&spec.size) {
        errors.add(
            "spec.size",
            format!(
                "{} is out of range: a cluster has {MIN_SIZE} to {MAX_SIZE} members",
                spec.size
            ),
        );
    }
    if let Err(e) = spec.version.parse::<EtcdVersion>() {
        errors.add("spec.version", e.to_string());
    }
    if let Some(image) = &spec.image {
        if image.is_empty() || image.contains(char::is_whitespace) {
            errors.add(
                "spec.image",
                format!("{image:?} is not an image repository such as registry.example.com/etcd"),
            );
        } else if image.contains('@')
            || image
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
        {
            errors.add(
                "spec.image",
                format!("{image:?} has a tag or digest: give the repository only; the tag comes from spec.version"),
            );
        }
    }
    validate_storage(spec, &mut errors);
    validate_etcd_options(spec, &mut errors);
    if let Some(template) = &spec.pod_template {
        for (i, var) in template.env.iter().enumerate() {
            if var.name.starts_with("ETCD_") {
                errors.add(
                    format!("spec.podTemplate.env[{i}].name"),
                    format!(
                        "{} would configure etcd behind the operator's back: set etcd flags through spec.etcdOptions",
                        var.name
                    ),
                );
            }
        }
    }
    if let Some(restore) = spec.bootstrap.as_ref().and_then(|b| b.restore.as_ref()) {
        validate_restore_source(
            &restore.source,
            "spec.bootstrap.restore.source",
            &mut errors,
        );
    }
    errors.into_result()
}

fn validate_storage(spec: &EtcdClusterSpec, errors: &mut Errors) {
    let storage = &spec.storage;
    if let Err(message) = parse_quantity_bytes(&storage.size.0) {
        errors.add("spec.storage.size", message);
    }
    if storage.empty_dir && storage.storage_class_name.is_some() {
        errors.add(
            "spec.storage.storageClassName",
            "applies to PersistentVolumeClaims; remove it or set emptyDir to false",
        );
    }
    if storage.empty_dir && storage.retain_on_delete {
        errors.add(
            "spec.storage.retainOnDelete",
            "applies to PersistentVolumeClaims; an emptyDir is always deleted with its pod",
        );
    }
}

fn validate_etcd_options(spec: &EtcdClusterSpec, errors: &mut Errors) {
    if spec.etcd_options.len() > MAX_ETCD_OPTIONS {
        errors.add(
            "spec.etcdOptions",
            format!(
                "sets {} flags: at most {MAX_ETCD_OPTIONS} are allowed",
                spec.etcd_options.len()
            ),
        );
    }
    for name in spec.etcd_options.keys() {
        let field = format!("spec.etcdOptions.{name}");
        let well_formed = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            errors.add(
                field,
                "keys are etcd flag names without leading dashes, such as quota-backend-bytes",
            );
        } else if OPERATOR_OWNED_ETCD_FLAGS.contains(&name.as_str()) {
            errors.add(
                field,
                format!(
                    "--{name} is set by the operator and may not be overridden (owned flags: {})",
                    OPERATOR_OWNED_ETCD_FLAGS.join(", ")
                ),
            );
        }
    }
}

/// Validates a change of an EtcdCluster spec from `old` to `new`: everything
/// [`validate_cluster`] checks, plus the rules on transitions.
pub fn validate_cluster_update(
    old: &EtcdClusterSpec,
    new: &EtcdClusterSpec,
) -> Result<(), ValidationErrors> {
    let mut errors = match validate_cluster(new) {
        Ok(()) => Errors::default(),
        Err(ValidationErrors(list)) => Errors(list),
    };
    if let (Ok(from), Ok(to)) = (
        old.version.parse::<EtcdVersion>(),
        new.version.parse::<EtcdVersion>(),
    ) && let Err(message) = check_version_change(&from, &to)
    {
        errors.add("spec.version", message);
    }
    if old.bootstrap != new.bootstrap {
        errors.add(
            "spec.bootstrap",
            "is immutable: it only describes how the cluster was first created",
        );
    }
    if old.storage.empty_dir != new.storage.empty_dir {
        errors.add(
            "spec.storage.emptyDir",
            "is immutable: members cannot move between emptyDir and PersistentVolumeClaims",
        );
    }
    errors.into_result()
}

/// Whether a running cluster may move from `from` to `to`; the error says why not.
pub fn check_version_change(from: &EtcdVersion, to: &EtcdVersion) -> Result<(), String> {
    match VersionChange::between(from, to) {
        VersionChange::None | VersionChange::Patch | VersionChange::MinorUpgrade => Ok(()),
        VersionChange::MinorDowngrade => Err(format!(
            "{from} to {to} goes down a minor version: etcd cannot run on data written by a newer minor version; restore a backup into a new cluster instead"
        )),
        VersionChange::SkipsMinor => Err(format!(
            "{from} to {to} skips a minor version: upgrade one minor version at a time ({}.{}.x first)",
            from.major(),
            from.minor() + 1
        )),
        VersionChange::MajorChange => Err(format!(
            "{from} to {to} changes the major version, which bosun does not support"
        )),
    }
}

/// Validates an EtcdBackup spec.
pub fn validate_backup(spec: &EtcdBackupSpec) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    if spec.cluster_name.is_empty() {
        errors.add("spec.clusterName", "must name the EtcdCluster to back up");
    }
    validate_backup_storage(&spec.storage, &mut errors);
    if let Some(schedule) = &spec.schedule
        && let Err(e) = parse_schedule(schedule)
    {
        errors.add(
            "spec.schedule",
            format!(
                "{schedule:?} is not a cron schedule ({e}); use five fields such as \"0 */6 * * *\", optionally with a leading seconds field"
            ),
        );
    }
    if let Some(retention) = &spec.retention
        && retention.max_backups < 1
    {
        errors.add(
            "spec.retention.maxBackups",
            format!(
                "{} keeps nothing: keep at least 1 backup",
                retention.max_backups
            ),
        );
    }
    if !(10..=86_400).contains(&spec.timeout_seconds) {
        errors.add(
            "spec.timeoutSeconds",
            format!(
                "{} is out of range: 10 to 86400 seconds",
                spec.timeout_seconds
            ),
        );
    }
    errors.into_result()
}

/// Parses a cron schedule as the backup controller will read it: five fields,
/// or six with leading seconds.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(schedule)
}

fn validate_backup_storage(storage: &BackupStorage, errors: &mut Errors) {
    let set: Vec<&str> = [
        ("s3", storage.s3.is_some()),
        ("gcs", storage.gcs.is_some()),
        ("azure", storage.azure.is_some()),
        ("file", storage.file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, is_set)| is_set.then_some(name))
    .collect();
    match set.len() {
        1 => {}
        0 => errors.add(
            "spec.storage",
            "names no destination: set exactly one of s3, gcs, azure or file",
        ),
        _ => errors.add(
            "spec.storage",
            format!(
                "sets {}: set exactly one of s3, gcs, azure or file",
                set.join(" and ")
            ),
        ),
    }
    if let Some(s3) = &storage.s3 {
        if !is_s3_bucket_name(&s3.bucket) {
            errors.add(
                "spec.storage.s3.bucket",
                format!(
                    "{:?} is not a bucket name: 3 to 63 lowercase letters, digits, dots and hyphens",
                    s3.bucket
                ),
            );
        }
        if let Some(endpoint) = &s3.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            errors.add(
                "spec.storage.s3.endpoint",
                format!("{endpoint:?} is not a URL: write http://host:port or https://host"),
            );
        }
    }
    if let Some(file) = &storage.file
        && !file.path.starts_with('/')
    {
        errors.add(
            "spec.storage.file.path",
            format!(
                "{:?} is relative: give an absolute directory path",
                file.path
            ),
        );
    }
}

fn is_s3_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates an EtcdRestore spec.
pub fn validate_restore(spec: &EtcdRestoreSpec) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    if spec.cluster_name.is_empty() {
        errors.add("spec.clusterName", "must name the EtcdCluster to restore");
    }
    validate_restore_source(&spec.source, "spec.source", &mut errors);
    errors.into_result()
}

fn validate_restore_source(source: &RestoreSource, field: &str, errors: &mut Errors) {
    match (&source.backup, &source.location) {
        (Some(_), Some(_)) => errors.add(
            field,
            "sets both backup and location: name either an EtcdBackup or a snapshot URL",
        ),
        (None, None) => errors.add(
            field,
            "names no snapshot: set backup (an EtcdBackup) or location (a snapshot URL)",
        ),
        (Some(backup), None) => {
            if backup.name.is_empty() {
                errors.add(format!("{field}.backup.name"), "must name an EtcdBackup");
            }
            if backup.index.is_some_and(|i| i < 0) {
                errors.add(
                    format!("{field}.backup.index"),
                    "must be 0 (the newest backup) or more",
                );
            }
        }
        (None, Some(location)) => {
            let scheme_ok = ["s3://", "gs://", "azure://", "file://"]
                .iter()
                .any(|scheme| {
                    location.url.len() > scheme.len() && location.url.starts_with(scheme)
                });
            if !scheme_ok {
                errors.add(
                    format!("{field}.location.url"),
                    format!(
                        "{:?} is not a snapshot URL: use s3://bucket/key, gs://bucket/key, azure://container/key or file:///path",
                        location.url
                    ),
                );
            }
            if let Some(sha) = &location.sha256
                && !(sha.len() == 64 && sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
            {
                errors.add(
                    format!("{field}.location.sha256"),
                    "must be 64 lowercase hex digits",
                );
            }
        }
    }
}

/// Parses a Kubernetes quantity into bytes, refusing what a volume size cannot be.
pub fn parse_quantity_bytes(quantity: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let invalid = || {
        format!(
            "{quantity:?} is not a size: write a whole number of bytes or one with a suffix, such as 4Gi or 500Mi"
        )
    };
    let (digits, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| quantity.strip_suffix(suffix).map(|d| (d, *m)))
        .unwrap_or((quantity, 1));
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(invalid)?;
    if bytes == 0 {
        return Err(format!(
            "{quantity:?} is zero: a member needs room for its data"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{FileStorage, RetentionPolicy, S3Storage};
    use crate::cluster::{BootstrapRestore, BootstrapSpec, MemberPodTemplate};
    use crate::restore::{BackupReference, SnapshotLocation};
    use k8s_openapi::api::core::v1::EnvVar;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn cluster() -> EtcdClusterSpec {
        EtcdClusterSpec::default()
    }

    fn errors_of(result: Result<(), ValidationErrors>) -> ValidationErrors {
        result.expect_err("validation should fail")
    }

    fn backup(storage: BackupStorage) -> EtcdBackupSpec {
        EtcdBackupSpec {
            cluster_name: "main".into(),
            storage,
            schedule: None,
            retention: None,
            timeout_seconds: 600,
        }
    }

    fn file_storage() -> BackupStorage {
        BackupStorage {
            file: Some(FileStorage {
                path: "/var/backups".into(),
            }),
            ..Default::default()
        }
    }

    fn s3_storage() -> BackupStorage {
        BackupStorage {
            s3: Some(S3Storage {
                bucket: "bosun-backups".into(),
                endpoint: Some("http://s3.bosun-system:8333".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn default_cluster_is_valid() {
        assert_eq!(validate_cluster(&cluster()), Ok(()));
    }

    #[test]
    fn size_must_be_between_one_and_nine() {
        for size in [0, 10, -1] {
            let spec = EtcdClusterSpec { size, ..cluster() };
            let errors = errors_of(validate_cluster(&spec));
            assert!(errors.mentions("spec.size"), "{errors}");
            assert!(errors.to_string().contains("1 to 9 members"), "{errors}");
        }
        for size in [1, 9] {
            assert_eq!(
                validate_cluster(&EtcdClusterSpec { size, ..cluster() }),
                Ok(())
            );
        }
    }

    #[test]
    fn version_must_be_semver() {
        let spec = EtcdClusterSpec {
            version: "abc".into(),
            ..cluster()
        };
        let errors = errors_of(validate_cluster(&spec));
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].field, "spec.version");
        assert!(
            errors.0[0].message.contains("MAJOR.MINOR.PATCH"),
            "{errors}"
        );
    }

    #[test]
    fn image_is_a_repository_without_tag() {
        for bad in [
            "quay.io/coreos/etcd:v3.5.0",
            "etcd@sha256:abc",
            "my etcd",
            "",
        ] {
            let spec = EtcdClusterSpec {
                image: Some(bad.into()),
                ..cluster()
            };
            assert!(
                errors_of(validate_cluster(&spec)).mentions("spec.image"),
                "{bad}"
            );
        }
        for good in ["quay.io/coreos/etcd", "registry.local:5000/etcd"] {
            let spec = EtcdClusterSpec {
                image: Some(good.into()),
                ..cluster()
            };
            assert_eq!(validate_cluster(&spec), Ok(()), "{good}");
        }
    }

    #[test]
    fn owned_etcd_flags_are_refused() {
        let mut spec = cluster();
        spec.etcd_options
            .insert("initial-cluster-state".into(), "new".into());
        spec.etcd_options
            .insert("quota-backend-bytes".into(), "8589934592".into());
        let errors = errors_of(validate_cluster(&spec));
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].field, "spec.etcdOptions.initial-cluster-state");
        assert!(
            errors.0[0].message.contains("set by the operator"),
            "{errors}"
        );
    }

    #[test]
    fn etcd_options_are_bounded() {
        let mut spec = cluster();
        for i in 0..=MAX_ETCD_OPTIONS {
            spec.etcd_options.insert(format!("flag-{i}"), "1".into());
        }
        let errors = errors_of(validate_cluster(&spec));
        assert!(errors.to_string().contains("at most 32"), "{errors}");
    }

    #[test]
    fn etcd_option_names_have_no_dashes_in_front() {
        let mut spec = cluster();
        spec.etcd_options
            .insert("--quota-backend-bytes".into(), "1".into());
        let errors = errors_of(validate_cluster(&spec));
        assert!(
            errors.to_string().contains("without leading dashes"),
            "{errors}"
        );
    }

    #[test]
    fn etcd_environment_variables_are_refused() {
        let spec = EtcdClusterSpec {
            pod_template: Some(MemberPodTemplate {
                env: vec![EnvVar {
                    name: "ETCD_INITIAL_CLUSTER".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..cluster()
        };
        let errors = errors_of(validate_cluster(&spec));
        assert!(errors.mentions("spec.podTemplate.env[0].name"), "{errors}");
    }

    #[test]
    fn storage_size_must_be_a_positive_size() {
        for bad in ["0", "4 GB", "-1Gi", "1.5Gi", "Gi", ""] {
            let mut spec = cluster();
            spec.storage.size = Quantity(bad.into());
            assert!(
                errors_of(validate_cluster(&spec)).mentions("spec.storage.size"),
                "{bad}"
            );
        }
        assert_eq!(parse_quantity_bytes("4Gi"), Ok(4 << 30));
        assert_eq!(parse_quantity_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity_bytes("1024"), Ok(1024));
        assert!(parse_quantity_bytes("99999999999Ei").is_err());
    }

    #[test]
    fn empty_dir_excludes_pvc_settings() {
        let mut spec = cluster();
        spec.storage.empty_dir = true;
        spec.storage.storage_class_name = Some("fast".into());
        spec.storage.retain_on_delete = true;
        let errors = errors_of(validate_cluster(&spec));
        assert!(errors.mentions("spec.storage.storageClassName"));
        assert!(errors.mentions("spec.storage.retainOnDelete"));
    }

    #[test]
    fn minor_downgrade_is_refused() {
        let old = EtcdClusterSpec {
            version: "3.6.16".into(),
            ..cluster()
        };
        let new = EtcdClusterSpec {
            version: "3.5.35".into(),
            ..cluster()
        };
        let errors = errors_of(validate_cluster_update(&old, &new));
        assert!(
            errors.to_string().contains("goes down a minor version"),
            "{errors}"
        );
    }

    #[test]
    fn skipping_a_minor_version_is_refused_and_one_step_allowed() {
        let old = EtcdClusterSpec {
            version: "3.5.35".into(),
            ..cluster()
        };
        let skip = EtcdClusterSpec {
            version: "3.7.3".into(),
            ..cluster()
        };
        let errors = errors_of(validate_cluster_update(&old, &skip));
        assert!(errors.to_string().contains("3.6.x first"), "{errors}");
        let step = EtcdClusterSpec {
            version: "3.6.16".into(),
            ..cluster()
        };
        assert_eq!(validate_cluster_update(&old, &step), Ok(()));
        let patch_down = EtcdClusterSpec {
            version: "3.5.30".into(),
            ..cluster()
        };
        assert_eq!(validate_cluster_update(&old, &patch_down), Ok(()));
    }

    #[test]
    fn bootstrap_and_storage_kind_are_immutable() {
        let old = cluster();
        let mut new = cluster();
        new.bootstrap = Some(BootstrapSpec {
            restore: Some(BootstrapRestore {
                source: RestoreSource {
                    backup: Some(BackupReference {
                        name: "nightly".into(),
                        index: None,
                    }),
                    location: None,
                },
            }),
        });
        new.storage.empty_dir = true;
        let errors = errors_of(validate_cluster_update(&old, &new));
        assert!(errors.mentions("spec.bootstrap"));
        assert!(errors.mentions("spec.storage.emptyDir"));
    }

    #[test]
    fn update_reports_plain_errors_too() {
        let new = EtcdClusterSpec {
            size: 0,
            ..cluster()
        };
        assert!(errors_of(validate_cluster_update(&cluster(), &new)).mentions("spec.size"));
    }

    #[test]
    fn backup_needs_exactly_one_destination() {
        assert_eq!(validate_backup(&backup(file_storage())), Ok(()));
        assert_eq!(validate_backup(&backup(s3_storage())), Ok(()));

        let both = BackupStorage {
            file: file_storage().file,
            ..s3_storage()
        };
        let errors = errors_of(validate_backup(&backup(both)));
        assert!(errors.to_string().contains("sets s3 and file"), "{errors}");

        let none = errors_of(validate_backup(&backup(BackupStorage::default())));
        assert!(none.to_string().contains("names no destination"), "{none}");
    }

    #[test]
    fn backup_fields_are_checked() {
        let mut spec = backup(s3_storage());
        if let Some(s3) = spec.storage.s3.as_mut() {
            s3.bucket = "Bad_Bucket".into();
            s3.endpoint = Some("s3.local:8333".into());
        }
        spec.schedule = Some("every day".into());
        spec.retention = Some(RetentionPolicy { max_backups: 0 });
        spec.timeout_seconds = 5;
        let errors = errors_of(validate_backup(&spec));
        for field in [
            "spec.storage.s3.bucket",
            "spec.storage.s3.endpoint",
            "spec.schedule",
            "spec.retention.maxBackups",
            "spec.timeoutSeconds",
        ] {
            assert!(errors.mentions(field), "{field} missing from {errors}");
        }
    }

    #[test]
    fn relative_file_path_is_refused() {
        let storage = BackupStorage {
            file: Some(FileStorage {
                path: "backups".into(),
            }),
            ..Default::default()
        };
        assert!(errors_of(validate_backup(&backup(storage))).mentions("spec.storage.file.path"));
    }

    #[test]
    fn schedules_accept_five_or_six_fields() {
        assert!(parse_schedule("0 */6 * * *").is_ok());
        assert!(parse_schedule("*/10 * * * * *").is_ok());
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn restore_source_is_one_of_backup_or_location() {
        let location = SnapshotLocation {
            url: "s3://bosun-backups/main/snap.db".into(),
            credentials_secret: None,
            endpoint: None,
            region: None,
            sha256: None,
        };
        let both = EtcdRestoreSpec {
            cluster_name: "main".into(),
            source: RestoreSource {
                backup: Some(BackupReference {
                    name: "nightly".into(),
                    index: Some(1),
                }),
                location: Some(location.clone()),
            },
        };
        assert!(
            errors_of(validate_restore(&both))
                .to_string()
                .contains("sets both")
        );

        let neither = EtcdRestoreSpec {
            source: RestoreSource {
                backup: None,
                location: None,
            },
            ..both.clone()
        };
        assert!(
            errors_of(validate_restore(&neither))
                .to_string()
                .contains("names no snapshot")
        );

        let bad_url = EtcdRestoreSpec {
            source: RestoreSource {
                backup: None,
                location: Some(SnapshotLocation {
                    url: "http://example/snap.db".into(),
                    sha256: Some("XYZ".into()),
                    ..location.clone()
                }),
            },
            ..both.clone()
        };
        let errors = errors_of(validate_restore(&bad_url));
        assert!(errors.mentions("spec.source.location.url"), "{errors}");
        assert!(errors.mentions("spec.source.location.sha256"), "{errors}");

        let good = EtcdRestoreSpec {
            source: RestoreSource {
                backup: None,
                location: Some(location),
            },
            ..both
        };
        assert_eq!(validate_restore(&good), Ok(()));
    }
}
