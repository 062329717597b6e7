//! What a shard's writer is asked to do: the write ops (each with the channel its caller awaits),
//! the public types of their answers, and how a group commit's ops become one [`ShardEntry`]
//! ([`Planner`]) and its answers go back ([`Waiter`]). A replicated shard's proposer plans the same
//! entries (`raft/proposer.rs`); a forwarded op is a request again through [`join_op`].

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::ShardError;
use crate::apply::{EntryOp, OpOutcome, ShardEntry};
use crate::settle::{FailureReason, Settlement};
use crate::storage::{IdempotencyRecord, QueueRecord};
use ferry_model::{MessageId, ShardId};

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
    /// Test support: the thread that takes it panics (see `Shard::panic_writer_for_test`).
    PanicForTest,
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
            | WriteOp::Stop
            | WriteOp::PanicForTest => 0,
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
        WriteOp::Hold { .. } | WriteOp::Stop | WriteOp::PanicForTest => {
            unreachable!("holds, stops and test panics are handled by the writer loop")
        }
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
