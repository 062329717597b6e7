//! The openraft type configuration of a shard's Raft group ([`ShardRaft`]) and the encodings of
//! what it replicates.
//!
//! - **App data** (`D`) is a [`ShardEntry`]: one group commit as the leader planned it. It is
//!   encoded with prost ([`encode_entry`] / [`decode_entry`]); its serde form (openraft's
//!   `serde` feature wants one) is the bytes of that encoding, never JSON over message payloads.
//! - **Response** (`R`) is a [`ShardResponse`]: what the leader hands back to the proposer once
//!   the entry is applied (per-op outcomes, and what to publish as committed). It never crosses the
//!   network; its serde form is also its prost encoding.
//! - `Debug` of both is short (counts and seqs, never payloads): openraft logs entries.

use std::fmt;
use std::path::PathBuf;

use ferry_model::{MessageId, MessageStatus};
use serde::{Deserialize, Serialize};

use crate::apply::{EntryOp, OpOutcome, ShardApplied, ShardEntry};
use crate::settle::{FailureReason, InboundRecord, Settlement};
use crate::writer::{AppendAnswer, AppendOutcome, HeldAction, IdempotencyPlacement, NewMessage, ResolvedHeld};

openraft::declare_raft_types!(
    /// The Raft type configuration of one shard group.
    pub ShardRaft:
        D            = ShardEntry,
        R            = ShardResponse,
        NodeId       = u64,
        Node         = PeerNode,
        Entry        = openraft::Entry<ShardRaft>,
        SnapshotData = CheckpointSnapshot,
        AsyncRuntime = openraft::TokioRuntime,
        Responder    = openraft::impls::OneshotResponder<ShardRaft>,
);

/// A replica's node as the group's membership records it: its internal (cluster) address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub addr: String,
}

/// A snapshot's data: a RocksDB checkpoint directory of the shard (see `state_machine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSnapshot {
    pub dir: PathBuf,
}

/// One op's outcome as the proposer gets it back. A replicated state machine never answers
/// `Failed` (a failed read stops the group instead, see `state_machine`), so there is none here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpReply {
    Appended(Vec<AppendOutcome>),
    Done,
    Resolved(ResolvedHeld),
}

/// What applying one log entry returned: empty for blank and membership entries.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ShardResponse {
    /// One per op of the entry, in order.
    pub ops: Vec<OpReply>,
    /// `Some(reason)`: the entry was refused whole (deterministically, on every replica).
    pub rejected: Option<String>,
    /// The state after the entry: what the proposer publishes as committed.
    pub next_seq: u64,
    pub next_outbox_seq: u64,
    pub low_watermark: Option<u64>,
    /// Held messages the entry released into the queue.
    pub released: Vec<u64>,
}

impl ShardResponse {
    /// The response of an applied entry, or the first failed op's error (fatal for a replica).
    pub fn from_applied(applied: ShardApplied) -> Result<ShardResponse, crate::ShardError> {
        let mut ops = Vec::with_capacity(applied.ops.len());
        for op in applied.ops {
            ops.push(match op {
                OpOutcome::Appended(a) => OpReply::Appended(a),
                OpOutcome::Done => OpReply::Done,
                OpOutcome::Resolved(r) => OpReply::Resolved(r),
                // A refused entry fails every op with the refusal: that is an answer, not an
                // error of this replica.
                OpOutcome::Failed(_) if applied.rejected.is_some() => OpReply::Done,
                OpOutcome::Failed(e) => return Err(e),
            });
        }
        if applied.rejected.is_some() {
            ops.clear();
        }
        Ok(ShardResponse {
            ops,
            rejected: applied.rejected,
            next_seq: applied.next_seq,
            next_outbox_seq: applied.next_outbox_seq,
            low_watermark: applied.low_watermark,
            released: applied.released,
        })
    }
}

impl fmt::Debug for ShardResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let appended: usize = self.ops.iter().map(|o| if let OpReply::Appended(a) = o { a.len() } else { 0 }).sum();
        f.debug_struct("ShardResponse")
            .field("ops", &self.ops.len())
            .field("appended", &appended)
            .field("rejected", &self.rejected)
            .field("next_seq", &self.next_seq)
            .field("next_outbox_seq", &self.next_outbox_seq)
            .field("released", &self.released.len())
            .finish()
    }
}

