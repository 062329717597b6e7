//! Forwarded op batches: the client ([`ClusterForwarder`], the shard's `Forwarder`) and the
//! server's hand-off to the node ([`ForwardTarget`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_shard::raft::{ForwardError, ForwardFuture, Forwarder};

use crate::network::{Peers, is_connect_error};
use crate::pb;
use crate::secret::is_refused;

/// What the node serves forwarded batches with (implemented over its shards). An `Err` of
/// [`ForwardError::Refused`] or [`ForwardError::Unreachable`] tells the caller nothing was done
/// (it is answered as a refusal); [`ForwardError::Indeterminate`] that it may have been.
pub trait ForwardTarget: Send + Sync + 'static {
    /// Serves `body` (an encoded batch of ops of shard `shard`) and returns the encoded reply.
    fn handle(&self, shard: u16, body: Vec<u8>) -> ForwardFuture;
}

/// Sends forwarded batches to the node leading the shard over the internal API.
///
/// Outcomes: connecting failed or the node is not in `addrs` → `Unreachable` (nothing was sent);
/// the server refused the batch before serving it (wrong secret, no forward target, the target's
/// refusal) → `Refused`; anything else after the request may have left (reset, no answer within
/// the timeout) → `Indeterminate`.
pub struct ClusterForwarder {
    peers: Arc<Peers>,
    addrs: BTreeMap<u64, String>,
    timeout: Duration,
}

impl ClusterForwarder {
    /// `addrs`: every node's cluster address by node id; `timeout`: the deadline of one batch.
    pub fn new(peers: Arc<Peers>, addrs: BTreeMap<u64, String>, timeout: Duration) -> ClusterForwarder {
        ClusterForwarder { peers, addrs, timeout }
    }
}

impl Forwarder for ClusterForwarder {
    fn forward(&self, leader: u64, shard: u16, request: Vec<u8>) -> ForwardFuture {
        let client = match self.addrs.get(&leader) {
            None => Err(format!("node {leader} is not a member of the cluster")),
            Some(addr) => self.peers.client(addr),
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let mut client = client.map_err(|detail| ForwardError::Unreachable { node: leader, detail })?;
            let request = pb::ForwardRequest { shard: shard as u32, body: request };
            match tokio::time::timeout(timeout, client.forward(request)).await {
                Err(_) => {
                    Err(ForwardError::Indeterminate { node: leader, detail: format!("no answer within {timeout:?}") })
                }
                Ok(Ok(reply)) => Ok(reply.into_inner().body),
                Ok(Err(status)) if is_connect_error(&status) => {
                    Err(ForwardError::Unreachable { node: leader, detail: status.to_string() })
                }
                Ok(Err(status)) if is_refused(&status) => {
                    Err(ForwardError::Refused { node: leader, detail: status.message().to_owned() })
                }
                Ok(Err(status)) => Err(ForwardError::Indeterminate { node: leader, detail: status.to_string() }),
            }
        })
    }
}
