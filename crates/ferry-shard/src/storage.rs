//! The on-disk format of a shard. **Config may evolve loosely; this format may not.** Any change
//! to a key or value layout bumps [`FORMAT_VERSION`] and comes with a migration.
//!
//! A shard's column families live in a RocksDB of its own (`<data_dir>/shard-NN/`, data dir format
//! 1), or, under the names `shard-NN/<cf>`, in the one RocksDB of a single node's shards
//! (`<data_dir>/shards/`, format 2, `crate::node_db`); see [`crate::layout`]. Keys and values are
//! the same in both.
//!
//! ## Column families
//!
//! | CF | key | value | written by |
//! |---|---|---|---|
//! | `meta` | ASCII name | see below | writer (open, every batch) |
//! | `queue` | `seq` as u64 big-endian (8 bytes) | `[1u8] ++ QueueRecord` (protobuf) | writer (append) |
//! | `idempotency` | `sender ++ 0x00 ++ idempotency_key` (UTF-8) | `[1u8] ++ IdempotencyRecord` (protobuf) | writer |
//! | `idempotency_intents` | `seq` as u64 big-endian | `[1u8] ++ IdempotencyIntent` (protobuf) | writer |
//! | `status` | `seq` as u64 big-endian | `[1u8] ++ StatusRecord` (protobuf) | writer (settle) |
//! | `sessions` | `sender ++ 0x00 ++ recipient` (UTF-8 wa_ids) | `[1u8] ++` ferry-session snapshot | writer |
//! | `outbox` | event seq as u64 big-endian | `[1u8] ++ CallbackRecord` (protobuf) | writer (settle) |
//! | `contacts` | `business ++ 0x00 ++ user` (UTF-8 wa_ids) | `[1u8] ++ ContactRecord` (protobuf) | writer (inbound) |
//! | `held` | `seq` as u64 big-endian | `[1u8] ++ HeldRecord` (protobuf) | writer (append, resolve held) |
//! | `released` | `seq` as u64 big-endian | empty | writer (resolve held: put; settle/remove: delete) |
//! | `dispatched` | `seq` as u64 big-endian | `[1u8] ++ DispatchRecord` (protobuf) | writer (before an upstream request that cannot be deduplicated; deleted with the queue key) |
//! | `upstream_ids` | `b"o\0" ++ upstream message id` or `b"i\0" ++ inbound message id` (UTF-8) | `[1u8] ++ UpstreamIdRecord` (protobuf) | writer (settle `sent` with an upstream id; inbound) |
//! | `raft_log` | log index as u64 big-endian | `[1u8] ++ RaftLogEntry` (protobuf: term, leader node, index, kind, data) | replicated mode only: the Raft log thread (`crate::raft::log_store`) |
//! | `raft_state` | ASCII name | JSON (see below) | replicated mode only: the Raft log thread and state machine |
//!
//! `meta` keys: `format_version` (u32 BE), `shard` (u16 BE index ++ u16 BE shard count),
//! `node_id` (u64 BE), `id_space` (u64 BE: bytes 2..10 of every message id this shard issues;
//! written when the shard is created, equal to `node_id`; a database from before it had none and
//! gets `node_id` at its next open, so its ids stay valid), `applied_at_ms` (i64 BE: the clock of
//! the last group commit, never going backwards; see `crate::apply`), `next_seq` (u64 BE: the next sequence number to assign; rewritten in every
//! batch that appends, in the same synced write, so a sequence number is never reused after a
//! crash), `queue_low_watermark` (u64 BE: every queue key below it is deleted; a hint that lets the
//! delivery loop start its scan past the deleted head), `identity_key` (32 random bytes: the
//! shard's long-term X25519 identity secret for encryption sessions, drawn when the shard is
//! first opened), `next_outbox_seq` (u64 BE: the next status-event sequence number, rewritten in
//! every batch that adds events), `webhook_cursor` (u64 BE: every status event below it was
//! accepted by the webhook receiver; absent until a webhook is first configured).
//!
//! Replicated mode (issue #12, `crate::raft`; nothing of it is written in single-node mode, where
//! the two Raft column families stay empty): `meta/raft_applied` (JSON `LogId` of the last applied
//! log entry, in the same batch as the entry's effects) and `meta/raft_membership` (JSON
//! `StoredMembership`, with the membership entry that set it). `raft_state` keys: `vote` (JSON
//! `Vote`, synced), `committed` (JSON `LogId`), `purged` (JSON `LogId`: every log entry up to it is
//! deleted), `snapshot` (JSON: the current snapshot's meta and its checkpoint directory),
//! `synced` (empty: the log thread's WAL sync marker), `installing` (a snapshot id: set while a snapshot is copied in; a database that has it is
//! refused at open). `raft_log` values carry a normal entry as the prost encoding of
//! `crate::raft::types::proto::ShardEntryProto` (tags never reused) and a membership as JSON. The
//! two column families are created, empty, when a database from before them is opened (no format
//! bump: nothing existing changed, as with `released`).
//!
//! Every value starts with a one-byte value version (currently 1) followed by a protobuf message
//! (prost); protobuf lets fields be added without a format bump. Timestamps are milliseconds since
//! the Unix epoch. Message payloads are the JSON encoding of `ferry_model::message::OutboundMessage`
//! (the reference's request shape), so the stored message is readable with `ldb` and shared with
//! the JSON API.
//!
//! ## Queue
//!
//! `queue` is a FIFO keyed by sequence number: big-endian keys sort in append order, so the
//! delivery loop reads it with one forward iterator from its head. Sequence numbers start at 1 and
//! only grow. A message id (`ferry_model::MessageId`) encodes (shard, node id, seq), so a lookup by
//! id is one point read here.
//!
//! ## Delivery: queue → status
//!
//! When the chat server acknowledges a message (or it fails for good: TTL expired, recipient
//! invalid), the writer deletes its `queue` key and writes its `status` record **in one synced
//! batch** (`Settle`), so a message is in exactly one of the two places. Receipts (`delivered`,
//! `read`) update the `status` record; the writer merges every change with the stored record so a
//! status never goes backwards (`ferry_model::MessageStatus::advances`), also when a receipt
//! overtakes the ack that precedes it. `status` records are dropped by a compaction filter once
//! `updated_at_ms` is older than the configured retention.
//!
//! ## Status events (`outbox`): webhook callbacks and the status stream
//!
//! Every status change that moves a message forward also writes a `CallbackRecord` (a *status
//! event*) to `outbox` under the next event sequence number, **in the same batch** as the `status`
//! record, so no durable status change is without its event after a crash. The outbox is an
//! append-only log that two kinds of readers follow with their own cursors:
//! - the webhook sender, whose cursor `meta/webhook_cursor` moves past an event only after the
//!   receiver answered 2xx (a crash before the cursor is written sends it again: same message id
//!   and status, so receivers can dedup);
//! - `WatchStatuses` streams, whose cursor the client holds.
//!
//! Events are never deleted by a write. A compaction filter drops an event once it is older than
//! the retention (`shard.status_events_retention_secs`) **and** below the webhook cursor (so an
//! undelivered callback is kept however long the receiver is down). Because nothing is deleted
//! with a tombstone, a scan from any cursor never steps over deleted entries.

