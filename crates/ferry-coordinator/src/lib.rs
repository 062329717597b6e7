//! The coordinator of a ferry node: stage "validate, route, deduplicate" between ingest and the
//! shards.
//!
//! It owns the node's shards ([`ferry_shard::Shard`]), validates each message
//! (`ferry_model::validate`), routes it by its normalized recipient with the stable function in
//! [`routing`], enforces idempotency keys, and hands each shard one append per request (a
//! `SendBatch` becomes at most one append per shard). It answers only once every append it made
//! is durable.
//!
//! Invariants:
//! - No message id leaves this crate before the shard reported its batch synced.
//! - A rejected message writes nothing (validation happens before any shard sees it).
//! - Routing never uses `std::hash` or `ahash`.
//! - An idempotency key that answered once answers the same id for 24 h, across restarts:
//!   start-up replays pending idempotency intents before the node serves ([`Coordinator::open`]).
//! - No send outcome goes uncounted in the metrics and none is counted twice ([`telemetry`]).
//! - A paced template's message (`[pacing] templates`) never enters the delivery queue until it is
//!   released; it keeps the id answered at send time whether released or dropped.
//!
//! Modules, one job each: `send` (validate and route in the caller's future, then the send's own
//! task appends and answers), `idempotency` (key locks, records not yet on their key shard, intent
//! replay), `pacing` (held messages: [`Coordinator::resolve_held`], the rule),
//! `lookup` ([`Coordinator::get_message`]), [`telemetry`] and [`config`].

pub mod config;
mod idempotency;
mod lookup;
mod pacing;
mod send;
pub mod telemetry;

/// Stable routing lives in `ferry-model` (delivery uses it too); re-exported here for callers.
pub use ferry_model::routing;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_model::clock::SharedClock;
use ferry_model::message::OutboundMessage;
use ferry_model::{ApiError, ErrorCode, MessageId, ShardId, WaId, phone};
use ferry_shard::{NodeLayout, Shard, ShardError, ShardStats, SharedResources, StorageLayout, open_node_shards};

use crate::idempotency::Keys;
use crate::send::Core;

pub use config::{AfterHold, CoordinatorConfig, PacingConfig, WindowPolicy};
pub use lookup::{FailureView, MessageView};
pub use pacing::HeldCounts;

/// How long a user's message keeps the customer-service window open.
pub const CUSTOMER_SERVICE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// The longest idempotency key accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;

/// One message to send, as the ingest layer hands it in.
#[derive(Debug, Clone)]
pub struct SendCommand {
    pub message: OutboundMessage,
    /// Empty or `None`: no idempotency.
    pub idempotency_key: Option<String>,
    /// The business number to send from; `None` means the configured default sender.
    pub sender: Option<String>,
}

/// A durably accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: MessageId,
    pub wa_id: WaId,
    /// True when an earlier send with the same idempotency key answered this id.
    pub idempotent_replay: bool,
    /// The message is held (a paced template's): status `held_for_quality_assessment`. For a
    /// replay: whether it is still held now.
    pub held: bool,
}

/// Errors opening a node.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("rocksdb: {0}")]
    Rocks(#[from] ferry_shard::storage::RocksError),
}

pub struct Coordinator {
    layout: NodeLayout,
    /// The shards and idempotency state, shared with the tasks that finish sends (`send.rs`).
    core: Arc<Core>,
    clock: SharedClock,
    country_code: String,
    window: WindowPolicy,
    default_sender: WaId,
    /// `CoordinatorConfig::allowed_senders`, normalized.
    allowed_senders: Option<HashSet<WaId>>,
    pacing: PacingConfig,
    paced: HashSet<String>,
    /// Set by [`Coordinator::close`]: the pacing rule stops.
    closed: AtomicBool,
    /// Per shard: no message below this seq is held. Scans of the `held` column family start here,
    /// so the rule's once-a-second pass does not step over the tombstones of resolved messages
    /// (seqs only grow, so a message held later is always above it). 0 after a start.
    held_floor: Vec<std::sync::atomic::AtomicU64>,
}