/// Short: the clock, the seqs and a count per op kind, never a payload.
impl fmt::Debug for ShardEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .ops
            .iter()
            .map(|op| match op {
                EntryOp::Append { messages } => format!("append({})", messages.len()),
                EntryOp::PutIdempotency { entries } => format!("idempotency({})", entries.len()),
                EntryOp::ClearIntents { seqs } => format!("clear_intents({})", seqs.len()),
                EntryOp::Remove { seqs } => format!("remove({})", seqs.len()),
                EntryOp::Settle { entries, .. } => format!("settle({})", entries.len()),
                EntryOp::ResolveHeld { seqs, .. } => format!("resolve_held({})", seqs.len()),
                EntryOp::SetWebhookCursor { next } => format!("webhook_cursor({next})"),
                EntryOp::PutSessions { entries } => format!("sessions({})", entries.len()),
                EntryOp::MarkDispatched { seqs, .. } => format!("mark_dispatched({})", seqs.len()),
                EntryOp::ClearDispatched { seqs } => format!("clear_dispatched({})", seqs.len()),
            })
            .collect();
        f.debug_struct("ShardEntry")
            .field("at_ms", &self.at_ms)
            .field("first_seq", &self.first_seq)
            .field("appended", &self.appended())
            .field("ops", &kinds)
            .finish()
    }
}

