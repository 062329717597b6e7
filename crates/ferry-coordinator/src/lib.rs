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
//! Pacing: [`Coordinator::resolve_held`] (the admin call) and [`Coordinator::apply_pacing_rule`]
//! (run every second by [`Coordinator::start_pacing_rule`]) release or drop held messages through
//! their shard's writer (`Shard::resolve_held_durably`).

pub mod config;
pub mod routing;
pub mod telemetry;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_model::clock::SharedClock;
use ferry_model::message::{Content, OutboundMessage};
use ferry_model::validate::{ValidatedMessage, ValidationContext};
use ferry_model::{ApiError, ErrorCode, MessageId, MessageStatus, ShardId, WaId, phone};
use ferry_shard::storage::idempotency_key;
use ferry_shard::{
    FailureReason, HeldAction, IdempotencyPlacement, IdempotencyRecord, NewMessage, NodeLayout, QueueRecord,
    ResolvedHeld, Shard, ShardError, ShardStats, SharedResources,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use xxhash_rust::xxh3::xxh3_128;

pub use config::{AfterHold, CoordinatorConfig, PacingConfig, WindowPolicy};

/// Held messages read per scan of a shard's `held` column family.
const HELD_SCAN_CHUNK: usize = 1024;
/// How often the pacing rule runs.
const PACING_RULE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What one release/drop of held messages did, over all shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldCounts {
    pub released: u64,
    pub dropped: u64,
    /// Failed with 410 instead: their TTL passed while they were held.
    pub expired: u64,
}

impl HeldCounts {
    fn add(&mut self, r: &ResolvedHeld) {
        self.released += r.released.len() as u64;
        self.dropped += r.dropped.len() as u64;
        self.expired += r.expired.len() as u64;
    }
}

/// How long a user's message keeps the customer-service window open.
pub const CUSTOMER_SERVICE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// The longest idempotency key accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;
/// Stripes of the in-process lock that serializes sends sharing an idempotency key.
const KEY_LOCK_STRIPES: usize = 1024;

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

/// A message as `GetMessage` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub message_id: MessageId,
    pub wa_id: WaId,
    pub shard: ShardId,
    pub status: MessageStatus,
    pub message_type: String,
    pub sender: String,
    pub accepted_at_ms: i64,
    pub expires_at_ms: i64,
    pub updated_at_ms: i64,
    pub biz_opaque_callback_data: String,
    /// `(status, timestamp_ms)`, oldest first.
    pub history: Vec<(MessageStatus, i64)>,
    /// Why the message failed (status `failed` only).
    pub error: Option<FailureView>,
}

/// Why a message failed: the reference code (410 expired, 1013 recipient invalid, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureView {
    pub code: u32,
    pub title: String,
    pub details: String,
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
    shards: Vec<Arc<Shard>>,
    clock: SharedClock,
    country_code: String,
    window: WindowPolicy,
    default_sender: WaId,
    key_locks: Vec<Arc<Mutex<()>>>,
    pacing: PacingConfig,
    paced: HashSet<String>,
    /// Set by [`Coordinator::close`]: the pacing rule stops.
    closed: AtomicBool,
    /// Per shard: no message below this seq is held. Scans of the `held` column family start here,
    /// so the rule's once-a-second pass does not step over the tombstones of resolved messages
    /// (seqs only grow, so a message held later is always above it). 0 after a start.
    held_floor: Vec<std::sync::atomic::AtomicU64>,
    /// Failpoint for tests: skip the key-shard write after appending, as a crash there would.
    skip_key_shard_write: AtomicBool,
    // Declared last so it is dropped after the shards that use it.
    _resources: SharedResources,
}

/// A validated message on its way to a shard.
struct Prepared {
    index: usize,
    validated: ValidatedMessage,
    sender: WaId,
    shard: ShardId,
    payload: Vec<u8>,
    idempotency: Option<KeyInfo>,
    /// The paced template's name: the message is held.
    held_template: Option<String>,
    /// A refusal that applies only if this is not an idempotent replay (the 24 h window: a keyed
    /// retry of a message accepted while the window was open answers its first id).
    refusal_unless_replay: Option<ApiError>,
}

