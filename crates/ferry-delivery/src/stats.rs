//! Counters of the delivery loops (read by tests, `ferry serve` logs, and `/metrics` at scrape
//! time: `ferry-http`'s `ops` turns them into Prometheus series; nothing here is per-message
//! beyond a relaxed atomic add).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Histogram of the time from the durable accept to the upstream's acceptance (its timestamp, or
/// the node's clock when it sent none), in seconds.
pub const ACCEPT_TO_ACK_SECONDS: &str = "ferry_accept_to_ack_seconds";

/// Connection state of a shard's link to its upstream, as health reports it (written by the
/// link, read by health: kept here so the link depends on the counters and not the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting = 0,
    Connected = 1,
    Disconnected = 2,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }

    pub(crate) fn load(cell: &AtomicU8) -> LinkState {
        match cell.load(Ordering::Relaxed) {
            1 => LinkState::Connected,
            2 => LinkState::Disconnected,
            _ => LinkState::Connecting,
        }
    }
}

/// Counters of one shard's delivery loop. Monotonic unless noted.
#[derive(Debug, Default)]
pub struct ShardDeliveryStats {
    /// Envelopes written to the link (first attempts and retries).
    pub envelopes_sent: AtomicU64,
    /// Envelopes sent again (after a timeout, a temporary error, a lost link, a re-key).
    pub retries: AtomicU64,
    /// Messages that left the queue durably (acked or failed).
    pub settled: AtomicU64,
    /// Messages that failed for good (TTL, recipient invalid, marketing limit).
    pub failed: AtomicU64,
    /// Acks the server marked as duplicates (a resend of a message it already had).
    pub acked_as_duplicate: AtomicU64,
    /// `RATE_LIMITED` answers (the pair rate limit; that recipient backs off).
    pub rate_limited: AtomicU64,
    /// `MARKETING_LIMITED` answers (the per-user marketing limit; that recipient backs off, and a
    /// message refused more than `marketing_limit_retries` times fails with 131049).
    pub marketing_limited: AtomicU64,
    pub temporary_failures: AtomicU64,
    pub ack_timeouts: AtomicU64,
    /// Streams to the chat server reset by the loop (ack timeouts in a row, a full outgoing
    /// buffer).
    pub link_resets: AtomicU64,
    /// Encryptions with a cached session.
    pub session_hits: AtomicU64,
    /// Session cache misses (then loaded from the shard or set up).
    pub session_misses: AtomicU64,
    /// Sessions loaded from the shard's `sessions` column family.
    pub session_loads: AtomicU64,
    /// New sessions (pre-key bundle fetched, key agreement run).
    pub session_setups: AtomicU64,
    /// Sessions the server did not know, replaced by a new setup.
    pub rekeys: AtomicU64,
    /// Messages in memory now (gauge).
    pub loaded: AtomicU64,
    /// Test support: the most messages in memory at once since the loop started (kept at every
    /// admission; tests check it never passes `delivery.window`). Not in the snapshot.
    #[doc(hidden)]
    pub loaded_max: AtomicU64,
    /// Envelopes sent and not answered yet (gauge).
    pub in_flight: AtomicU64,
    /// Recipients at their window cap with messages left on disk (gauge;
    /// `max_window_per_recipient`).
    pub recipients_capped: AtomicU64,
    /// Inbound user messages received on this shard's stream (recorded in the user's shard).
    pub inbound: AtomicU64,
    /// Background tasks (session set-ups, settle writes) and shard loops that panicked.
    pub task_panics: AtomicU64,
    /// Times the shard's delivery loop was started again after a panic.
    pub loop_restarts: AtomicU64,
    pub(crate) link_state: AtomicU8,
    /// The loop panicked and is not running again yet (health shows it).
    pub(crate) delivery_restarting: AtomicBool,
}

impl ShardDeliveryStats {
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One envelope left flight (answered, or requeued after a lost link or a timeout).
    pub(crate) fn left_flight(&self) {
        let _ = self.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }

    pub fn link_state(&self) -> LinkState {
        LinkState::load(&self.link_state)
    }

    /// True from a panic of the shard's delivery loop until it runs again (`/readyz` is 503 and
    /// the shard's gateway `disconnected` meanwhile).
    pub fn delivery_restarting(&self) -> bool {
        self.delivery_restarting.load(Ordering::Relaxed)
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> DeliverySnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeliverySnapshot {
            envelopes_sent: get(&self.envelopes_sent),
            retries: get(&self.retries),
            settled: get(&self.settled),
            failed: get(&self.failed),
            acked_as_duplicate: get(&self.acked_as_duplicate),
            rate_limited: get(&self.rate_limited),
            marketing_limited: get(&self.marketing_limited),
            temporary_failures: get(&self.temporary_failures),
            ack_timeouts: get(&self.ack_timeouts),
            link_resets: get(&self.link_resets),
            session_hits: get(&self.session_hits),
            session_misses: get(&self.session_misses),
            session_loads: get(&self.session_loads),
            session_setups: get(&self.session_setups),
            rekeys: get(&self.rekeys),
            loaded: get(&self.loaded),
            in_flight: get(&self.in_flight),
            recipients_capped: get(&self.recipients_capped),
            inbound: get(&self.inbound),
            task_panics: get(&self.task_panics),
            loop_restarts: get(&self.loop_restarts),
        }
    }
}

/// A copy of [`ShardDeliveryStats`] (or their sum over shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliverySnapshot {
    pub envelopes_sent: u64,
    pub retries: u64,
    pub settled: u64,
    pub failed: u64,
    pub acked_as_duplicate: u64,
    pub rate_limited: u64,
    pub marketing_limited: u64,
    pub temporary_failures: u64,
    pub ack_timeouts: u64,
    pub link_resets: u64,
    pub session_hits: u64,
    pub session_misses: u64,
    pub session_loads: u64,
    pub session_setups: u64,
    pub rekeys: u64,
    pub loaded: u64,
    pub in_flight: u64,
    pub recipients_capped: u64,
    pub inbound: u64,
    pub task_panics: u64,
    pub loop_restarts: u64,
}

impl std::ops::Add for DeliverySnapshot {
    type Output = DeliverySnapshot;
    fn add(self, o: DeliverySnapshot) -> DeliverySnapshot {
        DeliverySnapshot {
            envelopes_sent: self.envelopes_sent + o.envelopes_sent,
            retries: self.retries + o.retries,
            settled: self.settled + o.settled,
            failed: self.failed + o.failed,
            acked_as_duplicate: self.acked_as_duplicate + o.acked_as_duplicate,
            rate_limited: self.rate_limited + o.rate_limited,
            marketing_limited: self.marketing_limited + o.marketing_limited,
            temporary_failures: self.temporary_failures + o.temporary_failures,
            ack_timeouts: self.ack_timeouts + o.ack_timeouts,
            link_resets: self.link_resets + o.link_resets,
            session_hits: self.session_hits + o.session_hits,
            session_misses: self.session_misses + o.session_misses,
            session_loads: self.session_loads + o.session_loads,
            session_setups: self.session_setups + o.session_setups,
            rekeys: self.rekeys + o.rekeys,
            loaded: self.loaded + o.loaded,
            in_flight: self.in_flight + o.in_flight,
            recipients_capped: self.recipients_capped + o.recipients_capped,
            inbound: self.inbound + o.inbound,
            task_panics: self.task_panics + o.task_panics,
            loop_restarts: self.loop_restarts + o.loop_restarts,
        }
    }
}
