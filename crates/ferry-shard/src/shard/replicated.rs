//! A shard replicated by its Raft group (issue #12): opening one replica, where it stands in the
//! group, the leader gate, and serving ops forwarded by other nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ferry_model::ShardId;
use openraft::{Raft, RaftNetworkFactory};

use super::mailbox::{Mailbox, WriterThread};
use super::open::{Opened, Running, StoreAt};
use super::{Shard, ShardConfig};
use crate::ShardError;
use crate::raft::forward::{decode_forward_request, encode_forward_reply};
use crate::raft::proposer::{Proposer, ready_term};
use crate::raft::state_machine::Published;
use crate::raft::{ForwardError, ForwardFuture, Forwarder, LogStore, ShardRaft, StateMachine};
use crate::resources::SharedResources;
use crate::writer::join_op;

/// A replica's place in its Raft group ([`Shard::raft_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub term: u64,
    /// The group's leader as this replica knows it.
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// The leader gate ([`Shard::leading`]): this node delivers for the shard.
    pub delivering: bool,
}

/// What a replicated shard needs besides its database (see [`Shard::open_replicated`]).
pub struct Replication<N> {
    /// This node's id in the cluster (the group's Raft node id).
    pub node_id: u64,
    pub raft_config: Arc<openraft::Config>,
    /// The group's transport to the other replicas.
    pub network: N,
    /// Hands ops to the leader when this node does not lead the group.
    pub forwarder: Arc<dyn Forwarder>,
    /// How long a write waits for a leader before it fails as unavailable.
    pub leader_wait: std::time::Duration,
    /// Group commits proposed (or forwarded) and not answered yet, at most.
    pub max_in_flight: usize,
    /// The group's id space and identity secret: the same on every replica (ids and encryption
    /// sessions must survive a change of leader).
    pub id_space: u64,
    pub identity_key: [u8; 32],
    /// Where the group's snapshot checkpoints live (outside the database directory).
    pub snapshot_root: PathBuf,
}

