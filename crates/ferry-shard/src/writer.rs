//! The group-commit writer: stage "append durably" of a shard.
//!
//! Each shard has exactly one writer, an OS thread that owns the shard's sequence counter. It
//! blocks for the first pending [`WriteOp`], takes every other op already waiting (up to
//! `max_batch_messages` messages, and as many ops), writes all of them as **one** RocksDB
//! `WriteBatch` with `sync = true` (the WAL is fsynced before `write` returns; lazy batches,
//! below, are synced later), and only then completes each op's reply. So many concurrent sends
//! share one fsync (group commit), and no reply is sent before its data is on disk. If the write
//! fails, every op of the batch gets the error and nothing of it is reported durable.
//!
//! A group commit is planned here and applied by [`crate::apply`]: [`Planner`] moves the ops out
//! of their requests into a [`ShardEntry`] and decides what only the writer may (the first
//! sequence number, hence every appended message's id, and the entry's clock); `apply` adds the
//! entry's writes to the batch from the entry and the shard's on-disk state alone, and returns
//! one outcome per op, from which the replies are sent once the batch is durable.
//!
//! **Lazy batches.** A batch of nothing but ops no client waits on ([`WriteOp::is_lazy`]: the
//! delivery loop's settles, the webhook cursor, intent and dispatch-mark clean-ups) is written
//! *without* a sync, so that it does not hold the next appends behind an fsync of its own. Its
//! callers are answered, and what it changed is published to readers (the status-event
//! watermark, the queue's low watermark), only once it is durable: when a later synced write of
//! the same database covers it (this writer's next append, or any shard's in a shared database;
//! see [`crate::wal_clock`]), or else when the writer syncs the WAL itself after
//! `shard.settle_sync_delay_ms` (2 ms; `0` turns lazy batches off). Until then its writes are visible to point reads (`GetMessage` may show
//! `sent` a few milliseconds before it is durable) but to no stream, webhook or delivery decision.
//!
//! The writer is a thread rather than a tokio task because RocksDB's synced write blocks; the
//! async side only awaits a oneshot reply.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ferry_model::{MessageId, ShardId};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::ShardError;
use crate::apply::{EntryOp, OpOutcome, ShardEntry, ShardState, apply};
use crate::settle::{FailureReason, Settlement};
use crate::storage::{IdempotencyRecord, QueueRecord, Store};

/// Where the idempotency record of a new message goes (see `storage` module docs).
#[derive(Debug, Clone)]
pub enum IdempotencyPlacement {
    /// This shard is also the key shard: the record is written in the same batch as the message.
    Here { key: Vec<u8>, payload_hash: Vec<u8> },
    /// Another shard owns the key: an intent is written with the message; the coordinator then
    /// writes the record to `key_shard` and clears the intent.
    Elsewhere { key_shard: u16, key: Vec<u8>, payload_hash: Vec<u8> },
}

impl IdempotencyPlacement {
    /// The storage key and the payload hash, wherever the key shard is.
    pub fn key(&self) -> (&[u8], &[u8]) {
        match self {
            IdempotencyPlacement::Here { key, payload_hash }
            | IdempotencyPlacement::Elsewhere { key, payload_hash, .. } => (key, payload_hash),
        }
    }
}

/// One message to append to the queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub record: QueueRecord,
    pub idempotency: Option<IdempotencyPlacement>,
    /// `Some(template name)`: a paced template's message, written to `held` instead of `queue`
    /// (see the storage docs, "Paced templates"); `record.held_at_ms` should be set.
    pub held_template: Option<String>,
}

/// The result of one durable append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub seq: u64,
    pub message_id: MessageId,
    /// The message was written to `held` (a paced template's).
    pub held: bool,
    /// Whether the message was written, or its idempotency key had answered before.
    pub answer: AppendAnswer,
}

/// What an append did with one message (decided at apply, so the same on every replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppendAnswer {
    /// Written under `seq`.
    #[default]
    New,
    /// Its idempotency key answered `message_id` before, for the same message: nothing written
    /// (`seq` and `message_id` are the first send's).
    Replay,
    /// Its idempotency key answered another message before: nothing written, the send is refused
    /// (`seq` and `message_id` are the first send's).
    KeyConflict,
}