impl Coordinator {
    /// Opens (or creates) the node's data dir and every shard, then replays pending idempotency
    /// intents so that keys are consistent before the first send.
    ///
    /// Cancel safety: cancel-safe (a dropped open leaves intents on disk; the next open replays them).
    pub async fn open(config: &CoordinatorConfig) -> Result<Coordinator, OpenError> {
        Coordinator::open_with_clock(config, ferry_model::clock::system()).await
    }

    /// [`Coordinator::open`] with a clock of the caller's choosing (tests move time for TTLs).
    ///
    /// Cancel safety: as [`Coordinator::open`].
    pub async fn open_with_clock(config: &CoordinatorConfig, clock: SharedClock) -> Result<Coordinator, OpenError> {
        let create_as =
            if config.storage.shared_wal { StorageLayout::SharedDatabase } else { StorageLayout::DatabasePerShard };
        let (layout, resources) = Coordinator::open_layout(config, create_as)?;
        let shards = open_node_shards(&layout, &resources, &config.shard)?.into_iter().map(Arc::new).collect();
        let coordinator = Coordinator::with_shards(config, clock, layout, resources, shards)?;
        Keys::replay_intents(&coordinator.core.shards).await?;
        Ok(coordinator)
    }

    /// Opens the node's data dir with every shard a replica of its Raft group (issue #12):
    /// `replication(i)` gives shard `i`'s transport and identity. Writes are answered once
    /// committed on a majority of replicas; a node that does not lead a shard forwards its writes.
    ///
    /// Not done here (yet): the start-up replay of idempotency intents, which needs every group's
    /// leader. A keyed send cut between its two writes is still answered with its first id when
    /// retried through any node (the message's shard answers it at apply); until the intent is
    /// replayed its key shard lacks the record, so a reuse of the key for a message to another
    /// recipient is not refused as a conflict (see ARCHITECTURE.md, "Replication").
    pub async fn open_replicated<N: ferry_shard::raft::openraft::RaftNetworkFactory<ferry_shard::raft::ShardRaft>>(
        config: &CoordinatorConfig,
        clock: SharedClock,
        mut replication: impl FnMut(u16) -> ferry_shard::Replication<N>,
    ) -> Result<Coordinator, OpenError> {
        let (layout, resources) = Coordinator::open_layout(config, StorageLayout::DatabasePerShard)?;
        if layout.storage() != StorageLayout::DatabasePerShard {
            return Err(OpenError::Shard(ShardError::Layout(format!(
                "data dir {} was created by a single node (all shards in one database, format 2); \
                 a replicated node needs a data dir of its own",
                layout.root.display()
            ))));
        }
        let mut shards = Vec::with_capacity(config.shards as usize);
        for i in 0..config.shards {
            let dir = layout.shard_dir(i);
            let shard =
                Shard::open_replicated(&dir, ShardId(i), config.shards, &resources, &config.shard, replication(i))
                    .await?;
            shards.push(Arc::new(shard));
        }
        Coordinator::with_shards(config, clock, layout, resources, shards)
    }

