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