//! ## Inbound messages and the customer-service window (`contacts`)
//!
//! A message a user sends to a business is recorded in the shard that owns the *user* (the same
//! routing as sends to that user): its `contacts` record keeps the time of the user's latest
//! inbound message (never moved back), which the coordinator reads at send time to enforce the
//! 24-hour window, and an inbound event (`CallbackRecord` with `kind = 1`) goes to `outbox` in the
//! same batch, for the webhook. The chat server's copy is acknowledged only after that batch is
//! durable.
//!
//! ## Paced templates (`held`)
//!
//! A message of a paced template (config `[pacing] templates`) gets its sequence number like any
//! other but is written to `held`, **not** to `queue`, in the append's synced batch: the delivery
//! loop reads `queue` in seq order and tracks a low watermark below every queued key, and a held
//! message must pin neither. A message is in at most one of `queue`, `held` and `status`
//! (receipts aside). Leaving `held` is one synced batch either way:
//! - **release**: `held` delete + `queue` put under the **same** seq (the id answered at send time
//!   stays the message's id). The seq is usually below the delivery loop's read cursor, so the
//!   writer lowers `meta/queue_low_watermark` to it in the same batch (a restart's scan covers it)
//!   and keeps every later watermark at or below it until the message leaves the queue; it also
//!   tells the running loop the seq (`Shard::take_released`), which point-reads it.
//! - **drop**: `held` delete + `failed` status record (132015 "Template is paused", or 410 when
//!   the TTL passed while held) + its status event, exactly as a delivery failure is settled.
//!
//! `held` keys are written once and removed with `SingleDelete`, like `queue` keys.
//!
//! `released` holds the seq of every released message still in the queue (key only), written in
//! the release's batch and deleted in the batch where the message leaves the queue. Its first key
//! is the floor no persisted low watermark passes. It is on disk (not writer memory) so that the
//! floor survives a restart, and a replica that applies the same entries computes the same
//! watermarks. A database from before it existed gets the column family, empty, at open (its
//! watermark was already at or below every released message).

