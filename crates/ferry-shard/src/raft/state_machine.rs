//! The state machine of one shard replica: the shard's own column families (everything but
//! `raft_log` and `raft_state`), changed only by [`crate::apply`] of committed log entries.
//!
//! - **Apply**: each normal entry is one `WriteBatch`: [`crate::apply::apply`]'s writes plus
//!   `meta/raft_applied` (the entry's log id), written without a sync — the entry is already
//!   synced in `raft_log`, which shares the database's WAL, so the next synced log write persists
//!   the batch too, and a crash that loses it re-applies the entry from the log. Entries are
//!   written one by one (not one batch per call) because apply reads the store: an entry must see
//!   the writes of the one before it. Blank entries write `raft_applied` only, membership entries
//!   also `meta/raft_membership`. A read error in apply is fatal ([`StorageError`]; openraft stops
//!   the group): another replica's read may succeed, so skipping the op would fork the replicas.
//! - **Snapshot**: a RocksDB checkpoint (hard links, after a memtable flush) of the whole database
//!   in `<snapshot_root>/<snapshot id>/`, taken while apply is locked out, so its `raft_applied` and
//!   `raft_membership` are exactly the snapshot's meta. The current one is recorded in
//!   `raft_state/snapshot`; the previous directory is deleted once the new one is recorded.
//! - **Install** (copy-in): `raft_state/installing` is set (synced), every state-machine column
//!   family is cleared and refilled from the checkpoint in 4 MiB batches, and the last batch
//!   writes the meta log ids, keeps this replica's `meta/node_id` and deletes the marker (synced).
//!   The log and the vote are not touched. A database whose marker is still set (a crash in the
//!   middle) is refused at open ([`StateMachine::open`]); the rejoin path that wipes and refetches
//!   it is slice 3's.
//!
//! Every RocksDB call runs in `spawn_blocking`, never on a tokio worker.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_model::ShardId;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, Entry, EntryPayload, LogId, OptionalSend, StorageIOError, StoredMembership};
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::log_store::{NodeId, StoreError};
use super::types::{CheckpointSnapshot, PeerNode, ShardRaft, ShardResponse};
use crate::ShardError;
use crate::apply::{OpOutcome, ShardState};
use crate::storage::{
    CF_META, CF_RAFT_STATE, META_NODE_ID, META_RAFT_APPLIED, META_RAFT_MEMBERSHIP, RAFT_STATE_INSTALLING,
    RAFT_STATE_SNAPSHOT, SM_CFS, Store,
};

type Membership = StoredMembership<NodeId, PeerNode>;
type Meta = SnapshotMeta<NodeId, PeerNode>;

/// What `raft_state/snapshot` records: the current snapshot and where its checkpoint is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordedSnapshot {
    meta: Meta,
    dir: PathBuf,
}

/// Where a replica publishes what it applied, as the single-node writer does after each commit:
/// the shard's committed seqs (delivery loop wake-ups, status watchers), low watermark and counters.
pub(crate) struct Published {
    pub(crate) committed: Arc<crate::writer::Committed>,
    pub(crate) low_watermark: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) counters: Arc<crate::writer::WriterCounters>,
}

impl Published {
    fn publish(&self, state: &ShardState, applied: Option<&crate::apply::ShardApplied>) {
        use std::sync::atomic::Ordering;
        let committed = &self.committed;
        if committed.next_seq.swap(state.next_seq, Ordering::AcqRel) != state.next_seq {
            committed.appended.notify_one();
        }
        if *committed.next_outbox_seq.borrow() != state.next_outbox_seq {
            committed.next_outbox_seq.send_replace(state.next_outbox_seq);
        }
        self.low_watermark.store(state.low_watermark, Ordering::Release);
        if let Some(applied) = applied {
            self.counters.appended.fetch_add(applied.appended, Ordering::Relaxed);
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters.settled.fetch_add(applied.settled, Ordering::Relaxed);
            if !applied.released.is_empty() {
                let mut released = committed.released.lock().unwrap_or_else(|e| e.into_inner());
                // Only a leader's delivery loop takes them; a follower's list would grow forever.
                // Dropping is safe: a (new) delivery loop starts below every released message (the
                // low watermark never passes one, the `released` column family).
                if released.len() > 100_000 {
                    released.clear();
                }
                released.extend(&applied.released);
                drop(released);
                committed.appended.notify_one();
            }
        }
    }
}