/// What to do with held messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldAction {
    /// Into the queue under the same seq, delivered like any accepted message.
    Release,
    /// Failed for good with this reason (132015 "Template is paused").
    Drop(FailureReason),
}

/// What one resolve of held messages did (sequence numbers). Seqs that were no longer held (already
/// resolved by a concurrent call) are in none of the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedHeld {
    pub released: Vec<u64>,
    pub dropped: Vec<u64>,
    /// Failed with 410 instead: their TTL passed while they were held.
    pub expired: Vec<u64>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ShardError>>;

/// A unit of work for the writer. Ops arriving together are committed together.
pub(crate) enum WriteOp {
    Append {
        messages: Vec<NewMessage>,
        reply: Reply<Vec<AppendOutcome>>,
    },
    PutIdempotency {
        entries: Vec<(Vec<u8>, IdempotencyRecord)>,
        reply: Reply<()>,
    },
    ClearIntents {
        seqs: Vec<u64>,
    },
    /// Removes messages from the queue (after the server acked them, or they expired).
    Remove {
        seqs: Vec<u64>,
        reply: Reply<()>,
    },
    /// Records outcomes: queue removals and status changes in one batch (see [`crate::settle`]),
    /// and advances the queue's low watermark.
    Settle {
        entries: Vec<Settlement>,
        low_watermark: Option<u64>,
        reply: Reply<()>,
    },
    /// Moves held messages out of `held`: into the queue, or to `failed` (see [`HeldAction`]).
    /// Messages whose TTL passed by `at_ms` fail with 410 whatever the action.
    ResolveHeld {
        seqs: Vec<u64>,
        action: HeldAction,
        at_ms: i64,
        reply: Reply<ResolvedHeld>,
    },
    /// Records that the webhook receiver accepted every status event below `next` (`meta/webhook_cursor`).
    SetWebhookCursor {
        next: u64,
        reply: Reply<()>,
    },
    /// Marks queued messages as possibly handed to an upstream that cannot deduplicate
    /// (`dispatched`, see the storage docs); the marks leave with the queue keys.
    MarkDispatched {
        seqs: Vec<u64>,
        at_ms: i64,
        reply: Reply<()>,
    },
    /// Deletes dispatch marks: the upstream answered that it did not take the messages.
    ClearDispatched {
        seqs: Vec<u64>,
    },
    /// Stores encryption-session snapshots (`sender ++ 0 ++ recipient` → snapshot).
    PutSessions {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        reply: Reply<()>,
    },
    /// Commits what was taken so far, then stops the writer.
    Stop,
    /// Test support: blocks the writer until `release` is dropped, counting `weight` against the
    /// mailbox meanwhile (see `Shard::hold_writer_for_test`).
    Hold {
        release: crossbeam_channel::Receiver<()>,
        weight: usize,
    },
}

impl WriteOp {
    /// How many messages this op counts against the mailbox capacity.
    pub(crate) fn weight(&self) -> usize {
        match self {
            WriteOp::Append { messages, .. } => messages.len(),
            WriteOp::ClearIntents { .. } | WriteOp::ClearDispatched { .. } => 0,
            WriteOp::Remove { seqs, .. } => seqs.len(),
            // Settlements and sessions free or hold no queue space: never refused for capacity
            // (the delivery loop must always be able to record an ack). An idempotency record
            // follows a message already accepted: refusing it would leave the key unanswered.
            WriteOp::PutIdempotency { .. }
            | WriteOp::Settle { .. }
            | WriteOp::PutSessions { .. }
            | WriteOp::MarkDispatched { .. }
            | WriteOp::SetWebhookCursor { .. }
            | WriteOp::ResolveHeld { .. }
            | WriteOp::Stop => 0,
            WriteOp::Hold { weight, .. } => *weight,
        }
    }

    /// Whether a batch of such ops may be written unsynced and answered once a later sync covers
    /// it (see the module docs): no client waits on it, and nothing is handed to an upstream on
    /// the strength of it before its answer. Appends, idempotency records, dispatch marks (written
    /// before a send), sessions and held releases (a release is delivered) are synced at once.
    pub(crate) fn is_lazy(&self) -> bool {
        matches!(
            self,
            WriteOp::Settle { .. }
                | WriteOp::SetWebhookCursor { .. }
                | WriteOp::ClearIntents { .. }
                | WriteOp::ClearDispatched { .. }
        )
    }
}

