//! Stage "validate, route, deduplicate, append" of a send: [`Coordinator::send_many`].
//!
//! Validation and routing run in the caller's future (they write nothing). Everything from taking
//! the idempotency keys' locks to the last durable write runs in a task of its own ([`Core::commit`]),
//! so a caller whose deadline fires or whose connection drops changes nothing about what is
//! written, what a retry with the same key finds, or what the metrics count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ferry_model::message::Content;
use ferry_model::validate::{ValidatedMessage, ValidationContext};
use ferry_model::{ApiError, ErrorCode, MessageId, ShardId, WaId, phone};
use ferry_shard::storage::idempotency_key;
use ferry_shard::{
    AppendAnswer, IdempotencyPlacement, IdempotencyRecord, NewMessage, QueueRecord, Shard, SharedResources,
};
use xxhash_rust::xxh3::xxh3_128;

use crate::idempotency::{KeyInfo, KeyShardWrites, Keys, conflict};
use crate::{
    Accepted, CUSTOMER_SERVICE_WINDOW_MS, Coordinator, MAX_IDEMPOTENCY_KEY_CHARS, SendCommand, WindowPolicy, routing,
    shard_error, telemetry,
};

/// What a send needs after validation, shared by the coordinator and the tasks that finish sends.
pub(crate) struct Core {
    pub(crate) shards: Vec<Arc<Shard>>,
    pub(crate) keys: Keys,
    /// Set by `Coordinator::close`: background retries stop (their intents stay for replay).
    pub(crate) closed: AtomicBool,
    // Declared last so it is dropped after the shards that use it.
    pub(crate) _resources: SharedResources,
}

/// A validated message on its way to a shard.
pub(crate) struct Prepared {
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

type Results = Vec<Option<Result<Accepted, ApiError>>>;

impl Coordinator {
    /// Sends one message. Resolves once it is durable (or was already, for an idempotent replay).
    ///
    /// Cancel safety: cancel-safe. Dropping the future cancels nothing once it was first polled:
    /// the write, the idempotency record and the metrics are finished by the send's own task.
    pub async fn send(&self, command: SendCommand) -> Result<Accepted, ApiError> {
        self.send_many(vec![command]).await.pop().expect("one result per command")
    }

