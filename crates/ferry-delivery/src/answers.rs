//! Answers: stage "what the upstream said about an attempt" of the delivery loop.
//!
//! Every attempt carries its number and the upstream echoes it. An answer to the current attempt
//! decides by its [`Outcome`]; a late answer to an earlier one is ignored unless it accepts the
//! message (the upstream has it: it is settled, not sent again), so a late `Reprepare` does not
//! discard a fresh preparation. Back-offs: a recipient, a sender or the whole upstream waits
//! `rate_limit_base_ms × 4^X` (`retry.rs`); refusals of attempts already in flight when an
//! earlier refusal blocked the scope (`max_in_flight_per_recipient` > 1) do not raise X. A
//! message refused `MarketingLimited` more than `marketing_limit_retries` times in a row fails
//! (131049); its recipient still waits before its next message. The streaks live in memory only
//! (forgotten with the recipient, and at a restart).

use std::time::Duration;

use ferry_model::ErrorCode;
use tokio::time::Instant;

use crate::engine::{Phase, RecipientKey, ShardLoop, Timer};
use crate::retry::backoff;
use crate::settle::Fact;
use crate::upstream::{BackOffReason, Outcome, Scope, Upstream};

impl<U: Upstream> ShardLoop<U> {
    pub(crate) fn on_answer(&mut self, message_id: &str, attempt: u32, outcome: Outcome) {
        let Some(seq) = self.seq_of(message_id) else {
            tracing::warn!(shard = %self.shard.id(), id = message_id, "result for a message of another shard");
            return;
        };
        // Any answer shows the upstream is alive.
        self.timeouts_in_a_row = 0;
        let Some(m) = self.messages.get_mut(&seq) else { return };
        m.unanswered = m.unanswered.saturating_sub(1);
        // 0: an upstream that does not echo attempts answers the latest one.
        let current = match m.phase {
            Phase::InFlight { attempt: a } | Phase::InDoubt { attempt: a } => attempt == 0 || attempt == a,
            _ => false,
        };
        if !current {
            // A late answer to an earlier attempt. An acceptance still means the upstream has the
            // message: settle it rather than send it again. Anything else the current attempt
            // answers.
            match outcome {
                Outcome::Accepted { upstream_id, at_ms, duplicate } => {
                    self.settle_accepted(seq, upstream_id, at_ms, duplicate)
                }
                // A parked message whose last outstanding attempt was refused: nothing can make
                // it `sent` any more.
                _ if m.phase == Phase::Expired && m.unanswered == 0 => self.fail_expired(seq),
                _ => {}
            }
            return;
        }
        if let Outcome::Accepted { upstream_id, at_ms, duplicate } = outcome {
            self.settle_accepted(seq, upstream_id, at_ms, duplicate);
            return;
        }
        let key = m.key.clone();
        let timer = m.ack_timer.take();
        if !matches!(outcome, Outcome::BackOff { reason: BackOffReason::MarketingLimited, .. } | Outcome::Resend) {
            m.marketing_refusals = 0;
        }
        self.cancel_timer(timer);
        match outcome {
            Outcome::Accepted { .. } => unreachable!("settled above"),
            Outcome::Failed { code, title, details } => {
                self.leave_flight(seq, &key);
                self.fail(seq, code, &title, &details);
                self.ready.push_back(key);
            }
            Outcome::BackOff { scope, retry_after, reason, detail } => {
                self.back_off(seq, key, (scope, retry_after, reason), &detail)
            }
            Outcome::Reprepare => {
                self.stats.add(&self.stats.rekeys, 1);
                self.upstream.invalidate(&key);
                let reprepares = self.recipients.get_mut(&key).map_or(1, |r| {
                    r.reprepares_in_a_row = r.reprepares_in_a_row.saturating_add(1);
                    r.reprepares_in_a_row
                });
                self.requeue_front(seq);
                // The first re-preparation runs at once; one that did not help backs off.
                if reprepares > 1 {
                    self.block_recipient(&key, Instant::now() + backoff(&self.config, reprepares - 1));
                }
            }
            Outcome::Retry { .. } => {
                self.stats.add(&self.stats.temporary_failures, 1);
                let Some(m) = self.messages.get_mut(&seq) else { return };
                m.failures += 1;
                let delay = backoff(&self.config, m.failures);
                self.requeue_front(seq);
                self.block_recipient(&key, Instant::now() + delay);
            }
            Outcome::InDoubt { wait } => self.park_in_doubt(seq, wait),
            Outcome::Resend => self.requeue_front(seq),
        }
    }

