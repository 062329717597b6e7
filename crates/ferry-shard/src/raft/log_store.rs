//! The Raft log of one shard replica, in the shard's own RocksDB (column families `raft_log` and
//! `raft_state`, see the storage docs and `docs/replication-design.md` §2).
//!
//! Every write goes through one OS thread per log ([`LogStore`]'s log thread), in the order
//! openraft issued it (the trait wants all log IO serialized), and no RocksDB call runs on a tokio
//! worker: openraft's `RaftCore` is one task per group, and a blocking call there would also stall
//! its heartbeats (openraft issue #185). Reads ([`LogReader`]) run in `spawn_blocking`.
//!
//! Durability: the thread writes each op's batch without a sync (so the entries are readable the
//! moment `append` returns, as the trait requires), and when no further op is waiting it syncs
//! the WAL once (a synced write of the `raft_state/synced` marker) and only then reports every append since the last sync as
//! flushed (`LogFlushed`) and every waiting vote as saved: appends and votes are on disk before
//! openraft hears they are, and ops that queue up during a sync share the next one (group
//! commit). The WAL is ordered, so a crash keeps a prefix of the ops: never a hole in the log.
//! Truncations are synced before they return too; purges and the committed id are not (a lost
//! purge only keeps entries longer, a lost committed id only makes openraft re-apply less).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use super::tail_cache::TailCache;
use super::types::{ShardRaft, decode_entry, encode_entry};
use crate::ShardError;
use crate::storage::{CF_RAFT_LOG, CF_RAFT_STATE, RAFT_STATE_COMMITTED, RAFT_STATE_PURGED, RAFT_STATE_VOTE, Store};

pub(crate) type NodeId = u64;
pub(crate) type StoreError = StorageError<NodeId>;

/// `raft_state` key of the log thread's sync marker (an empty value, rewritten by every sync).
const RAFT_STATE_SYNCED: &[u8] = b"synced";

/// The value version byte of a `raft_log` value.
const LOG_VALUE_VERSION: u8 = 1;

