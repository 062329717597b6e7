//! TTL expiry: stage "give up on a message" of the delivery loop, without a false `failed`.
//!
//! A message whose TTL passed fails with 410 only when no attempt of it is outstanding: none sent
//! on the current connection is still unanswered (`Loaded::unanswered`). One with an unanswered
//! attempt is parked (`Phase::Expired`): it is not sent again, its recipient moves on, and it
//! waits for that answer: an ack (of any attempt) makes it `sent`, the last outstanding attempt
//! answered otherwise makes it fail with 410. When the stream ends (a drop, or a reset after ack
//! timeouts in a row) nothing is outstanding any more and parked messages fail. While parked, a
//! silence of `ack_timeout_ms` counts as an ack timeout (timeouts in a row reset the stream), so a
//! server that never answers cannot keep a parked message in memory forever.

use std::time::Duration;

use ferry_model::ErrorCode;
use tokio::time::Instant;

use crate::engine::{Phase, ShardLoop, Timer};
use crate::upstream::Upstream;

impl<U: Upstream> ShardLoop<U> {
    /// Whether `seq`'s TTL has passed (by the node's clock).
    pub(crate) fn is_expired(&self, seq: u64) -> bool {
        self.messages.get(&seq).is_some_and(|m| self.clock.now_ms() >= m.record.expires_at_ms)
    }

    /// `seq` expired and is neither waiting in its recipient's FIFO nor counted in flight: it fails
    /// with 410 when no attempt of it is outstanding, else it is parked until the answer.
    pub(crate) fn expire_or_await_answer(&mut self, seq: u64) {
        let Some(m) = self.messages.get_mut(&seq) else { return };
        if m.unanswered == 0 {
            self.fail_expired(seq);
            return;
        }
        m.phase = Phase::Expired;
        let timer = m.ack_timer.take();
        self.cancel_timer(timer);
        let at = Instant::now() + Duration::from_millis(self.config.ack_timeout_ms);
        let timer = self.add_timer(at, Timer::AwaitLateAnswer { seq });
        if let Some(m) = self.messages.get_mut(&seq) {
            m.ack_timer = Some(timer);
        }
    }

    /// A parked message's answer did not come within `ack_timeout_ms` (again): that counts as an
    /// ack timeout of the stream; keep waiting.
    pub(crate) fn on_late_answer_silence(&mut self, seq: u64) {
        if self.messages.get(&seq).is_none_or(|m| m.phase != Phase::Expired) {
            return;
        }
        self.stats.add(&self.stats.ack_timeouts, 1);
        self.timeouts_in_a_row += 1;
        self.expire_or_await_answer(seq);
        if self.timeouts_in_a_row >= self.config.ack_timeouts_before_reconnect {
            let why = format!("{} ack timeouts in a row", self.timeouts_in_a_row);
            self.reset_upstream(&why);
        }
    }

    /// The stream ended: no attempt is outstanding any more; parked messages fail with 410.
    pub(crate) fn stream_ended(&mut self) {
        let mut parked = Vec::new();
        for (&seq, m) in self.messages.iter_mut() {
            m.unanswered = 0;
            if m.phase == Phase::Expired {
                parked.push(seq);
            }
        }
        for seq in parked {
            self.fail_expired(seq);
        }
    }

    pub(crate) fn fail_expired(&mut self, seq: u64) {
        if let Some(timer) = self.messages.get_mut(&seq).and_then(|m| m.ack_timer.take()) {
            self.cancel_timer(Some(timer));
        }
        self.fail(
            seq,
            ErrorCode::Expired.code(),
            "Message expired",
            "the message's TTL passed before the server acknowledged it",
        );
    }

    /// While the upstream is unreachable nothing is dispatched, so TTLs are checked here: the
    /// waiting messages that expired fail with 410 (with a connection, dispatch checks them).
    pub(crate) fn fail_expired_while_unreachable(&mut self) {
        if self.upstream.is_up() {
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
}
