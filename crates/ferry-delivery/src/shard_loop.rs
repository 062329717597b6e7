//! The delivery loop of one shard: stage "deliver until acked".
//!
//! One tokio task per shard owns everything below; nothing else touches it, so it needs no locks.
//!
//! ```text
//!   queue (RocksDB) ──scan [cursor, committed)──► in memory (≤ window messages)
//!        ▲                                              │ per recipient: FIFO, ≤ N in flight
//!        │ settle (ack → sent / failed,                 ▼
//!        │  queue delete + status, one synced batch)  encrypt (session cache) ──► link ──► server
//!        └───────────────────────── EnvelopeResult / Receipt ◄──────────────────────────┘
//! ```
//!
//! - **Reading.** A cursor walks the queue forward from the shard's low watermark; each scan is
//!   bounded by the room left in the window and by the committed `next_seq`, so the loop never
//!   rescans and never holds more than `window` messages, whatever the backlog on disk.
//!   No recipient holds more than `max_window_per_recipient` of them (`window.rs`): the cursor
//!   walks on past a recipient at its cap, whose surplus stays on disk and is read again (from
//!   its lowest unread seq, in order) when it drains. Reads per loop turn are bounded too.
//!   Released held messages (paced templates) enter the queue under their original, usually
//!   older, seq: the shard hands the loop their seqs (`Shard::take_released`) and the loop
//!   point-reads those below its cursor (the scan reads the others), within the same window.
//!   They join the back of their recipient's FIFO.
//! - **Order.** Each recipient has a FIFO of waiting messages and at most
//!   `max_in_flight_per_recipient` envelopes in flight (1 by default: send order is delivery order).
//!   A message that must be retried goes back to the *front* of its recipient's FIFO.
//! - **Retries.** Forever, with exponential backoff and jitter, until the server acks; except
//!   TTL expired (failed, 410), recipient invalid (failed, 1013), rate limited (below), session
//!   unknown (re-key, then resend; re-keys in a row back off). An envelope unanswered after
//!   `ack_timeout_ms` is sent again after the recipient's backoff, and one in flight when the link
//!   drops at once (the server dedups by message id). `ack_timeouts_before_reconnect` timeouts in
//!   a row (no answer in between), or a full outgoing buffer, reset the stream.
//! - **Attempts.** Every envelope carries its attempt number and the server echoes it: an answer
//!   to an earlier attempt is recognised. An ack of any attempt settles the message (the server
//!   has it: it is not sent again); any other late answer is ignored (a late `SESSION_UNKNOWN`
//!   does not discard the fresh session).
//! - **Rate limits.** `RATE_LIMITED` (pair rate limit, 131056) and `MARKETING_LIMITED` (per-user
//!   marketing limit, 131049) block only that recipient, for `rate_limit_base_ms × 4^X` (X = the
//!   recipient's refusals in a row, 0 for the first; reset by its next ack), at least the server's
//!   `retry_after_ms`, at most `rate_limit_max_backoff_ms` ([`RateLimitStreak`]). Other recipients
//!   keep flowing. Refusals of envelopes already in flight when an earlier refusal blocked the
//!   recipient (`max_in_flight_per_recipient` > 1) do not raise X. A message refused
//!   `MARKETING_LIMITED` more than `marketing_limit_retries` times in a row fails (131049) like a
//!   1013 failure; the recipient still waits before its next message. The streak lives in memory
//!   only: it is forgotten with the recipient once nothing of theirs is loaded or blocked, and at
//!   a restart, so it starts again at X = 0 then.
//! - **Settling.** Acks and failures collected during one turn of the loop are written as one
//!   `Settle` (queue delete + status record in one synced batch, with the new low watermark). A
//!   message stays in memory until that write is durable; if it fails, the message is retried.
//! - **Receipts** become status changes in the same kind of batch; the receipt is acknowledged to
//!   the server only after the change is durable, so a crash makes the server push it again.
//! - **Sessions.** A cache hit encrypts at once. A miss starts a background setup (load the
//!   session from the shard, else fetch a pre-key bundle and agree on keys), while other
//!   recipients proceed. Before a session uses counters beyond its persisted reservation, a new
//!   reservation is written durably (see `ferry-session`): a crash never reuses a counter.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_model::clock::SharedClock;
use ferry_model::routing::shard_for_recipient;
use ferry_model::{ErrorCode, MessageId, MessageKey, MessageStatus, WaId};
use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_proto::chat::v1::{
    ClientFrame, Envelope, EnvelopeResult, FetchPreKeyBundleRequest, InboundMessage, ReceiptAck, client_frame,
    delivery_error, envelope_result, receipt, server_frame,
};
use ferry_session::{IdentityKeyPair, PreKeyBundle, SendingSession};
use ferry_shard::settle::status_base;
use ferry_shard::{FailureReason, InboundRecord, QueueRecord, Settlement, Shard, ShardError};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::DeliveryConfig;
use crate::failpoint::{self, Point};
use crate::link::{LinkEvent, LinkHandle, SendFailure};
use crate::stats::ShardDeliveryStats;
use crate::supervise::{Joined, TaskSet};
use crate::window::Admission;

mod expiry;
mod other_shards;

/// Most messages read from the queue in one scan.
const SCAN_CHUNK: usize = 1024;
/// Most queue records read in one turn of the loop (forward scan and refills together), so a
/// long stretch of one capped recipient's surplus does not hold up answers and acks.
const READ_BUDGET_PER_TURN: usize = 4 * SCAN_CHUNK;

/// `sender ++ 0 ++ recipient`: a recipient of one business number (the unit of ordering and of
/// encryption sessions).
type RecipientKey = String;

fn recipient_key(sender: &str, recipient: &str) -> RecipientKey {
    let mut k = String::with_capacity(sender.len() + 1 + recipient.len());
    k.push_str(sender);
    k.push('\0');
    k.push_str(recipient);
    k
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In its recipient's FIFO.
    Waiting,
    /// Sent on the link; `attempt` tells a current timeout from a stale one.
    InFlight { attempt: u32 },
    /// Its TTL passed while an attempt was unanswered: not sent again, waiting for that answer
    /// (`expiry.rs`).
    Expired,
    /// Its outcome is being written.
    Settling,
}

struct Loaded {
    record: QueueRecord,
    message_id: MessageId,
    key: RecipientKey,
    phase: Phase,
    /// Send attempts so far.
    attempts: u32,
    /// Temporary failures in a row (drives the backoff).
    failures: u32,
    /// `MARKETING_LIMITED` answers in a row (any other answer resets it): more than
    /// `marketing_limit_retries` fails the message with 131049.
    marketing_refusals: u32,
    /// The ack-timeout timer of the current attempt, cancelled when an answer arrives.
    ack_timer: Option<u64>,
    /// Attempts sent on the current stream and not answered yet: while any is, the message does
    /// not expire (`expiry.rs`).
    unanswered: u32,
}

