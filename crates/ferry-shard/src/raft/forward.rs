//! The seam between a replicated shard and the cluster transport: a follower hands the ops it was
//! given (sends arriving at this node, key-shard records, held resolutions) to the shard's leader
//! node, which commits them and answers each op.
//!
//! The shard encodes the request and decodes the reply (both opaque bytes to the transport);
//! `ferry-cluster` implements [`Forwarder`] over the internal gRPC API and, on the leader, hands
//! the bytes to the shard that serves them.

use std::future::Future;
use std::pin::Pin;

/// An encoded forwarded batch's answer, or why there is none.
pub type ForwardFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, ForwardError>> + Send + 'static>>;

/// Sends a shard's forwarded ops to the node that leads it.
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `request` (an encoded batch of ops of shard `shard`, opaque to the transport) to node
    /// `leader` and returns the encoded reply.
    fn forward(&self, leader: u64, shard: u16, request: Vec<u8>) -> ForwardFuture;
}

/// Why a forwarded batch has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// Nothing was sent (no connection to the node): the ops did nothing.
    #[error("node {node} is unreachable: {detail}")]
    Unreachable { node: u64, detail: String },
    /// The batch may have reached the node (the call failed or timed out after it was sent): its
    /// ops may or may not have been committed.
    #[error("forwarding to node {node} failed after sending: {detail}")]
    Indeterminate { node: u64, detail: String },
    /// The node answered with an error for the whole batch (e.g. it does not host the shard).
    #[error("node {node} refused the forwarded batch: {detail}")]
    Refused { node: u64, detail: String },
}

// ---- the wire format of a forwarded batch (opaque to the transport) ----
//
// Request: the ops as an entry ([`encode_entry`] with `at_ms` and `first_seq` 0: the leader plans
// them). Reply: one result per op, in order.

use super::types::proto::OpReplyProto;
use super::types::{DecodeError, OpReply, bad, decode_entry, encode_entry, op_reply_of, op_reply_proto};
use crate::ShardError;
use crate::apply::{EntryOp, ShardEntry};

#[derive(Clone, PartialEq, prost::Message)]
struct ForwardReplyProto {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<ForwardedOpProto>,
}

/// `error_kind`: 0 none (`reply` holds the answer), 1 overloaded (`pending`, `capacity`),
/// 2 stopped, 3 unavailable, 4 indeterminate, 5 any other error (`detail`).
#[derive(Clone, PartialEq, prost::Message)]
struct ForwardedOpProto {
    #[prost(message, optional, tag = "1")]
    reply: Option<OpReplyProto>,
    #[prost(uint32, tag = "2")]
    error_kind: u32,
    #[prost(string, tag = "3")]
    detail: String,
    #[prost(uint64, tag = "4")]
    pending: u64,
    #[prost(uint64, tag = "5")]
    capacity: u64,
}

/// The request of a forwarded batch.
pub(crate) fn encode_forward_request(ops: Vec<EntryOp>) -> Vec<u8> {
    encode_entry(&ShardEntry { at_ms: 0, first_seq: 0, ops: std::sync::Arc::new(ops) })
}

/// The ops of a forwarded batch.
pub(crate) fn decode_forward_request(bytes: &[u8]) -> Result<Vec<EntryOp>, DecodeError> {
    // Just decoded: the only owner, so no copy.
    Ok(std::sync::Arc::unwrap_or_clone(decode_entry(bytes)?.ops))
}

/// The reply of a forwarded batch: one result per op.
pub(crate) fn encode_forward_reply(results: &[Result<OpReply, ShardError>]) -> Vec<u8> {
    let ops = results
        .iter()
        .map(|r| match r {
            Ok(reply) => ForwardedOpProto { reply: Some(op_reply_proto(reply)), ..ForwardedOpProto::default() },
            Err(e) => {
                let mut op = ForwardedOpProto { detail: e.to_string(), ..ForwardedOpProto::default() };
                op.error_kind = match e {
                    ShardError::Overloaded { pending, capacity, .. } => {
                        op.pending = *pending as u64;
                        op.capacity = *capacity as u64;
                        1
                    }
                    ShardError::Stopped(_) => 2,
                    ShardError::Unavailable { detail, .. } => {
                        op.detail = detail.clone();
                        3
                    }
                    ShardError::Indeterminate { detail, .. } => {
                        op.detail = detail.clone();
                        4
                    }
                    _ => 5,
                };
                op
            }
        })
        .collect();
    prost::Message::encode_to_vec(&ForwardReplyProto { ops })
}

/// Decodes [`encode_forward_reply`]'s bytes (errors as this node's [`ShardError`]s of `shard`).
pub(crate) fn decode_forward_reply(shard: u16, bytes: &[u8]) -> Result<Vec<Result<OpReply, ShardError>>, DecodeError> {
    const W: &str = "forward reply";
    let p: ForwardReplyProto = prost::Message::decode(bytes).map_err(|e| bad(W, e))?;
    p.ops
        .into_iter()
        .map(|op| {
            Ok(match (op.error_kind, op.reply) {
                (0, Some(reply)) => Ok(op_reply_of(reply, W)?),
                (0, None) => return Err(bad(W, "an op without reply or error")),
                (1, _) => {
                    Err(ShardError::Overloaded { shard, pending: op.pending as usize, capacity: op.capacity as usize })
                }
                (2, _) => Err(ShardError::Stopped(shard)),
                (3, _) => Err(ShardError::Unavailable { shard, detail: op.detail }),
                (4, _) => Err(ShardError::Indeterminate { shard, detail: op.detail }),
                (_, _) => Err(ShardError::Remote { shard, detail: op.detail }),
            })
        })
        .collect()
}
