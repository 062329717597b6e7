//! The write ops a shard takes: each is submitted to its writer's mailbox (refused at once when the
//! mailbox is full) and answered once its batch is durable.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::Shard;
use crate::ShardError;
use crate::settle::Settlement;
use crate::storage::{IdempotencyRecord, session_key};
use crate::writer::{AppendOutcome, HeldAction, NewMessage, Reply, ResolvedHeld, WriteOp};

impl Shard {
    /// Submits an op, or refuses at once with [`ShardError::Overloaded`] when the mailbox holds
    /// `queue_capacity` messages already.
    pub(super) fn submit(&self, op: WriteOp) -> Result<(), ShardError> {
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
        op: impl FnOnce(Reply<T>) -> WriteOp,
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

    /// Deletes idempotency intents whose records reached their key shard. Rides on the next batch;
    /// a crash before that only means the intents are replayed (idempotently) at start-up.
    pub fn clear_intents(&self, seqs: Vec<u64>) {
        if let Err(e) = self.submit(WriteOp::ClearIntents { seqs }) {
            tracing::debug!(shard = %self.id, error = %e, "intents not cleared now; replayed at start-up");
        }
    }
}

/// The writer's reply to a [`Shard::request`], or `Stopped` if the writer went away first.
/// Dropping the future does not cancel the op.
async fn answer<T>(rx: oneshot::Receiver<Result<T, ShardError>>, shard: u16) -> Result<T, ShardError> {
    rx.await.unwrap_or(Err(ShardError::Stopped(shard)))
}
