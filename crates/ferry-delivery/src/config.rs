//! Knobs of the delivery loops (config keys under `[delivery]`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Messages of one shard held in memory at once (waiting, in flight, backing off). Bounds
    /// memory whatever the backlog on disk, and is the shard's window of envelopes in flight.
    pub window: usize,
    /// Messages of one recipient in the window at most (waiting, in flight, backing off). A
    /// recipient with a deeper backlog keeps the rest on disk, read again as it drains, so one
    /// rate-limited or backing-off recipient cannot fill the window and stall its shard. At most
    /// `window` takes effect; at least `max_in_flight_per_recipient`.
    pub max_window_per_recipient: usize,
    /// Envelopes in flight to one recipient at a time. 1 (the default) delivers the messages of a
    /// recipient in send order; more trades order for throughput to a single recipient.
    pub max_in_flight_per_recipient: usize,
    /// An envelope with no answer after this long is sent again (ms), after the recipient's
    /// retry backoff.
    pub ack_timeout_ms: u64,
    /// Ack timeouts in a row (no answer at all in between) after which the stream to the chat
    /// server is reset and opened again: a server that stops answering but keeps the connection.
    pub ack_timeouts_before_reconnect: u32,
    /// First retry delay after a temporary failure (ms); doubles per attempt, with jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay (ms). Retries go on forever (until the message's TTL).
    pub retry_max_ms: u64,
    /// Encryption sessions cached in memory per shard; an evicted one is reloaded from the shard's
    /// `sessions` column family.
    pub session_cache_capacity: usize,
    /// Message counters reserved (and persisted) per session write: a session is written once
    /// per this many messages to its recipient.
    pub session_reservation: u64,
    /// Session setups (bundle fetch + key agreement) running at once per shard.
    pub max_concurrent_session_setups: usize,
    /// Delay before reconnecting to the chat server after the stream ended (ms; doubles up to
    /// 5 s).
    pub reconnect_initial_ms: u64,
    /// Rate-limit backoff unit (ms): a recipient the server refuses with `RATE_LIMITED` or
    /// `MARKETING_LIMITED` waits `rate_limit_base_ms × 4^X` (X = its consecutive refusals so far,
    /// 0 for the first; reset by its next ack), at least the server's `retry_after_ms`. The
    /// default, 1000, is the reference's advice: retry after 4^X seconds.
    pub rate_limit_base_ms: u64,
    /// Longest rate-limit wait of a recipient (ms), the server's `retry_after_ms` included.
    /// Default 1024 s (4^5 s): the sixth refusal in a row and later ones wait this long.
    pub rate_limit_max_backoff_ms: u64,
    /// Further attempts of a message refused `MARKETING_LIMITED` (the per-user marketing limit)
    /// before it fails for good with 131049: the message is sent at most this + 1 times while
    /// the server keeps refusing it. 0 fails it at the first refusal.
    pub marketing_limit_retries: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            window: 4096,
            max_window_per_recipient: 64,
            max_in_flight_per_recipient: 1,
            ack_timeout_ms: 30_000,
            ack_timeouts_before_reconnect: 3,
            retry_initial_ms: 200,
            retry_max_ms: 60_000,
            session_cache_capacity: 65_536,
            session_reservation: 64,
            max_concurrent_session_setups: 256,
            reconnect_initial_ms: 100,
            rate_limit_base_ms: 1_000,
            rate_limit_max_backoff_ms: 1_024_000,
            marketing_limit_retries: 3,
        }
    }
}

impl DeliveryConfig {
    /// Short timeouts and small windows for tests.
    pub fn for_test() -> Self {
        DeliveryConfig { ack_timeout_ms: 5_000, retry_initial_ms: 20, retry_max_ms: 500, ..DeliveryConfig::default() }
    }

    /// Frames the outgoing buffer of a link holds: every loaded message's envelope, plus room for
    /// receipt acks. Full means the server stopped taking frames: the loop resets the stream.
    pub(crate) fn link_buffer(&self) -> usize {
        self.window.saturating_add(1024)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("delivery.window", self.window as u64),
            ("delivery.max_window_per_recipient", self.max_window_per_recipient as u64),
            ("delivery.max_in_flight_per_recipient", self.max_in_flight_per_recipient as u64),
            ("delivery.ack_timeout_ms", self.ack_timeout_ms),
            ("delivery.ack_timeouts_before_reconnect", u64::from(self.ack_timeouts_before_reconnect)),
            ("delivery.retry_initial_ms", self.retry_initial_ms),
            ("delivery.session_cache_capacity", self.session_cache_capacity as u64),
            ("delivery.session_reservation", self.session_reservation),
            ("delivery.max_concurrent_session_setups", self.max_concurrent_session_setups as u64),
            ("delivery.reconnect_initial_ms", self.reconnect_initial_ms),
            ("delivery.rate_limit_base_ms", self.rate_limit_base_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} is 0: expected at least 1"));
            }
        }
        if self.max_window_per_recipient < self.max_in_flight_per_recipient {
            return Err(format!(
                "delivery.max_window_per_recipient is {}: expected at least delivery.max_in_flight_per_recipient ({})",
                self.max_window_per_recipient, self.max_in_flight_per_recipient
            ));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(format!(
                "delivery.retry_max_ms is {}: expected at least delivery.retry_initial_ms ({})",
                self.retry_max_ms, self.retry_initial_ms
            ));
        }
        if self.rate_limit_max_backoff_ms < self.rate_limit_base_ms {
            return Err(format!(
                "delivery.rate_limit_max_backoff_ms is {}: expected at least delivery.rate_limit_base_ms ({})",
                self.rate_limit_max_backoff_ms, self.rate_limit_base_ms
            ));
        }
        if self.session_reservation > 2048 {
            return Err(format!(
                "delivery.session_reservation is {}: expected at most 2048 (the chat server skips at most 8192 keys)",
                self.session_reservation
            ));
        }
        Ok(())
    }
}
