//! Forming a group the first time (design §6, openraft issue #898): only the group's first member
//! (lowest node id, or the one named to [`bootstrap_from`]) ever calls `Raft::initialize`, and only once every other member answered
//! `Status` with the group *not initialized* (and it is not itself). A member whose data was wiped
//! finds an initialized peer and never initializes: the group's leader catches it up.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_shard::raft::{PeerNode, ShardRaft};
use openraft::Raft;
use openraft::error::{InitializeError, RaftError};
use tonic::Status;

use crate::network::Peers;
use crate::pb;
use crate::server::initialized;

/// What [`bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// This node initialized the group with the members.
    Initialized,
    /// This replica was already initialized (a vote, log or membership): nothing to do.
    AlreadyInitialized,
    /// Member `node` is initialized: this replica never initializes; the leader catches it up.
    PeerInitialized { node: u64 },
    /// This node is not the group's first member: only the first initializes.
    NotFirst,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("node {node} is not among the group's members {members:?}")]
    NotAMember { node: u64, members: Vec<u64> },
    #[error("cancelled before the group was formed (last: {last})")]
    Cancelled { last: String },
    #[error("the group's raft failed: {0}")]
    Raft(String),
}

/// Deadline of one `Status` call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Status` of the node serving at `addr`.
pub async fn node_status(peers: &Peers, addr: &str, timeout: Duration) -> Result<pb::NodeStatus, Status> {
    let mut client = peers.client(addr).map_err(Status::invalid_argument)?;
    match tokio::time::timeout(timeout, client.status(pb::StatusRequest {})).await {
        Err(_) => Err(Status::deadline_exceeded(format!("{addr}: no status within {timeout:?}"))),
        Ok(r) => r.map(|r| r.into_inner()),
    }
}

/// Bootstraps group `group` from node `self_id`, whose replica is `raft` (see the module docs).
/// `members`: the group's replicas (placement) with their cluster addresses. Retries the peers'
/// `Status` with backoff (100 ms doubling to 2 s) until every member answered or one is
/// initialized, or `cancel` completes. Members other than the first return `NotFirst` at once.
pub async fn bootstrap(
    group: u16,
    raft: Raft<ShardRaft>,
    members: BTreeMap<u64, PeerNode>,
    self_id: u64,
    peers: Arc<Peers>,
    cancel: impl Future<Output = ()> + Send,
) -> Result<BootstrapOutcome, BootstrapError> {
    let first = members.keys().next().copied().unwrap_or(self_id);
    bootstrap_from(group, raft, members, first, self_id, peers, cancel).await
}

/// [`bootstrap`] with the member that initializes named: `first` (the same on every node, e.g.
/// the shard's preferred leader by placement, so groups start led by different nodes: the
/// initializing node campaigns first and usually wins).
pub async fn bootstrap_from(
    group: u16,
    raft: Raft<ShardRaft>,
    members: BTreeMap<u64, PeerNode>,
    first: u64,
    self_id: u64,
    peers: Arc<Peers>,
    cancel: impl Future<Output = ()> + Send,
) -> Result<BootstrapOutcome, BootstrapError> {
    if !members.contains_key(&self_id) {
        return Err(BootstrapError::NotAMember { node: self_id, members: members.keys().copied().collect() });
    }
    if !members.contains_key(&first) {
        return Err(BootstrapError::NotAMember { node: first, members: members.keys().copied().collect() });
    }
    if first != self_id {
        return Ok(BootstrapOutcome::NotFirst);
    }
    tokio::pin!(cancel);
    let mut backoff = Duration::from_millis(100);
    loop {
        let local = raft.is_initialized().await.map_err(|e| BootstrapError::Raft(e.to_string()))?;
        if local || initialized(&raft.metrics().borrow()) {
            return Ok(BootstrapOutcome::AlreadyInitialized);
        }
        let last = match peers_state(group, &members, self_id, &peers).await {
            Ok(Some(node)) => return Ok(BootstrapOutcome::PeerInitialized { node }),
            Ok(None) => {
                return match raft.initialize(members.clone()).await {
                    Ok(()) => {
                        tracing::info!(group, ?members, "group initialized");
                        Ok(BootstrapOutcome::Initialized)
                    }
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                        Ok(BootstrapOutcome::AlreadyInitialized)
                    }
                    Err(e) => Err(BootstrapError::Raft(e.to_string())),
                };
            }
            Err(waiting) => waiting,
        };
        tracing::debug!(group, %last, ?backoff, "bootstrap waits for the members");
        tokio::select! {
            () = &mut cancel => return Err(BootstrapError::Cancelled { last }),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// `Ok(Some(node))`: member `node` is initialized; `Ok(None)`: every other member answered not
/// initialized; `Err`: a member did not answer (or has not opened the group yet).
async fn peers_state(
    group: u16,
    members: &BTreeMap<u64, PeerNode>,
    self_id: u64,
    peers: &Peers,
) -> Result<Option<u64>, String> {
    find_member(group, members, self_id, peers, |g| g.initialized).await
}

/// Asks every other member's `Status` for `group`: `Ok(Some(node))` for the first whose group
/// satisfies `found`; `Ok(None)` when every one answered and none does; `Err` (what was last
/// missing) when a member did not answer or has not opened the group yet.
pub(crate) async fn find_member(
    group: u16,
    members: &BTreeMap<u64, PeerNode>,
    self_id: u64,
    peers: &Peers,
    found: impl Fn(&pb::GroupStatus) -> bool,
) -> Result<Option<u64>, String> {
    let mut pending = None;
    for (id, node) in members.iter().filter(|(id, _)| **id != self_id) {
        match node_status(peers, &node.addr, STATUS_TIMEOUT).await {
            Err(status) => pending = Some(format!("node {id} ({}): {}", node.addr, status.message())),
            Ok(status) => match status.groups.iter().find(|g| g.shard == group as u32) {
                None => pending = Some(format!("node {id} has not opened group {group}")),
                Some(g) if found(g) => return Ok(Some(*id)),
                Some(_) => {}
            },
        }
    }
    pending.map_or(Ok(None), Err)
}
