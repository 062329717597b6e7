//! The state-machine half of a group commit: [`apply`] turns one [`ShardEntry`] into the writes
//! of one `WriteBatch` and the outcome of each op ([`ShardApplied`]).
//!
//! A group commit is split in two (see `docs/replication-design.md` §3):
//! - **plan** ([`crate::writer`]): what only the writer (later: the Raft leader) may decide — the
//!   first sequence number of the entry (every appended message's seq, hence its id, follows from
//!   it) and the entry's clock `at_ms` (monotone: `max(wall clock, previous at_ms)`);
//! - **apply** (here): everything else, as a pure function of the entry and the state machine —
//!   the shard's column families plus [`ShardState`], which is derived from them alone (it is
//!   what [`ShardState::load`] reads back after a restart). Apply reads no wall clock, draws no
//!   random number and uses nothing a fresh replica would not have, so two stores that apply the
//!   same entries hold the same bytes (`tests/determinism.rs`).
//!
//! Failures: a read that fails fails its op alone ([`OpOutcome::Failed`]; nothing of that op is
//! added to the batch, the other ops are), which is single-node mode's rule ("one bad step fails
//! one op"). A replicated state machine must treat `Failed` as fatal instead (another replica's
//! read may succeed). An entry whose `first_seq` is below the state's `next_seq` would reuse
//! sequence numbers: it is refused whole ([`ShardApplied::rejected`]), deterministically. One
//! above it is applied: the gap is the seqs of a batch whose write failed, never reused.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ferry_model::{MessageId, MessageKey, ShardId};
use rocksdb::WriteBatch;

use crate::ShardError;
use crate::settle::{FailureReason, Settlement};
use crate::storage::{
    CF_CONTACTS, CF_DISPATCHED, CF_HELD, CF_IDEMPOTENCY, CF_IDEMPOTENCY_INTENTS, CF_META, CF_OUTBOX, CF_QUEUE,
    CF_RELEASED, CF_SESSIONS, CF_STATUS, CF_UPSTREAM_IDS, ContactRecord, DispatchRecord, HeldRecord, IdempotencyIntent,
    IdempotencyRecord, META_APPLIED_AT_MS, META_ID_SPACE, META_NEXT_OUTBOX_SEQ, META_NEXT_SEQ,
    META_QUEUE_LOW_WATERMARK, META_WEBHOOK_CURSOR, StatusRecord, Store, UPSTREAM_ID_INBOUND, UPSTREAM_ID_OUTBOUND,
    UpstreamIdRecord, encode_value, queue_key, session_key, upstream_id_key,
};
use crate::writer::{AppendAnswer, AppendOutcome, HeldAction, IdempotencyPlacement, NewMessage, ResolvedHeld};

/// One group commit, as decided by the writer: everything apply needs besides the state machine.
/// (`Debug` is short, in `crate::raft::types`: an entry is logged by openraft.)
#[derive(Clone)]
pub struct ShardEntry {
    /// The entry's clock (ms since the epoch): the writer's wall clock, never below the previous
    /// entry's. Apply's only notion of "now"; persisted as `meta/applied_at_ms`.
    pub at_ms: i64,
    /// The seq of the first message appended by this entry; the others follow in op order.
    pub first_seq: u64,
    /// Shared, so that cloning an entry (the Raft log's tail cache hands out clones to
    /// replication and apply) copies no message.
    pub ops: Arc<Vec<EntryOp>>,
}

impl ShardEntry {
    /// How many messages the entry appends (so the next entry's `first_seq` is this one's plus it).
    pub fn appended(&self) -> u64 {
        self.ops.iter().map(|op| if let EntryOp::Append { messages } = op { messages.len() as u64 } else { 0 }).sum()
    }
}

