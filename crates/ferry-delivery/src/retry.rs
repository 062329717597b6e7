//! Retry timing: stage "how long to wait" of the delivery loop.
//!
//! - [`backoff`]: temporary failures, exponential with jitter, forever (until the TTL).
//! - [`RateLimitStreak`]: rate limits, `rate_limit_base_ms × 4^X` (X = refusals in a row, reset by
//!   the next acceptance), at least the upstream's hint, at most `rate_limit_max_backoff_ms`.
//! - [`Gates`]: back-offs wider than one recipient (`Scope::Sender`: every recipient of a
//!   business number; `Scope::Upstream`: everything), each with its own streak. A recipient's
//!   own back-off lives with the recipient (`recipients.rs`). The chat upstream only ever backs
//!   off recipients; an upstream paced per business number uses the sender gates.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::DeliveryConfig;

/// Exponential backoff with jitter: `retry_initial_ms × 2^(failures-1)`, capped at
/// `retry_max_ms`, then a uniform delay in `[d/2, d]` so retries of many messages spread out.
pub(crate) fn backoff(config: &DeliveryConfig, failures: u32) -> Duration {
    let exp = config.retry_initial_ms.saturating_mul(1u64 << failures.clamp(1, 21).saturating_sub(1));
    let capped = exp.min(config.retry_max_ms);
    let jittered = capped / 2 + rand::random_range(0..=capped / 2);
    Duration::from_millis(jittered.max(1))
}

/// Refusals in a row of one scope: the X of the reference's "retry after 4^X seconds".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimitStreak {
    refusals: u32,
}

impl RateLimitStreak {
    /// Counts a refusal and returns how long the scope waits: `rate_limit_base_ms × 4^X`
    /// (X = refusals before this one), at least `retry_after`, at most
    /// `rate_limit_max_backoff_ms`. A refusal that is not `fresh` (its attempt was in flight when
    /// an earlier refusal blocked the scope) does not raise X: it waits as long as that one.
    pub(crate) fn refused(&mut self, config: &DeliveryConfig, retry_after: Duration, fresh: bool) -> Duration {
        let x = if fresh {
            self.refusals = self.refusals.saturating_add(1);
            self.refusals - 1
        } else {
            self.refusals.saturating_sub(1)
        };
        let backoff = config.rate_limit_base_ms.saturating_mul(4u64.saturating_pow(x));
        let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(backoff.max(retry_after_ms).min(config.rate_limit_max_backoff_ms).max(1))
    }

    /// The scope's next acceptance: the next refusal waits `rate_limit_base_ms` again (X = 0).
    pub(crate) fn acked(&mut self) {
        self.refusals = 0;
    }
}

/// A back-off of a whole sender or of the upstream.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    until: Option<Instant>,
    streak: RateLimitStreak,
}

impl Gate {
    fn is_closed(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Counts a refusal: the wait, and the instant it ends (never earlier than a running one).
    fn refused(&mut self, config: &DeliveryConfig, retry_after: Duration, now: Instant) -> Instant {
        let fresh = !self.is_closed(now);
        let until = now + self.streak.refused(config, retry_after, fresh);
        let until = self.until.map_or(until, |t| t.max(until));
        self.until = Some(until);
        until
    }
}

/// Back-offs of senders and of the whole upstream (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Gates {
    senders: HashMap<String, Gate>,
    upstream: Gate,
}

impl Gates {
    /// Whether `sender` may not be sent to now (its gate or the upstream's is closed).
    pub(crate) fn blocked(&self, sender: &str, now: Instant) -> bool {
        self.upstream.is_closed(now) || self.senders.get(sender).is_some_and(|g| g.is_closed(now))
    }

    /// `sender` was refused: returns when its gate opens again.
    pub(crate) fn refuse_sender(
        &mut self,
        config: &DeliveryConfig,
        sender: &str,
        hint: Duration,
        now: Instant,
    ) -> Instant {
        self.senders.entry(sender.to_owned()).or_default().refused(config, hint, now)
    }

    /// The upstream refused everything: returns when its gate opens again.
    pub(crate) fn refuse_upstream(&mut self, config: &DeliveryConfig, hint: Duration, now: Instant) -> Instant {
        self.upstream.refused(config, hint, now)
    }

    /// An acceptance for `sender`: its streak and the upstream's start again at X = 0 (an open
    /// gate with no streak is forgotten).
    pub(crate) fn accepted(&mut self, sender: &str) {
        self.upstream.streak.acked();
        if let Some(g) = self.senders.get_mut(sender) {
            g.streak.acked();
            if g.until.is_none() {
                self.senders.remove(sender);
            }
        }
    }

    /// A sender's timer fired: true when its gate is open now (its recipients may go).
    pub(crate) fn unblock_sender(&mut self, sender: &str, now: Instant) -> bool {
        let Some(g) = self.senders.get_mut(sender) else { return false };
        if g.is_closed(now) {
            return false;
        }
        g.until = None;
        true
    }

    /// An operator lifted `sender`'s block: its gate opens now, its streak is forgotten.
    pub(crate) fn reopen_sender(&mut self, sender: &str) {
        self.senders.remove(sender);
    }