//! ## Queue hygiene (tombstones at the head of an LSM FIFO)
//!
//! Deleting the head of a FIFO leaves tombstones that a scan from the start has to step over until
//! compaction removes them. Three measures keep reads off them:
//! 1. Queue keys are written once (sequence numbers are never reused), so removal uses
//!    `SingleDelete`, whose tombstone vanishes together with the put in the first compaction that
//!    sees both, instead of travelling to the bottom level like a `Delete`.
//! 2. The delivery loop never rescans: it keeps a cursor and reads forward from it with
//!    `iterate_lower_bound`/`iterate_upper_bound` set to `[cursor, committed next_seq)`, so
//!    it never seeks into the deleted head. At start-up it begins at `meta/queue_low_watermark`,
//!    which every settle batch advances (and a release of a held message may lower: "Paced
//!    templates" above).
//! 3. Each scan is bounded by the in-memory window, not by the queue length.
//!
//! Measured (`FERRY_BENCH_TOMBSTONES=10000000 cargo bench --bench queue_tombstones`, details in
//! `benches/README.md`): after 10 million appends and `SingleDelete`s, reading the next 10 queued
//! messages by seeking to the start of the queue took 2,867 ms before compaction; the bounded read
//! from the low watermark took 0.08 ms (0.02 ms after compaction).
//!
//! ## Idempotency
//!
//! An idempotency record lives in the shard chosen by hashing `(sender, key)` (the *key shard*),
//! not necessarily the recipient's shard. When the two differ, the recipient's shard writes an
//! `idempotency_intents` entry and a copy of the record atomically with the message; the
//! coordinator then writes the record to the key shard and clears the intent. At start-up every
//! remaining intent is replayed before the node serves. A retry (same message, so same recipient
//! and shard) that reaches the shard anyway is answered from the copy at apply, so neither a
//! crash between the two writes nor a coordinator that never learned the outcome lets a retry
//! create a second message.
//! Records older than 24 h are ignored on lookup and dropped by a compaction filter.
//!
//! ## Dispatch marks (`dispatched`)
//!
//! An upstream that cannot deduplicate (the Cloud API has no idempotency key) must know after a
//! crash which queued messages it may already have posted. Before such a request goes out, the
//! delivery loop writes a `dispatched` mark for the message (`Shard::mark_dispatched_durably`,
//! synced like every batch); the mark is deleted in the same batch that removes the message from
//! the queue (settled `sent` or `failed`, or removed after its TTL). So after a crash the marks
//! are exactly the queued messages that may have been posted: the upstream treats those as in
//! doubt instead of posting them again at once. The chat upstream deduplicates by id and writes
//! no marks. Marks are written and deleted (`Delete`; a mark may be written again by a resend),
//! never read on the hot path: the writer keeps the set of marked seqs in memory, loaded at open.
//!
//! ## Upstream ids (`upstream_ids`)
//!
//! Two indexes of ids the upstream chose, both in the shard of the recipient (or user):
//! - `o\0{wamid}` → the seq of the outbound message the upstream knows by that id, written with
//!   its `sent` status when the upstream returned an id (the Cloud API's wamid), so a status
//!   webhook that carries no ferry marker is still matched (`Store::seq_for_upstream_id`);
//! - `i\0{id}` → an inbound message already recorded: a second delivery of the same id (a
//!   webhook Meta sends again, a chat server redelivering after a lost ack) records nothing and
//!   sends no second callback.
//!
//! A compaction filter drops a record once its `at_ms` is older than the status retention
//! (`shard.status_retention_secs`), like the `status` records they point at.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::ShardError;