    /// `seq` leaves its recipient's in-flight slot without going back to its FIFO.
    fn leave_flight(&mut self, seq: u64, key: &RecipientKey) {
        if let Some(m) = self.messages.get_mut(&seq) {
            m.phase = Phase::Waiting;
        }
        if let Some(r) = self.recipients.get_mut(key) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        self.stats.left_flight();
    }

    fn back_off(&mut self, seq: u64, key: RecipientKey, how: (Scope, Duration, BackOffReason), detail: &str) {
        let (scope, retry_after, reason) = how;
        let marketing = reason == BackOffReason::MarketingLimited;
        let Some(m) = self.messages.get_mut(&seq) else { return };
        let refusals = if marketing {
            self.stats.add(&self.stats.marketing_limited, 1);
            m.marketing_refusals = m.marketing_refusals.saturating_add(1);
            m.marketing_refusals
        } else {
            self.stats.add(&self.stats.rate_limited, 1);
            0
        };
        let sender = m.record.sender.clone();
        let now = Instant::now();
        let until = match scope {
            Scope::Recipient => {
                let r = self.recipients.get_mut(&key).expect("in-flight message has a recipient");
                let fresh = r.blocked_until.is_none_or(|t| t <= now);
                now + r.rate_limits.refused(&self.config, retry_after, fresh)
            }
            Scope::Sender => self.gates.refuse_sender(&self.config, &sender, retry_after, now),
            Scope::Upstream => self.gates.refuse_upstream(&self.config, retry_after, now),
        };
        if marketing && refusals > self.config.marketing_limit_retries {
            self.leave_flight(seq, &key);
            let detail = format!(
                "refused {refusals} times in a row (delivery.marketing_limit_retries is {}): {}",
                self.config.marketing_limit_retries, detail
            );
            let code = ErrorCode::MarketingLimit;
            self.fail(seq, code.code(), code.title(), &detail);
        } else {
            self.requeue_front(seq);
        }
        match scope {
            Scope::Recipient => self.block_recipient(&key, until),
            Scope::Sender => {
                self.add_timer(until, Timer::UnblockSender(sender));
            }
            Scope::Upstream => {
                self.add_timer(until, Timer::UnblockUpstream);
            }
        }
    }

    /// The upstream cannot tell whether the attempt was taken: keep its in-flight slot (so its
    /// recipient's order holds), do not send it again for `wait`; an answer meanwhile decides.
    fn park_in_doubt(&mut self, seq: u64, wait: Duration) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        let (Phase::InFlight { attempt } | Phase::InDoubt { attempt }) = m.phase else { return };
        m.phase = Phase::InDoubt { attempt };
        // Still outstanding: the message does not expire before the answer or the wait.
        m.unanswered += 1;
        let timer = self.add_timer(Instant::now() + wait, Timer::InDoubt { seq, attempt });
        if let Some(m) = self.messages.get_mut(&seq) {
            m.ack_timer = Some(timer);
        }
    }

    /// The current attempt of `seq` went unanswered for `ack_timeout_ms`: resend after the
    /// recipient's backoff; too many in a row reset the upstream.
    pub(crate) fn on_ack_timeout(&mut self, seq: u64) {
        self.stats.add(&self.stats.ack_timeouts, 1);
        self.timeouts_in_a_row += 1;
        if self.is_expired(seq) {
            // Not sent again: wait for this attempt's answer (an acceptance makes it `sent`).
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
            self.reset_upstream(&why);
        }
    }

    /// The upstream accepted `seq` (this attempt or an earlier one): it leaves the queue as `sent`.
    pub(crate) fn settle_accepted(&mut self, seq: u64, upstream_id: Option<String>, at_ms: Option<i64>, dup: bool) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        let key = m.key.clone();
        match m.phase {
            Phase::Settling => return,
            Phase::InFlight { .. } | Phase::InDoubt { .. } => {
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
        let at_ms = at_ms.unwrap_or_else(|| self.clock.now_ms());
        self.accept_to_ack.record(ms_to_seconds(at_ms - m.record.accepted_at_ms));
        let sender = m.record.sender.clone();
        if let Some(id) = &upstream_id {
            tracing::debug!(shard = %self.shard.id(), message = m.message_id.as_str(), upstream_id = id, "accepted upstream");
        }
        self.record(Fact::Sent { seq, at_ms, upstream_id });
        if dup {
            self.stats.add(&self.stats.acked_as_duplicate, 1);
        }
        if let Some(r) = self.recipients.get_mut(&key) {
            r.rate_limits.acked();
            r.reprepares_in_a_row = 0;
        }
        self.gates.accepted(&sender);
        self.ready.push_back(key);
    }
}

fn ms_to_seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}