impl Shard {
    /// Opens the shard's database in `dir` as one replica of the shard's Raft group (issue #12):
    /// its log and state machine in the same database, the group's `Raft` over `replication`'s
    /// network, and a proposer thread instead of the writer (`raft/proposer.rs`). Every write
    /// commits on a majority of replicas before it is answered; on a node that does not lead the
    /// group, writes are forwarded to the leader. The group is not initialized here (see
    /// `ferry-cluster`'s bootstrap).
    ///
    /// Must be called within a tokio runtime (the group's tasks run on it).
    pub async fn open_replicated<N: RaftNetworkFactory<ShardRaft>>(
        dir: &Path,
        id: ShardId,
        shard_count: u16,
        resources: &SharedResources,
        config: &ShardConfig,
        replication: Replication<N>,
    ) -> Result<Shard, ShardError> {
        let r = replication;
        let identity = Some((r.id_space, r.identity_key));
        let opened = Opened::open(StoreAt::Dir(dir, resources), id, shard_count, r.node_id, config, identity)?;
        let log = LogStore::open(opened.store.clone())?;
        let sm = StateMachine::open(opened.store.clone(), id, r.snapshot_root.clone())?;
        sm.publish_to(Published {
            committed: opened.committed.clone(),
            low_watermark: opened.queue_low_watermark.clone(),
            counters: opened.counters.clone(),
        });
        let state = sm.state_handle();
        let raft = Raft::new(r.node_id, r.raft_config.clone(), r.network, log, sm)
            .await
            .map_err(|e| ShardError::Layout(format!("shard {id}: cannot start its raft group: {e}")))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let crashed = Arc::new(AtomicBool::new(false));
        let lease = std::time::Duration::from_millis(r.raft_config.election_timeout_min);
        let leading = crate::raft::leadership::watch(&raft, r.node_id, lease);
        let proposer = Proposer {
            shard: id,
            node_id: r.node_id,
            raft: raft.clone(),
            state,
            forwarder: r.forwarder,
            runtime: tokio::runtime::Handle::current(),
            max_batch_messages: config.max_batch_messages,
            max_in_flight: r.max_in_flight.max(1),
            leader_wait: r.leader_wait,
            pending: opened.pending.clone(),
            counters: opened.counters.clone(),
            mailbox: tx.clone(),
            crashed: crashed.clone(),
            leading: leading.clone(),
            stages: crate::raft::stages::ProposerStages::new(id),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-{:02}-proposer", id.0))
            .spawn(move || proposer.run(rx))
            .map_err(|e| ShardError::Layout(format!("cannot start proposer thread: {e}")))?;
        tracing::info!(shard = %id, node = r.node_id, dir = %dir.display(), "replicated shard open");
        let running =
            Running { tx: Mailbox::Own(tx), writer: WriterThread::Own(handle), crashed, raft: Some(raft), leading };
        Ok(opened.into_shard(id, r.node_id, config, running))
    }

    /// The shard's Raft group (`None` on a single node).
    pub fn raft(&self) -> Option<&Raft<ShardRaft>> {
        self.raft.as_ref()
    }

    /// Where this replica stands in its Raft group (`None` on a single node), for health and
    /// metrics.
    pub fn raft_status(&self) -> Option<RaftStatus> {
        let raft = self.raft.as_ref()?;
        let m = raft.metrics().borrow().clone();
        Some(RaftStatus {
            role: match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            delivering: *self.leading.borrow(),
        })
    }

    /// Whether this node delivers for the shard now: always on a single node; on a replicated
    /// shard, while this node leads the group, its term's first entry is applied and it heard
    /// from a quorum within the election timeout (a partitioned or paused old leader stops).
    pub fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Waits until this node leads the shard ([`Shard::leading`]); `false` if `shutdown` turned
    /// true first.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn wait_leading(&self, shutdown: tokio::sync::watch::Receiver<bool>) -> bool {
        crate::raft::leadership::wait_leading(self.leading(), shutdown).await
    }

    /// A stop signal for work that runs only while this node leads the shard (its delivery loop,
    /// webhook sender): true once `shutdown` is, or once this node no longer leads.
    pub fn stop_when_not_leading(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::sync::watch::Receiver<bool> {
        crate::raft::leadership::stop_when_not_leading(self.leading(), shutdown)
    }

    /// Serves a batch of ops another node forwarded because this node leads the shard (see
    /// [`crate::raft::Forwarder`]): each op is submitted here as if it came from this node, and the
    /// reply holds one result per op. A node that does not lead the shard refuses every op as
    /// unavailable (the sender then looks for the leader again), so ops never travel in circles.
    pub fn serve_forwarded(&self, body: Vec<u8>) -> ForwardFuture {
        let shard = self.id.0;
        let ops = match decode_forward_request(&body) {
            Ok(ops) => ops,
            Err(e) => {
                let node = self.node_id;
                return Box::pin(async move { Err(ForwardError::Refused { node, detail: e.to_string() }) });
            }
        };
        let leads = self.raft.as_ref().is_some_and(|raft| ready_term(&raft.metrics().borrow(), self.node_id).is_some());
        if !leads {
            let detail = format!("node {} does not lead shard {shard}", self.node_id);
            let results: Vec<_> =
                ops.iter().map(|_| Err(ShardError::Unavailable { shard, detail: detail.clone() })).collect();
            return Box::pin(async move { Ok(encode_forward_reply(&results)) });
        }
        let mut pendings = Vec::with_capacity(ops.len());
        for op in ops {
            let (op, pending) = join_op(op);
            pendings.push(self.submit(op).map(|()| pending));
        }
        Box::pin(async move {
            let mut results = Vec::with_capacity(pendings.len());
            for p in pendings {
                results.push(match p {
                    Ok(p) => p.wait(shard).await,
                    Err(e) => Err(e),
                });
            }
            Ok(encode_forward_reply(&results))
        })
    }
}