pub use crate::store::{DiskUsage, Store};
pub use rocksdb::Error as RocksError;

/// Version of the layout described above, stored in `meta/format_version`.
pub const FORMAT_VERSION: u32 = 1;
/// Version byte that starts every value.
pub const VALUE_VERSION: u8 = 1;

pub const CF_META: &str = "meta";
pub const CF_QUEUE: &str = "queue";
pub const CF_IDEMPOTENCY: &str = "idempotency";
pub const CF_IDEMPOTENCY_INTENTS: &str = "idempotency_intents";
pub const CF_STATUS: &str = "status";
pub const CF_SESSIONS: &str = "sessions";
pub const CF_OUTBOX: &str = "outbox";
pub const CF_CONTACTS: &str = "contacts";
pub const CF_HELD: &str = "held";
pub const CF_RELEASED: &str = "released";
pub const CF_DISPATCHED: &str = "dispatched";
pub const CF_UPSTREAM_IDS: &str = "upstream_ids";
/// Replicated mode: the Raft log (see "Replicated mode" above).
pub const CF_RAFT_LOG: &str = "raft_log";
/// Replicated mode: vote, committed and purged log ids, current snapshot.
pub const CF_RAFT_STATE: &str = "raft_state";
/// The column families of the state machine: everything but the Raft log and its state (what a
/// snapshot carries).
pub const SM_CFS: [&str; 12] = [
    CF_META,
    CF_QUEUE,
    CF_IDEMPOTENCY,
    CF_IDEMPOTENCY_INTENTS,
    CF_STATUS,
    CF_SESSIONS,
    CF_OUTBOX,
    CF_CONTACTS,
    CF_HELD,
    CF_RELEASED,
    CF_DISPATCHED,
    CF_UPSTREAM_IDS,
];
/// Every column family of a shard database.
pub const ALL_CFS: [&str; 14] = [
    CF_META,
    CF_QUEUE,
    CF_IDEMPOTENCY,
    CF_IDEMPOTENCY_INTENTS,
    CF_STATUS,
    CF_SESSIONS,
    CF_OUTBOX,
    CF_CONTACTS,
    CF_HELD,
    CF_RELEASED,
    CF_DISPATCHED,
    CF_UPSTREAM_IDS,
    CF_RAFT_LOG,
    CF_RAFT_STATE,
];

/// Key prefix in `upstream_ids` of an outbound message's upstream id.
pub const UPSTREAM_ID_OUTBOUND: &[u8] = b"o\0";
/// Key prefix in `upstream_ids` of an inbound message's id.
pub const UPSTREAM_ID_INBOUND: &[u8] = b"i\0";

/// The `upstream_ids` key of `id` under `prefix`.
pub fn upstream_id_key(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id.as_bytes());
    key
}

