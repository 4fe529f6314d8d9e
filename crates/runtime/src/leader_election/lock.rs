//! The Lease as a lock (client-go's `LeaseLock`): read it, create it, and
//! write it back only over the `resourceVersion` it was last seen at, so that
//! of two candidates racing on one version exactly one write lands and the
//! other gets a 409 Conflict. Nothing here patches or updates without that
//! precondition. A watch on the Lease tells a waiting candidate when it is
//! released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::{Api, Client};
use tracing::{debug, warn};

use super::record::LeaseRecord;

/// Why a read or write of the Lease failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Someone else wrote the Lease (or created it) since we read it: we lost
    /// the race.
    #[error("the Lease changed since it was read (409 Conflict)")]
    Conflict,
    /// There is no version to write over: the Lease was never read.
    #[error("the Lease has not been read yet, so there is no resourceVersion to update it at")]
    NotRead,
    /// The API server did not answer in time.
    #[error("the API server did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// The API server could not be reached or refused the request.
    #[error(transparent)]
    Api(kube::Error),
}

impl From<kube::Error> for LockError {
    fn from(error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 409 => LockError::Conflict,
            _ => LockError::Api(error),
        }
    }
}

/// One Lease, and the version of it this candidate last read or wrote.
pub(crate) struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    last: Option<Lease>,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            last: None,
        }
    }

    /// Reads the Lease: `None` when it does not exist.
    pub async fn get(&mut self) -> Result<Option<LeaseRecord>, LockError> {
        self.last = self.api.get_opt(&self.name).await?;
        Ok(self
            .last
            .as_ref()
            .map(|lease| LeaseRecord::from_spec(lease.spec.as_ref())))
    }

    /// Creates the Lease holding `record`; [`LockError::Conflict`] when
    /// another candidate created it first. Returns the record as stored.
    pub async fn create(&mut self, record: &LeaseRecord) -> Result<LeaseRecord, LockError> {
        let mut spec = LeaseSpec::default();
        record.write_to(&mut spec);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let created = self.api.create(&PostParams::default(), &lease).await?;
        Ok(self.keep(created))
    }

    /// Replaces the Lease's record, on the condition that the Lease is still
    /// at the version last read or written; [`LockError::Conflict`] when it
    /// is not. Returns the record as stored.
    pub async fn update(&mut self, record: &LeaseRecord) -> Result<LeaseRecord, LockError> {
        let Some(mut lease) = self.last.clone() else {
            return Err(LockError::NotRead);
        };
        if lease.metadata.resource_version.is_none() {
            // Without a version the API server would update unconditionally.
            return Err(LockError::NotRead);
        }
        record.write_to(lease.spec.get_or_insert_with(LeaseSpec::default));
        let replaced = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(self.keep(replaced))
    }

    /// Yields each time a watch on the Lease sees it free: released (no
    /// holder) or deleted. It only wakes a waiting candidate early, so that
    /// a release is taken over at once instead of on the next retry; the
    /// candidate still polls every retry period, which stays correct when
    /// the watch fails (no `list`/`watch` permission, say). Failures are
    /// retried with kube-runtime's back-off and logged, the first one as a
    /// warning.
    pub fn freed(&self) -> impl Stream<Item = ()> + Send + 'static {
        let lease = format!("{}/{}", self.namespace, self.name);
        let warned = Arc::new(AtomicBool::new(false));
        watch_object(self.api.clone(), &self.name)
            .default_backoff()
            .filter_map(move |event| {
                let (lease, warned) = (lease.clone(), warned.clone());
                async move {
                    match event {
                        Ok(None) => Some(()),
                        Ok(Some(found)) => LeaseRecord::from_spec(found.spec.as_ref())
                            .holder
                            .is_none()
                            .then_some(()),
                        Err(error) if !warned.swap(true, Ordering::Relaxed) => {
                            warn!(%lease, %error, "cannot watch the Lease; a release is noticed on the next retry instead");
                            None
                        }
                        Err(error) => {
                            debug!(%lease, %error, "watching the Lease");
                            None
                        }
                    }
                }
            })
    }

    fn keep(&mut self, lease: Lease) -> LeaseRecord {
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        self.last = Some(lease);
        record
    }
}
