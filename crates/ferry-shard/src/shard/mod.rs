//! The handle to one shard: its store (for reads from any thread) and the mailbox of its writer.

mod config;
mod open;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use ferry_model::ShardId;
use tokio::sync::oneshot;

use openraft::{Raft, RaftNetworkFactory};

pub use self::config::{ShardConfig, ShardStats};
use self::open::{Opened, Running, StoreAt};
use crate::ShardError;
use crate::node_db::NodeDb;
use crate::raft::forward::{decode_forward_request, encode_forward_reply};
use crate::raft::proposer::{Proposer, ready_term};
use crate::raft::state_machine::Published;
use crate::raft::{ForwardError, ForwardFuture, Forwarder, LogStore, ShardRaft, StateMachine};
use crate::resources::SharedResources;
use crate::settle::Settlement;
use crate::storage::{
    CallbackRecord, ContactRecord, HeldRecord, IdempotencyIntent, IdempotencyRecord, META_WEBHOOK_CURSOR, QueueRecord,
    StatusRecord, Store, session_key,
};
use crate::writer::{
    AppendOutcome, Committed, HeldAction, NewMessage, Planner, ResolvedHeld, WriteOp, Writer, WriterCounters, join_op,
};

/// Releases a held writer when dropped.
#[doc(hidden)]
pub struct WriterHold {
    _tx: crossbeam_channel::Sender<()>,
}

