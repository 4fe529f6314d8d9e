//! etcd versions: parsing, the versions bosun ships images for, and the rules
//! for moving a cluster from one version to another.

use std::fmt;
use std::str::FromStr;

/// The etcd versions bosun builds an image for, oldest first.
///
/// Kept in step with the etcd builds under `tools/`.
pub const SHIPPED_ETCD_VERSIONS: &[&str] = &["3.5.35", "3.6.16", "3.7.3"];

/// The version a cluster gets when its spec names none: the newest shipped.
pub fn default_etcd_version() -> &'static str {
    SHIPPED_ETCD_VERSIONS[SHIPPED_ETCD_VERSIONS.len() - 1]
}

/// The image repository member pods use unless `spec.image` overrides it.
/// Tags follow upstream's convention: `v` + the version.
pub const DEFAULT_ETCD_IMAGE_REPOSITORY: &str = "gcr.io/etcd-development/etcd";

/// The pattern `spec.version` must match (checked by the schema and by [`EtcdVersion`]).
pub const VERSION_PATTERN: &str = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$";

/// An etcd release version such as `3.6.5` or `3.7.0-rc.0`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EtcdVersion(semver::Version);

/// Why a string is not an etcd version.
#[derive(Debug, thiserror::Error)]
#[error(
    "{input:?} is not an etcd version: expected MAJOR.MINOR.PATCH such as \"3.6.5\" (no leading \"v\")"
)]
pub struct ParseVersionError {
    input: String,
}

impl FromStr for EtcdVersion {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Build metadata (`+...`) has no meaning for an image tag; refuse it
        // rather than silently ignore it.
        if s.contains('+') {
            return Err(ParseVersionError { input: s.into() });
        }
        semver::Version::parse(s)
            .map(EtcdVersion)
            .map_err(|_| ParseVersionError { input: s.into() })
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl EtcdVersion {
    /// The major version.
    pub fn major(&self) -> u64 {
        self.0.major
    }

    /// The minor version.
    pub fn minor(&self) -> u64 {
        self.0.minor
    }

    /// `(major, minor)`, the unit etcd upgrades and downgrades are judged in.
    pub fn minor_line(&self) -> (u64, u64) {
        (self.0.major, self.0.minor)
    }

    /// The image tag upstream uses for this version (`v3.6.5`).
    pub fn image_tag(&self) -> String {
        format!("v{}", self.0)
    }
}

/// What moving a cluster from one version to another means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionChange {
    /// Same version: nothing to do.
    None,
    /// Same minor line, other patch: a rolling replacement.
    Patch,
    /// The next minor version: a rolling upgrade.
    MinorUpgrade,
    /// More than one minor version ahead: etcd supports one minor at a time.
    SkipsMinor,
    /// An older minor (or major) version: etcd refuses to run on newer data.
    MinorDowngrade,
    /// A different major version: not supported.
    MajorChange,
}

impl VersionChange {
    /// Classifies the change from `from` to `to`.
    pub fn between(from: &EtcdVersion, to: &EtcdVersion) -> Self {
        use std::cmp::Ordering::*;
        if from == to {
            return VersionChange::None;
        }
        if from.major() != to.major() {
            return VersionChange::MajorChange;
        }
        match to.minor().cmp(&from.minor()) {
            Equal => VersionChange::Patch,
            Less => VersionChange::MinorDowngrade,
            Greater if to.minor() == from.minor() + 1 => VersionChange::MinorUpgrade,
            Greater => VersionChange::SkipsMinor,
        }
    }

    /// Whether the operator may carry out this change.
    pub fn is_allowed(self) -> bool {
        matches!(
            self,
            VersionChange::None | VersionChange::Patch | VersionChange::MinorUpgrade
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> EtcdVersion {
        s.parse().expect("test version parses")
    }

    #[test]
    fn parses_release_and_prerelease_versions() {
        assert_eq!(v("3.6.5").minor_line(), (3, 6));
        assert_eq!(v("3.7.0-rc.0").image_tag(), "v3.7.0-rc.0");
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in ["abc", "v3.6.5", "3.6", "3.6.5+build", "", " 3.6.5"] {
            let err = bad.parse::<EtcdVersion>().expect_err(bad);
            assert!(err.to_string().contains("is not an etcd version"), "{err}");
        }
    }

    #[test]
    fn classifies_version_changes() {
        use VersionChange::*;
        assert_eq!(VersionChange::between(&v("3.6.5"), &v("3.6.5")), None);
        assert_eq!(VersionChange::between(&v("3.6.5"), &v("3.6.9")), Patch);
        assert_eq!(VersionChange::between(&v("3.6.9"), &v("3.6.5")), Patch);
        assert_eq!(
            VersionChange::between(&v("3.5.9"), &v("3.6.0")),
            MinorUpgrade
        );
        assert_eq!(VersionChange::between(&v("3.5.9"), &v("3.7.0")), SkipsMinor);
        assert_eq!(
            VersionChange::between(&v("3.6.0"), &v("3.5.9")),
            MinorDowngrade
        );
        assert_eq!(
            VersionChange::between(&v("3.6.0"), &v("4.0.0")),
            MajorChange
        );
        assert!(MinorUpgrade.is_allowed() && Patch.is_allowed());
        assert!(!MinorDowngrade.is_allowed() && !SkipsMinor.is_allowed());
    }

    #[test]
    fn shipped_versions_are_valid_and_ordered() {
        let parsed: Vec<EtcdVersion> = SHIPPED_ETCD_VERSIONS.iter().map(|s| v(s)).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(default_etcd_version(), "3.7.3");
    }
}
