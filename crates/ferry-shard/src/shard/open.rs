//! Opening a shard's store: its meta records checked or written, its state loaded, and what its
//! writer starts from.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_model::ShardId;
use openraft::Raft;

use super::mailbox::{Mailbox, WriterThread};
use super::{Shard, ShardConfig};
use crate::ShardError;
use crate::apply::ShardState;
use crate::node_db::NodeDb;
use crate::raft::ShardRaft;
use crate::resources::SharedResources;
use crate::storage::{
    EventRetention, FORMAT_VERSION, META_FORMAT_VERSION, META_ID_SPACE, META_IDENTITY_KEY, META_NEXT_SEQ, META_NODE_ID,
    META_SHARD, META_WEBHOOK_CURSOR, Store,
};
use crate::writer::{Committed, WriterCounters};

/// A shard's started writer (or proposer) and its group.
pub(super) struct Running {
    pub(super) tx: Mailbox,
    pub(super) writer: WriterThread,
    pub(super) crashed: Arc<AtomicBool>,
    pub(super) raft: Option<Raft<ShardRaft>>,
    pub(super) leading: tokio::sync::watch::Receiver<bool>,
}

/// A shard's database and the state its writer starts from.
pub(super) struct Opened {
    pub(super) store: Arc<Store>,
    pub(super) state: ShardState,
    pub(super) webhook_floor: Arc<AtomicU64>,
    pub(super) identity_key: [u8; 32],
    pub(super) committed: Arc<Committed>,
    pub(super) queue_low_watermark: Arc<AtomicU64>,
    pub(super) counters: Arc<WriterCounters>,
    pub(super) pending: Arc<AtomicUsize>,
}

/// Where a shard's store is.
pub(super) enum StoreAt<'a> {
    /// A database of its own in this directory.
    Dir(&'a Path, &'a SharedResources),
    /// Its column families in the node's shared database.
    Shared(&'a NodeDb),
}