/// Counters the writer keeps (read by metrics and benchmarks).
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub appended: AtomicU64,
    pub batches: AtomicU64,
    pub synced_writes: AtomicU64,
    /// Lazy batches written unsynced (see the module docs).
    pub unsynced_writes: AtomicU64,
    /// WAL syncs the writer made itself because no other write covered its lazy batches in time.
    pub settle_syncs: AtomicU64,
    pub settled: AtomicU64,
}

/// What the writer publishes to readers after each durable commit: the sequence number below which
/// every appended message is durable, and a wake-up for the delivery loop.
#[derive(Debug)]
pub struct Committed {
    pub next_seq: AtomicU64,
    pub appended: tokio::sync::Notify,
    /// The status-event (outbox) sequence below which every event is durable; every webhook
    /// sender and status-stream watcher subscribes to it.
    pub next_outbox_seq: tokio::sync::watch::Sender<u64>,
    /// Held messages released into the queue (durably), most likely below the delivery loop's
    /// read cursor: the loop takes them and point-reads them (`Shard::take_released`).
    pub released: std::sync::Mutex<Vec<u64>>,
}

/// The writer's half of a group commit (plan): the next sequence number to hand out and the
/// clock of the last entry. Nothing else of the writer's memory goes into an entry.
#[derive(Debug)]
pub(crate) struct Planner {
    /// Sequence numbers are handed out here and never again, even when the batch holding them
    /// fails (a later success persists a higher `next_seq`).
    pub(crate) next_seq: u64,
    pub(crate) last_at_ms: i64,
}

/// Whom to answer for one op of an entry.
pub(crate) enum Waiter {
    None,
    Append(Reply<Vec<AppendOutcome>>),
    Done(Reply<()>),
    Resolved(Reply<ResolvedHeld>),
}

impl Waiter {
    pub(crate) fn fail(self, err: ShardError) {
        // A dropped receiver means the caller went away.
        match self {
            Waiter::None => {}
            Waiter::Append(reply) => drop(reply.send(Err(err))),
            Waiter::Done(reply) => drop(reply.send(Err(err))),
            Waiter::Resolved(reply) => drop(reply.send(Err(err))),
        }
    }

    pub(crate) fn answer(self, shard: ShardId, outcome: OpOutcome) {
        match (self, outcome) {
            (Waiter::None, _) => {}
            (Waiter::Append(reply), OpOutcome::Appended(outcomes)) => drop(reply.send(Ok(outcomes))),
            (Waiter::Done(reply), OpOutcome::Done) => drop(reply.send(Ok(()))),
            (Waiter::Resolved(reply), OpOutcome::Resolved(outcome)) => drop(reply.send(Ok(outcome))),
            (waiter, OpOutcome::Failed(err)) => waiter.fail(err),
            (waiter, _) => {
                waiter.fail(ShardError::Corrupt { shard: shard.0, what: "op outcome of another kind".into() })
            }
        }
    }
}

/// Moves one op out of its request: the entry op and whom to answer.
pub(crate) fn split_op(op: WriteOp) -> (EntryOp, Waiter) {
    match op {
        WriteOp::Append { messages, reply } => (EntryOp::Append { messages }, Waiter::Append(reply)),
        WriteOp::PutIdempotency { entries, reply } => (EntryOp::PutIdempotency { entries }, Waiter::Done(reply)),
        WriteOp::ClearIntents { seqs } => (EntryOp::ClearIntents { seqs }, Waiter::None),
        WriteOp::Remove { seqs, reply } => (EntryOp::Remove { seqs }, Waiter::Done(reply)),
        WriteOp::Settle { entries, low_watermark, reply } => {
            (EntryOp::Settle { entries, low_watermark }, Waiter::Done(reply))
        }
        WriteOp::ResolveHeld { seqs, action, at_ms, reply } => {
            (EntryOp::ResolveHeld { seqs, action, at_ms }, Waiter::Resolved(reply))
        }
        WriteOp::SetWebhookCursor { next, reply } => (EntryOp::SetWebhookCursor { next }, Waiter::Done(reply)),
        WriteOp::PutSessions { entries, reply } => (EntryOp::PutSessions { entries }, Waiter::Done(reply)),
        WriteOp::MarkDispatched { seqs, at_ms, reply } => {
            (EntryOp::MarkDispatched { seqs, at_ms }, Waiter::Done(reply))
        }
        WriteOp::ClearDispatched { seqs } => (EntryOp::ClearDispatched { seqs }, Waiter::None),
        WriteOp::Hold { .. } | WriteOp::Stop => unreachable!("holds and stops are handled by the writer loop"),
    }
}