struct Inner {
    published: Option<Published>,
    store: Arc<Store>,
    state: ShardState,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot_root: PathBuf,
    /// Makes snapshot and incoming directory names unique within this process.
    counter: u64,
}

fn sm_write_error(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}

fn sm_read_error(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::read_state_machine(AnyError::error(e)).into()
}

fn snapshot_error(e: impl std::fmt::Display) -> StoreError {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft metadata serializes")
}

fn read_json<T: serde::de::DeserializeOwned>(store: &Store, cf: &str, key: &[u8]) -> Result<Option<T>, String> {
    match store.db.get_cf(store.cf(cf), key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) => {
            serde_json::from_slice(&v).map(Some).map_err(|e| format!("{cf}/{}: {e}", String::from_utf8_lossy(key)))
        }
    }
}

/// Runs `f` on the state machine, in `spawn_blocking`.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Mutex<Inner>>,
    f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = inner.lock().map_err(|_| sm_write_error("the state machine's lock is poisoned"))?;
        f(&mut guard)
    })
    .await
    .map_err(sm_write_error)?
}

impl Inner {
    fn apply_one(&mut self, entry: Entry<ShardRaft>) -> Result<ShardResponse, StoreError> {
        let store = self.store.clone();
        let meta = store.cf(CF_META);
        let mut batch = WriteBatch::default();
        let log_id = entry.log_id;
        let mut membership = None;
        let mut applied = None;
        match entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(shard_entry) => {
                let outcome = crate::apply::apply(&shard_entry, &mut batch, &store, &self.state);
                if outcome.rejected.is_none()
                    && let Some(e) =
                        outcome.ops.iter().find_map(|o| if let OpOutcome::Failed(e) = o { Some(e) } else { None })
                {
                    tracing::error!(shard = store.shard, %log_id, error = %e, "apply failed: stopping the group");
                    return Err(StorageIOError::apply(log_id, AnyError::error(e)).into());
                }
                applied = Some((shard_entry, outcome));
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m);
                batch.put_cf(meta, META_RAFT_MEMBERSHIP, json(&stored));
                membership = Some(stored);
            }
        }
        batch.put_cf(meta, META_RAFT_APPLIED, json(&log_id));
        store
            .write_batch(batch, &WriteOptions::default())
            .map_err(|e| StoreError::from(StorageIOError::apply(log_id, AnyError::error(e))))?;
        self.applied = Some(log_id);
        if let Some(m) = membership {
            self.membership = m;
        }
        Ok(match applied {
            None => ShardResponse {
                next_seq: self.state.next_seq,
                next_outbox_seq: self.state.next_outbox_seq,
                ..ShardResponse::default()
            },
            Some((shard_entry, outcome)) => {
                self.state.commit(&shard_entry, &outcome);
                if let Some(p) = &self.published {
                    p.publish(&self.state, Some(&outcome));
                }
                ShardResponse::from_applied(outcome).map_err(|e| StorageIOError::apply(log_id, AnyError::error(e)))?
            }
        })
    }

    fn recorded_snapshot(&self) -> Result<Option<RecordedSnapshot>, StoreError> {
        read_json(&self.store, CF_RAFT_STATE, RAFT_STATE_SNAPSHOT).map_err(sm_read_error)
    }

    /// Checkpoints the database as the snapshot `meta` (built from the applied state when
    /// `None`), records it as current and deletes the previous checkpoint.
    fn checkpoint(&mut self, meta: Option<Meta>) -> Result<RecordedSnapshot, StoreError> {
        self.counter += 1;
        let meta = meta.unwrap_or_else(|| Meta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                self.applied.map_or(0, |l| l.leader_id.term),
                self.applied.map_or(0, |l| l.index),
                self.counter
            ),
        });
        let dir = self.snapshot_root.join(format!("snap-{}-{}", meta.snapshot_id, self.counter));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(snapshot_error)?;
        }
        rocksdb::checkpoint::Checkpoint::new(&*self.store.db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(|e| snapshot_error(format!("checkpoint {}: {e}", dir.display())))?;
        let previous = self.recorded_snapshot()?;
        let recorded = RecordedSnapshot { meta, dir };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_RAFT_STATE), RAFT_STATE_SNAPSHOT, json(&recorded));
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.store.write_batch(batch, &sync).map_err(snapshot_error)?;
        if let Some(previous) = previous
            && previous.dir != recorded.dir
            && let Err(e) = std::fs::remove_dir_all(&previous.dir)
        {
            tracing::warn!(dir = %previous.dir.display(), error = %e, "old snapshot checkpoint not deleted");
        }
        Ok(recorded)
    }

    /// Replaces every state-machine column family with the checkpoint's (see the module docs).
    fn install(&mut self, meta: &Meta, from: &Path) -> Result<(), StoreError> {
        const BATCH_BYTES: usize = 4 << 20;
        let store = self.store.clone();
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let unsynced = WriteOptions::default();
        let mut marker = WriteBatch::default();
        marker.put_cf(store.cf(CF_RAFT_STATE), RAFT_STATE_INSTALLING, meta.snapshot_id.as_bytes());
        store.write_batch(marker, &sync).map_err(snapshot_error)?;

        let opts = rocksdb::Options::default();
        let names = rocksdb::DB::list_cf(&opts, from)
            .map_err(|e| snapshot_error(format!("snapshot {}: {e}", from.display())))?;
        let source = rocksdb::DB::open_cf_for_read_only(&opts, from, &names, false)
            .map_err(|e| snapshot_error(format!("snapshot {}: {e}", from.display())))?;
        let node_id = store.get_meta(META_NODE_ID).map_err(snapshot_error)?;
        let mut batch = WriteBatch::default();
        for name in SM_CFS {
            let cf = store.cf(name);
            if let Some(item) = store.db.iterator_cf(cf, rocksdb::IteratorMode::End).next() {
                let (last, _) = item.map_err(snapshot_error)?;
                batch.delete_range_cf(cf, b"".as_slice(), &last);
                batch.delete_cf(cf, &last);
            }
            let Some(source_cf) = source.cf_handle(name) else { continue };
            for item in source.iterator_cf(source_cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(snapshot_error)?;
                batch.put_cf(cf, k, v);
                if batch.size_in_bytes() >= BATCH_BYTES {
                    store.write_batch(std::mem::take(&mut batch), &unsynced).map_err(snapshot_error)?;
                }
            }
        }
        drop(source);
        let meta_cf = store.cf(CF_META);
        batch.put_cf(meta_cf, META_RAFT_APPLIED, json(&meta.last_log_id));
        batch.put_cf(meta_cf, META_RAFT_MEMBERSHIP, json(&meta.last_membership));
        if let Some(node_id) = node_id {
            batch.put_cf(meta_cf, META_NODE_ID, node_id);
        }
        batch.delete_cf(store.cf(CF_RAFT_STATE), RAFT_STATE_INSTALLING);
        store.write_batch(batch, &sync).map_err(snapshot_error)?;

        self.state = ShardState::load(&store, self.state.shard).map_err(snapshot_error)?;
        if let Some(p) = &self.published {
            p.publish(&self.state, None);
        }
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// The state machine of one shard replica (see the module docs).
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
}