/// One op of a [`ShardEntry`]: a writer op without its reply.
#[derive(Debug, Clone)]
pub enum EntryOp {
    Append {
        messages: Vec<NewMessage>,
    },
    PutIdempotency {
        entries: Vec<(Vec<u8>, IdempotencyRecord)>,
    },
    ClearIntents {
        seqs: Vec<u64>,
    },
    Remove {
        seqs: Vec<u64>,
    },
    Settle {
        entries: Vec<Settlement>,
        low_watermark: Option<u64>,
    },
    ResolveHeld {
        seqs: Vec<u64>,
        action: HeldAction,
        at_ms: i64,
    },
    SetWebhookCursor {
        next: u64,
    },
    PutSessions {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Dispatch marks (`dispatched`, see the storage docs), stamped `at_ms` by the caller.
    MarkDispatched {
        seqs: Vec<u64>,
        at_ms: i64,
    },
    /// Deletes dispatch marks (the upstream answered that it did not take the messages).
    ClearDispatched {
        seqs: Vec<u64>,
    },
}

/// What one op of an entry did.
#[derive(Debug)]
pub enum OpOutcome {
    Appended(Vec<AppendOutcome>),
    Done,
    Resolved(ResolvedHeld),
    /// A read the op needed failed: nothing of the op is in the batch.
    Failed(ShardError),
}

/// What [`apply`] did with an entry: one outcome per op, and the state the shard is in once the
/// batch is written ([`ShardState::commit`]).
#[derive(Debug)]
pub struct ShardApplied {
    pub ops: Vec<OpOutcome>,
    /// `Some(reason)`: the whole entry was refused; the batch is empty and every op failed.
    pub rejected: Option<String>,
    pub appended: u64,
    /// Messages that left the queue through settlements.
    pub settled: u64,
    pub next_seq: u64,
    pub next_outbox_seq: u64,
    /// The low watermark written in this batch, if it changed.
    pub low_watermark: Option<u64>,
    /// Held messages released into the queue by this entry (handed to the delivery loop).
    pub released: Vec<u64>,
    /// `released` keys this entry puts: messages released by it and still queued after it.
    pub released_put: Vec<u64>,
    /// `released` keys this entry deletes: released messages that left the queue in it.
    pub released_deleted: Vec<u64>,
    /// `dispatched` keys this entry puts (and does not delete again).
    pub dispatched_put: Vec<u64>,
    /// `dispatched` keys this entry deletes: marked messages that left the queue in it.
    pub dispatched_deleted: Vec<u64>,
}

/// The part of the state machine apply keeps in memory: each field mirrors a `meta` key or a
/// column family, and is read back from them by [`ShardState::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    pub shard: ShardId,
    /// `meta/id_space`: bytes 2..10 of this shard's message ids.
    pub id_space: u64,
    /// `meta/next_seq`.
    pub next_seq: u64,
    /// `meta/next_outbox_seq`.
    pub next_outbox_seq: u64,
    /// `meta/queue_low_watermark`.
    pub low_watermark: u64,
    /// `meta/applied_at_ms`: the clock of the last applied entry (0: none yet).
    pub at_ms: i64,
    /// The keys of the `released` column family: released held messages still in the queue.
    pub released: BTreeSet<u64>,
    /// The keys of the `dispatched` column family (a queue removal deletes the mark in its batch).
    /// Empty unless the upstream writes marks, so the chat path pays nothing.
    pub dispatched: BTreeSet<u64>,
}

impl ShardState {
    /// Reads the state from the store (after [`crate::shard`]'s start-up wrote the shard's meta).
    pub fn load(store: &Store, shard: ShardId) -> Result<ShardState, ShardError> {
        let corrupt = |what: &str| ShardError::Corrupt { shard: shard.0, what: what.into() };
        let at_ms = match store.get_meta(META_APPLIED_AT_MS)? {
            None => 0,
            Some(v) => {
                i64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt("meta applied_at_ms is not an i64"))?)
            }
        };
        Ok(ShardState {
            shard,
            id_space: store.get_meta_u64(META_ID_SPACE)?.ok_or_else(|| corrupt("missing meta id_space"))?,
            next_seq: store.get_meta_u64(META_NEXT_SEQ)?.ok_or_else(|| corrupt("missing meta next_seq"))?,
            next_outbox_seq: store.get_meta_u64(META_NEXT_OUTBOX_SEQ)?.unwrap_or(1),
            low_watermark: store.get_meta_u64(META_QUEUE_LOW_WATERMARK)?.unwrap_or(1),
            at_ms,
            released: store.released_seqs()?,
            dispatched: store.dispatch_marks()?.into_iter().map(|(seq, _)| seq).collect(),
        })
    }

    /// The state after `applied`'s batch was written.
    pub fn commit(&mut self, entry: &ShardEntry, applied: &ShardApplied) {
        if applied.rejected.is_some() {
            return;
        }
        self.next_seq = applied.next_seq;
        self.next_outbox_seq = applied.next_outbox_seq;
        self.at_ms = entry.at_ms;
        if let Some(mark) = applied.low_watermark {
            self.low_watermark = mark;
        }
        for seq in &applied.released_deleted {
            self.released.remove(seq);
        }
        self.released.extend(applied.released_put.iter().copied());
        for seq in &applied.dispatched_deleted {
            self.dispatched.remove(seq);
        }
        self.dispatched.extend(applied.dispatched_put.iter().copied());
    }
}

