//! Names of the Kubernetes-style conditions bosun writes into status, so that
//! the operator, the CLI and the tests agree on them.

/// The cluster serves clients with quorum and every expected member healthy.
pub const AVAILABLE: &str = "Available";
/// The operator is moving the cluster towards its spec (creating, scaling,
/// upgrading, restoring).
pub const PROGRESSING: &str = "Progressing";
/// Something is wrong that the operator cannot or may not fix by itself
/// (unhealthy members, lost quorum, an invalid spec, a refused change).
pub const DEGRADED: &str = "Degraded";
/// A backup or restore finished or failed; its reason says which.
pub const COMPLETE: &str = "Complete";
/// A backup or restore failed; its message says why.
pub const FAILED: &str = "Failed";

/// Reasons shared by several conditions.
pub mod reasons {
    /// The spec failed validation; the message holds the validation errors.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `spec.paused` is set.
    pub const PAUSED: &str = "Paused";
    /// A requested version change is not allowed.
    pub const VERSION_CHANGE_REFUSED: &str = "VersionChangeRefused";
    /// Quorum is lost and cannot be regained from the members' volumes.
    pub const QUORUM_LOST: &str = "QuorumLost";
    /// A member pod's init container failed: its restore (download, checks,
    /// etcdutl) or its data guard (the volume lost the member's data). The
    /// message holds the container's own words.
    pub const MEMBER_START_FAILED: &str = "MemberStartFailed";
}