struct KeyInfo {
    raw: String,
    storage_key: Vec<u8>,
    key_shard: ShardId,
    payload_hash: Vec<u8>,
}

impl Coordinator {
    /// Opens (or creates) the node's data dir and every shard, then replays pending idempotency
    /// intents so that keys are consistent before the first send.
    pub async fn open(config: &CoordinatorConfig) -> Result<Coordinator, OpenError> {
        Coordinator::open_with_clock(config, ferry_model::clock::system()).await
    }

    /// [`Coordinator::open`] with a clock of the caller's choosing (tests move time for TTLs).
    pub async fn open_with_clock(config: &CoordinatorConfig, clock: SharedClock) -> Result<Coordinator, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let default_sender = phone::normalize(&config.default_sender, &config.country_code)
            .map_err(|e| OpenError::Config(format!("default_sender: {e}")))?;
        let layout = NodeLayout::open_or_create(&config.data_dir, config.shards)?;
        let resources = SharedResources::new(&config.storage)?;
        let mut shards = Vec::with_capacity(config.shards as usize);
        for i in 0..config.shards {
            let dir = layout.shard_dir(i);
            shards.push(Arc::new(Shard::open(
                &dir,
                ShardId(i),
                config.shards,
                layout.meta.node_id,
                &resources,
                &config.shard,
            )?));
        }
        let coordinator = Coordinator {
            layout,
            shards,
            clock,
            country_code: config.country_code.clone(),
            window: config.customer_service_window,
            default_sender,
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            paced: config.pacing.templates.iter().cloned().collect(),
            pacing: config.pacing.clone(),
            closed: AtomicBool::new(false),
            held_floor: (0..config.shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            skip_key_shard_write: AtomicBool::new(false),
            _resources: resources,
        };
        coordinator.replay_idempotency_intents().await?;
        Ok(coordinator)
    }

    pub fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    pub fn node_id(&self) -> u64 {
        self.layout.meta.node_id
    }

    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(|s| s.stats()).collect()
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
        &self.shards
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Sends one message. Resolves once it is durable (or was already, for an idempotent replay).
    ///
    /// Cancel safety: dropping the future after submission does not cancel the write.
    pub async fn send(&self, command: SendCommand) -> Result<Accepted, ApiError> {
        self.send_many(vec![command]).await.pop().expect("one result per command")
    }

    /// Sends many messages: one result per command, in order. Valid messages are accepted even
    /// when others are rejected; each shard gets at most one append for the whole call.
    pub async fn send_many(&self, commands: Vec<SendCommand>) -> Vec<Result<Accepted, ApiError>> {
        let started = std::time::Instant::now();
        let results = self.send_many_uncounted(commands).await;
        telemetry::note_outcomes(&results, started.elapsed());
        results
    }