    /// Sends many messages: one result per command, in order. Valid messages are accepted even
    /// when others are rejected; each shard gets at most one append for the whole call.
    ///
    /// Cancel safety: cancel-safe, as [`Coordinator::send`].
    pub async fn send_many(&self, commands: Vec<SendCommand>) -> Vec<Result<Accepted, ApiError>> {
        let started = std::time::Instant::now();
        let now = self.clock.now_ms();
        let count = commands.len();
        let mut results: Results = vec![None; count];
        let mut prepared = Vec::with_capacity(count);
        for (index, command) in commands.into_iter().enumerate() {
            match self.prepare(index, command) {
                Ok(p) => prepared.push(p),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let finish = move |results: Results| {
            let results = finalize(results);
            telemetry::note_outcomes(&results, started.elapsed());
            results
        };
        if prepared.is_empty() {
            return finish(results);
        }
        let core = self.core.clone();
        let task = tokio::spawn(async move { finish(core.commit(prepared, results, now).await) });
        match task.await {
            Ok(results) => results,
            Err(e) => {
                // A panic in the send task: nothing is known of what it wrote. A retry with the
                // same idempotency key is safe (the key's record or intent is durable with it).
                tracing::error!(error = %e, "send task failed");
                let e = ApiError::new(
                    ErrorCode::Internal,
                    "",
                    "the send failed inside ferry; retry with the same idempotency key",
                );
                (0..count).map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// Refuses (470 / 131047) unless `user` wrote to `sender` within the last 24 hours.
    fn check_window(&self, shard: ShardId, sender: &WaId, user: &WaId) -> Result<(), ApiError> {
        let contact = self.core.shards[shard.index()]
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
        if let Some(allowed) = &self.allowed_senders
            && !allowed.contains(&sender)
        {
            let mut known: Vec<&str> = allowed.iter().map(WaId::as_str).collect();
            known.sort_unstable();
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "sender",
                format!(
                    "sender {sender} has no configured business number upstream (cloud.numbers): expected one of {}",
                    known.join(", ")
                ),
            ));
        }
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
}

impl Core {
    /// The record each distinct key of `prepared` answers now (pending first, then its key
    /// shard), read on a blocking thread: the caller holds the keys' stripe locks. No keys: no
    /// thread hop.
    ///
    /// Cancel safety: cancel-safe (reads only).
    async fn lookup_keys(
        self: Arc<Self>,
        prepared: &[Prepared],
        now: i64,
    ) -> HashMap<Vec<u8>, Result<Option<IdempotencyRecord>, ApiError>> {
        let mut wanted: Vec<(ShardId, Vec<u8>)> = prepared
            .iter()
            .filter_map(|p| p.idempotency.as_ref())
            .map(|k| (k.key_shard, k.storage_key.clone()))
            .collect();
        if wanted.is_empty() {
            return HashMap::new();
        }
        wanted.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        wanted.dedup_by(|a, b| a.1 == b.1);
        let keys: Vec<Vec<u8>> = wanted.iter().map(|(_, key)| key.clone()).collect();
        let read = move || {
            wanted
                .into_iter()
                .map(|(shard, key)| {
                    let record = self.keys.lookup(&self.shards[shard.index()], &key, now).map_err(shard_error);
                    (key, record)
                })
                .collect::<HashMap<_, _>>()
        };
        match tokio::task::spawn_blocking(read).await {
            Ok(found) => found,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down and never ran the read: no key is known, each send
            // fails retryably (nothing was written).
            Err(_) => {
                let e = ApiError::new(ErrorCode::ServiceNotReady, "", "shutting down: idempotency keys not read");
                keys.into_iter().map(|key| (key, Err(e.clone()))).collect()
            }
        }
    }

    /// Resolves keys (replay, conflict, duplicate within the call, or fresh), appends the fresh
    /// messages durably (one append per shard) and writes their key-shard records.
    ///
    /// Cancel safety: not cancel-safe; runs as a task of its own (see [`Coordinator::send_many`]).
    async fn commit(self: Arc<Self>, mut prepared: Vec<Prepared>, mut results: Results, now: i64) -> Results {
        // Serialize sends that share a key.
        let _guards = self
            .keys
            .lock(prepared.iter().filter_map(|p| p.idempotency.as_ref()).map(|k| k.storage_key.as_slice()))
            .await;

        // Every key's current record, read off the async workers (a key-shard read can touch disk).
        let found = self.clone().lookup_keys(&prepared, now).await;

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
            let record = found.get(&k.storage_key).cloned().expect("lookup_keys read every key of `prepared`");
            match record {
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
                Err(e) => results[p.index] = Some(Err(e)),
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
        let mut key_writes = KeyShardWrites::new(self.shards.len());
        for (shard, positions, wait) in waits {
            match wait.await {
                Ok(outcomes) => {
                    for (pos, outcome) in positions.into_iter().zip(outcomes) {
                        let p = &prepared[pos];
                        if outcome.answer == AppendAnswer::KeyConflict {
                            // The message's shard had the key for another message (a send this
                            // node's lookup did not see: another node's, or an unknown outcome's).
                            let raw = p.idempotency.as_ref().map_or("", |k| k.raw.as_str());
                            results[p.index] = Some(Err(conflict(raw)));
                            continue;
                        }
                        // A replay (the message's shard had this key for this message) also
                        // writes the key shard's record: it may be the one a lost outcome left
                        // unwritten.
                        if let Some(k) = &p.idempotency
                            && k.key_shard.index() != shard
                        {
                            key_writes.records[k.key_shard.index()].push((
                                k.storage_key.clone(),
                                IdempotencyRecord {
                                    message_id: outcome.message_id.as_str().to_owned(),
                                    wa_id: p.validated.wa_id.as_str().to_owned(),
                                    payload_hash: k.payload_hash.clone(),
                                    created_at_ms: now,
                                },
                            ));
                            key_writes.intents[shard].push(outcome.seq);
                        }
                        accepted_at[pos] = Some(Accepted {
                            message_id: outcome.message_id,
                            wa_id: p.validated.wa_id.clone(),
                            idempotent_replay: outcome.answer == AppendAnswer::Replay,
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

        // Idempotency records whose key shard differs from the message's shard: findable before
        // the key's lock is released (see `idempotency`).
        Keys::write_records(&self, key_writes).await;

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
    }

    /// Whether `key` names a shard of this node and carries that shard's id space.
    pub(crate) fn issued_here(&self, key: &ferry_model::MessageKey) -> bool {
        self.shards.get(key.shard.index()).is_some_and(|s| s.id_space() == key.space)
    }

    /// Whether the message with this (stored, valid) id is still held.
    fn is_held(&self, message_id: &str) -> bool {
        MessageId::decode(message_id)
            .filter(|key| self.issued_here(key))
            .and_then(|key| self.shards.get(key.shard.index()).map(|s| (s, key.seq)))
            .is_some_and(|(shard, seq)| matches!(shard.get_held(seq), Ok(Some(_))))
    }
}

fn finalize(results: Results) -> Vec<Result<Accepted, ApiError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "", "message was not processed"))))
        .collect()
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