impl Opened {
    pub(super) fn open(
        at: StoreAt<'_>,
        id: ShardId,
        shard_count: u16,
        node_id: u64,
        config: &ShardConfig,
        cluster_identity: Option<(u64, [u8; 32])>,
    ) -> Result<Opened, ShardError> {
        let (store, webhook_floor) = match at {
            StoreAt::Dir(dir, resources) => {
                let webhook_floor = Arc::new(AtomicU64::new(u64::MAX));
                let (status_retention_ms, retention_ms) = config.retention_ms();
                let events = EventRetention { retention_ms, webhook_floor: webhook_floor.clone() };
                (Store::open(dir, id.0, resources, status_retention_ms, events)?, webhook_floor)
            }
            StoreAt::Shared(db) => db.store(id.0)?,
        };
        let store = Arc::new(store);
        init_meta(&store, id, shard_count, node_id)?;
        if let Some((id_space, identity_key)) = cluster_identity {
            init_cluster_identity(&store, id, id_space, identity_key)?;
        }
        let identity_key = init_identity_key(&store, id)?;
        // Before the state is read: marks whose message is no longer queued are dropped.
        init_dispatch_marks(&store, id)?;
        let state = ShardState::load(&store, id)?;
        if config.callbacks {
            webhook_floor.store(init_webhook_cursor(&store, id, state.next_outbox_seq)?, Ordering::Release);
        }
        let committed = Arc::new(Committed {
            next_seq: AtomicU64::new(state.next_seq),
            appended: tokio::sync::Notify::new(),
            next_outbox_seq: tokio::sync::watch::Sender::new(state.next_outbox_seq),
            released: std::sync::Mutex::new(Vec::new()),
        });
        Ok(Opened {
            queue_low_watermark: Arc::new(AtomicU64::new(state.low_watermark)),
            store,
            state,
            webhook_floor,
            identity_key,
            committed,
            counters: Arc::new(WriterCounters::default()),
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub(super) fn into_shard(self, id: ShardId, node_id: u64, config: &ShardConfig, w: Running) -> Shard {
        let Running { tx, writer, crashed, raft, leading } = w;
        Shard {
            id,
            node_id,
            id_space: self.state.id_space,
            store: self.store,
            tx,
            closed: AtomicBool::new(false),
            pending: self.pending,
            capacity: config.queue_capacity,
            counters: self.counters,
            committed: self.committed,
            identity_key: self.identity_key,
            queue_low_watermark: self.queue_low_watermark,
            webhook_cursor: self.webhook_floor,
            writer: Mutex::new(Some(writer)),
            crashed,
            raft,
            leading,
            always_leads: None,
        }
    }
}

/// Checks (or, for a new database, writes) the shard's identity. A database from before
/// `meta/id_space` gets it (= its node id, what its ids already carry).
fn init_meta(store: &Store, id: ShardId, shard_count: u16, node_id: u64) -> Result<(), ShardError> {
    let corrupt = |what: String| ShardError::Corrupt { shard: id.0, what };
    let mut shard_value = id.0.to_be_bytes().to_vec();
    shard_value.extend_from_slice(&shard_count.to_be_bytes());
    match store.get_meta(META_FORMAT_VERSION)? {
        None => {
            let mut batch = rocksdb::WriteBatch::default();
            let meta = store.cf(crate::storage::CF_META);
            batch.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, META_SHARD, &shard_value);
            batch.put_cf(meta, META_NODE_ID, node_id.to_be_bytes());
            batch.put_cf(meta, META_ID_SPACE, node_id.to_be_bytes());
            batch.put_cf(meta, META_NEXT_SEQ, 1u64.to_be_bytes());
            let mut sync = rocksdb::WriteOptions::default();
            sync.set_sync(true);
            store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
            Ok(())
        }
        Some(v) => {
            if v.as_slice() != FORMAT_VERSION.to_be_bytes() {
                return Err(corrupt(format!("storage format {v:?}, this ferry reads {FORMAT_VERSION}")));
            }
            if store.get_meta(META_SHARD)?.as_deref() != Some(shard_value.as_slice()) {
                return Err(corrupt(format!("database is not shard {id} of {shard_count}")));
            }
            if store.get_meta_u64(META_NODE_ID)? != Some(node_id) {
                return Err(corrupt("database belongs to another node (node_id differs)".into()));
            }
            store.get_meta_u64(META_NEXT_SEQ)?.ok_or_else(|| corrupt("missing next_seq".into()))?;
            if store.get_meta_u64(META_ID_SPACE)?.is_none() {
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(store.cf(crate::storage::CF_META), META_ID_SPACE, node_id.to_be_bytes());
                let mut sync = rocksdb::WriteOptions::default();
                sync.set_sync(true);
                store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
            }
            Ok(())
        }
    }
}

/// Reads the persisted webhook cursor; a shard that never had a webhook starts it at the next event
/// (callbacks cover status changes from the first start with a webhook on).
fn init_webhook_cursor(store: &Store, id: ShardId, next_outbox_seq: u64) -> Result<u64, ShardError> {
    if let Some(cursor) = store.get_meta_u64(META_WEBHOOK_CURSOR)? {
        return Ok(cursor);
    }
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(store.cf(crate::storage::CF_META), META_WEBHOOK_CURSOR, next_outbox_seq.to_be_bytes());
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
    Ok(next_outbox_seq)
}

/// Deletes (synced) every dispatch mark whose message is no longer queued. Apply never writes
/// one now (it marks only queued messages, and a queue removal takes the mark along); this
/// repairs data dirs written by the first build with marks, where a mark racing its message's
/// settle stayed forever. A write outside the writer: a replicated shard must not need it.
fn init_dispatch_marks(store: &Store, id: ShardId) -> Result<(), ShardError> {
    let mut batch = rocksdb::WriteBatch::default();
    for (seq, _) in store.dispatch_marks()? {
        if store.get_queued(seq)?.is_none() {
            batch.delete_cf(store.cf(crate::storage::CF_DISPATCHED), crate::storage::queue_key(seq));
        }
    }
    if !batch.is_empty() {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
    }
    Ok(())
}

/// A replicated shard's id space and identity secret are the group's (the same on every replica):
/// a new database takes them; one that holds others belongs to another cluster and is refused.
fn init_cluster_identity(store: &Store, id: ShardId, id_space: u64, identity_key: [u8; 32]) -> Result<(), ShardError> {
    let fresh = store.get_meta(crate::storage::META_RAFT_APPLIED)?.is_none()
        && store.get_meta_u64(META_NEXT_SEQ)? == Some(1)
        && store.get_meta(META_IDENTITY_KEY)?.is_none();
    let space = store.get_meta_u64(META_ID_SPACE)?;
    let key = store.get_meta(META_IDENTITY_KEY)?;
    if space == Some(id_space) && key.as_deref() == Some(identity_key.as_slice()) {
        return Ok(());
    }
    if !fresh {
        return Err(ShardError::Corrupt {
            shard: id.0,
            what: "the database belongs to another cluster (its id space or identity key differs from this \
                   cluster's: check cluster.cluster_id and cluster.secret)"
                .into(),
        });
    }
    let mut batch = rocksdb::WriteBatch::default();
    let meta = store.cf(crate::storage::CF_META);
    batch.put_cf(meta, META_ID_SPACE, id_space.to_be_bytes());
    batch.put_cf(meta, META_IDENTITY_KEY, identity_key);
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
    Ok(())
}

/// Reads the shard's identity secret, drawing and storing (synced) one if the shard has none yet.
fn init_identity_key(store: &Store, id: ShardId) -> Result<[u8; 32], ShardError> {
    if let Some(v) = store.get_meta(META_IDENTITY_KEY)? {
        return v
            .as_slice()
            .try_into()
            .map_err(|_| ShardError::Corrupt { shard: id.0, what: "meta identity_key is not 32 bytes".into() });
    }
    let key: [u8; 32] = rand::random();
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(store.cf(crate::storage::CF_META), META_IDENTITY_KEY, key);
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
    Ok(key)
}
