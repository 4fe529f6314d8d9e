//! Talking to an etcd cluster's members over the v3 API (the `etcd-client`
//! crate): membership (list, add a learner, promote, remove, move the
//! leader) and per-member status. Every call has a deadline. Members are
//! reached by pod IP, which works both from inside the cluster and from a
//! host running `bosun operator` (cluster DNS names resolve only inside).

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};

/// How long one etcd call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("no etcd member answered at {endpoints:?}: {source}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// The last error.
        source: etcd_client::Error,
    },
    /// A call failed.
    #[error("etcd {call} failed: {source}")]
    Call {
        /// The call.
        call: &'static str,
        /// The error.
        source: etcd_client::Error,
    },
    /// A call ran out of time.
    #[error("etcd {call} did not answer within {timeout:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The deadline.
        timeout: Duration,
    },
}

impl EtcdError {
    /// Whether etcd refused a membership change only because its strict
    /// reconfiguration check is not yet satisfied (a voter connected for
    /// less than 5 s): worth retrying soon, not an error.
    pub fn is_not_yet_ready_for_reconfiguration(&self) -> bool {
        match self {
            EtcdError::Call { source, .. } => {
                let text = source.to_string();
                text.contains("unhealthy cluster") || text.contains("not enough started members")
            }
            _ => false,
        }
    }
}

/// One member as etcd lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Name: empty for a learner that has not started yet.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs: empty until it has started.
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// A member's own view of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its ID.
    pub id: u64,
    /// The leader it follows (0: none).
    pub leader: u64,
    /// Its raft index.
    pub raft_index: u64,
    /// The key-value store's revision it has applied.
    pub revision: i64,
    /// Its etcd version.
    pub version: String,
    /// Its database file's size in bytes.
    pub db_size: i64,
    /// The bytes of that file in use; the rest is free pages that only a
    /// defragmentation gives back.
    pub db_size_in_use: i64,
    /// Its backend quota in bytes (etcd 3.6 and later; 0 before).
    pub db_size_quota: i64,
    /// Whether it is a learner.
    pub is_learner: bool,
    /// Alarms or errors it reports.
    pub errors: Vec<String>,
    /// The version of its data's format (etcd 3.6 and later; empty before).
    /// etcd migrates it some time after every member runs a new minor
    /// version, and the next minor version refuses data not yet migrated.
    pub storage_version: String,
}

impl MemberStatus {
    /// Whether the member serves: it follows a leader and reports no error
    /// but alarms. An alarm is not ill health: a member with NOSPACE serves
    /// reads and is how the space is won back.
    pub fn serves(&self) -> bool {
        self.leader != 0 && self.errors.iter().all(|e| is_alarm(e))
    }
}

async fn with_deadline<T>(
    call: &'static str,
    future: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(EtcdError::Call { call, source }),
        Err(_) => Err(EtcdError::Timeout {
            call,
            timeout: CALL_TIMEOUT,
        }),
    }
}

/// A connection to a cluster through some of its members.
pub struct EtcdMembers {
    client: Client,
}

impl EtcdMembers {
    /// Connects through `endpoints` (`http://10.88.0.5:2379`, ...).
    pub async fn connect(endpoints: &[String]) -> Result<Self, EtcdError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            Client::connect(endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => Ok(EtcdMembers { client }),
            Ok(Err(source)) => Err(EtcdError::Unreachable {
                endpoints: endpoints.to_vec(),
                source,
            }),
            Err(_) => Err(EtcdError::Timeout {
                call: "connect",
                timeout: CONNECT_TIMEOUT * 2,
            }),
        }
    }

    /// The member list.
    pub async fn list(&mut self) -> Result<Vec<Member>, EtcdError> {
        let response = with_deadline("member list", self.client.member_list()).await?;
        Ok(response
            .members()
            .iter()
            .map(|m| Member {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect())
    }

    /// Adds a learner with `peer_url`; returns its ID.
    pub async fn add_learner(&mut self, peer_url: &str) -> Result<u64, EtcdError> {
        let options = MemberAddOptions::new().with_is_learner();
        let response = with_deadline(
            "member add",
            self.client.member_add([peer_url], Some(options)),
        )
        .await?;
        Ok(response.member().map(|m| m.id()).unwrap_or_default())
    }

    /// Promotes a learner; etcd refuses until it has caught up with the leader.
    pub async fn promote(&mut self, id: u64) -> Result<(), EtcdError> {
        with_deadline("member promote", self.client.member_promote(id))
            .await
            .map(drop)
    }

    /// Removes a member.
    pub async fn remove(&mut self, id: u64) -> Result<(), EtcdError> {
        with_deadline("member remove", self.client.member_remove(id))
            .await
            .map(drop)
    }

    /// Asks the current leader to hand leadership to `id`.
    pub async fn move_leader(&mut self, id: u64) -> Result<(), EtcdError> {
        with_deadline("move leader", self.client.move_leader(id))
            .await
            .map(drop)
    }
}

/// The member list as the first of `endpoints` that answers sees it. Each
/// endpoint is asked on its own: a client balanced over all of them fails
/// whenever it picks a member that is down.
pub async fn list_through_any(endpoints: &[String]) -> Option<Vec<Member>> {
    for endpoint in endpoints {
        if let Ok(mut single) = EtcdMembers::connect(std::slice::from_ref(endpoint)).await
            && let Ok(members) = single.list().await
        {
            return Some(members);
        }
    }
    None
}

/// How long a defragmentation may take: it rewrites the member's whole
/// database file, far longer than an ordinary call.
pub const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether etcd refused a compaction because its history is already
/// compacted to that revision or later: nothing is left to drop.
fn is_already_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("compacted"))
}