pub const META_FORMAT_VERSION: &[u8] = b"format_version";
pub const META_SHARD: &[u8] = b"shard";
pub const META_NODE_ID: &[u8] = b"node_id";
pub const META_ID_SPACE: &[u8] = b"id_space";
pub const META_APPLIED_AT_MS: &[u8] = b"applied_at_ms";
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_QUEUE_LOW_WATERMARK: &[u8] = b"queue_low_watermark";
pub const META_IDENTITY_KEY: &[u8] = b"identity_key";
pub const META_NEXT_OUTBOX_SEQ: &[u8] = b"next_outbox_seq";
pub const META_WEBHOOK_CURSOR: &[u8] = b"webhook_cursor";
pub const META_RAFT_APPLIED: &[u8] = b"raft_applied";
pub const META_RAFT_MEMBERSHIP: &[u8] = b"raft_membership";
pub const RAFT_STATE_VOTE: &[u8] = b"vote";
pub const RAFT_STATE_COMMITTED: &[u8] = b"committed";
pub const RAFT_STATE_PURGED: &[u8] = b"purged";
pub const RAFT_STATE_SNAPSHOT: &[u8] = b"snapshot";
pub const RAFT_STATE_INSTALLING: &[u8] = b"installing";

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// A message waiting in a shard's queue.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueueRecord {
    /// Normalized recipient.
    #[prost(string, tag = "1")]
    pub wa_id: String,
    /// Business number the message is sent from.
    #[prost(string, tag = "2")]
    pub sender: String,
    /// Message type ("text", "template", ...).
    #[prost(string, tag = "3")]
    pub message_type: String,
    #[prost(int64, tag = "4")]
    pub accepted_at_ms: i64,
    #[prost(int64, tag = "5")]
    pub expires_at_ms: i64,
    /// JSON of `ferry_model::message::OutboundMessage`.
    #[prost(bytes = "vec", tag = "6")]
    pub payload: Vec<u8>,
    #[prost(string, tag = "7")]
    pub biz_opaque_callback_data: String,
    /// Empty when the send carried no key.
    #[prost(string, tag = "8")]
    pub idempotency_key: String,
    /// When the message was held as a paced template's (0: never held). A released message keeps
    /// it, so its history shows the hold.
    #[prost(int64, tag = "9")]
    pub held_at_ms: i64,
}

/// A paced template's message waiting in `held` (see "Paced templates" above).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeldRecord {
    /// The queue record it becomes when released (`held_at_ms` set).
    #[prost(message, optional, tag = "1")]
    pub record: Option<QueueRecord>,
    /// The template's name (what `ResolveHeld` selects by).
    #[prost(string, tag = "2")]
    pub template_name: String,
}

/// A queued message that may have been handed to an upstream that cannot deduplicate (see
/// "Dispatch marks" above).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DispatchRecord {
    /// When the latest request for it was about to go out.
    #[prost(int64, tag = "1")]
    pub at_ms: i64,
}

/// An id the upstream chose (see "Upstream ids" above).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpstreamIdRecord {
    /// Of an outbound id: the message's seq in this shard; 0 for an inbound id.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// When it was recorded (the entry clock).
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
}

/// What an idempotency key answered the first time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(string, tag = "2")]
    pub wa_id: String,
    /// xxh3-128 of the validated message and sender: a reuse with another payload is a conflict.
    #[prost(bytes = "vec", tag = "3")]
    pub payload_hash: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub created_at_ms: i64,
}

/// One status a message was in, and when.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusEvent {
    /// `ferry_model::MessageStatus::code()`.
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
}

/// What became of a message that left the queue (or got a receipt).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRecord {
    /// `ferry_model::MessageStatus::code()` of the current status.
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(string, tag = "2")]
    pub wa_id: String,
    #[prost(string, tag = "3")]
    pub sender: String,
    #[prost(string, tag = "4")]
    pub message_type: String,
    #[prost(int64, tag = "5")]
    pub accepted_at_ms: i64,
    #[prost(int64, tag = "6")]
    pub expires_at_ms: i64,
    #[prost(int64, tag = "7")]
    pub updated_at_ms: i64,
    /// Every status the message was in, oldest first.
    #[prost(message, repeated, tag = "8")]
    pub history: Vec<StatusEvent>,
    /// Set when status is failed: the reference code (e.g. 410, 1013), title and details.
    #[prost(uint32, tag = "9")]
    pub error_code: u32,
    #[prost(string, tag = "10")]
    pub error_title: String,
    #[prost(string, tag = "11")]
    pub error_details: String,
    #[prost(string, tag = "12")]
    pub biz_opaque_callback_data: String,
    /// The upstream's own id of the message (the Cloud API's wamid), stored with `sent` in the
    /// same write; empty for the chat upstream or before it is known.
    #[prost(string, tag = "13")]
    pub upstream_message_id: String,
}