/// One shard. Shared (`Arc`) by the coordinator, which appends, and the delivery loop, which
/// reads the queue and settles; [`Shard::close`] stops its writer.
pub struct Shard {
    id: ShardId,
    node_id: u64,
    /// `meta/id_space`: bytes 2..10 of this shard's message ids.
    id_space: u64,
    store: Arc<Store>,
    tx: Sender<WriteOp>,
    closed: AtomicBool,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    counters: Arc<WriterCounters>,
    committed: Arc<Committed>,
    identity_key: [u8; 32],
    queue_low_watermark: Arc<AtomicU64>,
    /// The webhook cursor (`u64::MAX` without a webhook); also the outbox compaction filter's floor.
    webhook_cursor: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Test support: set by [`Shard::crash_for_test`].
    crashed: Arc<AtomicBool>,
    /// The shard's Raft group, when replicated.
    raft: Option<Raft<ShardRaft>>,
    /// See [`Shard::leading`].
    leading: tokio::sync::watch::Receiver<bool>,
    /// A single node's `leading` sender (always true), kept so the channel stays open.
    always_leads: Option<tokio::sync::watch::Sender<bool>>,
}

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
    /// Opens the shard's database in `dir` (a database of its own) and starts its writer thread.
    pub fn open(
        dir: &Path,
        id: ShardId,
        shard_count: u16,
        node_id: u64,
        resources: &SharedResources,
        config: &ShardConfig,
    ) -> Result<Shard, ShardError> {
        let opened = Opened::open(StoreAt::Dir(dir, resources), id, shard_count, node_id, config, None)?;
        tracing::info!(shard = %id, next_seq = opened.state.next_seq, dir = %dir.display(), "shard open");
        Shard::start_writer(opened, id, node_id, config)
    }

    /// Opens the shard's column families in the node's shared database `db` (see
    /// [`crate::node_db`]) and starts its writer thread.
    pub fn open_in(
        db: &NodeDb,
        id: ShardId,
        shard_count: u16,
        node_id: u64,
        config: &ShardConfig,
    ) -> Result<Shard, ShardError> {
        let opened = Opened::open(StoreAt::Shared(db), id, shard_count, node_id, config, None)?;
        tracing::info!(shard = %id, next_seq = opened.state.next_seq, "shard open (shared database)");
        Shard::start_writer(opened, id, node_id, config)
    }

    /// A single node's shard: its writer thread, and the node always leads it.
    fn start_writer(opened: Opened, id: ShardId, node_id: u64, config: &ShardConfig) -> Result<Shard, ShardError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let crashed = Arc::new(AtomicBool::new(false));
        let next_seq = opened.state.next_seq;
        let writer = Writer {
            store: opened.store.clone(),
            max_batch_messages: config.max_batch_messages,
            pending: opened.pending.clone(),
            counters: opened.counters.clone(),
            committed: opened.committed.clone(),
            queue_low_watermark: opened.queue_low_watermark.clone(),
            planner: Planner { next_seq, last_at_ms: opened.state.at_ms },
            state: opened.state.clone(),
            crashed: crashed.clone(),
            lazy_sync_delay: std::time::Duration::from_millis(config.settle_sync_delay_ms),
            unsynced: std::collections::VecDeque::new(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-{:02}-writer", id.0))
            .spawn(move || writer.run(rx))
            .map_err(|e| ShardError::Layout(format!("cannot start writer thread: {e}")))?;
        // A single node always leads its shards.
        let (leads, leading) = tokio::sync::watch::channel(true);
        let running = Running { tx, writer: handle, crashed, raft: None, leading };
        let mut shard = opened.into_shard(id, node_id, config, running);
        shard.always_leads = Some(leads);
        Ok(shard)
    }

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
        let running = Running { tx, writer: handle, crashed, raft: Some(raft), leading };
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

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The node id this shard's database was created with (checked at open).
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Bytes 2..10 of every message id this shard issues (`meta/id_space`): decoded ids are this
    /// shard's only if their `space` is this. Equal to the node id for every single-node database;
    /// kept apart so that a replicated shard's ids do not depend on which node leads it.
    pub fn id_space(&self) -> u64 {
        self.id_space
    }

    /// The shard's long-term identity secret (32 bytes) for encryption sessions.
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity_key
    }

    /// Every queue key below this is deleted (as of the last durable batch, or open). Lowered when a
    /// held message below it is released into the queue.
    pub fn queue_low_watermark(&self) -> u64 {
        self.queue_low_watermark.load(Ordering::Acquire)
    }

    /// The sequence number below which every appended message is durable.
    pub fn committed_next_seq(&self) -> u64 {
        self.committed.next_seq.load(Ordering::Acquire)
    }

    /// Resolves after the next durable append (or at once if one happened since the last call):
    /// the delivery loop's wake-up. Meant for one waiter (the shard's delivery loop).
    ///
    /// Cancel safety: cancel-safe (a wake-up is never lost: `Notify` keeps one permit).
    pub async fn appended(&self) {
        self.committed.appended.notified().await
    }

    /// Submits an op, or refuses at once with [`ShardError::Overloaded`] when the mailbox holds
    /// `queue_capacity` messages already.
    fn submit(&self, op: WriteOp) -> Result<(), ShardError> {
        let weight = op.weight();
        let mut current = self.pending.load(Ordering::Acquire);
        loop {
            // An op bigger than the whole capacity is still admitted into an empty mailbox; ops
            // that hold no queue space (settles, sessions) are never refused.
            if weight > 0 && current > 0 && current + weight > self.capacity {
                return Err(ShardError::Overloaded { shard: self.id.0, pending: current, capacity: self.capacity });
            }
            match self.pending.compare_exchange_weak(current, current + weight, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if self.closed.load(Ordering::Acquire) {
            self.pending.fetch_sub(weight, Ordering::AcqRel);
            return Err(ShardError::Stopped(self.id.0));
        }
        self.tx.send(op).map_err(|_| {
            self.pending.fetch_sub(weight, Ordering::AcqRel);
            ShardError::Stopped(self.id.0)
        })
    }

    /// Submits the op `op` builds around its reply channel; [`answer`] awaits the reply.
    fn request<T>(
        &self,
        op: impl FnOnce(crate::writer::Reply<T>) -> WriteOp,
    ) -> Result<oneshot::Receiver<Result<T, ShardError>>, ShardError> {
        let (reply, rx) = oneshot::channel();
        self.submit(op(reply))?;
        Ok(rx)
    }

    /// Appends `messages` to the queue and resolves once they are durable (WAL synced), with one
    /// outcome per message in order. The submission is synchronous (it fails fast when the shard
    /// is overloaded); the returned future only awaits the writer.
    ///
    /// Cancel safety: dropping the future does not cancel the write; the messages may still be
    /// committed.
    pub fn append_durably(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<impl Future<Output = Result<Vec<AppendOutcome>, ShardError>> + use<>, ShardError> {
        let rx = self.request(|reply| WriteOp::Append { messages, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Writes idempotency records durably (used for keys whose key shard is this one).
    pub fn put_idempotency_durably(
        &self,
        entries: Vec<(Vec<u8>, IdempotencyRecord)>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let rx = self.request(|reply| WriteOp::PutIdempotency { entries, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Removes messages from the queue durably (synced). Removing an absent sequence is a no-op.
    pub fn remove_durably(
        &self,
        seqs: Vec<u64>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let rx = self.request(|reply| WriteOp::Remove { seqs, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Records outcomes durably: acked and failed messages leave the queue and get their status
    /// record in the same batch (on a single node written unsynced and answered once a later sync
    /// covers it: `writer.rs`, lazy batches); receipts move statuses forward. `low_watermark`, when given,
    /// is persisted as the queue's low watermark (every queue key below it is deleted).
    ///
    /// Never refused for capacity: recording an ack must not wait behind sends.
    pub fn settle_durably(
        &self,
        entries: Vec<Settlement>,
        low_watermark: Option<u64>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        // The writer publishes the watermark it wrote (never above a released message still
        // queued) once the batch is durable.
        let rx = self.request(|reply| WriteOp::Settle { entries, low_watermark, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Resolves held messages durably (synced): each of `seqs` still in `held` is released into the
    /// queue under the same seq, or fails (`HeldAction::Drop`'s reason; 410 when its TTL passed by
    /// `at_ms`) with its status event, in one batch. Seqs no longer held are skipped. Released
    /// messages are handed to the delivery loop ([`Shard::take_released`]).
    ///
    /// Never refused for capacity (like settlements).
    pub fn resolve_held_durably(
        &self,
        seqs: Vec<u64>,
        action: HeldAction,
        at_ms: i64,
    ) -> Result<impl Future<Output = Result<ResolvedHeld, ShardError>> + use<>, ShardError> {
        let rx = self.request(|reply| WriteOp::ResolveHeld { seqs, action, at_ms, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Up to `max` seqs of held messages released into the queue since the last call (durable;
    /// usually below the delivery loop's cursor, so the loop point-reads them). Meant for one
    /// taker: the shard's delivery loop. [`Shard::appended`] resolves after each release.
    pub fn take_released(&self, max: usize) -> Vec<u64> {
        let mut released = self.committed.released.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(released.len());
        released.drain(..n).collect()
    }

    /// A held message (a paced template's, not yet released or dropped).
    pub fn get_held(&self, seq: u64) -> Result<Option<HeldRecord>, ShardError> {
        self.store.get_held(seq)
    }

    /// Up to `limit` held messages from sequence `from`, in seq (= acceptance) order.
    pub fn scan_held(&self, from: u64, limit: usize) -> Result<Vec<(u64, HeldRecord)>, ShardError> {
        self.store.scan_held(from, limit)
    }

    /// Stores encryption-session snapshots durably (synced): `(sender, recipient, snapshot)`.
    pub fn put_sessions_durably(
        &self,
        entries: Vec<(String, String, Vec<u8>)>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let entries = entries.into_iter().map(|(s, r, snap)| (session_key(&s, &r), snap)).collect();
        let rx = self.request(|reply| WriteOp::PutSessions { entries, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Marks queued messages durably (synced) as possibly handed to an upstream that cannot
    /// deduplicate, before the request goes out (see the storage docs, "Dispatch marks"). The
    /// mark leaves with the message's queue key.
    ///
    /// Never refused for capacity (like settlements): it holds no queue space.
    pub fn mark_dispatched_durably(
        &self,
        seqs: Vec<u64>,
        at_ms: i64,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let rx = self.request(|reply| WriteOp::MarkDispatched { seqs, at_ms, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// Deletes dispatch marks of messages the upstream answered it did not take (a refusal), so a
    /// crash does not make them wait as in doubt. Rides on the next batch; a crash before it only
    /// leaves them in doubt after the restart (safe).
    pub fn clear_dispatched(&self, seqs: Vec<u64>) {
        if let Err(e) = self.submit(WriteOp::ClearDispatched { seqs }) {
            tracing::debug!(shard = %self.id, error = %e, "dispatch marks not cleared now; in doubt after a restart");
        }
    }

    /// The queued messages with a dispatch mark: after a crash, those that may have been posted
    /// to the upstream. Reads the (small) `dispatched` column family.
    pub fn dispatch_marks(&self) -> Result<Vec<(u64, crate::storage::DispatchRecord)>, ShardError> {
        self.store.dispatch_marks()
    }

    /// The seq of the message the upstream knows as `upstream_id` (recorded with its `sent`
    /// status; see "Upstream ids" in the storage docs). A point read.
    pub fn seq_for_upstream_id(&self, upstream_id: &str) -> Result<Option<u64>, ShardError> {
        self.store.seq_for_upstream_id(upstream_id)
    }

    /// The status-event sequence number below which every event is durable.
    pub fn committed_next_outbox_seq(&self) -> u64 {
        *self.committed.next_outbox_seq.borrow()
    }

    /// Follows [`Shard::committed_next_outbox_seq`]: changes after every durable write that added
    /// status events. Any number of webhook senders and status streams may subscribe.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.next_outbox_seq.subscribe()
    }

    /// Status events with sequence in `[from, until)`, at most `limit`, in order.
    pub fn scan_outbox(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, CallbackRecord)>, ShardError> {
        self.store.scan_outbox(from, until, limit)
    }

    /// The first status event the webhook receiver has not accepted yet (`u64::MAX` when the shard
    /// was opened without a webhook).
    pub fn webhook_cursor(&self) -> u64 {
        let cursor = self.webhook_cursor.load(Ordering::Acquire);
        if self.raft.is_none() || cursor == u64::MAX {
            return cursor;
        }
        // A replicated shard: the leader that persisted the cursor may have been another node.
        match self.store.get_meta_u64(META_WEBHOOK_CURSOR) {
            Ok(Some(persisted)) => self.webhook_cursor.fetch_max(persisted, Ordering::AcqRel).max(persisted),
            Ok(None) => cursor,
            Err(e) => {
                tracing::warn!(shard = %self.id, error = %e, "webhook cursor not read; resending from the last known");
                cursor
            }
        }
    }

    /// Moves the in-memory webhook cursor (the retention floor) to `next` without persisting it:
    /// events below it were accepted and may be dropped by retention.
    pub fn note_webhook_progress(&self, next: u64) {
        self.webhook_cursor.fetch_max(next, Ordering::AcqRel);
    }

    /// Records that the webhook receiver accepted every status event below `next`. The in-memory
    /// cursor moves at once (accepted events may be dropped by retention from now on); the returned
    /// future resolves when `meta/webhook_cursor` is durable. Losing that write in a crash only
    /// means the accepted events are sent again.
    pub fn advance_webhook_cursor(
        &self,
        next: u64,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        self.note_webhook_progress(next);
        let rx = self.request(|reply| WriteOp::SetWebhookCursor { next, reply })?;
        Ok(answer(rx, self.id.0))
    }

    /// When `user` last wrote to `business` (the customer-service window), if ever.
    pub fn get_contact(&self, business: &str, user: &str) -> Result<Option<ContactRecord>, ShardError> {
        self.store.get_contact(business, user)
    }

    pub fn get_status(&self, seq: u64) -> Result<Option<StatusRecord>, ShardError> {
        self.store.get_status(seq)
    }

    pub fn get_session(&self, sender: &str, recipient: &str) -> Result<Option<Vec<u8>>, ShardError> {
        self.store.get_session(sender, recipient)
    }

    /// Queued messages with sequence in `[from, until)`, at most `limit`, in order.
    pub fn scan_queue_range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        self.store.scan_queue_range(from, until, limit)
    }

    /// Deletes idempotency intents whose records reached their key shard. Rides on the next batch;
    /// a crash before that only means the intents are replayed (idempotently) at start-up.
    pub fn clear_intents(&self, seqs: Vec<u64>) {
        if let Err(e) = self.submit(WriteOp::ClearIntents { seqs }) {
            tracing::debug!(shard = %self.id, error = %e, "intents not cleared now; replayed at start-up");
        }
    }

    /// Test support: blocks this shard's writer and fills its mailbox until the returned guard
    /// is dropped, so tests can observe backpressure deterministically.
    #[doc(hidden)]
    pub fn hold_writer_for_test(&self) -> WriterHold {
        let (tx, release) = crossbeam_channel::bounded(0);
        self.pending.fetch_add(self.capacity, Ordering::AcqRel);
        if self.tx.send(WriteOp::Hold { release, weight: self.capacity }).is_ok() {
            return WriterHold { _tx: tx };
        }
        self.pending.fetch_sub(self.capacity, Ordering::AcqRel);
        WriterHold { _tx: tx }
    }

    /// Test support: blocks this shard's writer until the returned guard is dropped, without
    /// refusing anything meanwhile: ops submitted while it is paused are committed together.
    #[doc(hidden)]
    pub fn pause_writer_for_test(&self) -> WriterHold {
        let (tx, release) = crossbeam_channel::bounded(0);
        let _ = self.tx.send(WriteOp::Hold { release, weight: 0 });
        WriterHold { _tx: tx }
    }

    /// Failpoint for tests: the next `n` outbox scans fail (as a read error would).
    #[doc(hidden)]
    pub fn failpoint_fail_outbox_scans(&self, n: u64) {
        self.store.fail_outbox_scans.store(n, Ordering::Relaxed);
    }

    /// Failpoint for tests: every read of `seq`'s status record fails (`None`: none do).
    #[doc(hidden)]
    pub fn failpoint_fail_status_read(&self, seq: Option<u64>) {
        self.store.fail_status_read.store(seq.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Failpoint for tests: the writer's next `n` batch writes fail (nothing of them is written),
    /// as a failed RocksDB write would.
    #[doc(hidden)]
    pub fn failpoint_fail_writes(&self, n: u64) {
        self.store.fail_writes.store(n, Ordering::Relaxed);
    }

    /// Failpoint for tests: the next `n` settle ops that record a receipt or an inbound message
    /// fail alone (nothing of them is written; the other ops of their batch are), as a failed write
    /// would. Other writes (appends, sessions, acks without receipts) go through.
    #[doc(hidden)]
    pub fn failpoint_fail_event_settles(&self, n: u64) {
        self.store.fail_event_settles.store(n, Ordering::Relaxed);
    }

    /// Test support: how many of the failures armed by [`Shard::failpoint_fail_event_settles`]
    /// are still to come.
    #[doc(hidden)]
    pub fn failpoint_event_settles_left(&self) -> u64 {
        self.store.fail_event_settles.load(Ordering::Relaxed)
    }

    /// Test support: a crash, as near as one can be had in-process. The writer stops at once:
    /// every op it has not committed yet is abandoned (nothing of it is written; its caller gets
    /// [`ShardError::Stopped`]), and what lives only in memory (the in-memory cursors, the
    /// released seqs not yet taken by the delivery loop) is lost with the handle. Unlike [`Shard::close`], which
    /// commits everything submitted before it. Drop the shard afterwards, then open it again.
    #[doc(hidden)]
    pub fn crash_for_test(&self) {
        self.crashed.store(true, Ordering::Release);
        self.close();
    }

    /// Test support: WAL syncs of this shard's database since it was opened (RocksDB's count).
    #[doc(hidden)]
    pub fn wal_syncs_for_test(&self) -> u64 {
        self.store.wal_syncs().expect("rocksdb.dbstats reports the WAL syncs")
    }

    pub fn get_queued(&self, seq: u64) -> Result<Option<QueueRecord>, ShardError> {
        self.store.get_queued(seq)
    }

    pub fn get_idempotency(&self, key: &[u8], now_ms: i64) -> Result<Option<IdempotencyRecord>, ShardError> {
        self.store.get_idempotency(key, now_ms)
    }

    pub fn idempotency_intents(&self) -> Result<Vec<(u64, IdempotencyIntent)>, ShardError> {
        self.store.idempotency_intents()
    }

    pub fn scan_queue(&self, from: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        self.store.scan_queue(from, limit)
    }

    /// Compacts the whole queue column family now (drops the tombstones of delivered messages).
    pub fn compact_queue(&self) {
        self.store.compact_queue();
    }

    /// Test support: compacts the status-event log now (runs its retention filter).
    #[doc(hidden)]
    pub fn compact_events_for_test(&self) {
        self.store.compact_outbox();
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            appended: self.counters.appended.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            synced_writes: self.counters.synced_writes.load(Ordering::Relaxed),
            unsynced_writes: self.counters.unsynced_writes.load(Ordering::Relaxed),
            settle_syncs: self.counters.settle_syncs.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            estimated_queue_len: self.store.estimated_queue_len(),
            estimated_held_len: self.store.estimated_held_len(),
            settled: self.counters.settled.load(Ordering::Relaxed),
        }
    }

    /// Whether [`Shard::close`] was called (the shard takes no more writes).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// RocksDB's size figures (SST bytes, pending compaction bytes), for metrics.
    pub fn disk_usage(&self) -> crate::storage::DiskUsage {
        self.store.disk_usage()
    }

    /// Stops accepting ops, lets the writer commit everything already submitted, and joins it.
    /// Later calls return at once; ops submitted afterwards fail with [`ShardError::Stopped`].
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(WriteOp::Stop);
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The writer's reply to a [`Shard::request`], or `Stopped` if the writer went away first.
/// Dropping the future does not cancel the op.
async fn answer<T>(rx: oneshot::Receiver<Result<T, ShardError>>, shard: u16) -> Result<T, ShardError> {
    rx.await.unwrap_or(Err(ShardError::Stopped(shard)))
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.close();
    }
}