    fn open_layout(
        config: &CoordinatorConfig,
        create_as: StorageLayout,
    ) -> Result<(NodeLayout, SharedResources), OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let layout = NodeLayout::open_or_create(&config.data_dir, config.shards, create_as)?;
        let resources = SharedResources::new(&config.storage)?;
        Ok((layout, resources))
    }

    fn with_shards(
        config: &CoordinatorConfig,
        clock: SharedClock,
        layout: NodeLayout,
        resources: SharedResources,
        shards: Vec<Arc<Shard>>,
    ) -> Result<Coordinator, OpenError> {
        let default_sender = phone::normalize(&config.default_sender, &config.country_code)
            .map_err(|e| OpenError::Config(format!("default_sender: {e}")))?;
        let allowed_senders = match &config.allowed_senders {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|s| phone::normalize(s, &config.country_code))
                    .collect::<Result<HashSet<_>, _>>()
                    .map_err(|e| OpenError::Config(format!("allowed sender: {e}")))?,
            ),
        };
        let core = Arc::new(Core { shards, keys: Keys::new(), closed: AtomicBool::new(false), _resources: resources });
        let coordinator = Coordinator {
            layout,
            core,
            clock,
            country_code: config.country_code.clone(),
            window: config.customer_service_window,
            default_sender,
            allowed_senders,
            paced: config.pacing.templates.iter().cloned().collect(),
            pacing: config.pacing.clone(),
            closed: AtomicBool::new(false),
            held_floor: (0..config.shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        };
        Ok(coordinator)
    }

    pub fn shard_count(&self) -> u16 {
        self.core.shards.len() as u16
    }

    pub fn node_id(&self) -> u64 {
        self.layout.meta.node_id
    }

    /// Whether a decoded message id was issued by one of this node's shards: its shard exists
    /// and its id space is that shard's ([`Shard::id_space`]).
    pub fn issued_here(&self, key: &ferry_model::MessageKey) -> bool {
        self.core.issued_here(key)
    }

    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.core.shards.iter().map(|s| s.stats()).collect()
    }

    /// The node's shards, in index order (the delivery loops share them).
    /// Normalizes a recipient as sends do (`recipient` names the field in errors).
    pub fn normalize_recipient(&self, raw: &str) -> Result<WaId, ApiError> {
        phone::normalize(raw, &self.country_code)
    }

    /// The shard that owns `wa_id`'s messages.
    pub fn shard_for(&self, wa_id: &WaId) -> ShardId {
        routing::shard_for_recipient(wa_id, self.shard_count())
    }

    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.core.shards
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Failpoint for tests: when set, sends stop after the durable append and never write the
    /// idempotency record to a different key shard, leaving the intent exactly as a crash between
    /// the two writes would.
    #[doc(hidden)]
    pub fn failpoint_skip_key_shard_write(&self, skip: bool) {
        self.core.keys.set_skip_key_shard_write(skip);
    }

    /// Test hook: when set, a send with an idempotency record for another key shard stops after
    /// its durable append (messages and intents written) and waits forever, holding the record
    /// write back and the send unanswered: a SIGKILL then always lands between the two writes.
    /// `ferry serve` sets it when `FERRY_TEST_HOLD_KEY_SHARD_WRITES` is in its environment.
    #[doc(hidden)]
    pub fn failpoint_hold_key_shard_writes(&self, hold: bool) {
        self.core.keys.set_hold_key_shard_write(hold);
    }

    /// Test support: see [`Shard::pause_writer_for_test`].
    #[doc(hidden)]
    pub fn pause_shard_writer_for_test(&self, shard: ShardId) -> ferry_shard::shard::WriterHold {
        self.core.shards[shard.index()].pause_writer_for_test()
    }

    /// Test support: see [`Shard::hold_writer_for_test`].
    #[doc(hidden)]
    pub fn hold_shard_writer_for_test(&self, shard: ShardId) -> ferry_shard::shard::WriterHold {
        self.core.shards[shard.index()].hold_writer_for_test()
    }

    /// Stops every shard after its writer committed what was already submitted.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.core.closed.store(true, Ordering::Release);
        for shard in &self.core.shards {
            shard.close();
        }
    }
}

/// The one place shard errors become client-facing codes.
pub(crate) fn shard_error(e: ShardError) -> ApiError {
    match e {
        ShardError::Overloaded { .. } => {
            ApiError::new(ErrorCode::TooManyRequests, "", format!("{e}: retry with backoff"))
        }
        ShardError::Stopped(_) | ShardError::Unavailable { .. } | ShardError::Indeterminate { .. } => {
            ApiError::new(ErrorCode::ServiceNotReady, "", e.to_string())
        }
        other => {
            tracing::error!(error = %other, "storage error");
            ApiError::new(ErrorCode::Internal, "", "storage error; the message was not accepted")
        }
    }
}