impl StateMachine {
    /// The state machine of the shard database `store` (whose meta a shard open wrote), keeping
    /// snapshots under `snapshot_root`. Refuses a database whose snapshot install was interrupted.
    pub fn open(store: Arc<Store>, shard: ShardId, snapshot_root: PathBuf) -> Result<StateMachine, ShardError> {
        let corrupt = |what: String| ShardError::Corrupt { shard: shard.0, what };
        if !store.owns_database() {
            // A snapshot is a checkpoint of the whole database: it must hold this shard alone.
            return Err(ShardError::Layout(format!(
                "shard {shard}: a replicated shard needs a database of its own (data dir format 1)"
            )));
        }
        if let Some(id) = store
            .db
            .get_cf(store.cf(CF_RAFT_STATE), RAFT_STATE_INSTALLING)
            .map_err(|source| ShardError::Rocks { shard: shard.0, source })?
        {
            return Err(corrupt(format!(
                "the install of snapshot {} was interrupted: the state machine is incomplete",
                String::from_utf8_lossy(&id)
            )));
        }
        let state = ShardState::load(&store, shard)?;
        let applied: Option<Option<LogId<NodeId>>> = read_json(&store, CF_META, META_RAFT_APPLIED).map_err(corrupt)?;
        let membership: Option<Membership> = read_json(&store, CF_META, META_RAFT_MEMBERSHIP).map_err(corrupt)?;
        std::fs::create_dir_all(&snapshot_root)
            .map_err(|e| ShardError::Layout(format!("snapshot dir {}: {e}", snapshot_root.display())))?;
        let inner = Inner {
            published: None,
            store,
            state,
            applied: applied.flatten(),
            membership: membership.unwrap_or_default(),
            snapshot_root,
            counter: 0,
        };
        Ok(StateMachine { inner: Arc::new(Mutex::new(inner)) })
    }