    async fn send_many_uncounted(&self, commands: Vec<SendCommand>) -> Vec<Result<Accepted, ApiError>> {
        let now = self.clock.now_ms();
        let mut results: Vec<Option<Result<Accepted, ApiError>>> = vec![None; commands.len()];
        let mut prepared = Vec::with_capacity(commands.len());
        for (index, command) in commands.into_iter().enumerate() {
            match self.prepare(index, command) {
                Ok(p) => prepared.push(p),
                Err(e) => results[index] = Some(Err(e)),
            }
        }

        // Serialize sends that share a key (stripes taken in ascending order: no deadlock).
        let stripes: BTreeSet<usize> = prepared
            .iter()
            .filter_map(|p| p.idempotency.as_ref())
            .map(|k| (routing::routing_hash(&k.storage_key) % KEY_LOCK_STRIPES as u64) as usize)
            .collect();
        let mut guards: Vec<OwnedMutexGuard<()>> = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.key_locks[s].clone().lock_owned().await);
        }

        // Resolve keys: replay, conflict, duplicate within this call, or fresh.
        let mut first_with_key: HashMap<Vec<u8>, usize> = HashMap::new(); // key -> position in `prepared`
        let mut same_as: Vec<(usize, usize)> = Vec::new(); // (result index, position of first)
        let mut fresh = Vec::with_capacity(prepared.len());
        for (pos, p) in prepared.iter().enumerate() {
            let Some(k) = &p.idempotency else {
                fresh.push(pos);
                continue;
            };
            if let Some(&first) = first_with_key.get(&k.storage_key) {
                let first_hash = &prepared[first].idempotency.as_ref().expect("keyed").payload_hash;
                if *first_hash == k.payload_hash {
                    same_as.push((p.index, first));
                } else {
                    results[p.index] = Some(Err(conflict(&k.raw)));
                }
                continue;
            }
            match self.shards[k.key_shard.index()].get_idempotency(&k.storage_key, now) {
                Ok(Some(record)) if record.payload_hash == k.payload_hash => {
                    let held = p.held_template.is_some() && self.is_held(&record.message_id);
                    results[p.index] = Some(Ok(Accepted {
                        message_id: MessageId::from_stored(record.message_id),
                        wa_id: WaId::from_normalized(record.wa_id),
                        idempotent_replay: true,
                        held,
                    }));
                }
                Ok(Some(_)) => results[p.index] = Some(Err(conflict(&k.raw))),
                Ok(None) if p.refusal_unless_replay.is_some() => {
                    results[p.index] = Some(Err(p.refusal_unless_replay.clone().expect("checked")));
                }
                Ok(None) => {
                    first_with_key.insert(k.storage_key.clone(), pos);
                    fresh.push(pos);
                }
                Err(e) => results[p.index] = Some(Err(shard_error(e))),
            }
        }

        // One durable append per shard.
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for pos in fresh {
            by_shard[prepared[pos].shard.index()].push(pos);
        }
        let mut waits = Vec::new();
        for (shard, positions) in by_shard.into_iter().enumerate() {
            if positions.is_empty() {
                continue;
            }
            let messages = positions.iter().map(|&pos| new_message(&mut prepared[pos], now)).collect();
            match self.shards[shard].append_durably(messages) {
                Ok(wait) => waits.push((shard, positions, wait)),
                Err(e) => {
                    let e = shard_error(e);
                    for pos in positions {
                        results[prepared[pos].index] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let mut accepted_at: Vec<Option<Accepted>> = (0..prepared.len()).map(|_| None).collect();
        let mut records_elsewhere: Vec<Vec<(Vec<u8>, IdempotencyRecord)>> = vec![Vec::new(); self.shards.len()];
        let mut intents_to_clear: Vec<Vec<u64>> = vec![Vec::new(); self.shards.len()];
        for (shard, positions, wait) in waits {
            match wait.await {
                Ok(outcomes) => {
                    for (pos, outcome) in positions.into_iter().zip(outcomes) {
                        let p = &prepared[pos];
                        if let Some(k) = &p.idempotency
                            && k.key_shard.index() != shard
                        {
                            records_elsewhere[k.key_shard.index()].push((
                                k.storage_key.clone(),
                                IdempotencyRecord {
                                    message_id: outcome.message_id.as_str().to_owned(),
                                    wa_id: p.validated.wa_id.as_str().to_owned(),
                                    payload_hash: k.payload_hash.clone(),
                                    created_at_ms: now,
                                },
                            ));
                            intents_to_clear[shard].push(outcome.seq);
                        }
                        accepted_at[pos] = Some(Accepted {
                            message_id: outcome.message_id,
                            wa_id: p.validated.wa_id.clone(),
                            idempotent_replay: false,
                            held: outcome.held,
                        });
                    }
                }
                Err(e) => {
                    let e = shard_error(e);
                    for pos in positions {
                        results[prepared[pos].index] = Some(Err(e.clone()));
                    }
                }
            }
        }

        // Idempotency records whose key shard differs from the message's shard. The messages are
        // already durable with an intent, so a failure here is only logged: start-up replays it.
        if records_elsewhere.iter().any(|r| !r.is_empty()) && !self.skip_key_shard_write.load(Ordering::Relaxed) {
            let mut ok = true;
            for (key_shard, entries) in records_elsewhere.into_iter().enumerate() {
                if entries.is_empty() {
                    continue;
                }
                let outcome = match self.shards[key_shard].put_idempotency_durably(entries) {
                    Ok(wait) => wait.await,
                    Err(e) => Err(e),
                };
                if let Err(e) = outcome {
                    ok = false;
                    tracing::error!(shard = key_shard, error = %e, "idempotency records not written; intents kept for replay");
                }
            }
            if ok {
                for (shard, seqs) in intents_to_clear.into_iter().enumerate() {
                    if !seqs.is_empty() {
                        self.shards[shard].clear_intents(seqs);
                    }
                }
            }
        }
        drop(guards);

        for (pos, acc) in accepted_at.iter().enumerate() {
            if let Some(acc) = acc {
                results[prepared[pos].index] = Some(Ok(acc.clone()));
            }
        }
        for (index, first) in same_as {
            results[index] = Some(match (&accepted_at[first], &results[prepared[first].index]) {
                (Some(acc), _) => Ok(Accepted { idempotent_replay: true, ..acc.clone() }),
                (None, Some(Err(e))) => Err(e.clone()),
                _ => Err(ApiError::new(ErrorCode::Internal, "", "first send with this key has no result")),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "", "message was not processed"))))
            .collect()
    }

    /// Refuses (470 / 131047) unless `user` wrote to `sender` within the last 24 hours.
    fn check_window(&self, shard: ShardId, sender: &WaId, user: &WaId) -> Result<(), ApiError> {
        let contact = self.shards[shard.index()]
            .get_contact(sender.as_str(), user.as_str())
            .map_err(|e| ApiError::new(ErrorCode::Internal, "", e.to_string()))?;
        let now = self.clock.now_ms();
        let last = match contact {
            Some(c) if now - c.last_inbound_ms <= CUSTOMER_SERVICE_WINDOW_MS => return Ok(()),
            Some(c) => format!("{} hours ago", (now - c.last_inbound_ms) / 3_600_000),
            None => "never".to_owned(),
        };
        Err(ApiError::new(
            ErrorCode::OutsideCustomerServiceWindow,
            "to",
            format!(
                "{user} has not written to {sender} in the last 24 hours (last message: {last}); only a template \
                 message can start the conversation"
            ),
        ))
    }

    fn prepare(&self, index: usize, command: SendCommand) -> Result<Prepared, ApiError> {
        let sender = match command.sender.as_deref() {
            None | Some("") => self.default_sender.clone(),
            Some(raw) => phone::normalize(raw, &self.country_code).map_err(|e| ApiError {
                field: "sender".into(),
                details: format!("invalid sender: {}", e.details),
                ..e
            })?,
        };
        let ctx = ValidationContext { default_country_code: self.country_code.clone(), sender: Some(sender.clone()) };
        let validated = command.message.validate(&ctx)?;
        let shard = routing::shard_for_recipient(&validated.wa_id, self.shard_count());
        let mut refusal_unless_replay = None;
        if self.window == WindowPolicy::Enforce
            && validated.message_type() != "template"
            && let Err(e) = self.check_window(shard, &sender, &validated.wa_id)
        {
            match command.idempotency_key.as_deref() {
                Some(k) if !k.is_empty() => refusal_unless_replay = Some(e),
                _ => return Err(e),
            }
        }
        let payload = validated.encode();
        let idempotency = match command.idempotency_key.filter(|k| !k.is_empty()) {
            None => None,
            Some(raw) => {
                let chars = raw.chars().count();
                if chars > MAX_IDEMPOTENCY_KEY_CHARS {
                    return Err(ApiError::too_long("idempotency_key", MAX_IDEMPOTENCY_KEY_CHARS, chars));
                }
                let storage_key = idempotency_key(sender.as_str(), &raw);
                let key_shard = routing::shard_for_idempotency_key(&storage_key, self.shard_count());
                let mut hashed = sender.as_str().as_bytes().to_vec();
                hashed.push(0);
                hashed.extend_from_slice(&payload);
                let payload_hash = xxh3_128(&hashed).to_be_bytes().to_vec();
                Some(KeyInfo { raw, storage_key, key_shard, payload_hash })
            }
        };
        let held_template = match &validated.message.content {
            Content::Template(t) => t.name.as_ref().filter(|name| self.paced.contains(name.as_str())).cloned(),
            _ => None,
        };
        Ok(Prepared { index, validated, sender, shard, payload, idempotency, held_template, refusal_unless_replay })
    }

    /// Whether the message with this (stored, valid) id is still held.
    fn is_held(&self, message_id: &str) -> bool {
        MessageId::decode(message_id)
            .filter(|key| key.node_id == self.layout.meta.node_id)
            .and_then(|key| self.shards.get(key.shard.index()).map(|s| (s, key.seq)))
            .is_some_and(|(shard, seq)| matches!(shard.get_held(seq), Ok(Some(_))))
    }

    /// The admin call behind `ResolveHeld`: releases (into delivery) or drops (failed, 132015)
    /// every held message of `template_name`, on every shard. Returns what was done; messages
    /// whose TTL passed while held fail with 410 instead.
    pub async fn resolve_held(&self, template_name: &str, action: AfterHold) -> Result<HeldCounts, ApiError> {
        if template_name.is_empty() {
            return Err(ApiError::missing("template_name"));
        }
        let reason = FailureReason {
            code: ErrorCode::TemplatePaused.code(),
            title: ErrorCode::TemplatePaused.title().to_owned(),
            details: format!("template `{template_name}` was paused: its held messages were dropped by an admin call"),
        };
        self.resolve_where(action, reason, |_, h| h.template_name == template_name, false).await
    }

    /// The pacing rule: every message held for `pacing.hold_secs` or longer (by the coordinator's
    /// clock) is released or dropped as `pacing.after_hold` says.
    pub async fn apply_pacing_rule(&self) -> Result<HeldCounts, ApiError> {
        let hold_ms = i64::try_from(self.pacing.hold_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = self.clock.now_ms().saturating_sub(hold_ms);
        let reason = FailureReason {
            code: ErrorCode::TemplatePaused.code(),
            title: ErrorCode::TemplatePaused.title().to_owned(),
            details: format!(
                "the template was paused: held {} s for quality assessment, then dropped (pacing.after_hold = drop)",
                self.pacing.hold_secs
            ),
        };
        let due = |_: u64, h: &ferry_shard::HeldRecord| h.record.as_ref().is_some_and(|r| r.held_at_ms <= cutoff);
        self.resolve_where(self.pacing.after_hold, reason, due, true).await
    }

    /// Resolves the held messages that `select` picks, shard by shard, in chunks. With `in_order`,
    /// a shard's scan stops at the first message not picked (held messages are in acceptance
    /// order, so the rule reads only the due head).
    async fn resolve_where(
        &self,
        action: AfterHold,
        reason: FailureReason,
        select: impl Fn(u64, &ferry_shard::HeldRecord) -> bool,
        in_order: bool,
    ) -> Result<HeldCounts, ApiError> {
        let mut counts = HeldCounts::default();
        for (shard, floor) in self.shards.iter().zip(&self.held_floor) {
            let mut from = floor.load(Ordering::Acquire);
            loop {
                let chunk = shard.scan_held(from, HELD_SCAN_CHUNK).map_err(shard_error)?;
                let Some(&(last, _)) = chunk.last() else { break };
                // Everything below the first message still held after this pass is resolved.
                let mut first_kept = None;
                let full = chunk.len() == HELD_SCAN_CHUNK;
                let mut seqs = Vec::new();
                let mut stopped = false;
                for (seq, held) in &chunk {
                    if select(*seq, held) {
                        seqs.push(*seq);
                    } else {
                        first_kept.get_or_insert(*seq);
                        if in_order {
                            stopped = true;
                            break;
                        }
                    }
                }
                if !seqs.is_empty() {
                    let action = match action {
                        AfterHold::Release => HeldAction::Release,
                        AfterHold::Drop => HeldAction::Drop(reason.clone()),
                    };
                    let resolved = shard
                        .resolve_held_durably(seqs, action, self.clock.now_ms())
                        .map_err(shard_error)?
                        .await
                        .map_err(shard_error)?;
                    counts.add(&resolved);
                }
                // Only a pass that has seen every held message from the floor up may raise it.
                if from == floor.load(Ordering::Acquire) {
                    floor.store(first_kept.unwrap_or(last + 1), Ordering::Release);
                }
                if stopped || !full {
                    break;
                }
                from = last + 1;
            }
        }
        Ok(counts)
    }

    /// Runs [`Coordinator::apply_pacing_rule`] every second on the current tokio runtime until
    /// the coordinator is closed or dropped (the task holds only a weak reference between runs).
    pub fn start_pacing_rule(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACING_RULE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(coordinator) = weak.upgrade() else { break };
                if coordinator.closed.load(Ordering::Acquire) {
                    break;
                }
                match coordinator.apply_pacing_rule().await {
                    Ok(c) if c != HeldCounts::default() => {
                        tracing::info!(
                            released = c.released,
                            dropped = c.dropped,
                            expired = c.expired,
                            "pacing rule applied"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pacing rule failed; trying again in 1 s"),
                }
            }
        })
    }

    /// Failpoint for tests: when set, sends stop after the durable append and never write the
    /// idempotency record to a different key shard, leaving the intent exactly as a crash between
    /// the two writes would.
    #[doc(hidden)]
    pub fn failpoint_skip_key_shard_write(&self, skip: bool) {
        self.skip_key_shard_write.store(skip, Ordering::Relaxed);
    }

    /// Test support: see [`Shard::hold_writer_for_test`].
    #[doc(hidden)]
    pub fn hold_shard_writer_for_test(&self, shard: ShardId) -> ferry_shard::shard::WriterHold {
        self.shards[shard.index()].hold_writer_for_test()
    }

    /// Looks a message up by id.
    pub fn get_message(&self, message_id: &str) -> Result<MessageView, ApiError> {
        let not_found = || {
            ApiError::new(ErrorCode::NotFound, "message_id", format!("no message with id `{message_id}` on this node"))
        };
        let key = MessageId::decode(message_id).ok_or_else(not_found)?;
        if key.node_id != self.layout.meta.node_id || key.shard.index() >= self.shards.len() {
            return Err(not_found());
        }
        let shard = &self.shards[key.shard.index()];
        // Read in the direction messages move (held → queue → status), so one moving between two
        // reads is found by the next read instead of missed by both.
        let (queued, held) = match shard.get_held(key.seq).map_err(shard_error)?.and_then(|h| h.record) {
            Some(record) => (Some(record), true),
            None => (shard.get_queued(key.seq).map_err(shard_error)?, false),
        };
        if let Some(record) = queued {
            // Accepted (a released message's history shows its hold) or held.
            let mut history = vec![(MessageStatus::Accepted, record.accepted_at_ms)];
            if record.held_at_ms > 0 {
                history.push((MessageStatus::HeldForQualityAssessment, record.held_at_ms));
            }
            return Ok(MessageView {
                message_id: MessageId::encode(key),
                wa_id: WaId::from_normalized(record.wa_id),
                shard: key.shard,
                status: if held { MessageStatus::HeldForQualityAssessment } else { MessageStatus::Accepted },
                message_type: record.message_type,
                sender: record.sender,
                accepted_at_ms: record.accepted_at_ms,
                expires_at_ms: record.expires_at_ms,
                updated_at_ms: record.held_at_ms.max(record.accepted_at_ms),
                biz_opaque_callback_data: record.biz_opaque_callback_data,
                history,
                error: None,
            });
        }
        // Not queued: settled (sent, delivered, read, failed), or unknown. A receipt that overtook
        // its ack leaves a record without the message's fields: the message is then still queued,
        // and was answered above.
        let record =
            shard.get_status(key.seq).map_err(shard_error)?.filter(|r| !r.wa_id.is_empty()).ok_or_else(not_found)?;
        let status = MessageStatus::from_code(record.status).unwrap_or(MessageStatus::Accepted);
        let error = (status == MessageStatus::Failed).then(|| FailureView {
            code: record.error_code,
            title: record.error_title.clone(),
            details: record.error_details.clone(),
        });
        Ok(MessageView {
            message_id: MessageId::encode(key),
            wa_id: WaId::from_normalized(record.wa_id),
            shard: key.shard,
            status,
            message_type: record.message_type,
            sender: record.sender,
            accepted_at_ms: record.accepted_at_ms,
            expires_at_ms: record.expires_at_ms,
            updated_at_ms: record.updated_at_ms,
            biz_opaque_callback_data: record.biz_opaque_callback_data,
            history: record
                .history
                .iter()
                .filter_map(|e| MessageStatus::from_code(e.status).map(|s| (s, e.at_ms)))
                .collect(),
            error,
        })
    }

    /// Writes every idempotency record still pending as an intent to its key shard, then clears
    /// the intents. Runs at open, before any send.
    async fn replay_idempotency_intents(&self) -> Result<(), ShardError> {
        let mut replayed = 0usize;
        for shard in &self.shards {
            let intents = shard.idempotency_intents()?;
            if intents.is_empty() {
                continue;
            }
            let mut by_key_shard: Vec<Vec<(Vec<u8>, IdempotencyRecord)>> = vec![Vec::new(); self.shards.len()];
            let mut seqs = Vec::with_capacity(intents.len());
            for (seq, intent) in intents {
                seqs.push(seq);
                let (Some(record), Some(target)) = (intent.record, by_key_shard.get_mut(intent.key_shard as usize))
                else {
                    tracing::warn!(shard = %shard.id(), seq, "dropping malformed idempotency intent");
                    continue;
                };
                target.push((intent.key, record));
            }
            for (key_shard, entries) in by_key_shard.into_iter().enumerate() {
                if !entries.is_empty() {
                    replayed += entries.len();
                    self.shards[key_shard].put_idempotency_durably(entries)?.await?;
                }
            }
            shard.clear_intents(seqs);
        }
        if replayed > 0 {
            tracing::info!(replayed, "replayed idempotency intents left by an unclean stop");
        }
        Ok(())
    }

    /// Stops every shard after its writer committed what was already submitted.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            shard.close();
        }
    }
}