/// Applies `entry` and writes the batch (synced if `sync`), then advances `state`: one group
/// commit without replies. For tests and tools that drive a store directly; the shard's writer
/// does the same with its failure rules around it.
pub fn apply_and_write(
    store: &Store,
    state: &mut ShardState,
    entry: &ShardEntry,
    sync: bool,
) -> Result<ShardApplied, ShardError> {
    let mut batch = WriteBatch::default();
    let applied = apply(entry, &mut batch, store, state);
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(sync);
    store.write_batch(batch, &opts).map_err(|source| ShardError::Rocks { shard: state.shard.0, source })?;
    state.commit(entry, &applied);
    Ok(applied)
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
    next_outbox_seq: u64,
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

    /// Adds one status event to the batch under the next event seq.
    fn event(&mut self, batch: &mut WriteBatch, event: &crate::storage::CallbackRecord) {
        batch.put_cf(self.store.cf(CF_OUTBOX), queue_key(self.next_outbox_seq), encode_value(event));
        self.next_outbox_seq += 1;
    }

    /// Merges `change` into the message's status record and adds its status event(s). The
    /// record must have been prefetched.
    fn record(&mut self, batch: &mut WriteBatch, seq: u64, change: &Settlement) {
        let current = match self.statuses.get(&seq) {
            Some(r) => Some(r.clone()),
            None => {
                debug_assert!(self.loaded.contains_key(&seq), "status {seq} recorded without a prefetch");
                self.loaded.get(&seq).cloned().flatten()
            }
        };
        if let Some(next) = crate::settle::merge(current.as_ref(), change) {
            batch.put_cf(self.store.cf(CF_STATUS), queue_key(seq), encode_value(&next));
            let advanced = current.as_ref().is_none_or(|c| c.status != next.status);
            // A receipt that overtook its ack creates a record without the
            // message's fields; its callback waits until the ack fills them.
            let filled = current.as_ref().is_some_and(|c| c.wa_id.is_empty()) && !next.wa_id.is_empty();
            if filled {
                // The ack filled in a record receipts created (they overtook it,
                // e.g. after a restart): report every status it went through, in
                // order, so no receiver misses `sent` or `delivered`.
                for callback in crate::settle::callbacks_through(seq, &next) {
                    self.event(batch, &callback);
                }
            } else if advanced && !next.wa_id.is_empty() {
                self.event(batch, &crate::settle::callback_for(seq, &next));
            }
            self.statuses.insert(seq, next);
        }
    }
}

