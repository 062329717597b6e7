//! Settling: stage "make outcomes durable" of the delivery loop.
//!
//! The rest of the loop records plain [`Fact`]s (a message was sent or failed, a status or an
//! inbound message arrived); only this file turns them into the shard's `Settlement` records.
//! The facts of one turn are written as one `Settle` (queue delete + status record in one synced
//! batch, with the new low watermark). A message stays in memory (`Settling`) until that write is
//! durable; if it fails, the batch is written again after [`SETTLE_RETRY`] (never resent: the
//! upstream has it). Upstream events are acknowledged only after their batch is durable, so a
//! crash makes the upstream push them again.

use std::collections::HashSet;
use std::time::Duration;

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::{FailureReason, InboundRecord, Settlement, ShardError};
use tokio::time::Instant;

use crate::engine::{Phase, ShardLoop, Timer};
use crate::failpoint::{self, Point};
use crate::supervise::Joined;
use crate::upstream::{EventToken, Upstream};

/// Delay before writing a failed settle batch again.
pub(crate) const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// What the loop learned, in plain terms (no storage records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fact {
    /// The upstream accepted the queued message `seq` at `at_ms` (its own id of it:
    /// `upstream_id`, stored with the status): it leaves the queue as `sent`.
    Sent { seq: u64, at_ms: i64, upstream_id: Option<String> },
    /// The queued message `seq` will never be delivered: it leaves the queue as `failed`.
    Failed { seq: u64, code: u32, title: String, details: String },
    /// A status of message `seq` (of the shard the fact is written to).
    Status { seq: u64, status: MessageStatus, at_ms: i64 },
    /// The upstream reported that message `seq`, which it had taken, failed after all.
    LateFailure { seq: u64, at_ms: i64, code: u32, title: String, details: String },
    /// A user's message to a business number (written to the shard that owns the user).
    Inbound { id: String, from: String, to: String, at_ms: i64, kind: String, text: String, profile: String },
}

/// What a settle task holds: one batch, kept to write it again if the write failed (or the task
/// panicked).
pub(crate) struct SettleBatch {
    pub(crate) seqs: Vec<u64>,
    pub(crate) entries: Vec<Settlement>,
    pub(crate) receipt_ids: Vec<EventToken>,
    /// Written to another shard (`other_shards.rs`): inbound messages of its users, statuses of
    /// its messages.
    pub(crate) other_shard: Option<ShardId>,
}

/// The shard record of a fact that needs no loaded message (a status, an inbound message).
pub(crate) fn unqueued_settlement(fact: Fact) -> Option<Settlement> {
    match fact {
        Fact::Status { seq, status, at_ms } => Some(Settlement::Receipt { seq, status, at_ms }),
        Fact::LateFailure { seq, at_ms, code, title, details } => {
            Some(Settlement::LateFailure { seq, at_ms, reason: FailureReason { code, title, details } })
        }
        Fact::Inbound { id, from, to, at_ms, kind, text, profile } => Some(Settlement::Inbound(InboundRecord {
            id,
            from,
            to,
            at_ms,
            message_type: kind,
            text_body: text,
            profile_name: profile,
        })),
        Fact::Sent { .. } | Fact::Failed { .. } => None,
    }
}

impl<U: Upstream> ShardLoop<U> {
    /// Records a fact of this shard, written with this turn's batch.
    pub(crate) fn record(&mut self, fact: Fact) {
        let entry = match fact {
            Fact::Sent { seq, at_ms, upstream_id } => {
                let Some(m) = self.messages.get(&seq) else { return };
                let mut message = status_base(&m.record);
                message.upstream_message_id = upstream_id.unwrap_or_default();
                Settlement::Sent { seq, message, at_ms }
            }
            Fact::Failed { seq, code, title, details } => {
                let Some(m) = self.messages.get(&seq) else { return };
                let reason = FailureReason { code, title, details };
                Settlement::Failed { seq, message: status_base(&m.record), at_ms: self.clock.now_ms(), reason }
            }
            other => match unqueued_settlement(other) {
                Some(entry) => entry,
                None => return,
            },
        };
        self.to_settle.push(entry);
    }