#[derive(Default)]
struct Recipient {
    waiting: VecDeque<u64>,
    in_flight: usize,
    /// No dispatch before this instant (backoff, rate limit).
    blocked_until: Option<Instant>,
    /// A session setup or reservation is running for this recipient.
    session_busy: bool,
    /// The next setup must fetch a new bundle (the server did not know the session).
    rekey: bool,
    /// `SESSION_UNKNOWN` answers in a row (reset by an ack): from the second on, the recipient
    /// backs off before its re-key.
    rekeys_in_a_row: u32,
    /// Rate-limit refusals in a row (X of the 4^X backoff).
    rate_limits: RateLimitStreak,
}

/// A recipient's rate-limit refusals in a row: the X of the reference's "retry after 4^X seconds".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RateLimitStreak {
    refusals: u32,
}

impl RateLimitStreak {
    /// Counts a refusal and returns how long the recipient waits: `rate_limit_base_ms × 4^X`
    /// (X = refusals before this one), at least `retry_after_ms`, at most
    /// `rate_limit_max_backoff_ms`. A refusal that is not `fresh` (its envelope was in flight when
    /// an earlier refusal blocked the recipient) does not raise X: it waits as long as that one.
    fn refused(&mut self, config: &DeliveryConfig, retry_after_ms: u64, fresh: bool) -> Duration {
        let x = if fresh {
            self.refusals = self.refusals.saturating_add(1);
            self.refusals - 1
        } else {
            self.refusals.saturating_sub(1)
        };
        let backoff = config.rate_limit_base_ms.saturating_mul(4u64.saturating_pow(x));
        Duration::from_millis(backoff.max(retry_after_ms).min(config.rate_limit_max_backoff_ms).max(1))
    }

    /// The recipient's next ack: the next refusal waits `rate_limit_base_ms` again (X = 0).
    fn acked(&mut self) {
        self.refusals = 0;
    }
}

enum Timer {
    Unblock(RecipientKey),
    /// Write the deferred settle batches again.
    RetrySettle,
    AckTimeout {
        seq: u64,
        attempt: u32,
    },
    /// A parked (expired) message's answer is overdue (`expiry.rs`).
    AwaitLateAnswer {
        seq: u64,
    },
}

/// What a background session task holds: its recipient, and whether it re-keys.
struct SessionHeld {
    key: RecipientKey,
    rekey: bool,
}

type SessionOutcome = Result<(SendingSession, SessionSource), SessionFailure>;

/// The result of a background session task.
struct SessionDone {
    key: RecipientKey,
    /// The task was a re-key (the server did not know the previous session).
    rekey: bool,
    outcome: Result<(SendingSession, SessionSource), SessionFailure>,
}

enum SessionSource {
    Loaded,
    Setup,
    Reserved,
}

enum SessionFailure {
    /// The server says the recipient does not exist: its messages fail (1013).
    RecipientInvalid(String),
    /// Anything else: retry later.
    Temporary(String),
}

/// What a settle task holds: one batch, kept to write it again if the write failed (or the task
/// panicked).
struct SettleBatch {
    seqs: Vec<u64>,
    entries: Vec<Settlement>,
    receipt_ids: Vec<u64>,
    /// Written to another shard (`other_shards.rs`): inbound messages of its users, receipts of
    /// its messages.
    other_shard: Option<ferry_model::ShardId>,
}

/// Delay before writing a failed settle batch again.
const SETTLE_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for a pre-key bundle before the set-up counts as a temporary failure.
const BUNDLE_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired messages are failed while the chat server is unreachable.
const TTL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct ShardLoop {
    shard: Arc<Shard>,
    /// Every shard of the node, by index: inbound messages go to the shard that owns their user.
    all_shards: Arc<[Arc<Shard>]>,
    config: DeliveryConfig,
    clock: SharedClock,
    client: ChatClient<Channel>,
    identity: Arc<IdentityKeyPair>,
    stats: Arc<ShardDeliveryStats>,
    events: mpsc::Receiver<LinkEvent>,
    shutdown: watch::Receiver<bool>,

    /// Next queue sequence number to read.
    cursor: u64,
    /// Released held messages not read yet (their seqs; see the module docs).
    late: VecDeque<u64>,
    /// Every loaded, unsettled message by sequence (ordered: the lowest held is the watermark).
    messages: BTreeMap<u64, Loaded>,
    /// Per-recipient share of the window and the surplus left on disk (`window.rs`).
    admission: Admission,
    /// The last turn's read budget ran out with records left to read: read again at once.
    more_to_read: bool,
    recipients: HashMap<RecipientKey, Recipient>,
    /// Recipients that may be able to dispatch now.
    ready: VecDeque<RecipientKey>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer>,
    next_timer_id: u64,
    sessions: quick_cache::unsync::Cache<RecipientKey, SendingSession>,
    session_tasks: TaskSet<SessionOutcome, SessionHeld>,
    setup_permits: Arc<Semaphore>,
    link: Option<LinkHandle>,
    /// Ack timeouts since the last answer on this link: `ack_timeouts_before_reconnect` resets it.
    timeouts_in_a_row: u32,
    to_settle: Vec<Settlement>,
    receipts_to_ack: Vec<u64>,
    settle_tasks: TaskSet<Result<(), ShardError>, SettleBatch>,
    /// Settle batches whose write failed, written again after [`SETTLE_RETRY`]. Their messages
    /// stay `Settling` (never resent: the server has them).
    deferred_settle: Vec<Settlement>,
    deferred_receipts: Vec<u64>,
    /// Settlements for other shards (`other_shards.rs`).
    other_shards: other_shards::OtherShards,
    /// `ferry_accept_to_ack_seconds`, registered once per loop (recording is an atomic op).
    accept_to_ack: metrics::Histogram,
}