/// One status change to report to the webhook (an `outbox` entry).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CallbackRecord {
    /// The queue sequence number of the message (its id is derived from it).
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// `ferry_model::MessageStatus::code()` of the new status.
    #[prost(uint32, tag = "2")]
    pub status: u32,
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
    #[prost(string, tag = "4")]
    pub wa_id: String,
    #[prost(string, tag = "5")]
    pub sender: String,
    #[prost(string, tag = "6")]
    pub biz_opaque_callback_data: String,
    #[prost(uint32, tag = "7")]
    pub error_code: u32,
    #[prost(string, tag = "8")]
    pub error_title: String,
    #[prost(string, tag = "9")]
    pub error_details: String,
    #[prost(string, tag = "10")]
    pub message_type: String,
    /// [`CALLBACK_STATUS`] (a status change of message `seq`) or [`CALLBACK_INBOUND`] (a message
    /// from user `wa_id` to business `sender`; `seq` is 0).
    #[prost(uint32, tag = "11")]
    pub kind: u32,
    /// Inbound only: the chat server's id of the message.
    #[prost(string, tag = "12")]
    pub inbound_id: String,
    /// Inbound only: the text of a text message.
    #[prost(string, tag = "13")]
    pub text_body: String,
    /// Inbound only: the user's profile name, when the chat server gave one.
    #[prost(string, tag = "14")]
    pub profile_name: String,
}

/// `CallbackRecord::kind` of a status change.
pub const CALLBACK_STATUS: u32 = 0;
/// `CallbackRecord::kind` of an inbound user message.
pub const CALLBACK_INBOUND: u32 = 1;

/// What the shard knows of a (business, user) conversation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContactRecord {
    /// When the user last wrote to the business (ms since the epoch): opens the 24-hour window.
    #[prost(int64, tag = "1")]
    pub last_inbound_ms: i64,
    #[prost(string, tag = "2")]
    pub profile_name: String,
}

/// A pending idempotency record that must reach its key shard (see the module docs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyIntent {
    #[prost(uint32, tag = "1")]
    pub key_shard: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub record: Option<IdempotencyRecord>,
}

pub fn queue_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `sender ++ 0x00 ++ recipient`: the key of an encryption session.
pub fn session_key(sender: &str, recipient: &str) -> Vec<u8> {
    idempotency_key(sender, recipient)
}

/// `sender ++ 0x00 ++ key`.
pub fn idempotency_key(sender: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sender.len() + 1 + key.len());
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub fn encode_value<M: prost::Message>(m: &M) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.encoded_len());
    v.push(VALUE_VERSION);
    m.encode(&mut v).expect("vec has capacity");
    v
}

pub fn decode_value<M: prost::Message + Default>(shard: u16, bytes: &[u8]) -> Result<M, ShardError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => {
            M::decode(rest).map_err(|e| ShardError::Corrupt { shard, what: format!("undecodable value: {e}") })
        }
        Some((v, _)) => Err(ShardError::Corrupt { shard, what: format!("unknown value version {v}") }),
        None => Err(ShardError::Corrupt { shard, what: "empty value".into() }),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What the outbox's compaction filter keeps (see "Status events" above).
#[derive(Debug, Clone)]
pub struct EventRetention {
    /// Events older than this (ms) may be dropped...
    pub retention_ms: i64,
    /// ...when their sequence number is below this: the webhook cursor, or `u64::MAX` when no
    /// webhook is configured.
    pub webhook_floor: Arc<AtomicU64>,
}
