//! Which unsynced writes of a database are durable: a synced write makes every WAL record written
//! before it started durable (RocksDB syncs every WAL file not yet synced, not only the current
//! one), whichever thread or shard wrote them.
//!
//! The writer writes a batch that nobody waits on at accept time (a settle, a webhook cursor)
//! without syncing and takes a ticket; it answers that batch's callers only once the ticket is
//! covered: by its own next synced write, by any synced write to the same database (in a data dir
//! of format 2 every shard's appends share one WAL), or by a WAL sync of its own when nothing
//! covered it within `shard.settle_sync_delay_ms` (see `writer.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};

/// The tickets of one database's unsynced writes and how far its syncs cover them.
#[derive(Debug, Default)]
pub(crate) struct WalClock {
    /// Unsynced writes completed so far; a write's ticket is this count just after it.
    written: AtomicU64,
    /// Every unsynced write whose ticket is at most this is durable.
    synced: AtomicU64,
    /// Woken (one token each, never blocking the syncing thread) whenever `synced` moves: the
    /// writers, which may hold batches the sync covered.
    watchers: Mutex<Vec<Sender<()>>>,
}

impl WalClock {
    /// Takes the ticket of an unsynced write that has returned.
    pub(crate) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Called just before a synced write (or a WAL sync) starts: what it will cover.
    pub(crate) fn sync_starts(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// A synced write (or WAL sync) that started at `covers` succeeded.
    pub(crate) fn synced(&self, covers: u64) {
        if self.synced.fetch_max(covers, Ordering::AcqRel) < covers {
            let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            for watcher in watchers.iter() {
                // Full: a wake-up is already pending.
                let _ = watcher.try_send(());
            }
        }
    }

    /// A channel that gets a token whenever a sync covers more unsynced writes.
    pub(crate) fn watch(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Whether the unsynced write of `ticket` is durable.
    pub(crate) fn is_durable(&self, ticket: u64) -> bool {
        self.synced.load(Ordering::Acquire) >= ticket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_only_what_was_written_before_it_started() {
        let clock = WalClock::default();
        let first = clock.written();
        let covers = clock.sync_starts();
        // Written while the sync runs: not covered by it.
        let second = clock.written();
        assert!(!clock.is_durable(first));
        let woken = clock.watch();
        clock.synced(covers);
        assert!(clock.is_durable(first));
        assert!(!clock.is_durable(second));
        assert!(woken.try_recv().is_ok(), "a watcher is woken when the mark moves");
        // A later sync that started earlier cannot move the mark back.
        clock.synced(clock.sync_starts());
        clock.synced(covers);
        assert!(clock.is_durable(second));
        assert!(woken.try_recv().is_ok() && woken.try_recv().is_err(), "one token however many syncs");
    }
}