/// The op of an entry as a request again, answering through `reply`-style channels: how a leader
/// serves ops forwarded by another node. `None` for ops no request carries.
pub(crate) fn join_op(op: EntryOp) -> (WriteOp, Pending) {
    match op {
        EntryOp::Append { messages } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::Append { messages, reply }, Pending::Append(rx))
        }
        EntryOp::PutIdempotency { entries } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::PutIdempotency { entries, reply }, Pending::Done(rx))
        }
        EntryOp::ClearIntents { seqs } => (WriteOp::ClearIntents { seqs }, Pending::None),
        EntryOp::Remove { seqs } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::Remove { seqs, reply }, Pending::Done(rx))
        }
        EntryOp::Settle { entries, low_watermark } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::Settle { entries, low_watermark, reply }, Pending::Done(rx))
        }
        EntryOp::ResolveHeld { seqs, action, at_ms } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::ResolveHeld { seqs, action, at_ms, reply }, Pending::Resolved(rx))
        }
        EntryOp::SetWebhookCursor { next } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::SetWebhookCursor { next, reply }, Pending::Done(rx))
        }
        EntryOp::PutSessions { entries } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::PutSessions { entries, reply }, Pending::Done(rx))
        }
        EntryOp::MarkDispatched { seqs, at_ms } => {
            let (reply, rx) = oneshot::channel();
            (WriteOp::MarkDispatched { seqs, at_ms, reply }, Pending::Done(rx))
        }
        EntryOp::ClearDispatched { seqs } => (WriteOp::ClearDispatched { seqs }, Pending::None),
    }
}

/// The receiving end of a [`join_op`]'s request.
pub(crate) enum Pending {
    None,
    Append(oneshot::Receiver<Result<Vec<AppendOutcome>, ShardError>>),
    Done(oneshot::Receiver<Result<(), ShardError>>),
    Resolved(oneshot::Receiver<Result<ResolvedHeld, ShardError>>),
}

impl Pending {
    /// The op's answer as a reply of an entry (`Stopped` if the writer went away).
    pub(crate) async fn wait(self, shard: u16) -> Result<crate::raft::OpReply, ShardError> {
        use crate::raft::OpReply;
        let stopped = ShardError::Stopped(shard);
        match self {
            Pending::None => Ok(OpReply::Done),
            Pending::Append(rx) => rx.await.unwrap_or(Err(stopped)).map(OpReply::Appended),
            Pending::Done(rx) => rx.await.unwrap_or(Err(stopped)).map(|()| OpReply::Done),
            Pending::Resolved(rx) => rx.await.unwrap_or(Err(stopped)).map(OpReply::Resolved),
        }
    }
}

impl Planner {
    /// Turns the ops of one group commit into an entry (the decisions only the writer makes) and
    /// the replies to send once it is applied and durable, one per op.
    pub(crate) fn plan(&mut self, ops: Vec<WriteOp>) -> (ShardEntry, Vec<Waiter>) {
        let at_ms = crate::storage::now_ms().max(self.last_at_ms);
        self.last_at_ms = at_ms;
        let first_seq = self.next_seq;
        let mut entry_ops = Vec::with_capacity(ops.len());
        let mut waiters = Vec::with_capacity(ops.len());
        for op in ops {
            let (op, waiter) = split_op(op);
            if let EntryOp::Append { messages } = &op {
                self.next_seq += messages.len() as u64;
            }
            entry_ops.push(op);
            waiters.push(waiter);
        }
        (ShardEntry { at_ms, first_seq, ops: Arc::new(entry_ops) }, waiters)
    }
}