impl ShardLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shard: Arc<Shard>,
        all_shards: Arc<[Arc<Shard>]>,
        config: DeliveryConfig,
        clock: SharedClock,
        client: ChatClient<Channel>,
        stats: Arc<ShardDeliveryStats>,
        events: mpsc::Receiver<LinkEvent>,
        shutdown: watch::Receiver<bool>,
    ) -> ShardLoop {
        let identity = Arc::new(IdentityKeyPair::from_bytes(shard.identity_key()));
        let cursor = shard.queue_low_watermark().max(1);
        ShardLoop {
            sessions: quick_cache::unsync::Cache::new(config.session_cache_capacity),
            admission: Admission::new(config.max_window_per_recipient.min(config.window)),
            more_to_read: false,
            setup_permits: Arc::new(Semaphore::new(config.max_concurrent_session_setups)),
            shard,
            all_shards,
            config,
            clock,
            client,
            identity,
            stats,
            events,
            shutdown,
            cursor,
            late: VecDeque::new(),
            messages: BTreeMap::new(),
            recipients: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_payloads: HashMap::new(),
            next_timer_id: 0,
            session_tasks: TaskSet::new(),
            link: None,
            timeouts_in_a_row: 0,
            to_settle: Vec::new(),
            receipts_to_ack: Vec::new(),
            settle_tasks: TaskSet::new(),
            deferred_settle: Vec::new(),
            deferred_receipts: Vec::new(),
            other_shards: Default::default(),
            accept_to_ack: metrics::histogram!(ACCEPT_TO_ACK_SECONDS),
        }
    }

    /// Runs until shutdown; then writes what it has settled and returns. Messages still in flight
    /// stay in the queue and are delivered again after the next start (the server dedups).
    pub(crate) async fn run(mut self) {
        let shard = self.shard.clone();
        let mut events = Vec::with_capacity(256);
        let mut ttl_sweep = tokio::time::interval(TTL_SWEEP_INTERVAL);
        ttl_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            self.load_from_queue();
            self.dispatch_ready();
            self.flush_settlements();
            self.stats.loaded.store(self.messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.stats
                .recipients_capped
                .store(self.admission.recipients_with_surplus() as u64, std::sync::atomic::Ordering::Relaxed);

            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let has_room = self.messages.len() < self.config.window;
            let more_to_read = self.more_to_read && has_room;
            tokio::select! {
                n = self.events.recv_many(&mut events, 256) => {
                    if n == 0 {
                        break;
                    }
                    for event in events.drain(..) {
                        self.on_link_event(event);
                    }
                }
                Some(joined) = self.session_tasks.join_next(), if !self.session_tasks.is_empty() => {
                    self.on_session_joined(joined);
                }
                Some(joined) = self.settle_tasks.join_next(), if !self.settle_tasks.is_empty() => {
                    self.on_settle_joined(joined);
                }
                _ = shard.appended(), if has_room => {}
                _ = tokio::task::yield_now(), if more_to_read => {}
                _ = sleep_until_opt(next_timer) => self.fire_timers(),
                _ = ttl_sweep.tick() => self.fail_expired_while_unreachable(),
                _ = self.shutdown.changed() => {}
            }
        }
        // Drain: write what was settled, wait for pending writes, then stop.
        self.flush_settlements();
        while let Some(joined) = self.settle_tasks.join_next().await {
            self.on_settle_joined(joined);
        }
        self.session_tasks.abort_all();
        tracing::debug!(shard = %self.shard.id(), in_memory = self.messages.len(), "delivery loop stopped");
    }

    // ---- reading the queue -------------------------------------------------------------------

    /// Reads released held messages below the cursor (point reads), while the window has room.
    fn load_released(&mut self) {
        self.late.extend(self.shard.take_released(usize::MAX));
        while self.messages.len() < self.config.window
            && let Some(seq) = self.late.pop_front()
        {
            // At or past the cursor the scan reads it; loaded already (or settled: then it is no
            // longer in the queue) needs nothing.
            if seq >= self.cursor || self.messages.contains_key(&seq) {
                continue;
            }
            match self.shard.get_queued(seq) {
                Ok(Some(record)) => self.offer(seq, record),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(shard = %self.shard.id(), seq, error = %e, "cannot read a released message; retrying");
                    self.late.push_front(seq);
                    return;
                }
            }
        }
    }

    /// Reads the next messages of the queue into memory while the window has room: first the
    /// surplus of recipients that drained, then forward from the cursor. At most
    /// [`READ_BUDGET_PER_TURN`] records per call; `more_to_read` says when some are left.
    fn load_from_queue(&mut self) {
        self.load_released();
        self.more_to_read = false;
        let mut budget = READ_BUDGET_PER_TURN;
        self.refill_surplus(&mut budget);
        loop {
            let room = self.config.window.saturating_sub(self.messages.len());
            let until = self.shard.committed_next_seq();
            if room == 0 || self.cursor >= until {
                return;
            }
            if budget == 0 {
                self.more_to_read = true;
                return;
            }
            let limit = room.min(SCAN_CHUNK).min(budget);
            budget -= limit;
            let chunk = match self.shard.scan_queue_range(self.cursor, until, limit) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(shard = %self.shard.id(), error = %e, "cannot read the queue; retrying");
                    return;
                }
            };
            let full = chunk.len() == limit;
            let last = chunk.last().map(|(seq, _)| *seq);
            for (seq, record) in chunk {
                self.offer(seq, record);
            }
            // Everything in [cursor, until) that was not returned is deleted (or returned):
            // continue after the last read one, or at `until` when the range is exhausted.
            if let (true, Some(last)) = (full, last) {
                self.cursor = self.cursor.max(last + 1);
            } else {
                self.cursor = until;
                return;
            }
        }
    }

    /// Reads again, below the cursor, the messages left on disk of recipients that drained to half
    /// their cap: only theirs, in seq order, until the cap, the window or `budget` is reached.
    fn refill_surplus(&mut self, budget: &mut usize) {
        while let Some((key, from)) = self.admission.next_refill() {
            let mut next = from;
            loop {
                if next >= self.cursor {
                    self.admission.refilled(&key, None);
                    break;
                }
                if !self.admission.has_room(&key) {
                    self.admission.refilled(&key, Some(next));
                    break;
                }
                if self.messages.len() >= self.config.window || *budget == 0 {
                    self.admission.refilled(&key, Some(next));
                    self.admission.retry_refill(key);
                    self.more_to_read |= *budget == 0;
                    return;
                }
                let limit = SCAN_CHUNK.min(*budget);
                *budget -= limit;
                let chunk = match self.shard.scan_queue_range(next, self.cursor, limit) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::error!(shard = %self.shard.id(), error = %e, "cannot read the queue; retrying");
                        self.admission.refilled(&key, Some(next));
                        self.admission.retry_refill(key);
                        return;
                    }
                };
                let exhausted = chunk.len() < limit;
                let mut stopped = false;
                for (seq, record) in chunk {
                    if self.messages.contains_key(&seq) || recipient_key(&record.sender, &record.wa_id) != key {
                        next = seq + 1;
                        continue;
                    }
                    if !self.admission.has_room(&key) || self.messages.len() >= self.config.window {
                        next = seq;
                        stopped = true;
                        break;
                    }
                    self.admit(seq, record, key.clone());
                    next = seq + 1;
                }
                if exhausted && !stopped {
                    next = self.cursor;
                }
            }
        }
    }

    /// Admits a message read from the queue, or leaves it on disk when its recipient is at its
    /// cap (`window.rs`).
    fn offer(&mut self, seq: u64, record: QueueRecord) {
        let key = recipient_key(&record.sender, &record.wa_id);
        if self.admission.offer(&key, seq) {
            self.admit(seq, record, key);
        }
    }

    fn admit(&mut self, seq: u64, record: QueueRecord, key: RecipientKey) {
        let message_id = MessageId::encode(MessageKey { shard: self.shard.id(), node_id: self.shard.node_id(), seq });
        self.admission.admitted(&key);
        let recipient = self.recipients.entry(key.clone()).or_default();
        recipient.waiting.push_back(seq);
        if recipient.waiting.len() == 1 {
            self.ready.push_back(key.clone());
        }
        self.messages.insert(
            seq,
            Loaded {
                record,
                message_id,
                key,
                phase: Phase::Waiting,
                attempts: 0,
                failures: 0,
                marketing_refusals: 0,
                ack_timer: None,
                unanswered: 0,
            },
        );
    }

    // ---- dispatching -------------------------------------------------------------------------

    fn dispatch_ready(&mut self) {
        if self.link.is_none() {
            return;
        }
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(key) = self.ready.pop_front() else { break };
            self.dispatch_recipient(&key);
        }
    }

    /// Sends as many waiting messages of one recipient as its limits allow.
    fn dispatch_recipient(&mut self, key: &RecipientKey) {
        let now = Instant::now();
        loop {
            let Some(r) = self.recipients.get_mut(key) else { return };
            if r.session_busy || r.in_flight >= self.config.max_in_flight_per_recipient {
                return;
            }
            if r.blocked_until.is_some_and(|t| t > now) {
                return;
            }
            r.blocked_until = None;
            let Some(&seq) = r.waiting.front() else {
                self.forget_recipient_if_idle(key);
                return;
            };
            let Some(link) = self.link.clone() else {
                self.ready.push_back(key.clone());
                return;
            };
            // TTL: an expired message is not sent; it fails, or waits for an outstanding answer.
            if self.is_expired(seq) {
                self.recipients.get_mut(key).expect("present").waiting.pop_front();
                self.expire_or_await_answer(seq);
                continue;
            }
            // Session: a hit encrypts now; a miss or an exhausted reservation runs in the background.
            let needs_background = match self.sessions.get(key) {
                None => true,
                Some(s) => s.needs_reservation(),
            };
            if needs_background {
                self.start_session_task(key);
                return;
            }
            let m = self.messages.get_mut(&seq).expect("waiting message is loaded");
            if failpoint::hit(Point::ShardLoop, &m.record.wa_id) {
                panic!("failpoint: the shard loop panicked");
            }
            let mut session = self.sessions.get_mut(key).expect("checked above");
            let encrypted =
                session.encrypt(m.message_id.as_str(), &m.record.sender, &m.record.wa_id, &m.record.payload);
            drop(session);
            let (header, ciphertext) = match encrypted {
                Ok(v) => {
                    self.stats.add(&self.stats.session_hits, 1);
                    v
                }
                Err(e) => {
                    tracing::warn!(shard = %self.shard.id(), error = %e, "encryption failed; setting up a new session");
                    self.sessions.remove(key);
                    self.start_session_task(key);
                    return;
                }
            };
            m.attempts += 1;
            m.unanswered += 1;
            m.phase = Phase::InFlight { attempt: m.attempts };
            let attempt = m.attempts;
            let envelope = Envelope {
                message_id: m.message_id.as_str().to_owned(),
                sender: m.record.sender.clone(),
                recipient: m.record.wa_id.clone(),
                header: Some(header.into()),
                ciphertext,
                attempt,
            };
            if attempt > 1 {
                self.stats.add(&self.stats.retries, 1);
            }
            let r = self.recipients.get_mut(key).expect("present");
            r.waiting.pop_front();
            r.in_flight += 1;
            self.stats.add(&self.stats.in_flight, 1);
            self.stats.add(&self.stats.envelopes_sent, 1);
            match link.try_send(ClientFrame { frame: Some(client_frame::Frame::Envelope(envelope)) }) {
                Ok(()) => {}
                // The link dropped under us: the Down event requeues in-flight messages.
                Err(SendFailure::Closed) => return,
                Err(SendFailure::Full) => {
                    self.reset_link("the outgoing buffer is full (the server takes no frames)");
                    return;
                }
            }
            let deadline = now + Duration::from_millis(self.config.ack_timeout_ms);
            let timer = self.add_timer(deadline, Timer::AckTimeout { seq, attempt });
            if let Some(m) = self.messages.get_mut(&seq) {
                m.ack_timer = Some(timer);
            }
        }
    }

    /// While the chat server is unreachable nothing is dispatched, so TTLs are checked here: the
    /// waiting messages that expired fail with 410 (with a link, dispatch checks them).
    fn fail_expired_while_unreachable(&mut self) {
        if self.link.is_some() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let expired: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, m)| matches!(m.phase, Phase::Waiting | Phase::Expired) && now_ms >= m.record.expires_at_ms)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            let key = self.messages[&seq].key.clone();
            if let Some(r) = self.recipients.get_mut(&key) {
                r.waiting.retain(|s| *s != seq);
            }
            self.fail_expired(seq);
        }
    }

    fn forget_recipient_if_idle(&mut self, key: &RecipientKey) {
        if let Entry::Occupied(e) = self.recipients.entry(key.clone()) {
            let r = e.get();
            if r.waiting.is_empty() && r.in_flight == 0 && !r.session_busy && r.blocked_until.is_none() {
                e.remove();
            }
        }
    }

    /// Puts an unanswered message back at the front of its recipient's FIFO.
    fn requeue_front(&mut self, seq: u64) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        if !matches!(m.phase, Phase::InFlight { .. }) {
            return;
        }
        m.phase = Phase::Waiting;
        let key = m.key.clone();
        let r = self.recipients.entry(key.clone()).or_default();
        r.in_flight = r.in_flight.saturating_sub(1);
        self.stats.left_flight();
        r.waiting.push_front(seq);
        self.ready.push_back(key);
    }

    /// Blocks a recipient until `until` and schedules its wake-up.
    fn block_recipient(&mut self, key: &RecipientKey, until: Instant) {
        let r = self.recipients.entry(key.clone()).or_default();
        r.blocked_until = Some(r.blocked_until.map_or(until, |t| t.max(until)));
        self.add_timer(until, Timer::Unblock(key.clone()));
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(&self.config, failures)
    }

    // ---- sessions ----------------------------------------------------------------------------

    fn start_session_task(&mut self, key: &RecipientKey) {
        let Some(r) = self.recipients.get_mut(key) else { return };
        if r.session_busy {
            return;
        }
        r.session_busy = true;
        let rekey = std::mem::take(&mut r.rekey);
        let Some(&seq) = r.waiting.front() else {
            r.session_busy = false;
            return;
        };
        let m = &self.messages[&seq];
        let (sender, recipient) = (m.record.sender.clone(), m.record.wa_id.clone());
        let cached = self.sessions.remove(key).map(|(_, s)| s);
        let shard = self.shard.clone();
        let client = self.client.clone();
        let identity = self.identity.clone();
        let permits = self.setup_permits.clone();
        let reservation = self.config.session_reservation;
        let stats = self.stats.clone();
        let panics = failpoint::hit(Point::SessionTask, &recipient);
        self.session_tasks.spawn(SessionHeld { key: key.clone(), rekey }, async move {
            if panics {
                panic!("failpoint: the session task panicked");
            }
            prepare_session(
                &shard,
                client,
                &identity,
                &permits,
                &stats,
                &sender,
                &recipient,
                cached,
                rekey,
                reservation,
            )
            .await
        });
    }

    /// A session task ended: its outcome, or a temporary failure for its recipient if it panicked.
    fn on_session_joined(&mut self, joined: Joined<SessionOutcome, SessionHeld>) {
        let (SessionHeld { key, rekey }, outcome) = match joined {
            Joined::Done { output, held } => (held, output),
            Joined::Panicked { held, reason } => {
                self.stats.add(&self.stats.task_panics, 1);
                tracing::error!(shard = %self.shard.id(), reason, "a session task panicked; the recipient retries");
                (held, Err(SessionFailure::Temporary(format!("the session task panicked: {reason}"))))
            }
        };
        self.on_session_done(SessionDone { key, rekey, outcome });
    }

    fn on_session_done(&mut self, done: SessionDone) {
        let key = done.key;
        let Some(r) = self.recipients.get_mut(&key) else { return };
        r.session_busy = false;
        match done.outcome {
            Ok((session, source)) => {
                match source {
                    SessionSource::Loaded => self.stats.add(&self.stats.session_loads, 1),
                    SessionSource::Setup => self.stats.add(&self.stats.session_setups, 1),
                    SessionSource::Reserved => {}
                }
                self.sessions.insert(key.clone(), session);
                self.ready.push_back(key);
            }
            Err(SessionFailure::RecipientInvalid(detail)) => {
                // Every waiting message of this recipient fails: the server says it does not exist.
                let waiting: Vec<u64> = r.waiting.drain(..).collect();
                for seq in waiting {
                    self.fail(seq, ErrorCode::UserNotValid, "Recipient is not a valid WhatsApp user", &detail);
                }
                self.forget_recipient_if_idle(&key);
            }
            Err(SessionFailure::Temporary(detail)) => {
                tracing::debug!(shard = %self.shard.id(), detail, "session setup failed; retrying");
                // A failed re-key must stay a re-key: the stored session is the one the server
                // does not know.
                r.rekey |= done.rekey;
                let failures = r.waiting.front().and_then(|s| self.messages.get_mut(s)).map(|m| {
                    m.failures += 1;
                    m.failures
                });
                let delay = self.backoff(failures.unwrap_or(1));
                self.block_recipient(&key, Instant::now() + delay);
            }
        }
    }

    // ---- link events -------------------------------------------------------------------------

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up(handle) => {
                tracing::info!(shard = %self.shard.id(), "connected to the chat server");
                self.link = Some(handle);
                self.timeouts_in_a_row = 0;
                let keys: Vec<RecipientKey> = self.recipients.keys().cloned().collect();
                self.ready.extend(keys);
            }
            LinkEvent::Down(reason) => {
                if self.link.take().is_some() {
                    tracing::warn!(shard = %self.shard.id(), reason, "lost the chat server; in-flight messages will be resent");
                }
                self.requeue_all_in_flight();
                self.stream_ended();
            }
            LinkEvent::Frame(frame) => match frame.frame {
                Some(server_frame::Frame::Result(result)) => self.on_result(result),
                Some(server_frame::Frame::Receipt(receipt)) => self.on_receipt(receipt),
                Some(server_frame::Frame::Inbound(inbound)) => self.on_inbound(inbound),
                None => {}
            },
        }
    }

    /// Whatever was in flight may or may not have arrived: send it again (the server dedups by
    /// message id). Highest sequence first so each FIFO keeps its order.
    fn requeue_all_in_flight(&mut self) {
        let mut in_flight: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, m)| matches!(m.phase, Phase::InFlight { .. }))
            .map(|(&seq, _)| seq)
            .collect();
        in_flight.sort_unstable_by(|a, b| b.cmp(a));
        for seq in in_flight {
            self.requeue_front(seq);
        }
    }

    /// Ends the current stream (the server stopped answering or taking frames): nothing is sent
    /// until the link is up again; what was in flight is resent then.
    fn reset_link(&mut self, why: &str) {
        let Some(link) = self.link.take() else { return };
        tracing::warn!(shard = %self.shard.id(), why, "resetting the stream to the chat server");
        link.reset();
        self.stats.add(&self.stats.link_resets, 1);
        self.timeouts_in_a_row = 0;
        self.requeue_all_in_flight();
        self.stream_ended();
    }

    /// The current attempt of `seq` went unanswered for `ack_timeout_ms`: resend after the
    /// recipient's backoff; too many in a row reset the stream.
    fn on_ack_timeout(&mut self, seq: u64) {
        self.stats.add(&self.stats.ack_timeouts, 1);
        self.timeouts_in_a_row += 1;
        if self.is_expired(seq) {
            // Not sent again: wait for this attempt's answer (an ack makes it `sent`).
            self.requeue_front(seq);
            if let Some(r) = self.messages.get(&seq).and_then(|m| self.recipients.get_mut(&m.key)) {
                r.waiting.retain(|s| *s != seq);
            }
            self.expire_or_await_answer(seq);
        } else if let Some(m) = self.messages.get_mut(&seq) {
            m.failures += 1;
            let (key, failures) = (m.key.clone(), m.failures);
            self.requeue_front(seq);
            self.block_recipient(&key, Instant::now() + backoff(&self.config, failures));
        }
        if self.timeouts_in_a_row >= self.config.ack_timeouts_before_reconnect {
            let why = format!("{} ack timeouts in a row", self.timeouts_in_a_row);
            self.reset_link(&why);
        }
    }

    /// The server acked `seq` (this attempt or an earlier one): it leaves the queue as `sent`.
    fn settle_acked(&mut self, seq: u64, ack: &ferry_proto::chat::v1::Ack) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        let key = m.key.clone();
        match m.phase {
            Phase::Settling => return,
            Phase::InFlight { .. } => {
                let timer = m.ack_timer.take();
                if let Some(r) = self.recipients.get_mut(&key) {
                    r.in_flight = r.in_flight.saturating_sub(1);
                }
                self.stats.left_flight();
                self.cancel_timer(timer);
            }
            Phase::Waiting => {
                if let Some(r) = self.recipients.get_mut(&key) {
                    r.waiting.retain(|s| *s != seq);
                }
            }
            Phase::Expired => {
                let timer = m.ack_timer.take();
                self.cancel_timer(timer);
            }
        }
        let Some(m) = self.messages.get_mut(&seq) else { return };
        m.phase = Phase::Settling;
        let at_ms = if ack.timestamp_ms > 0 { ack.timestamp_ms } else { self.clock.now_ms() };
        self.to_settle.push(Settlement::Sent { seq, message: status_base(&m.record), at_ms });
        if ack.duplicate {
            self.stats.add(&self.stats.acked_as_duplicate, 1);
        }
        self.accept_to_ack.record(ms_to_seconds(at_ms - m.record.accepted_at_ms));
        if let Some(r) = self.recipients.get_mut(&key) {
            r.rate_limits.acked();
            r.rekeys_in_a_row = 0;
        }
        self.ready.push_back(key);
    }

    fn seq_of(&self, message_id: &str) -> Option<u64> {
        let key = MessageId::decode(message_id)?;
        (key.shard == self.shard.id() && key.node_id == self.shard.node_id()).then_some(key.seq)
    }

    fn on_result(&mut self, result: EnvelopeResult) {
        let Some(seq) = self.seq_of(&result.message_id) else {
            tracing::warn!(shard = %self.shard.id(), id = result.message_id, "result for a message of another shard");
            return;
        };
        // Any answer shows the stream is alive.
        self.timeouts_in_a_row = 0;
        let Some(m) = self.messages.get_mut(&seq) else { return };
        m.unanswered = m.unanswered.saturating_sub(1);
        // 0: a server that does not echo attempts answers the latest one.
        let current = match m.phase {
            Phase::InFlight { attempt } => result.attempt == 0 || result.attempt == attempt,
            _ => false,
        };
        if !current {
            // A late answer to an earlier attempt. An ack still means the server has the message:
            // settle it rather than send it again. Anything else the current attempt answers.
            match &result.outcome {
                Some(envelope_result::Outcome::Ack(ack)) => self.settle_acked(seq, ack),
                // A parked message whose last outstanding attempt was refused: nothing can make
                // it `sent` any more.
                _ if m.phase == Phase::Expired && m.unanswered == 0 => self.fail_expired(seq),
                _ => {}
            }
            return;
        }
        if let Some(envelope_result::Outcome::Ack(ack)) = &result.outcome {
            self.settle_acked(seq, ack);
            return;
        }
        let key = m.key.clone();
        let timer = m.ack_timer.take();
        self.cancel_timer(timer);
        let Some(m) = self.messages.get_mut(&seq) else { return };
        match result.outcome {
            Some(envelope_result::Outcome::Error(error)) => {
                let kind =
                    delivery_error::Kind::try_from(error.kind).unwrap_or(delivery_error::Kind::TemporarilyUnavailable);
                if kind != delivery_error::Kind::MarketingLimited {
                    m.marketing_refusals = 0;
                }
                match kind {
                    delivery_error::Kind::RecipientInvalid => {
                        m.phase = Phase::Waiting;
                        let r = self.recipients.get_mut(&key).expect("present");
                        r.in_flight -= 1;
                        self.stats.left_flight();
                        self.fail(
                            seq,
                            ErrorCode::UserNotValid,
                            "Recipient is not a valid WhatsApp user",
                            &error.detail,
                        );
                        self.ready.push_back(key);
                    }
                    delivery_error::Kind::RateLimited | delivery_error::Kind::MarketingLimited => {
                        let marketing = kind == delivery_error::Kind::MarketingLimited;
                        let refusals = if marketing {
                            self.stats.add(&self.stats.marketing_limited, 1);
                            m.marketing_refusals = m.marketing_refusals.saturating_add(1);
                            m.marketing_refusals
                        } else {
                            self.stats.add(&self.stats.rate_limited, 1);
                            0
                        };
                        let now = Instant::now();
                        let r = self.recipients.get_mut(&key).expect("in-flight message has a recipient");
                        let fresh = r.blocked_until.is_none_or(|t| t <= now);
                        let wait = r.rate_limits.refused(&self.config, error.retry_after_ms, fresh);
                        if marketing && refusals > self.config.marketing_limit_retries {
                            r.in_flight -= 1;
                            self.stats.left_flight();
                            let detail = format!(
                                "refused {refusals} times in a row (delivery.marketing_limit_retries is {}): {}",
                                self.config.marketing_limit_retries, error.detail
                            );
                            self.fail(seq, ErrorCode::MarketingLimit, ErrorCode::MarketingLimit.title(), &detail);
                        } else {
                            self.requeue_front(seq);
                        }
                        self.block_recipient(&key, now + wait);
                    }
                    delivery_error::Kind::SessionUnknown => {
                        self.stats.add(&self.stats.rekeys, 1);
                        self.sessions.remove(&key);
                        let rekeys = self.recipients.get_mut(&key).map_or(1, |r| {
                            r.rekey = true;
                            r.rekeys_in_a_row = r.rekeys_in_a_row.saturating_add(1);
                            r.rekeys_in_a_row
                        });
                        self.requeue_front(seq);
                        // The first re-key runs at once; one that did not help backs off.
                        if rekeys > 1 {
                            self.block_recipient(&key, Instant::now() + backoff(&self.config, rekeys - 1));
                        }
                    }
                    delivery_error::Kind::TemporarilyUnavailable | delivery_error::Kind::Unspecified => {
                        self.stats.add(&self.stats.temporary_failures, 1);
                        m.failures += 1;
                        let delay = backoff(&self.config, m.failures);
                        self.requeue_front(seq);
                        self.block_recipient(&key, Instant::now() + delay);
                    }
                }
            }
            // An ack was settled above; no outcome at all: send it again.
            Some(envelope_result::Outcome::Ack(_)) | None => self.requeue_front(seq),
        }
    }

    fn on_receipt(&mut self, receipt: ferry_proto::chat::v1::Receipt) {
        let status = match receipt::Status::try_from(receipt.status) {
            Ok(receipt::Status::Delivered) => MessageStatus::Delivered,
            Ok(receipt::Status::Read) => MessageStatus::Read,
            _ => {
                self.receipts_to_ack.push(receipt.receipt_id);
                return;
            }
        };
        let Some(key) = MessageId::decode(&receipt.message_id).filter(|k| k.node_id == self.shard.node_id()) else {
            // Not ours (another node's id): acknowledge so the server stops pushing it.
            self.receipts_to_ack.push(receipt.receipt_id);
            return;
        };
        let at_ms = if receipt.timestamp_ms > 0 { receipt.timestamp_ms } else { self.clock.now_ms() };
        if key.shard != self.shard.id() {
            // Receipts usually come back on the stream the envelope left on; one that did not is
            // recorded in its message's shard.
            if key.shard.index() >= self.all_shards.len() {
                tracing::warn!(shard = %self.shard.id(), id = receipt.message_id, "receipt for a shard this node does not have; dropped");
                self.receipts_to_ack.push(receipt.receipt_id);
                return;
            }
            let entry = Settlement::Receipt { seq: key.seq, status, at_ms };
            self.settle_in_other_shard(key.shard, entry, receipt.receipt_id);
            return;
        }
        self.to_settle.push(Settlement::Receipt { seq: key.seq, status, at_ms });
        self.receipts_to_ack.push(receipt.receipt_id);
    }

    /// A user wrote to the business: record it (customer-service window + inbound event) in the
    /// shard that owns the user, and acknowledge it to the server only once that is durable.
    fn on_inbound(&mut self, m: InboundMessage) {
        let plausible = (8..=15).contains(&m.from.len()) && m.from.bytes().all(|b| b.is_ascii_digit());
        if !plausible || m.to.is_empty() {
            tracing::warn!(shard = %self.shard.id(), from = m.from, to = m.to, "inbound message without a valid user or business; dropped");
            self.receipts_to_ack.push(m.receipt_id);
            return;
        }
        let owner = shard_for_recipient(&WaId::from_normalized(m.from.clone()), self.all_shards.len() as u16);
        let record = InboundRecord {
            id: m.id,
            from: m.from,
            to: m.to,
            at_ms: if m.timestamp_ms > 0 { m.timestamp_ms } else { self.clock.now_ms() },
            message_type: if m.r#type.is_empty() { "text".into() } else { m.r#type },
            text_body: m.text_body,
            profile_name: m.profile_name,
        };
        self.stats.add(&self.stats.inbound, 1);
        if owner == self.shard.id() {
            self.to_settle.push(Settlement::Inbound(record));
            self.receipts_to_ack.push(m.receipt_id);
            return;
        }
        // Another shard's user: that shard's writer records it; the ack goes out on this stream.
        self.settle_in_other_shard(owner, Settlement::Inbound(record), m.receipt_id);
    }

    // ---- settling ----------------------------------------------------------------------------

    fn fail(&mut self, seq: u64, code: ErrorCode, title: &str, details: &str) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        m.phase = Phase::Settling;
        let reason = FailureReason { code: code.code(), title: title.to_owned(), details: details.to_owned() };
        self.stats.add(&self.stats.failed, 1);
        self.to_settle.push(Settlement::Failed {
            seq,
            message: status_base(&m.record),
            at_ms: self.clock.now_ms(),
            reason,
        });
    }

    /// Writes everything settled this turn as one batch, with the new low watermark.
    fn flush_settlements(&mut self) {
        self.flush_other_shards();
        if self.to_settle.is_empty() && self.receipts_to_ack.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.to_settle);
        let receipt_ids = std::mem::take(&mut self.receipts_to_ack);
        let seqs: Vec<u64> = entries.iter().filter(|s| s.leaves_queue()).map(Settlement::seq).collect();
        // Every queue key below the lowest message still held (other than those settled now) is
        // gone once this batch is durable; writes are applied in order, so earlier settle
        // batches are durable before this one.
        let leaving: HashSet<u64> = seqs.iter().copied().collect();
        // Nor past a message left on disk below the cursor (a capped recipient's surplus).
        let low_watermark = self
            .messages
            .keys()
            .copied()
            .find(|s| !leaving.contains(s))
            .unwrap_or(self.cursor)
            .min(self.cursor)
            .min(self.admission.floor().unwrap_or(u64::MAX));
        if entries.is_empty() {
            self.ack_receipts(receipt_ids);
            return;
        }
        let watermark = (low_watermark > self.shard.queue_low_watermark()).then_some(low_watermark);
        let panics = entries.iter().any(|e| match e {
            Settlement::Sent { message, .. } | Settlement::Failed { message, .. } => {
                failpoint::hit(Point::SettleTask, &message.wa_id)
            }
            _ => false,
        });
        let write = if panics { None } else { Some(self.shard.settle_durably(entries.clone(), watermark)) };
        let held = SettleBatch { seqs, entries, receipt_ids, other_shard: None };
        self.settle_tasks.spawn(held, async move {
            match write {
                None => panic!("failpoint: the settle task panicked before writing its batch"),
                Some(Ok(wait)) => wait.await,
                Some(Err(e)) => Err(e),
            }
        });
    }

    /// A settle task ended: its write's result; a panic is a failed write (the batch is written
    /// again).
    fn on_settle_joined(&mut self, joined: Joined<Result<(), ShardError>, SettleBatch>) {
        let (batch, result) = match joined {
            Joined::Done { output, held } => (held, output.map_err(|e| e.to_string())),
            Joined::Panicked { held, reason } => {
                self.stats.add(&self.stats.task_panics, 1);
                (held, Err(format!("the settle task panicked: {reason}")))
            }
        };
        match batch.other_shard {
            Some(owner) => self.on_other_shard_settled(owner, batch, result),
            None => self.on_settled(batch, result),
        }
    }

    fn on_settled(&mut self, done: SettleBatch, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let mut sent = 0;
                for seq in &done.seqs {
                    if let Some(m) = self.messages.remove(seq) {
                        sent += 1;
                        let key = m.key;
                        self.admission.removed(&key);
                        self.forget_recipient_if_idle(&key);
                    }
                }
                self.stats.add(&self.stats.settled, sent);
                self.ack_receipts(done.receipt_ids);
            }
            Err(e) => {
                // The server has these messages: write the outcomes again (never resend). They stay
                // `Settling` meanwhile, holding the watermark below them.
                tracing::error!(shard = %self.shard.id(), error = %e, "recording outcomes failed; writing them again in 1 s");
                let retry_pending = self.settle_retry_pending();
                self.deferred_settle.extend(done.entries);
                self.deferred_receipts.extend(done.receipt_ids);
                if !retry_pending {
                    self.add_timer(Instant::now() + SETTLE_RETRY, Timer::RetrySettle);
                }
            }
        }
    }

    /// A [`Timer::RetrySettle`] is scheduled (some deferred batch waits for it).
    fn settle_retry_pending(&self) -> bool {
        !self.deferred_settle.is_empty() || !self.deferred_receipts.is_empty() || self.other_shards.has_deferred()
    }

    fn ack_receipts(&mut self, receipt_ids: Vec<u64>) {
        if receipt_ids.is_empty() {
            return;
        }
        let Some(link) = &self.link else { return };
        // Unsent acks are harmless: the server pushes those receipts again on the next stream.
        let frame = ClientFrame { frame: Some(client_frame::Frame::ReceiptAck(ReceiptAck { receipt_ids })) };
        if link.try_send(frame) == Err(SendFailure::Full) {
            self.reset_link("the outgoing buffer is full (the server takes no frames)");
        }
    }

    // ---- timers ------------------------------------------------------------------------------

    /// Schedules `timer`; returns its id (for [`ShardLoop::cancel_timer`]).
    fn add_timer(&mut self, at: Instant, timer: Timer) -> u64 {
        let id = self.next_timer_id;
        self.next_timer_id += 1;
        self.timer_payloads.insert(id, timer);
        self.timers.push(Reverse((at, id)));
        id
    }

    /// Forgets a timer's payload; its heap entry is dropped when it comes due. Heap entries are 16
    /// bytes, so a heap of ack timeouts for acked envelopes stays small; the payloads would not.
    fn cancel_timer(&mut self, id: Option<u64>) {
        if let Some(id) = id {
            self.timer_payloads.remove(&id);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.timer_payloads.remove(&id) {
                Some(Timer::Unblock(key)) => {
                    if let Some(r) = self.recipients.get_mut(&key)
                        && r.blocked_until.is_some_and(|t| t <= now)
                    {
                        r.blocked_until = None;
                        self.ready.push_back(key);
                    }
                }
                Some(Timer::AckTimeout { seq, attempt })
                    if self.messages.get(&seq).is_some_and(|m| m.phase == Phase::InFlight { attempt }) =>
                {
                    self.on_ack_timeout(seq);
                }
                Some(Timer::AckTimeout { .. }) => {}
                Some(Timer::AwaitLateAnswer { seq }) => self.on_late_answer_silence(seq),
                Some(Timer::RetrySettle) => {
                    self.to_settle.append(&mut self.deferred_settle);
                    self.receipts_to_ack.append(&mut self.deferred_receipts);
                    self.retry_other_shards();
                }
                None => {}
            }
        }
    }
}

