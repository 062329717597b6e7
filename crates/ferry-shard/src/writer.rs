//! The group-commit writer: stage "append durably" of a shard.
//!
//! Each shard has exactly one writer, an OS thread that owns the shard's sequence counter. It
//! blocks for the first pending [`WriteOp`], takes every other op already waiting (up to
//! `max_batch_messages`), writes all of them as **one** RocksDB `WriteBatch` with `sync = true`
//! (the WAL is fsynced before `write` returns), and only then completes each op's reply. So many
//! concurrent sends share one fsync (group commit), and no reply is sent before its data is on
//! disk. If the write fails, every op of the batch gets the error and nothing of it is reported
//! durable.
//!
//! The writer is a thread rather than a tokio task because RocksDB's synced write blocks; the
//! async side only awaits a oneshot reply.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::Receiver;
use ferry_model::{MessageId, MessageKey, ShardId};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::ShardError;
use crate::settle::{FailureReason, Settlement};
use crate::storage::{
    CF_CONTACTS, CF_DISPATCHED, CF_HELD, CF_IDEMPOTENCY, CF_IDEMPOTENCY_INTENTS, CF_META, CF_OUTBOX, CF_QUEUE,
    CF_SESSIONS, CF_STATUS, ContactRecord, DispatchRecord, HeldRecord, IdempotencyIntent, IdempotencyRecord,
    META_NEXT_OUTBOX_SEQ, META_NEXT_SEQ, META_QUEUE_LOW_WATERMARK, META_WEBHOOK_CURSOR, QueueRecord, StatusRecord,
    Store, encode_value, queue_key, session_key,
};

/// Where the idempotency record of a new message goes (see `storage` module docs).
#[derive(Debug, Clone)]
pub enum IdempotencyPlacement {
    /// This shard is also the key shard: the record is written in the same batch as the message.
    Here { key: Vec<u8>, payload_hash: Vec<u8> },
    /// Another shard owns the key: an intent is written with the message; the coordinator then
    /// writes the record to `key_shard` and clears the intent.
    Elsewhere { key_shard: u16, key: Vec<u8>, payload_hash: Vec<u8> },
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
}

/// Counters the writer keeps (read by metrics and benchmarks).
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub appended: AtomicU64,
    pub batches: AtomicU64,
    pub synced_writes: AtomicU64,
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

pub(crate) struct Writer {
    pub(crate) store: Arc<Store>,
    pub(crate) shard: ShardId,
    pub(crate) node_id: u64,
    pub(crate) next_seq: u64,
    pub(crate) max_batch_messages: usize,
    pub(crate) pending: Arc<AtomicUsize>,
    pub(crate) counters: Arc<WriterCounters>,
    pub(crate) committed: Arc<Committed>,
    pub(crate) next_outbox_seq: u64,
    /// `meta/queue_low_watermark` as persisted, published to readers after each commit.
    pub(crate) queue_low_watermark: Arc<AtomicU64>,
    pub(crate) persisted_low_watermark: u64,
    /// Released held messages that have not left the queue yet: no low watermark written while
    /// one is queued may pass it (the delivery loop may not have read it yet). In memory only: a
    /// restart's scan starts at the persisted watermark, which is at or below every one of them.
    pub(crate) released_unsettled: BTreeSet<u64>,
    /// The seqs with a `dispatched` mark (loaded at open): a queue removal deletes the mark in
    /// its batch. Empty unless the upstream writes marks, so the chat path pays nothing.
    pub(crate) dispatched: HashSet<u64>,
    /// Test support (`Shard::crash_for_test`): set, the writer commits nothing more and stops.
    pub(crate) crashed: Arc<AtomicBool>,
}

enum Pending {
    Append { reply: Reply<Vec<AppendOutcome>>, outcomes: Vec<AppendOutcome> },
    Done(Reply<()>),
    Resolved { reply: Reply<ResolvedHeld>, outcome: ResolvedHeld },
}

