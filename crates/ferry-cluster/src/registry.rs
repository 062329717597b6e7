//! The groups a node's cluster server answers for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ferry_shard::raft::ShardRaft;
use openraft::Raft;

/// One registered group: its local replica and the directory its snapshots live in (the
/// `snapshot_root` its `StateMachine` was opened with; received snapshots are written under it).
#[derive(Clone)]
pub struct Group {
    pub raft: Raft<ShardRaft>,
    pub snapshot_root: PathBuf,
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

    /// Registers (or replaces: a reopened replica) group `group`.
    pub fn register(&self, group: u16, raft: Raft<ShardRaft>, snapshot_root: PathBuf) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(group, Group { raft, snapshot_root });
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