    /// The upstream's timer fired: true when its gate is open now.
    pub(crate) fn unblock_upstream(&mut self, now: Instant) -> bool {
        if self.upstream.is_closed(now) {
            return false;
        }
        self.upstream.until = None;
        true
    }
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

    const NO_HINT: Duration = Duration::ZERO;

    #[test]
    fn rate_limit_waits_grow_as_powers_of_four_up_to_the_cap() {
        let c = DeliveryConfig::default();
        let mut streak = RateLimitStreak::default();
        let waits: Vec<u64> = (0..8).map(|_| ms(streak.refused(&c, NO_HINT, true))).collect();
        // 4^X seconds, capped at 4^5 s by default.
        assert_eq!(waits, [1_000, 4_000, 16_000, 64_000, 256_000, 1_024_000, 1_024_000, 1_024_000]);
        // No overflow however long the streak.
        let mut long = RateLimitStreak { refusals: u32::MAX };
        assert_eq!(ms(long.refused(&config(20, 5_000), NO_HINT, true)), 5_000);
    }

    #[test]
    fn the_servers_retry_after_is_a_floor_below_the_cap() {
        let c = config(20, 1_000);
        let mut streak = RateLimitStreak::default();
        let hint = Duration::from_millis;
        assert_eq!(ms(streak.refused(&c, hint(700), true)), 700, "X = 0: max(700, 20)");
        assert_eq!(ms(streak.refused(&c, hint(10), true)), 80, "X = 1: max(10, 80)");
        assert_eq!(ms(streak.refused(&c, NO_HINT, true)), 320);
        assert_eq!(ms(streak.refused(&c, hint(60_000), true)), 1_000, "the cap bounds retry_after too");
    }

    #[test]
    fn an_ack_resets_the_streak_and_stale_refusals_do_not_raise_it() {
        let c = config(20, 100_000);
        let mut streak = RateLimitStreak::default();
        assert_eq!(ms(streak.refused(&c, NO_HINT, true)), 20);
        assert_eq!(ms(streak.refused(&c, NO_HINT, true)), 80);
        // Attempts that were in flight when the recipient got blocked: same wait, X unchanged.
        assert_eq!(ms(streak.refused(&c, NO_HINT, false)), 80);
        assert_eq!(ms(streak.refused(&c, NO_HINT, false)), 80);
        assert_eq!(ms(streak.refused(&c, NO_HINT, true)), 320);
        streak.acked();
        assert_eq!(streak, RateLimitStreak::default());
        assert_eq!(ms(streak.refused(&c, NO_HINT, true)), 20, "X = 0 again after an ack");
        // A stale refusal of a fresh streak waits like the first.
        let mut fresh = RateLimitStreak::default();
        assert_eq!(ms(fresh.refused(&c, NO_HINT, false)), 20);
    }

    #[test]
    fn rate_limit_settings_are_validated() {
        assert!(DeliveryConfig::default().validate().is_ok());
        let e = config(0, 1_000).validate().unwrap_err();
        assert!(e.contains("delivery.rate_limit_base_ms is 0"), "{e}");
        let e = config(2_000, 1_000).validate().unwrap_err();
        assert!(e.contains("delivery.rate_limit_max_backoff_ms is 1000") && e.contains("(2000)"), "{e}");
    }

    #[test]
    fn a_sender_gate_blocks_only_that_sender_and_closed_refusals_do_not_raise_x() {
        let c = config(100, 100_000);
        let mut gates = Gates::default();
        let now = Instant::now();
        let at = |ms: u64| now + Duration::from_millis(ms);
        assert_eq!(gates.refuse_sender(&c, "biz1", NO_HINT, now), at(100));
        assert!(gates.blocked("biz1", now) && !gates.blocked("biz2", now));
        // A refusal while closed (an attempt already in flight) keeps X.
        assert_eq!(gates.refuse_sender(&c, "biz1", NO_HINT, at(10)), at(110));
        assert!(!gates.unblock_sender("biz1", at(50)), "still closed");
        assert!(gates.unblock_sender("biz1", at(110)) && !gates.blocked("biz1", at(110)));
        assert_eq!(gates.refuse_sender(&c, "biz1", NO_HINT, at(200)), at(600), "X = 1: 400 ms");
        gates.accepted("biz1");
        assert!(gates.unblock_sender("biz1", at(600)));
        assert_eq!(gates.refuse_sender(&c, "biz1", NO_HINT, at(700)), at(800), "an acceptance resets X");
        // The upstream gate blocks every sender, for at least its hint.
        gates.reopen_sender("biz1");
        assert!(!gates.blocked("biz1", at(700)), "reopened by an operator");
        assert_eq!(gates.refuse_sender(&c, "biz1", NO_HINT, at(700)), at(800), "and its streak starts again");
        assert_eq!(gates.refuse_upstream(&c, Duration::from_millis(250), at(700)), at(950));
        assert!(gates.blocked("biz2", at(900)) && gates.blocked("biz3", at(900)));
        assert!(!gates.unblock_upstream(at(900)) && gates.unblock_upstream(at(950)));
        assert!(!gates.blocked("biz2", at(950)));
    }
}
