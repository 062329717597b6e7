//! The groups a node's cluster server answers for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ferry_shard::raft::ShardRaft;
use openraft::Raft;
use tokio::sync::watch;

use crate::server::initialized;

/// Whether a replica's vote may be used (design §6, [`crate::detect_rejoin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejoinMode {
    /// Votes are handled by the replica's `Raft` as usual.
    Voting,
    /// The replica may be empty: whether a peer of its group holds the group's log is not known
    /// yet. Votes are refused.
    Checking,
    /// The replica came up empty while a peer holds the group's log (its disk was wiped): votes
    /// are refused until it applied [`RejoinState::target`].
    Rejoining,
}

/// A group's rejoin state, shared by the server (which refuses votes and records the catch-up
/// target) and [`crate::detect_rejoin`] (which decides and clears it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejoinState {
    pub mode: RejoinMode,
    /// The commit index of the first AppendEntries this replica accepted (while not voting) from
    /// a leader that had committed an entry of its own term (so it covers everything committed
    /// before): caught up once `last_applied` reaches it.
    pub target: Option<u64>,
    /// An AppendEntries or a snapshot reached the replica while it was not voting: its state is
    /// no proof that it had one on disk.
    pub replicated: bool,
}

impl RejoinState {
    pub fn refuses_votes(&self) -> bool {
        self.mode != RejoinMode::Voting
    }
}

/// One registered group: its local replica and the directory its snapshots live in (the
/// `snapshot_root` its `StateMachine` was opened with; received snapshots are written under it).
#[derive(Clone)]
pub struct Group {
    pub raft: Raft<ShardRaft>,
    pub snapshot_root: PathBuf,
    /// See [`RejoinState`].
    pub rejoin: Arc<watch::Sender<RejoinState>>,
}

impl Group {
    pub fn rejoin_state(&self) -> RejoinState {
        *self.rejoin.borrow()
    }
}

/// `group -> Group`, shared by the node (which registers its shards as it opens them, possibly
/// after the server started) and the server (which dispatches on it).
#[derive(Default)]
pub struct Registry {
    groups: RwLock<BTreeMap<u16, Group>>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers (or replaces: a reopened replica) group `group`. A replica that does not (yet)
    /// show a vote, a log or a membership starts [`RejoinMode::Checking`]: it refuses votes
    /// until [`crate::detect_rejoin`] (which every node runs for every group it hosts) decided.
    pub fn register(&self, group: u16, raft: Raft<ShardRaft>, snapshot_root: PathBuf) {
        let mode = if initialized(&raft.metrics().borrow()) { RejoinMode::Voting } else { RejoinMode::Checking };
        let (rejoin, _) = watch::channel(RejoinState { mode, target: None, replicated: false });
        let g = Group { raft, snapshot_root, rejoin: Arc::new(rejoin) };
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(group, g);
    }

    /// Removes group `group` (its calls are then answered `UNAVAILABLE`) and returns it.
    pub fn unregister(&self, group: u16) -> Option<Group> {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&group)
    }

    pub fn get(&self, group: u16) -> Option<Group> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&group).cloned()
    }

    /// Every registered group, by group id.
    pub fn groups(&self) -> Vec<(u16, Group)> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(g, v)| (*g, v.clone())).collect()
    }
}