    /// The in-memory state apply keeps (next seq, watermarks, ...), as of the last applied entry.
    pub fn shard_state(&self) -> ShardState {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).state.clone()
    }

    /// From now on, every applied entry is published to the shard's readers (see [`Published`]).
    pub(crate) fn publish_to(&self, published: Published) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).published = Some(published);
    }

    /// A handle that reads the applied state after the state machine moved into its `Raft`.
    pub(crate) fn state_handle(&self) -> StateHandle {
        StateHandle { inner: self.inner.clone() }
    }

    /// The shard database this state machine applies to.
    pub fn store(&self) -> Arc<Store> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).store.clone()
    }
}

/// Reads a [`StateMachine`]'s applied state (the proposer plans from it).
#[derive(Clone)]
pub(crate) struct StateHandle {
    inner: Arc<Mutex<Inner>>,
}

impl StateHandle {
    /// The in-memory state apply keeps, as of the last applied entry.
    pub(crate) fn shard_state(&self) -> ShardState {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).state.clone()
    }
}

/// Builds snapshots of a [`StateMachine`] (openraft runs it next to apply; they share the lock).
pub struct SnapshotBuilder {
    inner: Arc<Mutex<Inner>>,
}

impl RaftSnapshotBuilder<ShardRaft> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardRaft>, StoreError> {
        let recorded = blocking(&self.inner, |inner| inner.checkpoint(None)).await?;
        Ok(Snapshot { meta: recorded.meta, snapshot: Box::new(CheckpointSnapshot { dir: recorded.dir }) })
    }
}

impl RaftStateMachine<ShardRaft> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
        let inner = self.inner.lock().map_err(|_| sm_read_error("the state machine's lock is poisoned"))?;
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardResponse>, StoreError>
    where
        I: IntoIterator<Item = Entry<ShardRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<ShardRaft>> = entries.into_iter().collect();
        blocking(&self.inner, move |inner| {
            let started = std::time::Instant::now();
            let applied = entries.into_iter().map(|e| inner.apply_one(e)).collect();
            super::stages::apply_histogram(inner.store.shard).record(started.elapsed().as_secs_f64());
            applied
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { inner: self.inner.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<CheckpointSnapshot>, StoreError> {
        let mut inner = self.inner.lock().map_err(|_| sm_write_error("the state machine's lock is poisoned"))?;
        inner.counter += 1;
        let dir = inner.snapshot_root.join(format!("incoming-{}", inner.counter));
        Ok(Box::new(CheckpointSnapshot { dir }))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<CheckpointSnapshot>) -> Result<(), StoreError> {
        let meta = meta.clone();
        blocking(&self.inner, move |inner| {
            inner.install(&meta, &snapshot.dir)?;
            // The installed state becomes this replica's current snapshot (its own checkpoint:
            // the received directory may belong to someone else).
            inner.checkpoint(Some(meta))?;
            if snapshot.dir.starts_with(&inner.snapshot_root)
                && let Err(e) = std::fs::remove_dir_all(&snapshot.dir)
            {
                tracing::warn!(dir = %snapshot.dir.display(), error = %e, "received snapshot not deleted");
            }
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<ShardRaft>>, StoreError> {
        let recorded = blocking(&self.inner, |inner| inner.recorded_snapshot()).await?;
        Ok(recorded
            .filter(|r| r.dir.is_dir())
            .map(|r| Snapshot { meta: r.meta, snapshot: Box::new(CheckpointSnapshot { dir: r.dir }) }))
    }
}