/// Builds the queue record, moving the encoded payload out of `p` (it is not needed again).
fn new_message(p: &mut Prepared, now: i64) -> NewMessage {
    let v = &p.validated;
    let idempotency = p.idempotency.as_ref().map(|k| {
        if k.key_shard == p.shard {
            IdempotencyPlacement::Here { key: k.storage_key.clone(), payload_hash: k.payload_hash.clone() }
        } else {
            IdempotencyPlacement::Elsewhere {
                key_shard: k.key_shard.0,
                key: k.storage_key.clone(),
                payload_hash: k.payload_hash.clone(),
            }
        }
    });
    NewMessage {
        record: QueueRecord {
            wa_id: v.wa_id.as_str().to_owned(),
            sender: p.sender.as_str().to_owned(),
            message_type: v.message_type().to_owned(),
            accepted_at_ms: now,
            expires_at_ms: now + i64::from(v.ttl_seconds) * 1000,
            payload: std::mem::take(&mut p.payload),
            biz_opaque_callback_data: v.message.biz_opaque_callback_data.clone().unwrap_or_default(),
            idempotency_key: p.idempotency.as_ref().map(|k| k.raw.clone()).unwrap_or_default(),
            held_at_ms: if p.held_template.is_some() { now } else { 0 },
        },
        idempotency,
        held_template: p.held_template.clone(),
    }
}

fn conflict(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyConflict,
        "idempotency_key",
        format!(
            "idempotency key `{key}` was already used by this sender in the last 24 h for a different message: \
             expected the same message, or a new key"
        ),
    )
}

/// The one place shard errors become client-facing codes.
fn shard_error(e: ShardError) -> ApiError {
    match e {
        ShardError::Overloaded { .. } => {
            ApiError::new(ErrorCode::TooManyRequests, "", format!("{e}: retry with backoff"))
        }
        ShardError::Stopped(_) => ApiError::new(ErrorCode::ServiceNotReady, "", e.to_string()),
        other => {
            tracing::error!(error = %other, "storage error");
            ApiError::new(ErrorCode::Internal, "", "storage error; the message was not accepted")
        }
    }
}
