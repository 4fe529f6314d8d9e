//! Restores: the EtcdRestore controller (an existing cluster back to a
//! backup), where a restore's snapshot comes from ([`source`]), and the
//! seed's init container ([`member`]). A new cluster seeded from a backup
//! (`spec.bootstrap.restore`) uses the same source and init container.

pub mod member;
pub mod reconcile;
pub mod source;
