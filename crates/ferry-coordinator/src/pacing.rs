//! Paced templates: the admin call behind `ResolveHeld` ([`Coordinator::resolve_held`]) and the
//! rule run every second ([`Coordinator::apply_pacing_rule`], started by
//! [`Coordinator::start_pacing_rule`]) release or drop held messages through their shard's writer
//! (`Shard::resolve_held_durably`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_model::{ApiError, ErrorCode};
use ferry_shard::{FailureReason, HeldAction, ResolvedHeld};

use crate::{AfterHold, Coordinator, shard_error};

/// Held messages read per scan of a shard's `held` column family.
const HELD_SCAN_CHUNK: usize = 1024;
/// How often the pacing rule runs.
const PACING_RULE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What one release/drop of held messages did, over all shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldCounts {
    pub released: u64,
    pub dropped: u64,
    /// Failed with 410 instead: their TTL passed while they were held.
    pub expired: u64,
}

impl HeldCounts {
    fn add(&mut self, r: &ResolvedHeld) {
        self.released += r.released.len() as u64;
        self.dropped += r.dropped.len() as u64;
        self.expired += r.expired.len() as u64;
    }
}

impl Coordinator {
    /// The admin call behind `ResolveHeld`: releases (into delivery) or drops (failed, 132015)
    /// every held message of `template_name`, on every shard. Returns what was done; messages
    /// whose TTL passed while held fail with 410 instead.
    ///
    /// Cancel safety: cancel-safe. Each chunk is one writer op, committed whole or not at all; a
    /// dropped call leaves the chunks it submitted resolved and the rest held.
    pub async fn resolve_held(&self, template_name: &str, action: AfterHold) -> Result<HeldCounts, ApiError> {
        if template_name.is_empty() {
            return Err(ApiError::missing("template_name"));
        }
        let reason = FailureReason {
            code: ErrorCode::TemplatePaused.code(),
            title: ErrorCode::TemplatePaused.title().to_owned(),
            details: format!("template `{template_name}` was paused: its held messages were dropped by an admin call"),
        };
        self.resolve_where(action, reason, |_, h| h.template_name == template_name, false).await
    }

    /// The pacing rule: every message held for `pacing.hold_secs` or longer (by the coordinator's
    /// clock) is released or dropped as `pacing.after_hold` says.
    ///
    /// Cancel safety: cancel-safe, as [`Coordinator::resolve_held`].
    pub async fn apply_pacing_rule(&self) -> Result<HeldCounts, ApiError> {
        let hold_ms = i64::try_from(self.pacing.hold_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = self.clock.now_ms().saturating_sub(hold_ms);
        let reason = FailureReason {
            code: ErrorCode::TemplatePaused.code(),
            title: ErrorCode::TemplatePaused.title().to_owned(),
            details: format!(
                "the template was paused: held {} s for quality assessment, then dropped (pacing.after_hold = drop)",
                self.pacing.hold_secs
            ),
        };
        let due = |_: u64, h: &ferry_shard::HeldRecord| h.record.as_ref().is_some_and(|r| r.held_at_ms <= cutoff);
        self.resolve_where(self.pacing.after_hold, reason, due, true).await
    }

    /// Resolves the held messages that `select` picks, shard by shard, in chunks. With `in_order`,
    /// a shard's scan stops at the first message not picked (held messages are in acceptance
    /// order, so the rule reads only the due head).
    async fn resolve_where(
        &self,
        action: AfterHold,
        reason: FailureReason,
        select: impl Fn(u64, &ferry_shard::HeldRecord) -> bool,
        in_order: bool,
    ) -> Result<HeldCounts, ApiError> {
        let mut counts = HeldCounts::default();
        for (shard, floor) in self.core.shards.iter().zip(&self.held_floor) {
            // The periodic rule (the in-order pass) runs for a replicated shard on its leader
            // only; an operator's resolve is forwarded to the leader like any write.
            if in_order && !*shard.leading().borrow() {
                continue;
            }
            let mut from = floor.load(Ordering::Acquire);
            loop {
                let chunk = shard.scan_held(from, HELD_SCAN_CHUNK).map_err(shard_error)?;
                let Some(&(last, _)) = chunk.last() else { break };
                // Everything below the first message still held after this pass is resolved.
                let mut first_kept = None;
                let full = chunk.len() == HELD_SCAN_CHUNK;
                let mut seqs = Vec::new();
                let mut stopped = false;
                for (seq, held) in &chunk {
                    if select(*seq, held) {
                        seqs.push(*seq);
                    } else {
                        first_kept.get_or_insert(*seq);
                        if in_order {
                            stopped = true;
                            break;
                        }
                    }
                }
                if !seqs.is_empty() {
                    let action = match action {
                        AfterHold::Release => HeldAction::Release,
                        AfterHold::Drop => HeldAction::Drop(reason.clone()),
                    };
                    let resolved = shard
                        .resolve_held_durably(seqs, action, self.clock.now_ms())
                        .map_err(shard_error)?
                        .await
                        .map_err(shard_error)?;
                    counts.add(&resolved);
                }
                // Only a pass that has seen every held message from the floor up may raise it.
                if from == floor.load(Ordering::Acquire) {
                    floor.store(first_kept.unwrap_or(last + 1), Ordering::Release);
                }
                if stopped || !full {
                    break;
                }
                from = last + 1;
            }
        }
        Ok(counts)
    }

    /// Runs [`Coordinator::apply_pacing_rule`] every second on the current tokio runtime until
    /// the coordinator is closed or dropped (the task holds only a weak reference between runs).
    pub fn start_pacing_rule(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACING_RULE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(coordinator) = weak.upgrade() else { break };
                if coordinator.closed.load(Ordering::Acquire) {
                    break;
                }
                match coordinator.apply_pacing_rule().await {
                    Ok(c) if c != HeldCounts::default() => {
                        tracing::info!(
                            released = c.released,
                            dropped = c.dropped,
                            expired = c.expired,
                            "pacing rule applied"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pacing rule failed; trying again in 1 s"),
                }
            }
        })
    }
}
