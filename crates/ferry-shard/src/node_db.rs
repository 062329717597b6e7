//! A single node's shards in one RocksDB (data dir format 2, see [`crate::layout`]).
//!
//! Every shard keeps its own column families (`shard-NN/queue`, `shard-NN/status`, ...: the
//! format of [`crate::storage`], under a prefix), its own state and its own sequence numbers,
//! exactly as with a database of its own. What they share is the WAL and its **one writer
//! thread** (`writer`, TiKV's layout: one RocksDB and one write pool for every region of a
//! store): the ops of every shard waiting together are planned into one `WriteBatch` and made
//! durable by one write with one sync, where databases of their own would sync one WAL each and
//! eight writers of one database would each wake, queue in RocksDB's write group and wait for each
//! other. No answer changes: the writer answers a batch only once it is durable. A batch it
//! writes unsynced (only settles) is made durable by the next synced write (`wal_clock`).
//!
//! What a shared database costs: a write stall (too many L0 files, the memtable budget) in one
//! shard's column families stalls every shard's writes, and a corrupt WAL takes every shard down
//! with it. Both are already node-wide in practice (one disk, one memtable budget).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ferry_model::ShardId;
use rocksdb::{DB, Options};

use crate::ShardError;
use crate::cf_options::{shard_cf_descriptors, shared_cf_prefix};
use crate::layout::{NodeLayout, StorageLayout};
use crate::resources::SharedResources;
use crate::shard::{Shard, ShardConfig};
use crate::storage::{EventRetention, Store};
use crate::wal_clock::WalClock;

/// The open shared database of a node, before its shards are opened.
pub struct NodeDb {
    db: Arc<DB>,
    /// Which unsynced writes of `db` are durable, whichever shard wrote them.
    wal_clock: Arc<WalClock>,
    /// Per shard: the webhook cursor its outbox's compaction filter reads (set by the shard's open).
    webhook_floors: Vec<Arc<AtomicU64>>,
}

impl NodeDb {
    /// Opens (creating if needed) the database of `shard_count` shards in `dir`.
    pub fn open(
        dir: &Path,
        shard_count: u16,
        resources: &SharedResources,
        config: &ShardConfig,
    ) -> Result<NodeDb, ShardError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        resources.apply_db_options(&mut db_opts, shard_count);
        let (status_retention_ms, events_retention_ms) = config.retention_ms();
        let mut webhook_floors = Vec::with_capacity(usize::from(shard_count));
        let mut cfs = Vec::new();
        for shard in 0..shard_count {
            let floor = Arc::new(AtomicU64::new(u64::MAX));
            let events = EventRetention { retention_ms: events_retention_ms, webhook_floor: floor.clone() };
            cfs.extend(shard_cf_descriptors(&shared_cf_prefix(shard), resources, status_retention_ms, &events));
            webhook_floors.push(floor);
        }
        // Every shard's database: the error names the directory, not one shard.
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(|source| {
            ShardError::Layout(format!("cannot open the shards' database {}: {source}", dir.display()))
        })?;
        Ok(NodeDb { db: Arc::new(db), wal_clock: Arc::default(), webhook_floors })
    }

    /// Shard `shard`'s store and the webhook floor its compaction filter reads.
    pub(crate) fn store(&self, shard: u16) -> Result<(Store, Arc<AtomicU64>), ShardError> {
        let floor = self.webhook_floors.get(usize::from(shard)).cloned().ok_or_else(|| {
            ShardError::Layout(format!(
                "shard {shard} is not in this node's database of {} shards",
                self.webhook_floors.len()
            ))
        })?;
        Ok((Store::in_db(self.db.clone(), self.wal_clock.clone(), shard, &shared_cf_prefix(shard)), floor))
    }
}

/// Opens every shard of a single node's data dir, whatever its layout, and starts their writers.
/// The shared database (format 2) closes when the last of them is dropped.
pub fn open_node_shards(
    layout: &NodeLayout,
    resources: &SharedResources,
    config: &ShardConfig,
) -> Result<Vec<Shard>, ShardError> {
    let shard_count = layout.meta.shard_count;
    let node_id = layout.meta.node_id;
    match layout.storage() {
        StorageLayout::DatabasePerShard => (0..shard_count)
            .map(|i| Shard::open(&layout.shard_dir(i), ShardId(i), shard_count, node_id, resources, config))
            .collect(),
        StorageLayout::SharedDatabase => {
            let dir = layout.shared_db_dir();
            let db = NodeDb::open(&dir, shard_count, resources, config)?;
            Shard::open_all_in(&db, shard_count, node_id, config)
        }
    }
}