/// What a durable commit tells readers and callers.
pub(crate) struct Publication {
    /// The status-event watermark after the commit, if the commit added events.
    next_outbox_seq: Option<u64>,
    low_watermark: Option<u64>,
    released: Vec<u64>,
    replies: Vec<(Waiter, OpOutcome)>,
}

/// A lazy batch written unsynced, waiting to be durable.
pub(crate) struct Unsynced {
    ticket: u64,
    written_at: Instant,
    publication: Publication,
}

pub(crate) struct Writer {
    pub(crate) store: Arc<Store>,
    pub(crate) max_batch_messages: usize,
    pub(crate) pending: Arc<AtomicUsize>,
    pub(crate) counters: Arc<WriterCounters>,
    pub(crate) committed: Arc<Committed>,
    /// `meta/queue_low_watermark` as persisted, published to readers after each commit.
    pub(crate) queue_low_watermark: Arc<AtomicU64>,
    pub(crate) planner: Planner,
    /// The state machine's in-memory part as of the last durable batch (see [`crate::apply`]).
    pub(crate) state: ShardState,
    /// Test support (`Shard::crash_for_test`): set, the writer commits nothing more and stops.
    pub(crate) crashed: Arc<AtomicBool>,
    /// How long a lazy batch waits for another write's sync (`shard.settle_sync_delay_ms`; zero:
    /// none is lazy).
    pub(crate) lazy_sync_delay: Duration,
    /// Lazy batches written but not yet known durable, oldest first.
    pub(crate) unsynced: VecDeque<Unsynced>,
}