/// One stored log entry (prost, after the version byte).
#[derive(Clone, PartialEq, prost::Message)]
struct RaftLogEntryProto {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    leader_node: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    /// 0 blank, 1 normal (`data` = the `ShardEntry` encoding), 2 membership (`data` = JSON).
    #[prost(uint32, tag = "4")]
    kind: u32,
    #[prost(bytes = "vec", tag = "5")]
    data: Vec<u8>,
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn write_logs_error(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

fn read_logs_error(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

/// Encodes a log entry as `raft_log` stores it (also its form on the wire, in AppendEntries).
pub fn encode_log_entry(entry: &Entry<ShardRaft>) -> Vec<u8> {
    let (kind, data) = match &entry.payload {
        EntryPayload::Blank => (0, Vec::new()),
        EntryPayload::Normal(e) => (1, encode_entry(e)),
        EntryPayload::Membership(m) => (2, serde_json::to_vec(m).expect("a membership serializes")),
    };
    let proto = RaftLogEntryProto {
        term: entry.log_id.leader_id.term,
        leader_node: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        kind,
        data,
    };
    let mut v = vec![LOG_VALUE_VERSION];
    prost::Message::encode(&proto, &mut v).expect("vec has capacity");
    v
}

/// Decodes a `raft_log` value.
pub fn decode_log_entry(bytes: &[u8]) -> Result<Entry<ShardRaft>, String> {
    let rest = match bytes.split_first() {
        Some((&LOG_VALUE_VERSION, rest)) => rest,
        Some((v, _)) => return Err(format!("raft log value version {v}")),
        None => return Err("empty raft log value".into()),
    };
    let p: RaftLogEntryProto = prost::Message::decode(rest).map_err(|e| format!("raft log entry: {e}"))?;
    let payload = match p.kind {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(decode_entry(&p.data).map_err(|e| e.to_string())?),
        2 => EntryPayload::Membership(serde_json::from_slice(&p.data).map_err(|e| format!("membership: {e}"))?),
        k => return Err(format!("raft log entry kind {k}")),
    };
    Ok(Entry { log_id: LogId::new(openraft::CommittedLeaderId::new(p.term, p.leader_node), p.index), payload })
}

/// What the log thread is asked to do.
enum LogOp {
    /// Write the batch; answer `written` at once, call `flushed` after the next WAL sync.
    Append { batch: WriteBatch, written: oneshot::Sender<Result<(), io::Error>>, flushed: LogFlushed<ShardRaft> },
    /// Write the batch; answer after the next WAL sync (`sync`) or at once.
    Write { batch: WriteBatch, sync: bool, done: oneshot::Sender<Result<(), io::Error>> },
}

/// Someone waiting for the next WAL sync.
enum SyncWaiter {
    Flushed(LogFlushed<ShardRaft>),
    Done(oneshot::Sender<Result<(), io::Error>>),
}

impl SyncWaiter {
    fn complete(self, result: Result<(), String>) {
        match self {
            SyncWaiter::Flushed(cb) => cb.log_io_completed(result.map_err(io_error)),
            SyncWaiter::Done(tx) => {
                let _ = tx.send(result.map_err(io_error));
            }
        }
    }
}

fn log_thread(store: Arc<Store>, rx: crossbeam_channel::Receiver<LogOp>) {
    let unsynced = WriteOptions::default();
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let mut waiters: Vec<SyncWaiter> = Vec::new();
    let stages = super::stages::LogStages::new(store.shard);
    loop {
        let op = if waiters.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        } else {
            rx.try_recv().ok()
        };
        let Some(op) = op else {
            // Nothing else waiting: one WAL sync for everything written since the last one, as a
            // synced write of a marker key (the WAL is sequential: syncing it persists every
            // earlier write too). A synced write rather than `FlushWAL(sync)`, whose sync the
            // `rocksdb.dbstats` WAL counter does not show, so the test below could not see it.
            let mut marker = WriteBatch::default();
            marker.put_cf(store.cf(CF_RAFT_STATE), RAFT_STATE_SYNCED, []);
            let started = std::time::Instant::now();
            let result = store.db.write_opt(marker, &synced).map_err(|e| format!("raft log WAL sync: {e}"));
            stages.sync.record(started.elapsed().as_secs_f64());
            stages.appends_per_sync.record(waiters.len() as f64);
            if let Err(e) = &result {
                tracing::error!(shard = store.shard, error = %e, "raft log sync failed");
            }
            for w in waiters.drain(..) {
                w.complete(result.clone());
            }
            continue;
        };
        match op {
            LogOp::Append { batch, written, flushed } => match store.db.write_opt(batch, &unsynced) {
                Ok(()) => {
                    let _ = written.send(Ok(()));
                    waiters.push(SyncWaiter::Flushed(flushed));
                }
                Err(e) => {
                    tracing::error!(shard = store.shard, error = %e, "raft log append failed");
                    flushed.log_io_completed(Err(io_error(&e)));
                    let _ = written.send(Err(io_error(e)));
                }
            },
            LogOp::Write { batch, sync, done } => match store.db.write_opt(batch, &unsynced) {
                Ok(()) if sync => waiters.push(SyncWaiter::Done(done)),
                Ok(()) => {
                    let _ = done.send(Ok(()));
                }
                Err(e) => {
                    tracing::error!(shard = store.shard, error = %e, "raft log write failed");
                    let _ = done.send(Err(io_error(e)));
                }
            },
        }
    }
}

/// The Raft log storage of one shard replica (see the module docs). Dropping it stops its log
/// thread after the ops already sent.
pub struct LogStore {
    store: Arc<Store>,
    cache: TailCache,
    tx: Option<crossbeam_channel::Sender<LogOp>>,
    thread: Option<JoinHandle<()>>,
}

impl LogStore {
    /// The log of the shard whose database is `store` (its column families exist once
    /// [`Store::open`] returned).
    pub fn open(store: Arc<Store>) -> Result<LogStore, ShardError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread_store = store.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferry-raft-log-{:02}", store.shard))
            .spawn(move || log_thread(thread_store, rx))
            .map_err(|e| ShardError::Layout(format!("cannot start the raft log thread: {e}")))?;
        Ok(LogStore { store, cache: TailCache::default(), tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, op: LogOp) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .expect("sender present until drop")
            .send(op)
            .map_err(|_| write_logs_error("the raft log thread stopped"))
    }

    /// Writes `batch` on the log thread; returns once written (and synced, if `sync`).
    async fn write(&self, batch: WriteBatch, sync: bool, error: fn(String) -> StoreError) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.send(LogOp::Write { batch, sync, done })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(error(e.to_string())),
            Err(_) => Err(error("the raft log thread stopped".into())),
        }
    }

    fn state_json<T: serde::de::DeserializeOwned>(store: &Store, key: &[u8]) -> Result<Option<T>, String> {
        match store.db.get_cf(store.cf(CF_RAFT_STATE), key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| format!("raft_state {key:?}: {e}")),
        }
    }

    async fn read_state<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static [u8],
        error: fn(String) -> StoreError,
    ) -> Result<Option<T>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || Self::state_json(&store, key))
            .await
            .map_err(|e| error(e.to_string()))?
            .map_err(error)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads entries of a shard's Raft log (any number of them, from any task).
#[derive(Clone)]
pub struct LogReader {
    store: Arc<Store>,
    cache: TailCache,
}

fn read_range(store: &Store, start: u64, end: Option<u64>) -> Result<Vec<Entry<ShardRaft>>, String> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_lower_bound(log_key(start).to_vec());
    if let Some(end) = end {
        if end <= start {
            return Ok(Vec::new());
        }
        opts.set_iterate_upper_bound(log_key(end).to_vec());
    }
    let iter = store.db.iterator_cf_opt(store.cf(CF_RAFT_LOG), opts, rocksdb::IteratorMode::Start);
    let mut out = Vec::new();
    for item in iter {
        let (_, v) = item.map_err(|e| e.to_string())?;
        out.push(decode_log_entry(&v)?);
    }
    Ok(out)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