impl EtcdMembers {
    /// Drops the key-value history before `revision`; current keys and
    /// values stay. Waits until the compaction reached the backend, so the
    /// space it frees shows in the members' status. Returns whether
    /// anything was compacted (false: already compacted that far).
    pub async fn compact(&mut self, revision: i64) -> Result<bool, EtcdError> {
        let options = etcd_client::CompactionOptions::new().with_physical();
        match with_deadline("compact", self.client.compact(revision, Some(options))).await {
            Ok(_) => Ok(true),
            Err(EtcdError::Call { source, .. }) if is_already_compacted(&source) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The members that have a NOSPACE alarm raised, by ID.
    pub async fn nospace_alarms(&mut self) -> Result<Vec<u64>, EtcdError> {
        let response = with_deadline(
            "alarm list",
            self.client.alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            ),
        )
        .await?;
        Ok(response
            .alarms()
            .iter()
            .filter(|a| a.alarm() == etcd_client::AlarmType::Nospace)
            .map(|a| a.member_id())
            .collect())
    }

    /// Disarms the NOSPACE alarm of member `id`.
    pub async fn disarm_nospace(&mut self, id: u64) -> Result<(), EtcdError> {
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(id);
        with_deadline(
            "alarm disarm",
            self.client.alarm(
                etcd_client::AlarmAction::Deactivate,
                etcd_client::AlarmType::Nospace,
                Some(options),
            ),
        )
        .await
        .map(drop)
    }
}

/// Defragments the member at `endpoint` (that member only): it serves
/// nothing meanwhile.
pub async fn defragment(endpoint: &str) -> Result<(), EtcdError> {
    let mut single = EtcdMembers::connect(&[endpoint.to_string()]).await?;
    match tokio::time::timeout(DEFRAGMENT_TIMEOUT, single.client.defragment()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(EtcdError::Call {
            call: "defragment",
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            call: "defragment",
            timeout: DEFRAGMENT_TIMEOUT,
        }),
    }
}

/// Whether an entry of a member's status errors is a raised alarm (etcd
/// reports each as `memberID:<id> alarm:<NOSPACE|CORRUPT>`) rather than
/// an error of the member itself.
pub fn is_alarm(error: &str) -> bool {
    error.contains("alarm:")
}

/// The status of the member at `endpoint` (one member, not the cluster).
pub async fn member_status(endpoint: &str) -> Result<MemberStatus, EtcdError> {
    let mut single = EtcdMembers::connect(&[endpoint.to_string()]).await?;
    let status = with_deadline("status", single.client.status()).await?;
    Ok(MemberStatus {
        id: status.header().map(|h| h.member_id()).unwrap_or_default(),
        leader: status.leader(),
        raft_index: status.raft_index(),
        revision: status.header().map(|h| h.revision()).unwrap_or_default(),
        version: status.version().to_string(),
        db_size: status.db_size(),
        db_size_in_use: status.raft_used_db_size(),
        db_size_quota: status.db_size_quota(),
        is_learner: status.is_learner(),
        errors: status.errors().to_vec(),
        storage_version: status.storage_version().to_string(),
    })
}