/// The prost messages of the log entry encoding. Tags are part of the on-disk format of
/// `raft_log` (see the storage docs): never reuse one.
pub mod proto {
    use crate::storage::{IdempotencyRecord, QueueRecord, StatusRecord};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ShardEntryProto {
        #[prost(int64, tag = "1")]
        pub at_ms: i64,
        #[prost(uint64, tag = "2")]
        pub first_seq: u64,
        #[prost(message, repeated, tag = "3")]
        pub ops: Vec<EntryOpProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryOpProto {
        #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
        pub op: Option<Op>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Op {
        #[prost(message, tag = "1")]
        Append(AppendProto),
        #[prost(message, tag = "2")]
        PutIdempotency(PutIdempotencyProto),
        #[prost(message, tag = "3")]
        ClearIntents(SeqsProto),
        #[prost(message, tag = "4")]
        Remove(SeqsProto),
        #[prost(message, tag = "5")]
        Settle(SettleProto),
        #[prost(message, tag = "6")]
        ResolveHeld(ResolveHeldProto),
        #[prost(uint64, tag = "7")]
        SetWebhookCursor(u64),
        #[prost(message, tag = "8")]
        PutSessions(PutSessionsProto),
        #[prost(message, tag = "9")]
        MarkDispatched(SeqsProto),
        #[prost(message, tag = "10")]
        ClearDispatched(SeqsProto),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AppendProto {
        #[prost(message, repeated, tag = "1")]
        pub messages: Vec<NewMessageProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NewMessageProto {
        #[prost(message, optional, tag = "1")]
        pub record: Option<QueueRecord>,
        #[prost(string, optional, tag = "2")]
        pub held_template: Option<String>,
        /// 0: no idempotency key; 1: the record is written here; 2: an intent for `key_shard`.
        #[prost(uint32, tag = "3")]
        pub placement: u32,
        #[prost(uint32, tag = "4")]
        pub key_shard: u32,
        #[prost(bytes = "vec", tag = "5")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "6")]
        pub payload_hash: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutIdempotencyProto {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<KeyedIdempotency>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyedIdempotency {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(message, optional, tag = "2")]
        pub record: Option<IdempotencyRecord>,
    }

    /// Seqs, and a clock where the op has one (`MarkDispatched`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SeqsProto {
        #[prost(uint64, repeated, tag = "1")]
        pub seqs: Vec<u64>,
        #[prost(int64, tag = "2")]
        pub at_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SettleProto {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<SettlementProto>,
        #[prost(uint64, optional, tag = "2")]
        pub low_watermark: Option<u64>,
    }

    /// One settlement; `kind`: 0 sent, 1 failed, 2 receipt, 3 inbound, 4 late failure.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SettlementProto {
        #[prost(uint32, tag = "1")]
        pub kind: u32,
        #[prost(uint64, tag = "2")]
        pub seq: u64,
        #[prost(message, optional, tag = "3")]
        pub message: Option<StatusRecord>,
        #[prost(int64, tag = "4")]
        pub at_ms: i64,
        #[prost(message, optional, tag = "5")]
        pub reason: Option<FailureReasonProto>,
        /// Receipt: `MessageStatus::code()`.
        #[prost(uint32, tag = "6")]
        pub status: u32,
        #[prost(message, optional, tag = "7")]
        pub inbound: Option<InboundProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FailureReasonProto {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub title: String,
        #[prost(string, tag = "3")]
        pub details: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InboundProto {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub from: String,
        #[prost(string, tag = "3")]
        pub to: String,
        #[prost(int64, tag = "4")]
        pub at_ms: i64,
        #[prost(string, tag = "5")]
        pub message_type: String,
        #[prost(string, tag = "6")]
        pub text_body: String,
        #[prost(string, tag = "7")]
        pub profile_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResolveHeldProto {
        #[prost(uint64, repeated, tag = "1")]
        pub seqs: Vec<u64>,
        /// Absent: release; present: drop with this reason.
        #[prost(message, optional, tag = "2")]
        pub drop: Option<FailureReasonProto>,
        #[prost(int64, tag = "3")]
        pub at_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutSessionsProto {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ShardResponseProto {
        #[prost(message, repeated, tag = "1")]
        pub ops: Vec<OpReplyProto>,
        #[prost(string, optional, tag = "2")]
        pub rejected: Option<String>,
        #[prost(uint64, tag = "3")]
        pub next_seq: u64,
        #[prost(uint64, tag = "4")]
        pub next_outbox_seq: u64,
        #[prost(uint64, optional, tag = "5")]
        pub low_watermark: Option<u64>,
        #[prost(uint64, repeated, tag = "6")]
        pub released: Vec<u64>,
    }

    /// `kind`: 0 appended (`appended`), 1 done, 2 resolved (`released`, `dropped`, `expired`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OpReplyProto {
        #[prost(uint32, tag = "1")]
        pub kind: u32,
        #[prost(message, repeated, tag = "2")]
        pub appended: Vec<AppendOutcomeProto>,
        #[prost(uint64, repeated, tag = "3")]
        pub released: Vec<u64>,
        #[prost(uint64, repeated, tag = "4")]
        pub dropped: Vec<u64>,
        #[prost(uint64, repeated, tag = "5")]
        pub expired: Vec<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AppendOutcomeProto {
        #[prost(uint64, tag = "1")]
        pub seq: u64,
        #[prost(string, tag = "2")]
        pub message_id: String,
        #[prost(bool, tag = "3")]
        pub held: bool,
        /// 0 new, 1 replay, 2 key conflict (`AppendAnswer`).
        #[prost(uint32, tag = "4")]
        pub answer: u32,
    }
}

use proto::*;

/// Why bytes are not an encoded entry or response.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {detail}")]
pub struct DecodeError {
    pub what: &'static str,
    pub detail: String,
}

pub(crate) fn bad(what: &'static str, detail: impl fmt::Display) -> DecodeError {
    DecodeError { what, detail: detail.to_string() }
}

fn reason_proto(r: &FailureReason) -> FailureReasonProto {
    FailureReasonProto { code: r.code, title: r.title.clone(), details: r.details.clone() }
}

fn reason_of(r: FailureReasonProto) -> FailureReason {
    FailureReason { code: r.code, title: r.title, details: r.details }
}

fn settlement_proto(s: &Settlement) -> SettlementProto {
    let mut p = SettlementProto::default();
    match s {
        Settlement::Sent { seq, message, at_ms } => {
            (p.kind, p.seq, p.message, p.at_ms) = (0, *seq, Some(message.clone()), *at_ms);
        }
        Settlement::Failed { seq, message, at_ms, reason } => {
            (p.kind, p.seq, p.message, p.at_ms) = (1, *seq, Some(message.clone()), *at_ms);
            p.reason = Some(reason_proto(reason));
        }
        Settlement::Receipt { seq, status, at_ms } => {
            (p.kind, p.seq, p.status, p.at_ms) = (2, *seq, status.code(), *at_ms);
        }
        Settlement::LateFailure { seq, at_ms, reason } => {
            (p.kind, p.seq, p.at_ms) = (4, *seq, *at_ms);
            p.reason = Some(reason_proto(reason));
        }
        Settlement::Inbound(m) => {
            p.kind = 3;
            p.inbound = Some(InboundProto {
                id: m.id.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                at_ms: m.at_ms,
                message_type: m.message_type.clone(),
                text_body: m.text_body.clone(),
                profile_name: m.profile_name.clone(),
            });
        }
    }
    p
}

fn settlement_of(p: SettlementProto) -> Result<Settlement, DecodeError> {
    const W: &str = "settlement";
    let message = || p.message.clone().ok_or_else(|| bad(W, "no message"));
    Ok(match p.kind {
        0 => Settlement::Sent { seq: p.seq, message: message()?, at_ms: p.at_ms },
        1 => Settlement::Failed {
            seq: p.seq,
            message: message()?,
            at_ms: p.at_ms,
            reason: reason_of(p.reason.clone().ok_or_else(|| bad(W, "failed without a reason"))?),
        },
        2 => Settlement::Receipt {
            seq: p.seq,
            status: MessageStatus::from_code(p.status).ok_or_else(|| bad(W, format!("status code {}", p.status)))?,
            at_ms: p.at_ms,
        },
        3 => {
            let m = p.inbound.ok_or_else(|| bad(W, "inbound without its message"))?;
            Settlement::Inbound(InboundRecord {
                id: m.id,
                from: m.from,
                to: m.to,
                at_ms: m.at_ms,
                message_type: m.message_type,
                text_body: m.text_body,
                profile_name: m.profile_name,
            })
        }
        4 => Settlement::LateFailure {
            seq: p.seq,
            at_ms: p.at_ms,
            reason: reason_of(p.reason.clone().ok_or_else(|| bad(W, "late failure without a reason"))?),
        },
        k => return Err(bad(W, format!("kind {k}"))),
    })
}

fn message_proto(m: &NewMessage) -> NewMessageProto {
    let (placement, key_shard, key, payload_hash) = match &m.idempotency {
        None => (0, 0, Vec::new(), Vec::new()),
        Some(IdempotencyPlacement::Here { key, payload_hash }) => (1, 0, key.clone(), payload_hash.clone()),
        Some(IdempotencyPlacement::Elsewhere { key_shard, key, payload_hash }) => {
            (2, u32::from(*key_shard), key.clone(), payload_hash.clone())
        }
    };
    NewMessageProto {
        record: Some(m.record.clone()),
        held_template: m.held_template.clone(),
        placement,
        key_shard,
        key,
        payload_hash,
    }
}

fn message_of(p: NewMessageProto) -> Result<NewMessage, DecodeError> {
    const W: &str = "appended message";
    let idempotency = match p.placement {
        0 => None,
        1 => Some(IdempotencyPlacement::Here { key: p.key, payload_hash: p.payload_hash }),
        2 => Some(IdempotencyPlacement::Elsewhere {
            key_shard: u16::try_from(p.key_shard).map_err(|_| bad(W, format!("key shard {}", p.key_shard)))?,
            key: p.key,
            payload_hash: p.payload_hash,
        }),
        n => return Err(bad(W, format!("idempotency placement {n}"))),
    };
    Ok(NewMessage {
        record: p.record.ok_or_else(|| bad(W, "no queue record"))?,
        idempotency,
        held_template: p.held_template,
    })
}

fn seqs(seqs: &[u64]) -> SeqsProto {
    SeqsProto { seqs: seqs.to_vec(), at_ms: 0 }
}

/// The prost encoding of an entry (what `raft_log` stores and AppendEntries carries).
pub fn encode_entry(entry: &ShardEntry) -> Vec<u8> {
    let ops = entry
        .ops
        .iter()
        .map(|op| {
            let op = match op {
                EntryOp::Append { messages } => {
                    Op::Append(AppendProto { messages: messages.iter().map(message_proto).collect() })
                }
                EntryOp::PutIdempotency { entries } => Op::PutIdempotency(PutIdempotencyProto {
                    entries: entries
                        .iter()
                        .map(|(key, record)| KeyedIdempotency { key: key.clone(), record: Some(record.clone()) })
                        .collect(),
                }),
                EntryOp::ClearIntents { seqs: s } => Op::ClearIntents(seqs(s)),
                EntryOp::Remove { seqs: s } => Op::Remove(seqs(s)),
                EntryOp::Settle { entries, low_watermark } => Op::Settle(SettleProto {
                    entries: entries.iter().map(settlement_proto).collect(),
                    low_watermark: *low_watermark,
                }),
                EntryOp::ResolveHeld { seqs, action, at_ms } => Op::ResolveHeld(ResolveHeldProto {
                    seqs: seqs.clone(),
                    drop: match action {
                        HeldAction::Release => None,
                        HeldAction::Drop(reason) => Some(reason_proto(reason)),
                    },
                    at_ms: *at_ms,
                }),
                EntryOp::SetWebhookCursor { next } => Op::SetWebhookCursor(*next),
                EntryOp::PutSessions { entries } => Op::PutSessions(PutSessionsProto {
                    entries: entries
                        .iter()
                        .map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() })
                        .collect(),
                }),
                EntryOp::MarkDispatched { seqs, at_ms } => {
                    Op::MarkDispatched(SeqsProto { seqs: seqs.clone(), at_ms: *at_ms })
                }
                EntryOp::ClearDispatched { seqs: s } => Op::ClearDispatched(seqs(s)),
            };
            EntryOpProto { op: Some(op) }
        })
        .collect();
    prost::Message::encode_to_vec(&ShardEntryProto { at_ms: entry.at_ms, first_seq: entry.first_seq, ops })
}

/// Decodes [`encode_entry`]'s bytes.
pub fn decode_entry(bytes: &[u8]) -> Result<ShardEntry, DecodeError> {
    const W: &str = "shard entry";
    let p: ShardEntryProto = prost::Message::decode(bytes).map_err(|e| bad(W, e))?;
    let mut ops = Vec::with_capacity(p.ops.len());
    for op in p.ops {
        ops.push(match op.op.ok_or_else(|| bad(W, "op of an unknown kind"))? {
            Op::Append(a) => {
                EntryOp::Append { messages: a.messages.into_iter().map(message_of).collect::<Result<_, _>>()? }
            }
            Op::PutIdempotency(p) => EntryOp::PutIdempotency {
                entries: p
                    .entries
                    .into_iter()
                    .map(|e| Ok((e.key, e.record.ok_or_else(|| bad(W, "idempotency entry without a record"))?)))
                    .collect::<Result<_, DecodeError>>()?,
            },
            Op::ClearIntents(s) => EntryOp::ClearIntents { seqs: s.seqs },
            Op::Remove(s) => EntryOp::Remove { seqs: s.seqs },
            Op::Settle(s) => EntryOp::Settle {
                entries: s.entries.into_iter().map(settlement_of).collect::<Result<_, _>>()?,
                low_watermark: s.low_watermark,
            },
            Op::ResolveHeld(r) => EntryOp::ResolveHeld {
                seqs: r.seqs,
                action: match r.drop {
                    None => HeldAction::Release,
                    Some(reason) => HeldAction::Drop(reason_of(reason)),
                },
                at_ms: r.at_ms,
            },
            Op::SetWebhookCursor(next) => EntryOp::SetWebhookCursor { next },
            Op::PutSessions(s) => {
                EntryOp::PutSessions { entries: s.entries.into_iter().map(|e| (e.key, e.value)).collect() }
            }
            Op::MarkDispatched(s) => EntryOp::MarkDispatched { seqs: s.seqs, at_ms: s.at_ms },
            Op::ClearDispatched(s) => EntryOp::ClearDispatched { seqs: s.seqs },
        });
    }
    Ok(ShardEntry { at_ms: p.at_ms, first_seq: p.first_seq, ops: std::sync::Arc::new(ops) })
}

/// The prost form of one op's reply.
pub(crate) fn op_reply_proto(op: &OpReply) -> OpReplyProto {
    match op {
        OpReply::Appended(a) => OpReplyProto {
            kind: 0,
            appended: a
                .iter()
                .map(|o| AppendOutcomeProto {
                    seq: o.seq,
                    message_id: o.message_id.as_str().to_owned(),
                    held: o.held,
                    answer: match o.answer {
                        AppendAnswer::New => 0,
                        AppendAnswer::Replay => 1,
                        AppendAnswer::KeyConflict => 2,
                    },
                })
                .collect(),
            ..OpReplyProto::default()
        },
        OpReply::Done => OpReplyProto { kind: 1, ..OpReplyProto::default() },
        OpReply::Resolved(h) => OpReplyProto {
            kind: 2,
            released: h.released.clone(),
            dropped: h.dropped.clone(),
            expired: h.expired.clone(),
            ..OpReplyProto::default()
        },
    }
}

/// One op's reply from its prost form.
pub(crate) fn op_reply_of(op: OpReplyProto, what: &'static str) -> Result<OpReply, DecodeError> {
    Ok(match op.kind {
        0 => OpReply::Appended(
            op.appended
                .into_iter()
                .map(|o| {
                    let answer = match o.answer {
                        0 => AppendAnswer::New,
                        1 => AppendAnswer::Replay,
                        2 => AppendAnswer::KeyConflict,
                        a => return Err(bad(what, format!("append answer {a}"))),
                    };
                    Ok(AppendOutcome {
                        seq: o.seq,
                        message_id: MessageId::from_stored(o.message_id),
                        held: o.held,
                        answer,
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        1 => OpReply::Done,
        2 => OpReply::Resolved(ResolvedHeld { released: op.released, dropped: op.dropped, expired: op.expired }),
        k => return Err(bad(what, format!("op reply kind {k}"))),
    })
}

/// The prost encoding of a response.
pub fn encode_response(r: &ShardResponse) -> Vec<u8> {
    prost::Message::encode_to_vec(&ShardResponseProto {
        ops: r.ops.iter().map(op_reply_proto).collect(),
        rejected: r.rejected.clone(),
        next_seq: r.next_seq,
        next_outbox_seq: r.next_outbox_seq,
        low_watermark: r.low_watermark,
        released: r.released.clone(),
    })
}

/// Decodes [`encode_response`]'s bytes.
pub fn decode_response(bytes: &[u8]) -> Result<ShardResponse, DecodeError> {
    const W: &str = "shard response";
    let p: ShardResponseProto = prost::Message::decode(bytes).map_err(|e| bad(W, e))?;
    let ops = p.ops.into_iter().map(|op| op_reply_of(op, W)).collect::<Result<_, DecodeError>>()?;
    Ok(ShardResponse {
        ops,
        rejected: p.rejected,
        next_seq: p.next_seq,
        next_outbox_seq: p.next_outbox_seq,
        low_watermark: p.low_watermark,
        released: p.released,
    })
}

/// Bytes in any serde form: a byte string where the format has one, else a sequence of u8.
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the bytes of a prost encoding")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

impl Serialize for ShardEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&encode_entry(self))
    }
}

impl<'de> Deserialize<'de> for ShardEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ShardEntry, D::Error> {
        let bytes = d.deserialize_byte_buf(BytesVisitor)?;
        decode_entry(&bytes).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ShardResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&encode_response(self))
    }
}

impl<'de> Deserialize<'de> for ShardResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ShardResponse, D::Error> {
        let bytes = d.deserialize_byte_buf(BytesVisitor)?;
        decode_response(&bytes).map_err(serde::de::Error::custom)
    }
}
