//! The rejoining mode of a wiped replica (design §6, openraft's FAQ "Can I wipe out the data of
//! ONE node"): a replica that comes up empty while a peer of its group holds the group's log may
//! have acknowledged entries before its disk was wiped. Were it to vote at once, a lagging member
//! could win an election with its vote and without those committed entries. So it neither
//! campaigns (`elect(false)`) nor grants votes (the server answers a refusal without calling
//! `Raft::vote`) until it applied the commit index of the first leader that replicated to it.
//!
//! [`Registry::register`] puts every replica that shows no state in [`RejoinMode::Checking`]
//! (votes refused from the first call on); [`detect_rejoin`], which every node runs for every
//! group it hosts, decides:
//! - the replica had state on disk: it votes;
//! - every other member answered and none has a log past the initial membership entry (a group
//!   being formed: nothing was ever committed, so nothing can be lost): it votes;
//! - a member has such a log: **rejoining** until `last_applied` reaches the target the server
//!   recorded (see [`crate::registry::RejoinState::target`]); then it votes and campaigns again;
//! - otherwise (a member unreachable) it keeps asking, refusing votes meanwhile.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_shard::raft::{PeerNode, ShardRaft};
use openraft::Raft;

use crate::bootstrap::BootstrapError;
use crate::network::Peers;
use crate::registry::{Registry, RejoinMode, RejoinState};
use crate::server::initialized;

/// How [`detect_rejoin`] ended (every outcome but an error leaves the replica voting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejoinOutcome {
    /// The replica had a vote, a log or a membership when it was opened.
    HadState,
    /// Every member of the group is new: the group is being formed.
    NewGroup,
    /// The replica came up empty while member `node` held the group's log; it applied the
    /// leader's commit index `target` and votes again.
    CaughtUp { node: u64, target: u64 },
}

fn set_mode(registry_state: &tokio::sync::watch::Sender<RejoinState>, mode: RejoinMode) {
    registry_state.send_modify(|s| {
        s.mode = mode;
        if mode == RejoinMode::Voting {
            s.target = None;
            s.replicated = false;
        }
    });
}

/// Decides whether group `group`'s replica `raft` on node `self_id` is rejoining, and clears the
/// mode once it caught up (see the module docs). `members`: the group's replicas (placement) with
/// their cluster addresses. Asks the members' `Status` with backoff (100 ms doubling to 2 s).
/// Must run once per hosted group right after [`Registry::register`]; returns when the replica
/// votes, or `Cancelled` when `cancel` completes first (the replica then still refuses votes).
pub async fn detect_rejoin(
    group: u16,
    raft: Raft<ShardRaft>,
    members: BTreeMap<u64, PeerNode>,
    self_id: u64,
    peers: Arc<Peers>,
    registry: Arc<Registry>,
    cancel: impl Future<Output = ()> + Send,
) -> Result<RejoinOutcome, BootstrapError> {
    if !members.contains_key(&self_id) {
        return Err(BootstrapError::NotAMember { node: self_id, members: members.keys().copied().collect() });
    }
    let Some(registered) = registry.get(group) else {
        return Err(BootstrapError::Raft(format!("group {group} is not registered")));
    };
    let state = registered.rejoin.clone();
    if !state.borrow().refuses_votes() {
        return Ok(RejoinOutcome::HadState);
    }
    // Read before `replicated`: an AppendEntries that gave the replica its state marked it first.
    let local = raft.is_initialized().await.map_err(|e| BootstrapError::Raft(e.to_string()))?;
    if (local || initialized(&raft.metrics().borrow())) && !state.borrow().replicated {
        set_mode(&state, RejoinMode::Voting);
        return Ok(RejoinOutcome::HadState);
    }
    raft.runtime_config().elect(false);
    tracing::info!(group, "replica opened empty: votes refused while its group's members are asked");

    tokio::pin!(cancel);
    let mut backoff = Duration::from_millis(100);
    let holder = loop {
        match members_progress(group, &members, self_id, &peers).await {
            Ok(Some(node)) => break node,
            Ok(None) if state.borrow().target.is_none() => {
                set_mode(&state, RejoinMode::Voting);
                raft.runtime_config().elect(true);
                tracing::info!(group, "every member of the group is new: the replica votes");
                return Ok(RejoinOutcome::NewGroup);
            }
            // A leader that committed in its own term replicated here: the group has a log.
            Ok(None) => break self_id,
            Err(last) => {
                if state.borrow().target.is_some() {
                    break self_id;
                }
                tracing::debug!(group, %last, ?backoff, "rejoin check waits for the members");
                tokio::select! {
                    () = &mut cancel => return Err(BootstrapError::Cancelled { last }),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    set_mode(&state, RejoinMode::Rejoining);
    tracing::info!(
        group,
        holder,
        "rejoining: this replica came up empty while a member holds the group's log (a wiped disk); \
         it neither votes nor campaigns until it caught up with a leader"
    );

    let mut targets = state.subscribe();
    let mut metrics = raft.metrics();
    loop {
        let target = targets.borrow_and_update().target;
        let applied = metrics.borrow_and_update().last_applied.map(|l| l.index);
        if let Some(target) = target
            && applied >= Some(target)
        {
            set_mode(&state, RejoinMode::Voting);
            raft.runtime_config().elect(true);
            tracing::info!(group, target, "rejoining replica caught up: it votes again");
            return Ok(RejoinOutcome::CaughtUp { node: holder, target });
        }
        tokio::select! {
            () = &mut cancel => {
                return Err(BootstrapError::Cancelled { last: format!("rejoining: applied {applied:?}, target {target:?}") });
            }
            r = targets.changed() => if r.is_err() { return Err(BootstrapError::Raft("the group was dropped".into())) },
            r = metrics.changed() => if r.is_err() { return Err(BootstrapError::Raft("the replica stopped".into())) },
        }
    }
}

/// `Ok(Some(node))`: member `node` has a log past the initial membership entry (index 0);
/// `Ok(None)`: every other member answered without one; `Err`: a member did not answer (or has
/// not opened the group yet).
async fn members_progress(
    group: u16,
    members: &BTreeMap<u64, PeerNode>,
    self_id: u64,
    peers: &Peers,
) -> Result<Option<u64>, String> {
    crate::bootstrap::find_member(group, members, self_id, peers, |g| {
        g.last_log_index.unwrap_or(0) > 0 || g.last_applied_index.unwrap_or(0) > 0
    })
    .await
}
