//! Test support: holding the writer, failpoints, an in-process crash and RocksDB's own counters.

use std::sync::atomic::Ordering;

use super::Shard;
use crate::writer::WriteOp;

/// Releases a held writer when dropped.
#[doc(hidden)]
pub struct WriterHold {
    _tx: crossbeam_channel::Sender<()>,
}

impl Shard {
    /// Test support: blocks this shard's writer and fills its mailbox until the returned guard
    /// is dropped, so tests can observe backpressure deterministically. The writer of a node's
    /// shared database is every shard's: all of them wait meanwhile.
    #[doc(hidden)]
    pub fn hold_writer_for_test(&self) -> WriterHold {
        let (tx, release) = crossbeam_channel::bounded(0);
        self.pending.fetch_add(self.capacity, Ordering::AcqRel);
        if self.tx.send(WriteOp::Hold { release, weight: self.capacity }).is_ok() {
            return WriterHold { _tx: tx };
        }
        self.pending.fetch_sub(self.capacity, Ordering::AcqRel);
        WriterHold { _tx: tx }
    }

    /// Test support: blocks this shard's writer until the returned guard is dropped, without
    /// refusing anything meanwhile: ops submitted while it is paused are committed together.
    #[doc(hidden)]
    pub fn pause_writer_for_test(&self) -> WriterHold {
        let (tx, release) = crossbeam_channel::bounded(0);
        let _ = self.tx.send(WriteOp::Hold { release, weight: 0 });
        WriterHold { _tx: tx }
    }

    /// Test support: the thread that writes for this shard panics when it takes this op (in a
    /// node's shared database, every shard's writer).
    #[doc(hidden)]
    pub fn panic_writer_for_test(&self) {
        let _ = self.tx.send(WriteOp::PanicForTest);
    }

    /// Failpoint for tests: the next `n` outbox scans fail (as a read error would).
    #[doc(hidden)]
    pub fn failpoint_fail_outbox_scans(&self, n: u64) {
        self.store.fail_outbox_scans.store(n, Ordering::Relaxed);
    }

    /// Failpoint for tests: every read of `seq`'s status record fails (`None`: none do).
    #[doc(hidden)]
    pub fn failpoint_fail_status_read(&self, seq: Option<u64>) {
        self.store.fail_status_read.store(seq.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Failpoint for tests: the writer's next `n` batch writes fail (nothing of them is written),
    /// as a failed RocksDB write would.
    #[doc(hidden)]
    pub fn failpoint_fail_writes(&self, n: u64) {
        self.store.fail_writes.store(n, Ordering::Relaxed);
    }

    /// Failpoint for tests: the next `n` settle ops that record a receipt or an inbound message
    /// fail alone (nothing of them is written; the other ops of their batch are), as a failed write
    /// would. Other writes (appends, sessions, acks without receipts) go through.
    #[doc(hidden)]
    pub fn failpoint_fail_event_settles(&self, n: u64) {
        self.store.fail_event_settles.store(n, Ordering::Relaxed);
    }

    /// Test support: how many of the failures armed by [`Shard::failpoint_fail_event_settles`]
    /// are still to come.
    #[doc(hidden)]
    pub fn failpoint_event_settles_left(&self) -> u64 {
        self.store.fail_event_settles.load(Ordering::Relaxed)
    }

    /// Test support: a crash, as near as one can be had in-process. The writer stops at once:
    /// every op it has not committed yet is abandoned (nothing of it is written; its caller gets
    /// [`ShardError::Stopped`]), and what lives only in memory (the in-memory cursors, the
    /// released seqs not yet taken by the delivery loop) is lost with the handle. Unlike [`Shard::close`], which
    /// commits everything submitted before it. Drop the shard afterwards, then open it again.
    #[doc(hidden)]
    pub fn crash_for_test(&self) {
        self.crashed.store(true, Ordering::Release);
        self.close();
    }

    /// Test support: WAL syncs of this shard's database since it was opened (RocksDB's count).
    #[doc(hidden)]
    pub fn wal_syncs_for_test(&self) -> u64 {
        self.store.wal_syncs().expect("rocksdb.dbstats reports the WAL syncs")
    }

    /// Test support: compacts the status-event log now (runs its retention filter).
    #[doc(hidden)]
    pub fn compact_events_for_test(&self) {
        self.store.compact_outbox();
    }
}
