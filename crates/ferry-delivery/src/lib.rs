//! ferry's delivery: stage "deliver until the server acks" of the pipeline.
//!
//! `ferry-ingest` → `ferry-coordinator` → `ferry-shard` (durable queue) → **`ferry-delivery`** →
//! the chat server (`proto/ferry/chat/v1`, or `ferry chatsim`).
//!
//! [`DeliveryEngine::start`] runs, for every shard of the node, one delivery loop (`engine.rs`,
//! the upstream-independent core: window, FIFO per recipient, retries, TTL, settle) over one
//! [`upstream::Upstream`] (the seam: the chat upstream, `upstream/chat/`, its link to the
//! chat server and its encryption sessions; or the WhatsApp Cloud API upstream,
//! `upstream/cloud/`, [`DeliveryEngine::start_cloud`]), supervised (`supervise.rs`): a panicking loop is
//! restarted, a panicking background task is a temporary failure of what it held. Encryption
//! sessions come from `ferry-session` (Signal-style X3DH + symmetric ratchet; not
//! wire-compatible with WhatsApp), cached per shard and persisted in the shard's `sessions`
//! column family.
//!
//! One file per stage: `window.rs` (read the queue; per-recipient cap), `recipients.rs` (FIFO,
//! readiness, dispatch), `answers.rs` (what an outcome does), `retry.rs` (backoff, 4^X streaks,
//! sender/upstream gates), `expiry.rs` (TTL), `settle.rs` (facts → durable records),
//! `inbound.rs` (statuses and inbound messages), `other_shards.rs`, `supervise.rs`.
//!
//! Invariants (written as absences):
//! - No message leaves a shard's queue before the server acked it, or it failed for good (TTL
//!   expired: 410; recipient invalid: 1013; per-user marketing limit: 131049); the removal and the
//!   status are one synced write.
//! - No false `failed`: a message whose TTL passes while an attempt of it is unanswered waits for
//!   that answer (an ack makes it `sent`); only one with no attempt outstanding expires (410).
//! - No retry limit short of the TTL: temporary failures back off (exponential, jitter) forever,
//!   rate limits back off 4^X; the one exception is a message refused `MARKETING_LIMITED` more
//!   than `marketing_limit_retries` times in a row (failed, 131049).
//! - No recipient waits for another: a rate-limited recipient is blocked alone, the shard's other
//!   recipients keep being dispatched.
//! - No more than `window` messages of a shard in memory, whatever the backlog on disk, and no
//!   more than `max_window_per_recipient` of one recipient: a recipient's surplus stays on disk.
//! - No encryption with a message counter that was not first reserved durably, so a crash never
//!   makes a session reuse a key.
//! - No receipt is acknowledged to the server before the status change it caused is durable.
//! - No spawned task ends unheard: each is joined with its id; a panic is counted, logged and
//!   retried, and a dead shard loop is restarted (health shows it until then).

mod answers;
pub mod config;
mod engine;
mod expiry;
#[doc(hidden)]
pub mod failpoint;
mod inbound;
mod other_shards;
mod recipients;
mod retry;
mod settle;
pub mod stats;
mod supervise;
pub mod upstream;
mod window;

/// The metric names of the loop, where `ferry-http` reads them.
pub mod shard_loop {
    pub use crate::stats::ACCEPT_TO_ACK_SECONDS;
}

use std::sync::Arc;
use std::time::Duration;

use ferry_model::clock::SharedClock;
use ferry_proto::chat::v1::Hello;
use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_shard::Shard;

use crate::upstream::Connect;
use crate::upstream::chat::ChatConnector;
use crate::upstream::cloud::{CloudConnector, CloudShared};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::DeliveryConfig;
pub use stats::{DeliverySnapshot, LinkState, ShardDeliveryStats};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid upstream address `{address}`: {reason}")]
    BadUpstream { address: String, reason: String },
    #[error("invalid delivery config: {0}")]
    Config(String),
}