/// Entries `[start, end)`: from the tail cache when it holds them all, else from RocksDB.
async fn read_entries(
    store: &Arc<Store>,
    cache: &TailCache,
    start: u64,
    end: Option<u64>,
) -> Result<Vec<Entry<ShardRaft>>, StoreError> {
    if let Some(entries) = cache.get(start, end) {
        return Ok(entries);
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || read_range(&store, start, end))
        .await
        .map_err(read_logs_error)?
        .map_err(read_logs_error)
}

impl RaftLogReader<ShardRaft> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ShardRaft>>, StoreError> {
        let (start, end) = bounds(&range);
        read_entries(&self.store, &self.cache, start, end).await
    }
}

impl RaftLogReader<ShardRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ShardRaft>>, StoreError> {
        let (start, end) = bounds(&range);
        read_entries(&self.store, &self.cache, start, end).await
    }
}

impl RaftLogStorage<ShardRaft> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<ShardRaft>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<LogState<ShardRaft>, String> {
            let purged: Option<LogId<NodeId>> = Self::state_json(&store, RAFT_STATE_PURGED)?;
            let mut last = store.db.iterator_cf(store.cf(CF_RAFT_LOG), rocksdb::IteratorMode::End);
            let last_log_id = match last.next() {
                None => purged,
                Some(item) => {
                    let (_, v) = item.map_err(|e| e.to_string())?;
                    Some(*decode_log_entry(&v)?.get_log_id())
                }
            };
            Ok(LogState { last_purged_log_id: purged, last_log_id })
        })
        .await
        .map_err(read_logs_error)?
        .map_err(read_logs_error)
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { store: self.store.clone(), cache: self.cache.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let value = serde_json::to_vec(vote).expect("a vote serializes");
        batch.put_cf(self.store.cf(CF_RAFT_STATE), RAFT_STATE_VOTE, value);
        self.write(batch, true, |e| StorageIOError::write_vote(AnyError::error(e)).into()).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StoreError> {
        self.read_state(RAFT_STATE_VOTE, |e| StorageIOError::read_vote(AnyError::error(e)).into()).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT_STATE);
        match committed {
            Some(id) => batch.put_cf(cf, RAFT_STATE_COMMITTED, serde_json::to_vec(&id).expect("a log id serializes")),
            None => batch.delete_cf(cf, RAFT_STATE_COMMITTED),
        }
        self.write(batch, false, write_logs_error).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StoreError> {
        self.read_state(RAFT_STATE_COMMITTED, read_logs_error).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<ShardRaft>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<ShardRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT_LOG);
        let mut cached = Vec::new();
        for entry in entries {
            let value = encode_log_entry(&entry);
            batch.put_cf(cf, log_key(entry.log_id.index), &value);
            cached.push((entry, value.len()));
        }
        let (written, rx) = oneshot::channel();
        self.send(LogOp::Append { batch, written, flushed: callback })?;
        match rx.await {
            Ok(Ok(())) => {
                // Readable from RocksDB now; reads of them are served from memory from here on.
                self.cache.appended(cached);
                Ok(())
            }
            Ok(Err(e)) => Err(write_logs_error(e)),
            Err(_) => Err(write_logs_error("the raft log thread stopped")),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.cache.truncated(log_id.index);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.store.cf(CF_RAFT_LOG), log_key(log_id.index), log_key(u64::MAX));
        self.write(batch, true, write_logs_error).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        // `purged` first in the batch: openraft ignores entries up to it, so an entry left
        // behind by a crash is harmless, and the log never has a hole.
        self.cache.purged(log_id.index);
        let mut batch = WriteBatch::default();
        let value = serde_json::to_vec(&log_id).expect("a log id serializes");
        batch.put_cf(self.store.cf(CF_RAFT_STATE), RAFT_STATE_PURGED, value);
        batch.delete_range_cf(self.store.cf(CF_RAFT_LOG), log_key(0), log_key(log_id.index.saturating_add(1)));
        self.write(batch, false, write_logs_error).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::storage::EventRetention;

    /// An append is reported flushed, and a vote saved, only after a WAL sync; the committed log
    /// id is written without one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_and_votes_are_synced_before_they_are_reported() {
        let res = crate::test_support::resources();
        let dir = tempfile::tempdir().unwrap();
        let events = EventRetention { retention_ms: i64::MAX, webhook_floor: Arc::new(AtomicU64::new(u64::MAX)) };
        let store = Arc::new(Store::open(dir.path(), 0, &res, i64::MAX, events).unwrap());
        let mut log = LogStore::open(store.clone()).unwrap();
        let syncs = || store.wal_syncs().expect("rocksdb.dbstats has the WAL line");
        let before = syncs();
        let id = LogId::new(CommittedLeaderId::new(1, 1), 1);
        log.blocking_append([Entry::<ShardRaft> { log_id: id, payload: EntryPayload::Blank }]).await.unwrap();
        let after_append = syncs();
        assert!(after_append > before, "append reported flushed without a WAL sync ({before} → {after_append})");
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let after_vote = syncs();
        assert!(after_vote > after_append, "vote saved without a WAL sync ({after_append} → {after_vote})");
        log.save_committed(Some(id)).await.unwrap();
        assert_eq!(syncs(), after_vote, "the committed id costs no sync");
    }
}
