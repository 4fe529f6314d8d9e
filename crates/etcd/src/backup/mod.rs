//! The EtcdBackup controller and the pieces it shares with restores:
//! stores built from a spec ([`store`]), snapshots streamed into and out of
//! them ([`snapshot`], in uploads whose id is recorded: [`multipart`]) with
//! their checksums ([`digest`]), schedules
//! ([`schedule`]) and retention ([`retention`]).

pub mod digest;
pub mod multipart;
pub mod policy;
pub mod reconcile;
pub mod retention;
pub mod schedule;
pub mod service_address;
pub mod snapshot;
pub mod store;
