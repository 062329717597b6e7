//! Settlements for other shards: stage "record what arrived on this shard's stream but belongs to
//! another shard" of the delivery loop.
//!
//! An inbound message is recorded in the shard that owns its user, and a receipt in the shard
//! that owns its message; either may arrive on any shard's stream (the server may not keep
//! stream affinity). The loop collects them per owner shard during a turn and writes one
//! `Settle` per owner (that shard's writer does the write: only a shard's writer writes its
//! database); the server's copy is acknowledged on this stream once the write is durable. A
//! failed write is written again after `SETTLE_RETRY`, like this shard's own settlements, so it
//! does not wait for the server to push it again on some later stream.

use std::collections::BTreeMap;

use ferry_model::ShardId;
use ferry_shard::{Settlement, ShardError};
use tokio::time::Instant;

use crate::engine::{ShardLoop, Timer};
use crate::failpoint::{self, Point};
use crate::settle::{Fact, SETTLE_RETRY, SettleBatch, unqueued_settlement};
use crate::upstream::{EventToken, Upstream};

/// Settlements of this turn, and failed ones waiting to be written again, by owner shard.
#[derive(Default)]
pub(crate) struct OtherShards {
    pending: BTreeMap<u16, (Vec<Settlement>, Vec<u64>)>,
    deferred: BTreeMap<u16, (Vec<Settlement>, Vec<u64>)>,
}

impl OtherShards {
    /// Failed batches are waiting for the retry timer.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }
}

impl<U: Upstream> ShardLoop<U> {
    /// Records `fact` (a status or an inbound message) in shard `owner` (written this turn);
    /// `receipt_id` is acknowledged to the upstream once that is durable.
    pub(crate) fn settle_in_other_shard(&mut self, owner: ShardId, fact: Fact, receipt_id: EventToken) {
        let Some(entry) = unqueued_settlement(fact) else { return };
        let (entries, receipts) = self.other_shards.pending.entry(owner.0).or_default();
        entries.push(entry);
        receipts.push(receipt_id);
    }

    /// Writes this turn's settlements for other shards: one `Settle` per owner.
    pub(crate) fn flush_other_shards(&mut self) {
        for (owner, (entries, receipt_ids)) in std::mem::take(&mut self.other_shards.pending) {
            let shard = self.all_shards[usize::from(owner)].clone();
            let fails = entries.iter().any(|e| match e {
                Settlement::Inbound(m) => failpoint::hit(Point::InboundWrite, &m.from),
                _ => false,
            });
            let write = if fails {
                Err(ShardError::Corrupt { shard: owner, what: "failpoint: the inbound write failed".to_owned() })
            } else {
                shard.settle_durably(entries.clone(), None)
            };
            let held = SettleBatch { seqs: Vec::new(), entries, receipt_ids, other_shard: Some(ShardId(owner)) };
            self.settle_tasks.spawn(held, async move {
                match write {
                    Ok(wait) => wait.await,
                    Err(e) => Err(e),
                }
            });
        }
    }

    /// A write to another shard ended: acknowledge its receipts, or write it again later.
    pub(crate) fn on_other_shard_settled(&mut self, owner: ShardId, batch: SettleBatch, result: Result<(), String>) {
        match result {
            Ok(()) => self.ack_receipts(batch.receipt_ids),
            Err(e) => {
                tracing::error!(shard = %self.shard.id(), owner = %owner, error = %e, "recording in another shard failed; writing it again in 1 s");
                let retry_pending = self.settle_retry_pending();
                let (entries, receipts) = self.other_shards.deferred.entry(owner.0).or_default();
                entries.extend(batch.entries);
                receipts.extend(batch.receipt_ids);
                if !retry_pending {
                    self.add_timer(Instant::now() + SETTLE_RETRY, Timer::RetrySettle);
                }
            }
        }
    }

    /// The retry timer fired: the deferred batches join this turn's.
    pub(crate) fn retry_other_shards(&mut self) {
        for (owner, (entries, receipts)) in std::mem::take(&mut self.other_shards.deferred) {
            let (pending, pending_receipts) = self.other_shards.pending.entry(owner).or_default();
            pending.extend(entries);
            pending_receipts.extend(receipts);
        }
    }
}