/// Exponential backoff with jitter: `retry_initial_ms × 2^(failures-1)`, capped at
/// `retry_max_ms`, then a uniform delay in `[d/2, d]` so retries of many messages spread out.
/// Histogram of the time from the durable accept to the chat server's ack (the ack's timestamp,
/// or the node's clock when the server sent none), in seconds.
pub const ACCEPT_TO_ACK_SECONDS: &str = "ferry_accept_to_ack_seconds";

fn ms_to_seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn backoff(config: &DeliveryConfig, failures: u32) -> Duration {
    let exp = config.retry_initial_ms.saturating_mul(1u64 << failures.clamp(1, 21).saturating_sub(1));
    let capped = exp.min(config.retry_max_ms);
    let jittered = capped / 2 + rand::random_range(0..=capped / 2);
    Duration::from_millis(jittered.max(1))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Gets a session ready to encrypt with reserved counters: from the cache (new reservation), from
/// the shard's `sessions` column family, or by a new key agreement. Persists the reservation
/// before returning.
#[allow(clippy::too_many_arguments)]
async fn prepare_session(
    shard: &Arc<Shard>,
    mut client: ChatClient<Channel>,
    identity: &IdentityKeyPair,
    permits: &Semaphore,
    stats: &ShardDeliveryStats,
    sender: &str,
    recipient: &str,
    cached: Option<SendingSession>,
    rekey: bool,
    reservation: u64,
) -> Result<(SendingSession, SessionSource), SessionFailure> {
    let temporary = |e: &dyn std::fmt::Display| SessionFailure::Temporary(e.to_string());
    let (mut session, source) = match cached {
        Some(s) if !rekey => (s, SessionSource::Reserved),
        _ => {
            let stored = if rekey {
                None
            } else {
                stats.add(&stats.session_misses, 1);
                let (shard, s, r) = (shard.clone(), sender.to_owned(), recipient.to_owned());
                tokio::task::spawn_blocking(move || shard.get_session(&s, &r))
                    .await
                    .map_err(|e| temporary(&e))?
                    .map_err(|e| temporary(&e))?
            };
            match stored.map(|snapshot| SendingSession::restore(&snapshot)) {
                Some(Ok(s)) => (s, SessionSource::Loaded),
                other => {
                    if let Some(Err(e)) = other {
                        tracing::warn!(error = %e, "stored session unreadable; setting up a new one");
                    }
                    let _permit = permits.acquire().await.map_err(|e| temporary(&e))?;
                    let mut request = tonic::Request::new(FetchPreKeyBundleRequest { recipient: recipient.to_owned() });
                    request.set_timeout(BUNDLE_FETCH_TIMEOUT);
                    let bundle = client
                        .fetch_pre_key_bundle(request)
                        .await
                        .map_err(|status| match status.code() {
                            tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                                SessionFailure::RecipientInvalid(status.message().to_owned())
                            }
                            _ => SessionFailure::Temporary(format!("pre-key bundle fetch failed: {status}")),
                        })?
                        .into_inner();
                    let bundle = PreKeyBundle::try_from(bundle).map_err(|e| temporary(&e))?;
                    let session = SendingSession::initiate(identity, &bundle).map_err(|e| temporary(&e))?;
                    (session, SessionSource::Setup)
                }
            }
        }
    };
    let snapshot = session.reserve(reservation);
    shard
        .put_sessions_durably(vec![(sender.to_owned(), recipient.to_owned(), snapshot)])
        .map_err(|e| temporary(&e))?
        .await
        .map_err(|e| temporary(&e))?;
    Ok((session, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: u64, cap: u64) -> DeliveryConfig {
        DeliveryConfig { rate_limit_base_ms: base, rate_limit_max_backoff_ms: cap, ..DeliveryConfig::default() }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    #[test]
    fn rate_limit_waits_grow_as_powers_of_four_up_to_the_cap() {
        let c = DeliveryConfig::default();
        let mut streak = RateLimitStreak::default();
        let waits: Vec<u64> = (0..8).map(|_| ms(streak.refused(&c, 0, true))).collect();
        // 4^X seconds, capped at 4^5 s by default.
        assert_eq!(waits, [1_000, 4_000, 16_000, 64_000, 256_000, 1_024_000, 1_024_000, 1_024_000]);
        // No overflow however long the streak.
        let mut long = RateLimitStreak { refusals: u32::MAX };
        assert_eq!(ms(long.refused(&config(20, 5_000), 0, true)), 5_000);
    }

    #[test]
    fn the_servers_retry_after_is_a_floor_below_the_cap() {
        let c = config(20, 1_000);
        let mut streak = RateLimitStreak::default();
        assert_eq!(ms(streak.refused(&c, 700, true)), 700, "X = 0: max(700, 20)");
        assert_eq!(ms(streak.refused(&c, 10, true)), 80, "X = 1: max(10, 80)");
        assert_eq!(ms(streak.refused(&c, 0, true)), 320);
        assert_eq!(ms(streak.refused(&c, 60_000, true)), 1_000, "the cap bounds retry_after too");
    }

    #[test]
    fn an_ack_resets_the_streak_and_stale_refusals_do_not_raise_it() {
        let c = config(20, 100_000);
        let mut streak = RateLimitStreak::default();
        assert_eq!(ms(streak.refused(&c, 0, true)), 20);
        assert_eq!(ms(streak.refused(&c, 0, true)), 80);
        // Envelopes that were in flight when the recipient got blocked: same wait, X unchanged.
        assert_eq!(ms(streak.refused(&c, 0, false)), 80);
        assert_eq!(ms(streak.refused(&c, 0, false)), 80);
        assert_eq!(ms(streak.refused(&c, 0, true)), 320);
        streak.acked();
        assert_eq!(streak, RateLimitStreak::default());
        assert_eq!(ms(streak.refused(&c, 0, true)), 20, "X = 0 again after an ack");
        // A stale refusal of a fresh streak waits like the first.
        let mut fresh = RateLimitStreak::default();
        assert_eq!(ms(fresh.refused(&c, 0, false)), 20);
    }

    #[test]
    fn rate_limit_settings_are_validated() {
        assert!(DeliveryConfig::default().validate().is_ok());
        let e = config(0, 1_000).validate().unwrap_err();
        assert!(e.contains("delivery.rate_limit_base_ms is 0"), "{e}");
        let e = config(2_000, 1_000).validate().unwrap_err();
        assert!(e.contains("delivery.rate_limit_max_backoff_ms is 1000") && e.contains("(2000)"), "{e}");
    }
}