impl Writer {
    /// Runs until every sender of `rx` is dropped; then returns after finishing what it took.
    pub(crate) fn run(mut self, rx: Receiver<WriteOp>) {
        let mut stopping = false;
        let syncs = self.store.watch_syncs();
        while !stopping {
            if self.crashed.load(Ordering::Acquire) {
                break;
            }
            self.publish_durable();
            let first = match self.unsynced.front() {
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Some(oldest) => {
                    let wait = (oldest.written_at + self.lazy_sync_delay).saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        // Due: sync before taking more. `select!` prefers a ready op to its
                        // timeout, so a steady stream of lazy ops would otherwise put this off
                        // for as long as the stream lasts.
                        self.sync_unsynced();
                        continue;
                    }
                    crossbeam_channel::select! {
                        recv(rx) -> op => match op {
                            Ok(op) => op,
                            Err(_) => break,
                        },
                        // Some write synced the WAL: publish what it covered, then wait again.
                        recv(syncs) -> _ => continue,
                        default(wait) => {
                            self.sync_unsynced();
                            continue;
                        }
                    }
                }
            };
            let mut ops = Vec::new();
            let mut weight = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                if let WriteOp::Stop = op {
                    stopping = true;
                    break;
                }
                if let WriteOp::Hold { release, weight: held } = op {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut weight));
                    self.sync_unsynced();
                    let _ = release.recv();
                    self.pending.fetch_sub(held, Ordering::AcqRel);
                } else {
                    weight += op.weight();
                    ops.push(op);
                }
                // Bounded by ops too: settles and clean-ups weigh nothing, and a steady stream of
                // them would otherwise keep one batch open for as long as it lasts.
                if weight < self.max_batch_messages && ops.len() < self.max_batch_messages {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(ops, weight);
            if self.crashed.load(Ordering::Acquire) {
                break;
            }
        }
        self.sync_unsynced();
        tracing::debug!(shard = %self.state.shard, "writer stopped");
    }

    /// One group commit: plan, apply, one write (synced unless every op is lazy), then the
    /// replies once it is durable.
    fn commit(&mut self, ops: Vec<WriteOp>, weight: usize) {
        if ops.is_empty() {
            return;
        }
        if self.crashed.load(Ordering::Acquire) {
            // A crash: what was not committed is lost (its callers see `Stopped`).
            return;
        }
        let shard = self.state.shard;
        let lazy = !self.lazy_sync_delay.is_zero() && ops.iter().all(WriteOp::is_lazy);
        let (entry, waiters) = self.planner.plan(ops);
        let mut batch = WriteBatch::default();
        let applied = apply(&entry, &mut batch, &self.store, &self.state);
        let result = if lazy {
            self.counters.unsynced_writes.fetch_add(1, Ordering::Relaxed);
            self.store.write_unsynced(batch).map(Some)
        } else {
            self.counters.synced_writes.fetch_add(1, Ordering::Relaxed);
            self.store.write_synced(batch).map(|()| None)
        };
        self.pending.fetch_sub(weight, Ordering::AcqRel);
        let outbox_before = self.state.next_outbox_seq;
        match result {
            Ok(ticket) => {
                self.state.commit(&entry, &applied);
                self.counters.appended.fetch_add(applied.appended, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.settled.fetch_add(applied.settled, Ordering::Relaxed);
                let publication = Publication {
                    next_outbox_seq: (self.state.next_outbox_seq != outbox_before)
                        .then_some(self.state.next_outbox_seq),
                    low_watermark: applied.low_watermark,
                    released: applied.released,
                    replies: waiters.into_iter().zip(applied.ops).collect(),
                };
                match ticket {
                    Some(ticket) => {
                        self.unsynced.push_back(Unsynced { ticket, written_at: Instant::now(), publication })
                    }
                    None => {
                        // Durable, and so is every lazy batch written before it.
                        self.publish_durable();
                        if applied.appended > 0 {
                            self.committed.next_seq.store(self.state.next_seq, Ordering::Release);
                            self.committed.appended.notify_one();
                        }
                        self.publish(publication);
                    }
                }
            }
            Err(e) => {
                tracing::error!(%shard, error = %e, lazy, "batch write failed; failing its batch");
                // Sequence numbers of a failed batch are not reused (the planner handed them out),
                // nor are its status-event numbers: a later success persists higher ones, so ids
                // and event seqs stay unique whether or not the failed write reached disk.
                self.state.next_outbox_seq = applied.next_outbox_seq;
                for (waiter, outcome) in waiters.into_iter().zip(applied.ops) {
                    match outcome {
                        OpOutcome::Failed(err) => waiter.fail(err),
                        _ => waiter.fail(ShardError::Rocks { shard: shard.0, source: e.clone() }),
                    }
                }
            }
        }
    }

    /// Tells readers and callers what a durable commit changed.
    fn publish(&self, publication: Publication) {
        let shard = self.state.shard;
        if let Some(next) = publication.next_outbox_seq {
            self.committed.next_outbox_seq.send_replace(next);
        }
        if let Some(mark) = publication.low_watermark {
            self.queue_low_watermark.store(mark, Ordering::Release);
        }
        if !publication.released.is_empty() {
            self.committed.released.lock().unwrap_or_else(|e| e.into_inner()).extend(&publication.released);
            self.committed.appended.notify_one();
        }
        for (waiter, outcome) in publication.replies {
            waiter.answer(shard, outcome);
        }
    }

    /// Publishes the lazy batches some sync has made durable, in the order they were written.
    fn publish_durable(&mut self) {
        while let Some(oldest) = self.unsynced.front()
            && self.store.is_durable(oldest.ticket)
        {
            if let Some(done) = self.unsynced.pop_front() {
                self.publish(done.publication);
            }
        }
    }

    /// Makes every lazy batch durable now (a WAL sync unless one already covered them), and
    /// publishes them. If the sync fails, their callers get the error (they write them again).
    fn sync_unsynced(&mut self) {
        if self.crashed.load(Ordering::Acquire) {
            // A crash: their callers see `Stopped`.
            self.unsynced.clear();
            return;
        }
        let Some(newest) = self.unsynced.back() else { return };
        if !self.store.is_durable(newest.ticket) {
            self.counters.settle_syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.store.sync_wal() {
                let shard = self.state.shard;
                tracing::error!(%shard, error = %e, "WAL sync failed; failing the batches it was to make durable");
                for done in self.unsynced.drain(..) {
                    for (waiter, _) in done.publication.replies {
                        waiter.fail(ShardError::Rocks { shard: shard.0, source: e.clone() });
                    }
                }
                return;
            }
        }
        self.publish_durable();
    }
}
