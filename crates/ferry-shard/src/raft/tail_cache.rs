//! The newest entries of a shard's Raft log, in memory: what replication (one read per follower
//! per AppendEntries) and apply read right after an append, served without a RocksDB read and a
//! decode. A profile of a loaded cluster node (`perf record` during `benches/cluster.sh`) had
//! 10 % of its CPU in reading back and decoding entries it had just appended.
//!
//! The cache always holds a contiguous run of indexes that ends at the log's last entry (every
//! append goes through it; a truncation drops its tail, a purge its head), bounded in entries and
//! encoded bytes. A read served only partly by it goes to RocksDB whole, so the cache never
//! changes what a read returns.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use openraft::Entry;

use super::types::ShardRaft;

/// At most this many entries...
const MAX_ENTRIES: usize = 1024;
/// ...and this many encoded bytes (a shard of 1,000-message batches keeps a few entries).
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Inner {
    /// `(entry, encoded size)`, indexes contiguous and increasing.
    entries: VecDeque<(Entry<ShardRaft>, usize)>,
    bytes: usize,
}

/// Shared by a log store and its readers.
#[derive(Clone, Default)]
pub(crate) struct TailCache {
    inner: Arc<Mutex<Inner>>,
}

impl TailCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves a consistent deque (every update is one push or pop).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records appended entries (in index order), dropping the oldest beyond the bounds. An
    /// entry that does not follow the newest cached one empties the cache first.
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry<ShardRaft>, usize)>) {
        let mut inner = self.lock();
        for (entry, size) in entries {
            let follows = inner.entries.back().is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
            if !follows {
                inner.entries.clear();
                inner.bytes = 0;
            }
            inner.bytes += size;
            inner.entries.push_back((entry, size));
            while inner.entries.len() > MAX_ENTRIES || (inner.bytes > MAX_BYTES && inner.entries.len() > 1) {
                let (_, size) = inner.entries.pop_front().expect("not empty");
                inner.bytes -= size;
            }
        }
    }

    /// Entries `[start, end)` (`end` `None`: to the end of the log), if the cache holds every one
    /// of them; `None`: read the log.
    pub(crate) fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<ShardRaft>>> {
        let inner = self.lock();
        let first = inner.entries.front()?.0.log_id.index;
        let last = inner.entries.back()?.0.log_id.index;
        if start < first {
            return None;
        }
        let end = end.unwrap_or(last + 1).min(last + 1);
        if end <= start {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(inner.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }

    /// Forgets entries from `index` on (a truncation).
    pub(crate) fn truncated(&self, index: u64) {
        let mut inner = self.lock();
        while inner.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            let (_, size) = inner.entries.pop_back().expect("not empty");
            inner.bytes -= size;
        }
    }

    /// Forgets entries up to `index` included (a purge).
    pub(crate) fn purged(&self, index: u64) {
        let mut inner = self.lock();
        while inner.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            let (_, size) = inner.entries.pop_front().expect("not empty");
            inner.bytes -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64) -> (Entry<ShardRaft>, usize) {
        (Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }, 100)
    }

    fn indexes(entries: Option<Vec<Entry<ShardRaft>>>) -> Option<Vec<u64>> {
        entries.map(|v| v.into_iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let cache = TailCache::default();
        assert_eq!(indexes(cache.get(1, None)), None, "empty: read the log");
        cache.appended((5..=9).map(entry));
        assert_eq!(indexes(cache.get(5, Some(8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(cache.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(cache.get(4, Some(6))), None, "index 4 is not cached: the whole read goes to the log");
        assert_eq!(indexes(cache.get(10, None)), Some(vec![]), "past the end of the log");
        assert_eq!(indexes(cache.get(8, Some(100))), Some(vec![8, 9]), "the log ends at 9");
    }

    #[test]
    fn truncation_purge_and_gaps_keep_it_a_suffix_of_the_log() {
        let cache = TailCache::default();
        cache.appended((1..=6).map(entry));
        cache.truncated(5);
        assert_eq!(indexes(cache.get(1, None)), Some(vec![1, 2, 3, 4]));
        cache.appended([entry(5)]);
        cache.purged(2);
        assert_eq!(indexes(cache.get(3, None)), Some(vec![3, 4, 5]));
        assert_eq!(indexes(cache.get(2, None)), None);
        // An append that does not follow (cannot happen after a truncation, but must not make
        // the cache claim a hole): it restarts from that entry.
        cache.appended([entry(9)]);
        assert_eq!(indexes(cache.get(5, None)), None);
        assert_eq!(indexes(cache.get(9, None)), Some(vec![9]));
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let cache = TailCache::default();
        cache.appended((1..=(MAX_ENTRIES as u64 + 10)).map(entry));
        assert_eq!(indexes(cache.get(1, Some(2))), None, "the oldest were dropped");
        assert_eq!(indexes(cache.get(11, Some(12))), Some(vec![11]));
        let big = TailCache::default();
        big.appended((1..=3).map(|i| (entry(i).0, MAX_BYTES / 2)));
        assert_eq!(indexes(big.get(1, None)), None);
        assert_eq!(indexes(big.get(2, None)), Some(vec![2, 3]));
    }
}