/// The status-change state of one batch, shared by settlements and dropped held messages.
///
/// An op first reads every record it needs ([`StatusBatch::prefetch`]); only if all reads succeed
/// does it add anything to the batch. So a read error fails that op alone, and the batch (with
/// every other op's appends) is still written.
struct StatusBatch<'a> {
    store: &'a Store,
    /// Status records as of this batch, so several changes to one message in a batch compose.
    statuses: HashMap<u64, StatusRecord>,
    /// Status records as read from the store by `prefetch` (`None`: absent or unreadable).
    loaded: HashMap<u64, Option<StatusRecord>>,
    next_outbox_seq: &'a mut u64,
}

/// A record that does not decode is logged and treated as absent (the op overwrites it, as a
/// record that cannot be merged is better replaced than left to block its message); any other read
/// error fails the op.
fn readable<T>(shard: ShardId, what: &str, read: Result<Option<T>, ShardError>) -> Result<Option<T>, ShardError> {
    match read {
        Err(ShardError::Corrupt { what: detail, .. }) => {
            tracing::error!(%shard, record = what, error = %detail, "unreadable record; overwriting it");
            Ok(None)
        }
        other => other,
    }
}

impl StatusBatch<'_> {
    /// Reads the status records of `seqs` not read yet in this batch.
    fn prefetch(&mut self, shard: ShardId, seqs: impl Iterator<Item = u64>) -> Result<(), ShardError> {
        for seq in seqs {
            if self.statuses.contains_key(&seq) || self.loaded.contains_key(&seq) {
                continue;
            }
            let record = readable(shard, "status", self.store.get_status(seq))?;
            self.loaded.insert(seq, record);
        }
        Ok(())
    }

    /// Merges `change` into the message's status record and adds its status event(s). The
    /// record must have been prefetched.
    fn record(&mut self, batch: &mut WriteBatch, seq: u64, change: &Settlement) {
        let (status_cf, outbox_cf) = (self.store.cf(CF_STATUS), self.store.cf(CF_OUTBOX));
        let current = match self.statuses.get(&seq) {
            Some(r) => Some(r.clone()),
            None => {
                debug_assert!(self.loaded.contains_key(&seq), "status {seq} recorded without a prefetch");
                self.loaded.get(&seq).cloned().flatten()
            }
        };
        if let Some(next) = crate::settle::merge(current.as_ref(), change) {
            batch.put_cf(status_cf, queue_key(seq), encode_value(&next));
            let advanced = current.as_ref().is_none_or(|c| c.status != next.status);
            // A receipt that overtook its ack creates a record without the
            // message's fields; its callback waits until the ack fills them.
            let filled = current.as_ref().is_some_and(|c| c.wa_id.is_empty()) && !next.wa_id.is_empty();
            if filled {
                // The ack filled in a record receipts created (they overtook it,
                // e.g. after a restart): report every status it went through, in
                // order, so no receiver misses `sent` or `delivered`.
                for callback in crate::settle::callbacks_through(seq, &next) {
                    batch.put_cf(outbox_cf, queue_key(*self.next_outbox_seq), encode_value(&callback));
                    *self.next_outbox_seq += 1;
                }
            } else if advanced && !next.wa_id.is_empty() {
                let callback = crate::settle::callback_for(seq, &next);
                batch.put_cf(outbox_cf, queue_key(*self.next_outbox_seq), encode_value(&callback));
                *self.next_outbox_seq += 1;
            }
            self.statuses.insert(seq, next);
        }
    }
}