/// The delivery loops of a node.
pub struct DeliveryEngine {
    stats: Vec<Arc<ShardDeliveryStats>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DeliveryEngine {
    /// Starts a delivery loop and a link for every shard. `upstream` is the chat server's address
    /// (`host:port` or `http://host:port`). Connection failures are not errors: the links retry.
    pub fn start(
        shards: &[Arc<Shard>],
        upstream: &str,
        config: DeliveryConfig,
        clock: SharedClock,
    ) -> Result<DeliveryEngine, DeliveryError> {
        config.validate().map_err(DeliveryError::Config)?;
        let uri = if upstream.contains("://") { upstream.to_owned() } else { format!("http://{upstream}") };
        let bad = |reason: String| DeliveryError::BadUpstream { address: upstream.to_owned(), reason };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let chat_config = config.clone();
        Ok(DeliveryEngine::spawn(shards, config, clock, |shard, stats| {
            // One HTTP/2 connection per shard, like the reference's one gateway link per shard.
            let client = ChatClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(16 * 1024 * 1024)
                .max_encoding_message_size(16 * 1024 * 1024);
            // The channel is the shard's, whichever node leads it: the client id is the shard's
            // id space (a single node's: its node id), so receipts for messages an earlier leader
            // sent reach the current one. The term is filled in at each connect (fencing).
            let hello = Hello {
                client_id: format!("{:016x}", shard.id_space()),
                channel: u32::from(shard.id().0),
                ..Hello::default()
            };
            ChatConnector { shard: shard.clone(), client, hello, config: chat_config.clone(), stats }
        }))
    }

    /// Starts a delivery loop for every shard over the WhatsApp Cloud API upstream
    /// (`upstream/cloud/`), sharing `cloud` (client, numbers and their pacers, the webhook hub).
    pub fn start_cloud(
        shards: &[Arc<Shard>],
        cloud: Arc<CloudShared>,
        config: DeliveryConfig,
        clock: SharedClock,
    ) -> Result<DeliveryEngine, DeliveryError> {
        config.validate().map_err(DeliveryError::Config)?;
        Ok(DeliveryEngine::spawn(shards, config, clock, |shard, stats| CloudConnector {
            shard: shard.clone(),
            shared: cloud.clone(),
            stats,
        }))
    }

    fn spawn<C: Connect>(
        shards: &[Arc<Shard>],
        config: DeliveryConfig,
        clock: SharedClock,
        mut connector: impl FnMut(&Arc<Shard>, Arc<ShardDeliveryStats>) -> C,
    ) -> DeliveryEngine {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut stats = Vec::with_capacity(shards.len());
        let mut tasks = Vec::with_capacity(shards.len());
        let all_shards: Arc<[Arc<Shard>]> = shards.iter().cloned().collect();
        for shard in shards {
            let shard_stats = Arc::new(ShardDeliveryStats::default());
            let delivery = supervise::ShardDelivery {
                shard: shard.clone(),
                all_shards: all_shards.clone(),
                config: config.clone(),
                clock: clock.clone(),
                connect: connector(shard, shard_stats.clone()),
                stats: shard_stats.clone(),
            };
            tasks.push(tokio::spawn(supervise::supervise_shard(delivery, shutdown_rx.clone())));
            stats.push(shard_stats);
        }
        DeliveryEngine { stats, shutdown, tasks }
    }

    /// Per-shard counters, in shard order.
    pub fn shard_stats(&self) -> &[Arc<ShardDeliveryStats>] {
        &self.stats
    }

    /// The sum of every shard's counters.
    pub fn totals(&self) -> DeliverySnapshot {
        self.stats.iter().map(|s| s.snapshot()).fold(DeliverySnapshot::default(), |a, b| a + b)
    }

    /// Stops the loops: they stop sending, write what they settled, and return. Messages still in
    /// flight stay queued and are delivered after the next start. Returns after `grace` at most.
    ///
    /// Cancel-safe: the stop is signalled before the first await, so dropping the future early
    /// only stops waiting for the loops (they still stop and write what they settled).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let all = futures_join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("delivery loops did not stop within the grace period");
        }
    }
}

/// Cancel-safe: dropping it only stops waiting (the tasks run on).
async fn futures_join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