/// Adds the writes of `entry` to `batch` and returns what each op did. Reads the store and
/// `state` only (see the module docs); changes neither.
pub fn apply(entry: &ShardEntry, batch: &mut WriteBatch, store: &Store, state: &ShardState) -> ShardApplied {
    let shard = state.shard;
    let appends = entry.appended();
    if appends > 0 && entry.first_seq < state.next_seq {
        let reason = format!("entry's first seq {} is below next_seq {}", entry.first_seq, state.next_seq);
        tracing::error!(%shard, %reason, "entry refused: it would reuse sequence numbers");
        return ShardApplied {
            ops: entry
                .ops
                .iter()
                .map(|_| OpOutcome::Failed(ShardError::Corrupt { shard: shard.0, what: reason.clone() }))
                .collect(),
            rejected: Some(reason),
            appended: 0,
            settled: 0,
            next_seq: state.next_seq,
            next_outbox_seq: state.next_outbox_seq,
            low_watermark: None,
            released: Vec::new(),
            released_put: Vec::new(),
            released_deleted: Vec::new(),
            dispatched_put: Vec::new(),
            dispatched_deleted: Vec::new(),
        };
    }
    let (queue, idem, intents, meta) =
        (store.cf(CF_QUEUE), store.cf(CF_IDEMPOTENCY), store.cf(CF_IDEMPOTENCY_INTENTS), store.cf(CF_META));
    let (sessions_cf, held_cf, contacts_cf) = (store.cf(CF_SESSIONS), store.cf(CF_HELD), store.cf(CF_CONTACTS));
    let upstream_ids = store.cf(CF_UPSTREAM_IDS);
    let mut status =
        StatusBatch { store, statuses: HashMap::new(), loaded: HashMap::new(), next_outbox_seq: state.next_outbox_seq };
    // Contact records as of this batch (several inbound messages of one user compose); `None`:
    // read, and absent.
    let mut contacts: HashMap<Vec<u8>, Option<ContactRecord>> = HashMap::new();
    // Inbound message ids as of this batch: `true` once recorded (on disk or earlier here).
    let mut inbound_seen: HashMap<String, bool> = HashMap::new();
    let mut settled = 0u64;
    // The highest low watermark a settle op asked for; held messages released and queue keys
    // removed in this batch; held seqs resolved in this batch.
    let mut requested_watermark: Option<u64> = None;
    let mut released_now: Vec<u64> = Vec::new();
    let mut left_queue: Vec<u64> = Vec::new();
    let mut resolved_here: HashSet<u64> = HashSet::new();
    // Seqs marked dispatched in this entry, and marks cleared in it.
    let mut marked_now: Vec<u64> = Vec::new();
    let mut cleared_now: Vec<u64> = Vec::new();
    let mut outcomes = Vec::with_capacity(entry.ops.len());
    let mut next_seq = entry.first_seq;
    // Idempotency keys appended by this entry, with their outcome and payload hash.
    let mut keyed_now: HashMap<Vec<u8>, (AppendOutcome, Vec<u8>)> = HashMap::new();
    for op in entry.ops.iter() {
        let outcome = match op {
            EntryOp::Append { messages } => 'append: {
                // A key answered before (a retry after an unknown outcome, possibly through
                // another node) answers its first id again instead of a second message. The
                // message's shard holds a record of every key it appended (the key shard's own
                // record, or a copy when the key shard is another one), so this holds whatever
                // became of the coordinator that sent it first. Every key is read first (a failed
                // read fails this op only).
                let mut earlier: HashMap<&[u8], Option<IdempotencyRecord>> = HashMap::new();
                for m in messages {
                    if let Some((key, _)) = m.idempotency.as_ref().map(IdempotencyPlacement::key)
                        && !keyed_now.contains_key(key)
                        && !earlier.contains_key(key)
                    {
                        match store.get_idempotency(key, entry.at_ms) {
                            Ok(r) => earlier.insert(key, r),
                            Err(e) => break 'append OpOutcome::Failed(e),
                        };
                    }
                }
                let mut appended = Vec::with_capacity(messages.len());
                for m in messages {
                    let seq = next_seq;
                    next_seq += 1;
                    if let Some((key, payload_hash)) = m.idempotency.as_ref().map(IdempotencyPlacement::key) {
                        let first = keyed_now.get(key).cloned().or_else(|| {
                            earlier.get(key).and_then(Option::as_ref).map(|r| {
                                let outcome = AppendOutcome {
                                    seq: MessageId::decode(&r.message_id).map_or(0, |k| k.seq),
                                    message_id: MessageId::from_stored(r.message_id.clone()),
                                    held: false,
                                    answer: AppendAnswer::New,
                                };
                                (outcome, r.payload_hash.clone())
                            })
                        });
                        if let Some((first, first_hash)) = first {
                            // Its seq stays unused (a hole in the queue).
                            let answer = if first_hash == payload_hash {
                                AppendAnswer::Replay
                            } else {
                                AppendAnswer::KeyConflict
                            };
                            appended.push(AppendOutcome { answer, ..first });
                            continue;
                        }
                    }
                    let message_id = MessageId::encode(MessageKey { shard, space: state.id_space, seq });
                    let held = m.held_template.is_some();
                    match &m.held_template {
                        None => batch.put_cf(queue, queue_key(seq), encode_value(&m.record)),
                        Some(template_name) => {
                            let record =
                                HeldRecord { record: Some(m.record.clone()), template_name: template_name.clone() };
                            batch.put_cf(held_cf, queue_key(seq), encode_value(&record));
                        }
                    }
                    let record = |payload_hash: &Vec<u8>| IdempotencyRecord {
                        message_id: message_id.as_str().to_owned(),
                        wa_id: m.record.wa_id.clone(),
                        payload_hash: payload_hash.clone(),
                        created_at_ms: m.record.accepted_at_ms,
                    };
                    match &m.idempotency {
                        None => {}
                        Some(IdempotencyPlacement::Here { key, payload_hash }) => {
                            batch.put_cf(idem, key, encode_value(&record(payload_hash)));
                        }
                        Some(IdempotencyPlacement::Elsewhere { key_shard, key, payload_hash }) => {
                            // The copy that answers a retry here (above); the key shard's record
                            // follows from the intent.
                            batch.put_cf(idem, key, encode_value(&record(payload_hash)));
                            let intent = IdempotencyIntent {
                                key_shard: *key_shard as u32,
                                key: key.clone(),
                                record: Some(record(payload_hash)),
                            };
                            batch.put_cf(intents, queue_key(seq), encode_value(&intent));
                        }
                    }
                    let outcome = AppendOutcome { seq, message_id, held, answer: AppendAnswer::New };
                    if let Some((key, payload_hash)) = m.idempotency.as_ref().map(IdempotencyPlacement::key) {
                        keyed_now.insert(key.to_vec(), (outcome.clone(), payload_hash.to_vec()));
                    }
                    appended.push(outcome);
                }
                OpOutcome::Appended(appended)
            }
            EntryOp::PutIdempotency { entries } => {
                for (key, record) in entries {
                    batch.put_cf(idem, key, encode_value(record));
                }
                OpOutcome::Done
            }
            EntryOp::ClearIntents { seqs } => {
                for seq in seqs {
                    batch.delete_cf(intents, queue_key(*seq));
                }
                OpOutcome::Done
            }
            EntryOp::Remove { seqs } => {
                // Queue keys are written exactly once (sequence numbers are never reused), so
                // SingleDelete is valid: its tombstone vanishes with the put at compaction
                // instead of lingering to the bottom level.
                for &seq in seqs {
                    batch.single_delete_cf(queue, queue_key(seq));
                    left_queue.push(seq);
                }
                OpOutcome::Done
            }
            EntryOp::Settle { entries, low_watermark } => 'settle: {
                if entries.iter().any(|c| matches!(c, Settlement::Receipt { .. } | Settlement::Inbound(_)))
                    && store.take_event_settle_failure()
                {
                    break 'settle OpOutcome::Failed(store.injected_error());
                }
                // Every read first: a failed one fails this op only.
                let reads = status
                    .prefetch(
                        shard,
                        entries.iter().filter(|c| !matches!(c, Settlement::Inbound(_))).map(Settlement::seq),
                    )
                    .and_then(|()| {
                        for change in entries {
                            if let Settlement::Inbound(m) = change {
                                if let std::collections::hash_map::Entry::Vacant(slot) =
                                    inbound_seen.entry(m.id.clone())
                                {
                                    let read = store.get_upstream_id(UPSTREAM_ID_INBOUND, slot.key());
                                    slot.insert(readable(shard, "inbound id", read)?.is_some());
                                }
                                let key = session_key(&m.to, &m.from);
                                if let std::collections::hash_map::Entry::Vacant(slot) = contacts.entry(key) {
                                    let read = store.get_contact_by_key(slot.key());
                                    slot.insert(readable(shard, "contact", read)?);
                                }
                            }
                        }
                        Ok(())
                    });
                if let Err(e) = reads {
                    tracing::error!(%shard, error = %e, "settle op not applied: a read failed");
                    break 'settle OpOutcome::Failed(e);
                }
                for change in entries {
                    if let Settlement::Inbound(m) = change {
                        // The same inbound message again (an upstream redelivering it): already
                        // recorded, with its event.
                        if inbound_seen.insert(m.id.clone(), true) == Some(true) {
                            continue;
                        }
                        let record = UpstreamIdRecord { seq: 0, at_ms: entry.at_ms };
                        batch.put_cf(upstream_ids, upstream_id_key(UPSTREAM_ID_INBOUND, &m.id), encode_value(&record));
                        let key = session_key(&m.to, &m.from);
                        let current = contacts.get(&key).cloned().flatten();
                        if current.as_ref().is_none_or(|c| c.last_inbound_ms < m.at_ms) {
                            let record =
                                ContactRecord { last_inbound_ms: m.at_ms, profile_name: m.profile_name.clone() };
                            batch.put_cf(contacts_cf, &key, encode_value(&record));
                            contacts.insert(key, Some(record));
                        }
                        status.event(batch, &crate::settle::inbound_callback(m));
                        continue;
                    }
                    let seq = change.seq();
                    // The upstream's id of a sent message, so its statuses match without a marker.
                    if let Settlement::Sent { message, .. } = change
                        && !message.upstream_message_id.is_empty()
                    {
                        let record = UpstreamIdRecord { seq, at_ms: entry.at_ms };
                        let key = upstream_id_key(UPSTREAM_ID_OUTBOUND, &message.upstream_message_id);
                        batch.put_cf(upstream_ids, key, encode_value(&record));
                    }
                    if change.leaves_queue() {
                        batch.single_delete_cf(queue, queue_key(seq));
                        left_queue.push(seq);
                        settled += 1;
                    }
                    status.record(batch, seq, change);
                }
                if let Some(mark) = *low_watermark {
                    requested_watermark = Some(requested_watermark.map_or(mark, |m| m.max(mark)));
                }
                OpOutcome::Done
            }
            EntryOp::ResolveHeld { seqs, action, at_ms } => 'resolve: {
                let at_ms = *at_ms;
                // Every read first: a failed one fails this op only.
                let mut records = Vec::with_capacity(seqs.len());
                let reads = seqs.iter().filter(|seq| !resolved_here.contains(seq)).try_for_each(|&seq| {
                    match readable(shard, "held", store.get_held(seq))? {
                        Some(HeldRecord { record: Some(record), .. }) => records.push((seq, record)),
                        Some(HeldRecord { record: None, .. }) => {
                            tracing::error!(%shard, seq, "held record without its message; left as is")
                        }
                        None => {} // already resolved
                    }
                    Ok(())
                });
                let reads = reads.and_then(|()| status.prefetch(shard, records.iter().map(|(seq, _)| *seq)));
                if let Err(e) = reads {
                    tracing::error!(%shard, error = %e, "resolve op not applied: a read failed");
                    break 'resolve OpOutcome::Failed(e);
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
                    } else if let HeldAction::Drop(reason) = action {
                        outcome.dropped.push(seq);
                        reason.clone()
                    } else {
                        batch.put_cf(queue, queue_key(seq), encode_value(&record));
                        released_now.push(seq);
                        outcome.released.push(seq);
                        continue;
                    };
                    let message = crate::settle::status_base(&record);
                    status.record(batch, seq, &Settlement::Failed { seq, message, at_ms, reason });
                }
                OpOutcome::Resolved(outcome)
            }
            EntryOp::SetWebhookCursor { next } => {
                batch.put_cf(meta, META_WEBHOOK_CURSOR, next.to_be_bytes());
                OpOutcome::Done
            }
            EntryOp::PutSessions { entries } => {
                for (key, snapshot) in entries {
                    let mut value = Vec::with_capacity(1 + snapshot.len());
                    value.push(crate::storage::VALUE_VERSION);
                    value.extend_from_slice(snapshot);
                    batch.put_cf(sessions_cf, key, value);
                }
                OpOutcome::Done
            }
            EntryOp::MarkDispatched { seqs, at_ms } => 'mark: {
                // Only a message still queued is marked: one that left the queue (settled or
                // removed while its request waited for the pacer) would keep its mark forever,
                // and a repair at open would be a write outside the log. Messages appended in
                // this very entry are not markable (nobody has their seq yet).
                let mut queued = Vec::with_capacity(seqs.len());
                for &seq in seqs {
                    if left_queue.contains(&seq) {
                        continue;
                    }
                    match store.is_queued(seq) {
                        Ok(true) => queued.push(seq),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(%shard, error = %e, "dispatch mark not applied: a read failed");
                            break 'mark OpOutcome::Failed(e);
                        }
                    }
                }
                let value = encode_value(&DispatchRecord { at_ms: *at_ms });
                for seq in queued {
                    batch.put_cf(store.cf(CF_DISPATCHED), queue_key(seq), &value);
                    marked_now.push(seq);
                }
                OpOutcome::Done
            }
            EntryOp::ClearDispatched { seqs } => {
                for seq in seqs {
                    if state.dispatched.contains(seq) || marked_now.contains(seq) {
                        batch.delete_cf(store.cf(CF_DISPATCHED), queue_key(*seq));
                        marked_now.retain(|s| s != seq);
                        cleared_now.push(*seq);
                    }
                }
                OpOutcome::Done
            }
        };
        outcomes.push(outcome);
    }
    let next_outbox_seq = status.next_outbox_seq;
    let next_seq = if appends > 0 { next_seq } else { state.next_seq };
    if next_seq != state.next_seq {
        batch.put_cf(meta, META_NEXT_SEQ, next_seq.to_be_bytes());
    }
    if next_outbox_seq != state.next_outbox_seq {
        batch.put_cf(meta, META_NEXT_OUTBOX_SEQ, next_outbox_seq.to_be_bytes());
    }
    if entry.at_ms != state.at_ms {
        batch.put_cf(meta, META_APPLIED_AT_MS, entry.at_ms.to_be_bytes());
    }
    // Released messages have a key in `released` while they are queued (the watermark floor).
    // Without any, nothing to look up (most batches).
    let (mut released_put, mut released_deleted) = (Vec::new(), Vec::new());
    let mut floor = None;
    if !state.released.is_empty() || !released_now.is_empty() {
        let left: HashSet<u64> = left_queue.iter().copied().collect();
        released_deleted = state.released.iter().copied().filter(|s| left.contains(s)).collect();
        released_put = released_now.iter().copied().filter(|s| !left.contains(s)).collect();
        let released_cf = store.cf(CF_RELEASED);
        for seq in &released_deleted {
            batch.delete_cf(released_cf, queue_key(*seq));
        }
        for seq in &released_put {
            batch.put_cf(released_cf, queue_key(*seq), []);
        }
        // `released` is sorted: its first seq not leaving now is its minimum, found in at most
        // `left.len() + 1` steps (not a walk of every released message).
        let kept = state.released.iter().copied().find(|s| !left.contains(s));
        floor = kept.into_iter().chain(released_put.iter().copied()).min();
    }
    // A message leaving the queue takes its dispatch mark with it (marked earlier, or in this
    // very entry: the delete comes after the put in the batch).
    let (mut dispatched_put, mut dispatched_deleted) = (Vec::new(), Vec::new());
    if !state.dispatched.is_empty() || !marked_now.is_empty() {
        let left: HashSet<u64> = left_queue.iter().copied().collect();
        let marked_here: HashSet<u64> = marked_now.iter().copied().collect();
        dispatched_deleted =
            left_queue.iter().copied().filter(|s| state.dispatched.contains(s) || marked_here.contains(s)).collect();
        for seq in &dispatched_deleted {
            batch.delete_cf(store.cf(CF_DISPATCHED), queue_key(*seq));
        }
        // Cleared marks were deleted by their op (in op order: a later mark of the seq stays).
        dispatched_deleted.extend(cleared_now.iter().copied().filter(|s| !marked_here.contains(s)));
        dispatched_put = marked_now.into_iter().filter(|s| !left.contains(s)).collect();
    }
    let low_watermark = next_low_watermark(state, requested_watermark, floor);
    if let Some(mark) = low_watermark {
        batch.put_cf(meta, META_QUEUE_LOW_WATERMARK, mark.to_be_bytes());
    }
    ShardApplied {
        ops: outcomes,
        rejected: None,
        appended: appends,
        settled,
        next_seq,
        next_outbox_seq,
        low_watermark,
        released: released_now,
        released_put,
        released_deleted,
        dispatched_put,
        dispatched_deleted,
    }
}

/// The low watermark to persist with this batch, if it changes: what the settle ops asked for,
/// but never above `floor`, the first released held message still in the queue after this batch
/// (the delivery loop may not have read it: it sits below the loop's cursor). A release alone
/// lowers the persisted watermark to the released seq, so a restart's scan reads it.
fn next_low_watermark(state: &ShardState, requested: Option<u64>, floor: Option<u64>) -> Option<u64> {
    let target = match (requested, floor) {
        (Some(r), Some(f)) => r.min(f),
        (Some(r), None) => r,
        (None, Some(f)) if f < state.low_watermark => f,
        (None, _) => return None,
    };
    (target != state.low_watermark).then_some(target)
}