impl Writer {
    /// Runs until every sender of `rx` is dropped; then returns after finishing what it took.
    pub(crate) fn run(mut self, rx: Receiver<WriteOp>) {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let mut stopping = false;
        while !stopping && let Ok(first) = rx.recv() {
            let mut ops = Vec::new();
            let mut weight = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                if let WriteOp::Stop = op {
                    stopping = true;
                    break;
                }
                if let WriteOp::Hold { release, weight: held } = op {
                    self.commit(std::mem::take(&mut ops), std::mem::take(&mut weight), &sync);
                    let _ = release.recv();
                    self.pending.fetch_sub(held, Ordering::AcqRel);
                } else {
                    weight += op.weight();
                    ops.push(op);
                }
                if weight < self.max_batch_messages {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(ops, weight, &sync);
            if self.crashed.load(Ordering::Acquire) {
                break;
            }
        }
        tracing::debug!(shard = %self.shard, "writer stopped");
    }

    fn commit(&mut self, ops: Vec<WriteOp>, weight: usize, sync: &WriteOptions) {
        if ops.is_empty() {
            return;
        }
        if self.crashed.load(Ordering::Acquire) {
            // A crash: what was not committed is lost (its callers see `Stopped`).
            return;
        }
        let store = &self.store;
        let (queue, idem, intents, meta) =
            (store.cf(CF_QUEUE), store.cf(CF_IDEMPOTENCY), store.cf(CF_IDEMPOTENCY_INTENTS), store.cf(CF_META));
        let (sessions_cf, outbox_cf, held_cf) = (store.cf(CF_SESSIONS), store.cf(CF_OUTBOX), store.cf(CF_HELD));
        let dispatched_cf = store.cf(CF_DISPATCHED);
        // Seqs marked in this batch (added to `self.dispatched` once it is durable), and marks
        // cleared in it (removed from it then).
        let mut marked_now: Vec<u64> = Vec::new();
        let mut cleared_now: Vec<u64> = Vec::new();
        let outbox_before = self.next_outbox_seq;
        let mut next_outbox_seq = self.next_outbox_seq;
        let mut status = StatusBatch {
            store: &self.store,
            statuses: HashMap::new(),
            loaded: HashMap::new(),
            next_outbox_seq: &mut next_outbox_seq,
        };
        // Contact records as of this batch (several inbound messages of one user compose); `None`:
        // read, and absent.
        let mut contacts: HashMap<Vec<u8>, Option<ContactRecord>> = HashMap::new();
        let contacts_cf = store.cf(CF_CONTACTS);
        let mut settled = 0u64;
        // The highest low watermark a settle op asked for; held messages released and queue keys
        // removed in this batch (see `released_unsettled`); held seqs resolved in this batch.
        let mut requested_watermark: Option<u64> = None;
        let mut released_now: Vec<u64> = Vec::new();
        let mut left_queue: Vec<u64> = Vec::new();
        let mut resolved_here: HashSet<u64> = HashSet::new();
        let mut batch = WriteBatch::default();
        let mut pending = Vec::with_capacity(ops.len());
        let seq_before = self.next_seq;
        let mut appended = 0u64;
        for op in ops {
            match op {
                WriteOp::Append { messages, reply } => {
                    let mut outcomes = Vec::with_capacity(messages.len());
                    for m in messages {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        let message_id =
                            MessageId::encode(MessageKey { shard: self.shard, node_id: self.node_id, seq });
                        let held = m.held_template.is_some();
                        match m.held_template {
                            None => batch.put_cf(queue, queue_key(seq), encode_value(&m.record)),
                            Some(template_name) => {
                                let record = HeldRecord { record: Some(m.record.clone()), template_name };
                                batch.put_cf(held_cf, queue_key(seq), encode_value(&record));
                            }
                        }
                        match m.idempotency {
                            None => {}
                            Some(IdempotencyPlacement::Here { key, payload_hash }) => {
                                let r = IdempotencyRecord {
                                    message_id: message_id.as_str().to_owned(),
                                    wa_id: m.record.wa_id.clone(),
                                    payload_hash,
                                    created_at_ms: m.record.accepted_at_ms,
                                };
                                batch.put_cf(idem, key, encode_value(&r));
                            }
                            Some(IdempotencyPlacement::Elsewhere { key_shard, key, payload_hash }) => {
                                let intent = IdempotencyIntent {
                                    key_shard: key_shard as u32,
                                    key,
                                    record: Some(IdempotencyRecord {
                                        message_id: message_id.as_str().to_owned(),
                                        wa_id: m.record.wa_id.clone(),
                                        payload_hash,
                                        created_at_ms: m.record.accepted_at_ms,
                                    }),
                                };
                                batch.put_cf(intents, queue_key(seq), encode_value(&intent));
                            }
                        }
                        outcomes.push(AppendOutcome { seq, message_id, held });
                        appended += 1;
                    }
                    pending.push(Pending::Append { reply, outcomes });
                }
                WriteOp::PutIdempotency { entries, reply } => {
                    for (key, record) in entries {
                        batch.put_cf(idem, key, encode_value(&record));
                    }
                    pending.push(Pending::Done(reply));
                }
                WriteOp::ClearIntents { seqs } => {
                    for seq in seqs {
                        batch.delete_cf(intents, queue_key(seq));
                    }
                }
                WriteOp::Remove { seqs, reply } => {
                    // Queue keys are written exactly once (sequence numbers are never reused), so
                    // SingleDelete is valid: its tombstone vanishes with the put at compaction
                    // instead of lingering to the bottom level.
                    for seq in seqs {
                        batch.single_delete_cf(queue, queue_key(seq));
                        left_queue.push(seq);
                    }
                    pending.push(Pending::Done(reply));
                }
                WriteOp::Settle { entries, low_watermark, reply } => {
                    if entries.iter().any(|c| matches!(c, Settlement::Receipt { .. } | Settlement::Inbound(_)))
                        && store.take_event_settle_failure()
                    {
                        drop(reply.send(Err(store.injected_error())));
                        continue;
                    }
                    // Every read first: a failed one fails this op only.
                    let reads = status
                        .prefetch(
                            self.shard,
                            entries.iter().filter(|c| !matches!(c, Settlement::Inbound(_))).map(Settlement::seq),
                        )
                        .and_then(|()| {
                            for change in &entries {
                                if let Settlement::Inbound(m) = change {
                                    let key = session_key(&m.to, &m.from);
                                    if let std::collections::hash_map::Entry::Vacant(slot) = contacts.entry(key) {
                                        let read = store.get_contact_by_key(slot.key());
                                        slot.insert(readable(self.shard, "contact", read)?);
                                    }
                                }
                            }
                            Ok(())
                        });
                    if let Err(e) = reads {
                        tracing::error!(shard = %self.shard, error = %e, "settle op not applied: a read failed");
                        drop(reply.send(Err(e)));
                        continue;
                    }
                    for change in entries {
                        if let Settlement::Inbound(m) = &change {
                            let key = session_key(&m.to, &m.from);
                            let current = contacts.get(&key).cloned().flatten();
                            if current.as_ref().is_none_or(|c| c.last_inbound_ms < m.at_ms) {
                                let record =
                                    ContactRecord { last_inbound_ms: m.at_ms, profile_name: m.profile_name.clone() };
                                batch.put_cf(contacts_cf, &key, encode_value(&record));
                                contacts.insert(key, Some(record));
                            }
                            let event = crate::settle::inbound_callback(m);
                            batch.put_cf(outbox_cf, queue_key(*status.next_outbox_seq), encode_value(&event));
                            *status.next_outbox_seq += 1;
                            continue;
                        }
                        let seq = change.seq();
                        if change.leaves_queue() {
                            batch.single_delete_cf(queue, queue_key(seq));
                            left_queue.push(seq);
                            settled += 1;
                        }
                        status.record(&mut batch, seq, &change);
                    }
                    if let Some(mark) = low_watermark {
                        requested_watermark = Some(requested_watermark.map_or(mark, |m| m.max(mark)));
                    }
                    pending.push(Pending::Done(reply));
                }
                WriteOp::ResolveHeld { seqs, action, at_ms, reply } => {
                    // Every read first: a failed one fails this op only.
                    let mut records = Vec::with_capacity(seqs.len());
                    let reads = seqs.iter().filter(|seq| !resolved_here.contains(seq)).try_for_each(|&seq| {
                        match readable(self.shard, "held", store.get_held(seq))? {
                            Some(HeldRecord { record: Some(record), .. }) => records.push((seq, record)),
                            Some(HeldRecord { record: None, .. }) => {
                                tracing::error!(shard = %self.shard, seq, "held record without its message; left as is")
                            }
                            None => {} // already resolved
                        }
                        Ok(())
                    });
                    let reads = reads.and_then(|()| status.prefetch(self.shard, records.iter().map(|(seq, _)| *seq)));
                    if let Err(e) = reads {
                        tracing::error!(shard = %self.shard, error = %e, "resolve op not applied: a read failed");
                        drop(reply.send(Err(e)));
                        continue;
                    }
                    let mut outcome = ResolvedHeld::default();
                    for (seq, record) in records {
                        if !resolved_here.insert(seq) {
                            continue;
                        }
                        batch.single_delete_cf(held_cf, queue_key(seq));
                        let reason = if record.expires_at_ms <= at_ms {
                            outcome.expired.push(seq);
                            let code = ferry_model::ErrorCode::Expired;
                            FailureReason {
                                code: code.code(),
                                title: code.title().to_owned(),
                                details: "the message's TTL passed while it was held for quality assessment".into(),
                            }
                        } else if let HeldAction::Drop(reason) = &action {
                            outcome.dropped.push(seq);
                            reason.clone()
                        } else {
                            batch.put_cf(queue, queue_key(seq), encode_value(&record));
                            released_now.push(seq);
                            outcome.released.push(seq);
                            continue;
                        };
                        let message = crate::settle::status_base(&record);
                        status.record(&mut batch, seq, &Settlement::Failed { seq, message, at_ms, reason });
                    }
                    pending.push(Pending::Resolved { reply, outcome });
                }
                WriteOp::SetWebhookCursor { next, reply } => {
                    batch.put_cf(meta, META_WEBHOOK_CURSOR, next.to_be_bytes());
                    pending.push(Pending::Done(reply));
                }
                WriteOp::MarkDispatched { seqs, at_ms, reply } => {
                    let value = encode_value(&DispatchRecord { at_ms });
                    for seq in seqs {
                        batch.put_cf(dispatched_cf, queue_key(seq), &value);
                        marked_now.push(seq);
                    }
                    pending.push(Pending::Done(reply));
                }
                WriteOp::ClearDispatched { seqs } => {
                    for seq in seqs {
                        if self.dispatched.contains(&seq) || marked_now.contains(&seq) {
                            batch.delete_cf(dispatched_cf, queue_key(seq));
                            marked_now.retain(|s| *s != seq);
                            cleared_now.push(seq);
                        }
                    }
                }
                WriteOp::PutSessions { entries, reply } => {
                    for (key, snapshot) in entries {
                        let mut value = Vec::with_capacity(1 + snapshot.len());
                        value.push(crate::storage::VALUE_VERSION);
                        value.extend_from_slice(&snapshot);
                        batch.put_cf(sessions_cf, key, value);
                    }
                    pending.push(Pending::Done(reply));
                }
                WriteOp::Hold { .. } | WriteOp::Stop => unreachable!("holds and stops are handled by run"),
            }
        }
        drop(status);
        // Outbox numbers of a failed batch are not reused either (like sequence numbers).
        self.next_outbox_seq = next_outbox_seq;
        if self.next_seq != seq_before {
            batch.put_cf(meta, META_NEXT_SEQ, self.next_seq.to_be_bytes());
        }
        if self.next_outbox_seq != outbox_before {
            batch.put_cf(meta, META_NEXT_OUTBOX_SEQ, self.next_outbox_seq.to_be_bytes());
        }
        // A message leaving the queue takes its dispatch mark with it (marked earlier, or in this
        // very batch: ops apply in order, so a mark after the removal in one batch is dropped too).
        if !self.dispatched.is_empty() || !marked_now.is_empty() {
            let marked_here: HashSet<u64> = marked_now.iter().copied().collect();
            for seq in &left_queue {
                if self.dispatched.contains(seq) || marked_here.contains(seq) {
                    batch.delete_cf(dispatched_cf, queue_key(*seq));
                }
            }
        }
        let watermark = self.next_low_watermark(requested_watermark, &released_now, &left_queue);
        if let Some(mark) = watermark {
            batch.put_cf(meta, META_QUEUE_LOW_WATERMARK, mark.to_be_bytes());
        }
        let result = store.write_batch(batch, sync);
        self.counters.synced_writes.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_sub(weight, Ordering::AcqRel);
        match result {
            Ok(()) => {
                self.counters.appended.fetch_add(appended, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.settled.fetch_add(settled, Ordering::Relaxed);
                if appended > 0 {
                    self.committed.next_seq.store(self.next_seq, Ordering::Release);
                    self.committed.appended.notify_one();
                }
                if self.next_outbox_seq != outbox_before {
                    self.committed.next_outbox_seq.send_replace(self.next_outbox_seq);
                }
                if let Some(mark) = watermark {
                    self.persisted_low_watermark = mark;
                    self.queue_low_watermark.store(mark, Ordering::Release);
                }
                if !self.released_unsettled.is_empty() {
                    for seq in &left_queue {
                        self.released_unsettled.remove(seq);
                    }
                }
                if !marked_now.is_empty() || !self.dispatched.is_empty() {
                    self.dispatched.extend(marked_now);
                    for seq in left_queue.iter().chain(&cleared_now) {
                        self.dispatched.remove(seq);
                    }
                }
                if !released_now.is_empty() {
                    self.released_unsettled.extend(released_now.iter().copied());
                    self.committed.released.lock().unwrap_or_else(|e| e.into_inner()).extend(released_now);
                    self.committed.appended.notify_one();
                }
                for p in pending {
                    // A dropped receiver means the caller went away; the data is durable anyway.
                    match p {
                        Pending::Append { reply, outcomes } => drop(reply.send(Ok(outcomes))),
                        Pending::Done(reply) => drop(reply.send(Ok(()))),
                        Pending::Resolved { reply, outcome } => drop(reply.send(Ok(outcome))),
                    }
                }
            }
            Err(e) => {
                tracing::error!(shard = %self.shard, error = %e, "synced write failed; failing its batch");
                // Sequence numbers of a failed batch are not reused: a later success persists a
                // higher next_seq, and ids stay unique whether or not the failed write reached disk.
                for p in pending {
                    let err = ShardError::Rocks { shard: self.shard.0, source: e.clone() };
                    match p {
                        Pending::Append { reply, .. } => drop(reply.send(Err(err))),
                        Pending::Done(reply) => drop(reply.send(Err(err))),
                        Pending::Resolved { reply, .. } => drop(reply.send(Err(err))),
                    }
                }
            }
        }
    }

    /// The low watermark to persist with this batch, if it changes: what the settle ops asked for,
    /// but never above a released held message still in the queue (the delivery loop may not have
    /// read it: it sits below the loop's cursor). A release alone lowers the persisted watermark to
    /// the released seq, so a restart's scan reads it.
    fn next_low_watermark(&self, requested: Option<u64>, released_now: &[u64], left_queue: &[u64]) -> Option<u64> {
        let floor = if self.released_unsettled.is_empty() && released_now.is_empty() {
            None
        } else {
            // `released_unsettled` is sorted: its first seq not leaving now is its minimum, found in
            // at most `left_queue.len() + 1` steps (not a walk of every released message).
            let left: HashSet<u64> = left_queue.iter().copied().collect();
            let unsettled = self.released_unsettled.iter().copied().find(|s| !left.contains(s));
            let now = released_now.iter().copied().filter(|s| !left.contains(s)).min();
            unsettled.into_iter().chain(now).min()
        };
        let target = match (requested, floor) {
            (Some(r), Some(f)) => r.min(f),
            (Some(r), None) => r,
            (None, Some(f)) if f < self.persisted_low_watermark => f,
            (None, _) => return None,
        };
        (target != self.persisted_low_watermark).then_some(target)
    }
}