    /// `seq` failed for good: it leaves the queue as `failed` once this turn's batch is durable.
    pub(crate) fn fail(&mut self, seq: u64, code: u32, title: &str, details: &str) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        m.phase = Phase::Settling;
        self.stats.add(&self.stats.failed, 1);
        self.record(Fact::Failed { seq, code, title: title.to_owned(), details: details.to_owned() });
    }

    /// Writes everything settled this turn as one batch, with the new low watermark.
    pub(crate) fn flush_settlements(&mut self) {
        self.flush_other_shards();
        if self.to_settle.is_empty() && self.receipts_to_ack.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.to_settle);
        let receipt_ids = std::mem::take(&mut self.receipts_to_ack);
        let seqs: Vec<u64> = entries.iter().filter(|s| s.leaves_queue()).map(Settlement::seq).collect();
        // Every queue key below the lowest message still held (other than those settled now) is
        // gone once this batch is durable; writes are applied in order, so earlier settle
        // batches are durable before this one.
        let leaving: HashSet<u64> = seqs.iter().copied().collect();
        // Nor past a message left on disk below the cursor (a capped recipient's surplus).
        let low_watermark = self
            .messages
            .keys()
            .copied()
            .find(|s| !leaving.contains(s))
            .unwrap_or(self.cursor)
            .min(self.cursor)
            .min(self.admission.floor().unwrap_or(u64::MAX));
        if entries.is_empty() {
            self.ack_receipts(receipt_ids);
            return;
        }
        let watermark = (low_watermark > self.shard.queue_low_watermark()).then_some(low_watermark);
        let panics = entries.iter().any(|e| match e {
            Settlement::Sent { message, .. } | Settlement::Failed { message, .. } => {
                failpoint::hit(Point::SettleTask, &message.wa_id)
            }
            _ => false,
        });
        let write = if panics { None } else { Some(self.shard.settle_durably(entries.clone(), watermark)) };
        let held = SettleBatch { seqs, entries, receipt_ids, other_shard: None };
        self.settle_tasks.spawn(held, async move {
            match write {
                None => panic!("failpoint: the settle task panicked before writing its batch"),
                Some(Ok(wait)) => wait.await,
                Some(Err(e)) => Err(e),
            }
        });
    }

    /// A settle task ended: its write's result; a panic is a failed write (the batch is written
    /// again).
    pub(crate) fn on_settle_joined(&mut self, joined: Joined<Result<(), ShardError>, SettleBatch>) {
        let (batch, result) = match joined {
            Joined::Done { output, held } => (held, output.map_err(|e| e.to_string())),
            Joined::Panicked { held, reason } => {
                self.stats.add(&self.stats.task_panics, 1);
                (held, Err(format!("the settle task panicked: {reason}")))
            }
        };
        match batch.other_shard {
            Some(owner) => self.on_other_shard_settled(owner, batch, result),
            None => self.on_settled(batch, result),
        }
    }

    fn on_settled(&mut self, done: SettleBatch, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let mut sent = 0;
                for seq in &done.seqs {
                    if let Some(m) = self.messages.remove(seq) {
                        sent += 1;
                        let key = m.key;
                        self.admission.removed(&key);
                        self.forget_recipient_if_idle(&key);
                    }
                }
                self.stats.add(&self.stats.settled, sent);
                self.ack_receipts(done.receipt_ids);
            }
            Err(e) => {
                // The upstream has these messages: write the outcomes again (never resend). They
                // stay `Settling` meanwhile, holding the watermark below them.
                tracing::error!(shard = %self.shard.id(), error = %e, "recording outcomes failed; writing them again in 1 s");
                let retry_pending = self.settle_retry_pending();
                self.deferred_settle.extend(done.entries);
                self.deferred_receipts.extend(done.receipt_ids);
                if !retry_pending {
                    self.add_timer(Instant::now() + SETTLE_RETRY, Timer::RetrySettle);
                }
            }
        }
    }

    /// A `Timer::RetrySettle` is scheduled (some deferred batch waits for it).
    pub(crate) fn settle_retry_pending(&self) -> bool {
        !self.deferred_settle.is_empty() || !self.deferred_receipts.is_empty() || self.other_shards.has_deferred()
    }

    /// Acknowledges upstream events whose records are durable.
    pub(crate) fn ack_receipts(&mut self, receipt_ids: Vec<EventToken>) {
        if receipt_ids.is_empty() {
            return;
        }
        if let Err(why) = self.upstream.acknowledge(receipt_ids) {
            self.reset_upstream(why.0);
        }
    }
}
