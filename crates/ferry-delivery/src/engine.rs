//! The delivery loop of one shard: stage "deliver until acked", the upstream-independent core.
//!
//! One tokio task per shard owns everything below and its [`Upstream`]; nothing else touches
//! them, so they need no locks. Each turn: read the queue into the window (`window.rs`),
//! dispatch ready recipients (`recipients.rs`), write this turn's settlements (`settle.rs`), then
//! wait for the next upstream events (answers: `answers.rs`; statuses and inbound messages:
//! `inbound.rs`), a finished settle write, a commit of the shard, a timer or the TTL sweep.
//!
//! ```text
//!   queue (RocksDB) ──scan [cursor, committed)──► in memory (≤ window messages)
//!        ▲                                              │ per recipient: FIFO, ≤ N in flight
//!        │ settle (accepted → sent / failed,            ▼
//!        │  queue delete + status, one synced batch)  prepare / submit ──► Upstream ──► server
//!        └───────────────── Outcome / Status / Inbound ◄──────────────────────┘
//! ```
//!
//! - **Reading** (`window.rs`): a cursor walks the queue forward from the shard's low watermark,
//!   never more than `window` messages in memory and `max_window_per_recipient` of one recipient;
//!   released held messages (paced templates) are point-read below the cursor.
//! - **Order** (`recipients.rs`): each recipient has a FIFO and at most
//!   `max_in_flight_per_recipient` attempts in flight; a message to retry goes back to the front.
//! - **Retries** (`answers.rs`, `retry.rs`): forever, with exponential backoff and jitter, until
//!   the upstream accepts; except a permanent failure, TTL expiry (410, `expiry.rs`) and rate
//!   limits (4^X per scope: recipient, sender, upstream). An attempt unanswered after
//!   `ack_timeout_ms` is sent again after the recipient's backoff; `ack_timeouts_before_reconnect`
//!   in a row, or a stalled upstream, reset it. Every attempt carries its number: an acceptance of
//!   any attempt settles the message; any other late answer is ignored.
//! - **Settling** (`settle.rs`): acceptances and failures of one turn are one `Settle` (queue
//!   delete + status, one synced batch, with the new low watermark); a message stays in memory
//!   until that is durable. Statuses and inbound messages are acknowledged to the upstream only
//!   after their batch is durable (`other_shards.rs` for those owned by another shard).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_model::MessageId;
use ferry_model::clock::SharedClock;
use ferry_shard::{QueueRecord, Shard, ShardError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::DeliveryConfig;
use crate::other_shards::OtherShards;
use crate::recipients::Recipient;
use crate::retry::Gates;
use crate::settle::{Fact, SettleBatch};
use crate::stats::{ACCEPT_TO_ACK_SECONDS, ShardDeliveryStats};
use crate::supervise::TaskSet;
use crate::upstream::{Upstream, UpstreamEvent};
use crate::window::Admission;

/// `sender ++ 0 ++ recipient`: a recipient of one business number (the unit of ordering, of
/// preparation and of backoff).
pub(crate) type RecipientKey = String;

pub(crate) fn recipient_key(sender: &str, recipient: &str) -> RecipientKey {
    let mut k = String::with_capacity(sender.len() + 1 + recipient.len());
    k.push_str(sender);
    k.push('\0');
    k.push_str(recipient);
    k
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// In its recipient's FIFO.
    Waiting,
    /// Submitted; `attempt` tells a current timeout from a stale one.
    InFlight { attempt: u32 },
    /// The upstream could not tell whether `attempt` was taken (`Outcome::InDoubt`): not sent
    /// again until its wait passes; it keeps its recipient's in-flight slot meanwhile.
    InDoubt { attempt: u32 },
    /// Its TTL passed while an attempt was unanswered: not sent again, waiting for that answer
    /// (`expiry.rs`).
    Expired,
    /// Its outcome is being written.
    Settling,
}

pub(crate) struct Loaded {
    pub(crate) record: QueueRecord,
    pub(crate) message_id: MessageId,
    pub(crate) key: RecipientKey,
    pub(crate) phase: Phase,
    /// Send attempts so far.
    pub(crate) attempts: u32,
    /// Temporary failures in a row (drives the backoff).
    pub(crate) failures: u32,
    /// `MarketingLimited` back-offs in a row (any other answer resets it): more than
    /// `marketing_limit_retries` fails the message with 131049.
    pub(crate) marketing_refusals: u32,
    /// The ack-timeout (or in-doubt) timer of the current attempt, cancelled by an answer.
    pub(crate) ack_timer: Option<u64>,
    /// Attempts sent on the current connection and not answered yet: while any is, the message
    /// does not expire (`expiry.rs`).
    pub(crate) unanswered: u32,
}

pub(crate) enum Timer {
    Unblock(RecipientKey),
    /// A sender's back-off ended (`Scope::Sender`).
    UnblockSender(String),
    /// The whole upstream's back-off ended (`Scope::Upstream`).
    UnblockUpstream,
    /// Write the deferred settle batches again.
    RetrySettle,
    AckTimeout {
        seq: u64,
        attempt: u32,
    },
    /// An in-doubt attempt's wait passed without an answer: send it again.
    InDoubt {
        seq: u64,
        attempt: u32,
    },
    /// A parked (expired) message's answer is overdue (`expiry.rs`).
    AwaitLateAnswer {
        seq: u64,
    },
}

/// How often expired messages are failed while the upstream is unreachable.
const TTL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct ShardLoop<U> {
    pub(crate) shard: Arc<Shard>,
    /// Every shard of the node, by index: inbound messages go to the shard that owns their user.
    pub(crate) all_shards: Arc<[Arc<Shard>]>,
    pub(crate) config: DeliveryConfig,
    pub(crate) clock: SharedClock,
    pub(crate) upstream: U,
    pub(crate) stats: Arc<ShardDeliveryStats>,
    shutdown: watch::Receiver<bool>,

    /// Next queue sequence number to read.
    pub(crate) cursor: u64,
    /// Released held messages not read yet (their seqs; `window.rs`).
    pub(crate) late: VecDeque<u64>,
    /// Every loaded, unsettled message by sequence (ordered: the lowest held is the watermark).
    pub(crate) messages: BTreeMap<u64, Loaded>,
    /// Per-recipient share of the window and the surplus left on disk (`window.rs`).
    pub(crate) admission: Admission,
    /// The last turn's read budget ran out with records left to read: read again at once.
    pub(crate) more_to_read: bool,
    pub(crate) recipients: HashMap<RecipientKey, Recipient>,
    /// Recipients that may be able to dispatch now.
    pub(crate) ready: VecDeque<RecipientKey>,
    /// Back-offs of whole senders and of the upstream (`retry.rs`).
    pub(crate) gates: Gates,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer>,
    next_timer_id: u64,
    /// Ack timeouts since the last answer: `ack_timeouts_before_reconnect` resets the upstream.
    pub(crate) timeouts_in_a_row: u32,
    pub(crate) to_settle: Vec<ferry_shard::Settlement>,
    pub(crate) receipts_to_ack: Vec<u64>,
    pub(crate) settle_tasks: TaskSet<Result<(), ShardError>, SettleBatch>,
    /// Settle batches whose write failed, written again after `SETTLE_RETRY`. Their messages
    /// stay `Settling` (never resent: the upstream has them).
    pub(crate) deferred_settle: Vec<ferry_shard::Settlement>,
    pub(crate) deferred_receipts: Vec<u64>,
    /// Settlements for other shards (`other_shards.rs`).
    pub(crate) other_shards: OtherShards,
    /// `ferry_accept_to_ack_seconds`, registered once per loop (recording is an atomic op).
    pub(crate) accept_to_ack: metrics::Histogram,
}

impl<U: Upstream> ShardLoop<U> {
    pub(crate) fn new(
        shard: Arc<Shard>,
        all_shards: Arc<[Arc<Shard>]>,
        config: DeliveryConfig,
        clock: SharedClock,
        upstream: U,
        stats: Arc<ShardDeliveryStats>,
        shutdown: watch::Receiver<bool>,
    ) -> ShardLoop<U> {
        let cursor = shard.queue_low_watermark().max(1);
        ShardLoop {
            admission: Admission::new(config.max_window_per_recipient.min(config.window)),
            more_to_read: false,
            shard,
            all_shards,
            config,
            clock,
            upstream,
            stats,
            shutdown,
            cursor,
            late: VecDeque::new(),
            messages: BTreeMap::new(),
            recipients: HashMap::new(),
            ready: VecDeque::new(),
            gates: Gates::default(),
            timers: BinaryHeap::new(),
            timer_payloads: HashMap::new(),
            next_timer_id: 0,
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
    /// stay in the queue and are delivered again after the next start (the upstream dedups).
    ///
    /// Not cancel-safe: dropping it mid-way drops what was settled and not yet written (nothing
    /// is lost: those messages stay queued and are sent again). Stop it through `shutdown`.
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
            self.stats.loaded.store(self.messages.len() as u64, Ordering::Relaxed);
            self.stats.recipients_capped.store(self.admission.recipients_with_surplus() as u64, Ordering::Relaxed);

            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let has_room = self.messages.len() < self.config.window;
            let more_to_read = self.more_to_read && has_room;
            tokio::select! {
                open = self.upstream.next_events(&mut events) => {
                    if !open {
                        break;
                    }
                    for event in events.drain(..) {
                        self.on_event(event);
                    }
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
        // Drain: write what was settled, wait for pending writes, then stop (dropping the
        // upstream aborts its background tasks).
        self.flush_settlements();
        while let Some(joined) = self.settle_tasks.join_next().await {
            self.on_settle_joined(joined);
        }
        tracing::debug!(shard = %self.shard.id(), in_memory = self.messages.len(), "delivery loop stopped");
    }

    fn on_event(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Up => {
                self.timeouts_in_a_row = 0;
                let keys: Vec<RecipientKey> = self.recipients.keys().cloned().collect();
                self.ready.extend(keys);
            }
            UpstreamEvent::Down { .. } => self.connection_lost(),
            UpstreamEvent::Answer { message_id, attempt, outcome } => self.on_answer(&message_id, attempt, outcome),
            UpstreamEvent::Prepared { key, result } => self.on_prepared(key, result),
            UpstreamEvent::Status { message_id, status, at_ms, token } => {
                let at_ms = at_ms.unwrap_or_else(|| self.clock.now_ms());
                self.on_message_fact(&message_id, token, |seq| Fact::Status { seq, status, at_ms })
            }
            UpstreamEvent::LateFailure { message_id, code, title, details, at_ms, token } => {
                let at_ms = at_ms.unwrap_or_else(|| self.clock.now_ms());
                self.on_message_fact(&message_id, token, |seq| Fact::LateFailure { seq, at_ms, code, title, details })
            }
            UpstreamEvent::Inbound { message, token } => self.on_inbound(message, token),
            UpstreamEvent::Unrecognized { token } => self.receipts_to_ack.push(token),
            UpstreamEvent::SenderReopened { sender } => {
                self.gates.reopen_sender(&sender);
                self.ready_all(|k| k.split('\0').next() == Some(sender.as_str()));
            }
        }
    }

    /// Whatever was in flight may or may not have arrived: send it again once the upstream is up
    /// (it dedups by message id); parked messages fail (`expiry.rs`).
    pub(crate) fn connection_lost(&mut self) {
        self.requeue_all_in_flight();
        self.stream_ended();
    }

    /// Ends the upstream's connection (it stopped answering or taking attempts): nothing is sent
    /// until it is up again; what was in flight is resent then.
    pub(crate) fn reset_upstream(&mut self, why: &str) {
        if !self.upstream.reset(why) {
            return;
        }
        self.stats.add(&self.stats.link_resets, 1);
        self.timeouts_in_a_row = 0;
        self.connection_lost();
    }

    pub(crate) fn seq_of(&self, message_id: &str) -> Option<u64> {
        let key = MessageId::decode(message_id)?;
        (key.shard == self.shard.id() && key.space == self.shard.id_space()).then_some(key.seq)
    }

    // ---- timers ------------------------------------------------------------------------------

    /// Schedules `timer`; returns its id (for [`ShardLoop::cancel_timer`]).
    pub(crate) fn add_timer(&mut self, at: Instant, timer: Timer) -> u64 {
        let id = self.next_timer_id;
        self.next_timer_id += 1;
        self.timer_payloads.insert(id, timer);
        self.timers.push(Reverse((at, id)));
        id
    }

    /// Forgets a timer's payload; its heap entry is dropped when it comes due. Heap entries are 16
    /// bytes, so a heap of ack timeouts for answered attempts stays small; the payloads would not.
    pub(crate) fn cancel_timer(&mut self, id: Option<u64>) {
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
                Some(Timer::UnblockSender(sender)) if self.gates.unblock_sender(&sender, now) => {
                    self.ready_all(|k| k.split('\0').next() == Some(sender.as_str()));
                }
                Some(Timer::UnblockUpstream) if self.gates.unblock_upstream(now) => self.ready_all(|_| true),
                Some(Timer::UnblockSender(_) | Timer::UnblockUpstream) => {}
                Some(Timer::AckTimeout { seq, attempt })
                    if self.messages.get(&seq).is_some_and(|m| m.phase == Phase::InFlight { attempt }) =>
                {
                    self.on_ack_timeout(seq);
                }
                Some(Timer::AckTimeout { .. }) => {}
                Some(Timer::InDoubt { seq, attempt })
                    if self.messages.get(&seq).is_some_and(|m| m.phase == Phase::InDoubt { attempt }) =>
                {
                    // No longer waited for: sent again (a late acceptance of it still settles).
                    if let Some(m) = self.messages.get_mut(&seq) {
                        m.unanswered = m.unanswered.saturating_sub(1);
                    }
                    self.requeue_front(seq);
                }
                Some(Timer::InDoubt { .. }) => {}
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

    /// Every recipient whose key matches may be able to dispatch now.
    fn ready_all(&mut self, matches: impl Fn(&str) -> bool) {
        let keys: Vec<RecipientKey> = self.recipients.keys().filter(|k| matches(k)).cloned().collect();
        self.ready.extend(keys);
    }
}

/// Sleeps until `at`, or forever. Cancel-safe (a sleep).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
