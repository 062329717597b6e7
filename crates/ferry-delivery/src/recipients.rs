//! Recipients: stage "who may be sent to now" of the delivery loop — the FIFO per recipient,
//! its in-flight slots, its readiness (prepared, not blocked) and dispatch to the upstream.
//!
//! Each recipient (sender + wa_id) has a FIFO of waiting messages and at most
//! `max_in_flight_per_recipient` attempts in flight (1 by default: send order is delivery
//! order). A message to retry goes back to the *front* of its FIFO. A recipient the upstream
//! must prepare first (`Upstream::needs_prepare`) is prepared in the background while the
//! others proceed; a blocked one (its own back-off, its sender's or the upstream's: `retry.rs`)
//! waits for its timer.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::{Phase, RecipientKey, ShardLoop, Timer};
use crate::failpoint::{self, Point};
use crate::retry::{RateLimitStreak, backoff};
use crate::upstream::{Attempt, PrepareFailure, RecipientRef, Submitted, Upstream};

#[derive(Default)]
pub(crate) struct Recipient {
    pub(crate) waiting: VecDeque<u64>,
    pub(crate) in_flight: usize,
    /// No dispatch before this instant (backoff, rate limit).
    pub(crate) blocked_until: Option<Instant>,
    /// A preparation is running for this recipient.
    pub(crate) preparing: bool,
    /// `Reprepare` answers in a row (reset by an acceptance): from the second on, the recipient
    /// backs off before preparing again.
    pub(crate) reprepares_in_a_row: u32,
    /// Rate-limit refusals in a row (X of the 4^X backoff).
    pub(crate) rate_limits: RateLimitStreak,
}

impl<U: Upstream> ShardLoop<U> {
    pub(crate) fn dispatch_ready(&mut self) {
        if !self.upstream.is_up() {
            return;
        }
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(key) = self.ready.pop_front() else { break };
            self.dispatch_recipient(&key);
        }
    }

    /// Submits as many waiting messages of one recipient as its limits allow.
    fn dispatch_recipient(&mut self, key: &RecipientKey) {
        let now = Instant::now();
        loop {
            let Some(r) = self.recipients.get_mut(key) else { return };
            if r.preparing || r.in_flight >= self.config.max_in_flight_per_recipient {
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
            if !self.upstream.is_up() {
                self.ready.push_back(key.clone());
                return;
            }
            // TTL: an expired message is not sent; it fails, or waits for an outstanding answer.
            if self.is_expired(seq) {
                self.recipients.get_mut(key).expect("present").waiting.pop_front();
                self.expire_or_await_answer(seq);
                continue;
            }
            // Its sender's or the whole upstream's back-off: the gate's timer readies it again.
            if self.gates.blocked(&self.messages[&seq].record.sender, now) {
                return;
            }
            if self.upstream.needs_prepare(key) {
                self.start_prepare(key);
                return;
            }
            let m = self.messages.get_mut(&seq).expect("waiting message is loaded");
            if failpoint::hit(Point::ShardLoop, &m.record.wa_id) {
                panic!("failpoint: the shard loop panicked");
            }
            let attempt = m.attempts + 1;
            let submitted = self.upstream.submit(Attempt {
                recipient: RecipientRef { key, sender: &m.record.sender, wa_id: &m.record.wa_id },
                message_id: m.message_id.as_str(),
                payload: &m.record.payload,
                attempt,
            });
            if submitted == Submitted::Reprepare {
                self.start_prepare(key);
                return;
            }
            m.attempts = attempt;
            m.unanswered += 1;
            m.phase = Phase::InFlight { attempt };
            if attempt > 1 {
                self.stats.add(&self.stats.retries, 1);
            }
            let r = self.recipients.get_mut(key).expect("present");
            r.waiting.pop_front();
            r.in_flight += 1;
            self.stats.add(&self.stats.in_flight, 1);
            self.stats.add(&self.stats.envelopes_sent, 1);
            match submitted {
                Submitted::Sent | Submitted::Reprepare => {}
                // The connection dropped under us: the Down event requeues in-flight messages.
                Submitted::Closed => return,
                Submitted::Stalled(why) => {
                    self.reset_upstream(why.0);
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

    pub(crate) fn forget_recipient_if_idle(&mut self, key: &RecipientKey) {
        if let Entry::Occupied(e) = self.recipients.entry(key.clone()) {
            let r = e.get();
            if r.waiting.is_empty() && r.in_flight == 0 && !r.preparing && r.blocked_until.is_none() {
                e.remove();
                self.upstream.forget(key);
            }
        }
    }

    /// Puts an unanswered (or in-doubt) message back at the front of its recipient's FIFO.
    pub(crate) fn requeue_front(&mut self, seq: u64) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        if !matches!(m.phase, Phase::InFlight { .. } | Phase::InDoubt { .. }) {
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

    /// Whatever was in flight may or may not have arrived: send it again. Highest sequence first
    /// so each FIFO keeps its order. In-doubt messages wait for their answer or their timer.
    pub(crate) fn requeue_all_in_flight(&mut self) {
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

    /// Blocks a recipient until `until` and schedules its wake-up.
    pub(crate) fn block_recipient(&mut self, key: &RecipientKey, until: Instant) {
        let r = self.recipients.entry(key.clone()).or_default();
        r.blocked_until = Some(r.blocked_until.map_or(until, |t| t.max(until)));
        self.add_timer(until, Timer::Unblock(key.clone()));
    }

    // ---- preparation -------------------------------------------------------------------------

    fn start_prepare(&mut self, key: &RecipientKey) {
        let Some(r) = self.recipients.get_mut(key) else { return };
        if r.preparing {
            return;
        }
        let Some(&seq) = r.waiting.front() else { return };
        r.preparing = true;
        let m = &self.messages[&seq];
        self.upstream.prepare(RecipientRef { key, sender: &m.record.sender, wa_id: &m.record.wa_id });
    }

    /// A preparation ended: dispatch, fail every waiting message, or back off.
    pub(crate) fn on_prepared(&mut self, key: RecipientKey, result: Result<(), PrepareFailure>) {
        let Some(r) = self.recipients.get_mut(&key) else { return };
        r.preparing = false;
        match result {
            Ok(()) => self.ready.push_back(key),
            Err(PrepareFailure::Permanent { code, title, details }) => {
                let waiting: Vec<u64> = r.waiting.drain(..).collect();
                for seq in waiting {
                    self.fail(seq, code, &title, &details);
                }
                self.forget_recipient_if_idle(&key);
            }
            Err(PrepareFailure::Temporary(detail)) => {
                tracing::debug!(shard = %self.shard.id(), detail, "preparing a recipient failed; retrying");
                let failures = r.waiting.front().and_then(|s| self.messages.get_mut(s)).map(|m| {
                    m.failures += 1;
                    m.failures
                });
                let delay = backoff(&self.config, failures.unwrap_or(1));
                self.block_recipient(&key, Instant::now() + delay);
            }
        }
    }
}
