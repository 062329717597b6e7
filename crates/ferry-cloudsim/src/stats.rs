//! The reference Cloud API server's counters and the JSON of `GET /cloudsim/stats` ([`Stats`]).
//! Hot-path counters are relaxed atomics; refusals by code and per-number peaks sit behind small
//! locks touched once per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What `GET /cloudsim/stats` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Send requests received (any outcome, including dropped and refused ones).
    pub requests: u64,
    /// Of those, requests that came over HTTP/2 (the rest came over HTTP/1.1).
    #[serde(default)]
    pub http2_requests: u64,
    /// Sends taken (the message went to the recipient): answered 200, or taken and then dropped or
    /// answered late by a fault.
    pub messages_taken: u64,
    /// Taken sends whose `biz_opaque_callback_data` marker had not been taken before, plus taken
    /// sends without a marker.
    pub unique_messages: u64,
    /// Taken sends whose marker had already been taken: the recipient got the message twice.
    pub duplicate_messages: u64,
    /// Taken sends without a marker (they cannot be checked for duplicates).
    pub unmarked_messages: u64,
    /// Graph error answers by code (`"130429"`, `"131056"`, `"190"`, `"131009"`, ...).
    pub refusals: BTreeMap<String, u64>,
    /// Sends answered 502 without a Graph body (`server_error_rate`).
    pub server_errors_injected: u64,
    /// Connections closed without an answer before taking (`drop_before_rate`).
    pub dropped_before_taking: u64,
    /// Connections closed without an answer after taking (`drop_after_rate`): in doubt.
    pub dropped_after_taking: u64,
    /// Sends taken and answered `slow_ms` late (`slow_rate`): in doubt.
    pub slow_answers: u64,
    /// Taken sends that end in a `failed` webhook (invalid recipients, `--fail` rules).
    pub failed_messages: u64,
    pub webhooks: WebhookStats,
    /// Per phone number id.
    pub numbers: BTreeMap<String, NumberStats>,
}

impl Stats {
    /// Refusals with `code` so far.
    pub fn refused(&self, code: u32) -> u64 {
        self.refusals.get(&code.to_string()).copied().unwrap_or(0)
    }
}

/// The webhook side of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// POSTs answered 2xx.
    pub posts_delivered: u64,
    /// POSTs that failed (error, timeout or non-2xx) and were scheduled again.
    pub posts_failed: u64,
    /// Statuses delivered (in 2xx POSTs), injected duplicates included.
    pub statuses_delivered: u64,
    /// Inbound messages delivered (in 2xx POSTs).
    pub inbound_delivered: u64,
    /// Statuses scheduled a second time by `webhook_duplicate_rate`.
    pub duplicates_injected: u64,
    /// Messages whose statuses were scheduled in reverse order by `webhook_reorder_rate`.
    pub reordered_messages: u64,
    /// Statuses and inbound messages scheduled and not yet delivered.
    pub pending: u64,
}

/// The per-number part of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberStats {
    pub messages_taken: u64,
    /// The most messages taken within one second (seconds counted from the server's start).
    pub max_per_second: u64,
    /// Sends refused 130429.
    pub throughput_refusals: u64,
    /// Sends refused 131056.
    pub pair_refusals: u64,
}

/// Every counter behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) http2_requests: AtomicU64,
    pub(crate) messages_taken: AtomicU64,
    pub(crate) unique_messages: AtomicU64,
    pub(crate) duplicate_messages: AtomicU64,
    pub(crate) unmarked_messages: AtomicU64,
    pub(crate) server_errors_injected: AtomicU64,
    pub(crate) dropped_before_taking: AtomicU64,
    pub(crate) dropped_after_taking: AtomicU64,
    pub(crate) slow_answers: AtomicU64,
    pub(crate) failed_messages: AtomicU64,
    pub(crate) posts_delivered: AtomicU64,
    pub(crate) posts_failed: AtomicU64,
    pub(crate) statuses_delivered: AtomicU64,
    pub(crate) inbound_delivered: AtomicU64,
    pub(crate) duplicates_injected: AtomicU64,
    pub(crate) reordered_messages: AtomicU64,
    pub(crate) webhooks_pending: AtomicU64,
    refusals: Mutex<BTreeMap<u32, u64>>,
}

/// `counter += by` (relaxed: counters order nothing).
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn refuse(&self, code: u32) {
        *self.refusals.lock().entry(code).or_default() += 1;
    }

    pub(crate) fn snapshot(&self, numbers: BTreeMap<String, NumberStats>) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            http2_requests: get(&self.http2_requests),
            messages_taken: get(&self.messages_taken),
            unique_messages: get(&self.unique_messages),
            duplicate_messages: get(&self.duplicate_messages),
            unmarked_messages: get(&self.unmarked_messages),
            refusals: self.refusals.lock().iter().map(|(code, n)| (code.to_string(), *n)).collect(),
            server_errors_injected: get(&self.server_errors_injected),
            dropped_before_taking: get(&self.dropped_before_taking),
            dropped_after_taking: get(&self.dropped_after_taking),
            slow_answers: get(&self.slow_answers),
            failed_messages: get(&self.failed_messages),
            webhooks: WebhookStats {
                posts_delivered: get(&self.posts_delivered),
                posts_failed: get(&self.posts_failed),
                statuses_delivered: get(&self.statuses_delivered),
                inbound_delivered: get(&self.inbound_delivered),
                duplicates_injected: get(&self.duplicates_injected),
                reordered_messages: get(&self.reordered_messages),
                pending: get(&self.webhooks_pending),
            },
            numbers,
        }
    }
}

/// Messages taken per second of one number, and the most seen in one second.
#[derive(Debug, Default)]
pub(crate) struct PeakRate {
    second: u64,
    count: u64,
    max: u64,
}

impl PeakRate {
    /// Counts one message taken in `second` (seconds since the server started).
    pub(crate) fn record(&mut self, second: u64) {
        if second != self.second {
            self.second = second;
            self.count = 0;
        }
        self.count += 1;
        self.max = self.max.max(self.count);
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rate_is_the_busiest_second() {
        let mut p = PeakRate::default();
        for second in [0, 0, 0, 1, 2, 2, 2, 2, 3] {
            p.record(second);
        }
        assert_eq!(p.max(), 4);
    }
}
