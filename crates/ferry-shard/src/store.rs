//! An open shard database ([`Store`]): the column families of the format in [`crate::storage`],
//! their reads and scans, the writer's batch writes (synced or not, see [`crate::wal_clock`]),
//! failpoints and RocksDB's size figures.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rocksdb::{DB, Options, ReadOptions};

use crate::ShardError;
use crate::cf_options::shard_cf_descriptors;
use crate::resources::SharedResources;
use crate::storage::{
    ALL_CFS, CF_CONTACTS, CF_DISPATCHED, CF_HELD, CF_IDEMPOTENCY, CF_IDEMPOTENCY_INTENTS, CF_META, CF_OUTBOX, CF_QUEUE,
    CF_RELEASED, CF_SESSIONS, CF_STATUS, CF_UPSTREAM_IDS, CallbackRecord, ContactRecord, DispatchRecord,
    EventRetention, HeldRecord, IDEMPOTENCY_WINDOW_MS, IdempotencyIntent, IdempotencyRecord, QueueRecord, StatusRecord,
    UPSTREAM_ID_OUTBOUND, UpstreamIdRecord, VALUE_VERSION, decode_seq, decode_value, queue_key, session_key,
    upstream_id_key,
};
use crate::wal_clock::WalClock;

/// RocksDB's size figures of one shard ([`Store::disk_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// `rocksdb.total-sst-files-size`: bytes of all SST files (live and obsolete not yet deleted).
    pub sst_bytes: u64,
    /// `rocksdb.estimate-pending-compaction-bytes`: bytes compaction would rewrite to bring every
    /// level under its target size.
    pub pending_compaction_bytes: u64,
}

/// An open shard database. Reads may come from any thread; writes come only from the shard's
/// writer thread.
pub struct Store {
    pub(crate) shard: u16,
    /// The shard's own database, or the node's shared one (`crate::node_db`).
    pub(crate) db: Arc<DB>,
    /// Each column family's name in `db` (see [`shard_cf_descriptors`]).
    cf_names: Vec<(&'static str, String)>,
    /// Which of `db`'s unsynced writer batches are durable (shared by every store of `db`).
    wal_clock: Arc<WalClock>,
    /// Failpoint for tests: reads of this seq's status record fail (`u64::MAX`: none do).
    pub(crate) fail_status_read: std::sync::atomic::AtomicU64,
    /// Failpoint for tests: this many of the next outbox scans fail.
    pub(crate) fail_outbox_scans: std::sync::atomic::AtomicU64,
    /// Failpoint for tests: this many of the writer's next batch writes fail (nothing written).
    pub(crate) fail_writes: std::sync::atomic::AtomicU64,
    /// Failpoint for tests: this many of the next settle ops that record a receipt or an inbound
    /// message fail alone (nothing of them written; the rest of their batch is).
    pub(crate) fail_event_settles: std::sync::atomic::AtomicU64,
}

/// A real `rocksdb::Error` for failpoints (its constructor is private): opening a database that does
/// not exist without `create_if_missing`.
fn injected_rocks_error() -> Option<rocksdb::Error> {
    let missing = std::env::temp_dir().join("ferry-failpoint-no-such-db");
    DB::open(&Options::default(), missing).err()
}

impl Store {
    /// Opens (creating if needed) the shard database in `dir` with the node's shared resources:
    /// a database of the shard's own, with its own WAL (the layout of a replicated node, and of a
    /// single node's data dir of format 1; see `crate::layout`).
    pub fn open(
        dir: &Path,
        shard: u16,
        resources: &SharedResources,
        status_retention_ms: i64,
        events: EventRetention,
    ) -> Result<Store, ShardError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        resources.apply_db_options(&mut db_opts, 1);
        let cfs = shard_cf_descriptors("", resources, status_retention_ms, &events);
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(|source| ShardError::Rocks { shard, source })?;
        Ok(Store::in_db(Arc::new(db), Arc::default(), shard, ""))
    }

    /// The store of shard `shard` in `db`, whose column families for it are named with `prefix`
    /// (they must exist: created when `db` was opened). `wal_clock` is `db`'s, shared by every
    /// store in it.
    pub(crate) fn in_db(db: Arc<DB>, wal_clock: Arc<WalClock>, shard: u16, prefix: &str) -> Store {
        Store {
            shard,
            db,
            cf_names: ALL_CFS.iter().map(|name| (*name, format!("{prefix}{name}"))).collect(),
            wal_clock,
            fail_status_read: std::sync::atomic::AtomicU64::new(u64::MAX),
            fail_outbox_scans: std::sync::atomic::AtomicU64::new(0),
            fail_writes: std::sync::atomic::AtomicU64::new(0),
            fail_event_settles: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the database is the shard's own (not a node's shared one): what a Raft snapshot,
    /// a checkpoint of the whole database, needs.
    pub(crate) fn owns_database(&self) -> bool {
        self.cf_names.first().is_some_and(|(name, full)| *name == full.as_str())
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        let full = self.cf_names.iter().find(|(n, _)| *n == name).map_or(name, |(_, full)| full.as_str());
        self.db.cf_handle(full).expect("column family created at open")
    }

    /// For failpoints: a real `rocksdb::Error` (its constructor is private), from opening a
    /// database that does not exist without `create_if_missing`.
    pub(crate) fn injected_error(&self) -> ShardError {
        match injected_rocks_error() {
            Some(source) => self.rocks(source),
            None => ShardError::Layout("failpoint: the missing database exists".into()),
        }
    }

    /// A batch write: `db.write_opt`, unless the write failpoint is on (then nothing is written
    /// and the write fails as RocksDB's would).
    pub(crate) fn write_batch(
        &self,
        batch: rocksdb::WriteBatch,
        opts: &rocksdb::WriteOptions,
    ) -> Result<(), rocksdb::Error> {
        if let Some(e) = self.take_write_failure() {
            return Err(e);
        }
        self.db.write_opt(batch, opts)
    }

    /// Whether the write failpoint trips now (counts the hit): the error the write fails with.
    pub(crate) fn take_write_failure(&self) -> Option<rocksdb::Error> {
        if self.fail_writes.load(Ordering::Relaxed) > 0
            && self.fail_writes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
        {
            return injected_rocks_error();
        }
        None
    }

    /// The writer's synced batch write: durable when it returns `Ok`, and so is every unsynced
    /// write of the database that returned before it started (see [`crate::wal_clock`]).
    pub(crate) fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<(), rocksdb::Error> {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        let covers = self.wal_clock.sync_starts();
        self.write_batch(batch, &sync)?;
        self.wal_clock.synced(covers);
        Ok(())
    }

    /// The writer's unsynced batch write: visible to reads at once, durable once
    /// [`Store::is_durable`] says so of the ticket it returns.
    pub(crate) fn write_unsynced(&self, batch: rocksdb::WriteBatch) -> Result<u64, rocksdb::Error> {
        self.write_batch(batch, &rocksdb::WriteOptions::default())?;
        Ok(self.wal_clock.written())
    }

    /// Syncs the WAL: every unsynced write that returned before this call is durable after it.
    pub(crate) fn sync_wal(&self) -> Result<(), rocksdb::Error> {
        let covers = self.wal_clock.sync_starts();
        self.db.flush_wal(true)?;
        self.wal_clock.synced(covers);
        Ok(())
    }

    /// Gets a token whenever a sync of the database covers more unsynced writes.
    pub(crate) fn watch_syncs(&self) -> crossbeam_channel::Receiver<()> {
        self.wal_clock.watch()
    }

    /// Whether the unsynced write of `ticket` ([`Store::write_unsynced`]) is durable.
    pub(crate) fn is_durable(&self, ticket: u64) -> bool {
        self.wal_clock.is_durable(ticket)
    }

    /// Whether the event-settle failpoint trips now (counts the hit).
    pub(crate) fn take_event_settle_failure(&self) -> bool {
        self.fail_event_settles.load(Ordering::Relaxed) > 0
            && self.fail_event_settles.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    /// WAL syncs since the database was opened, as RocksDB counts them (`rocksdb.dbstats`,
    /// "Cumulative WAL: N writes, M syncs, …"; counts below 10,000 are printed exactly). In a
    /// node's shared database, the syncs of every shard.
    pub(crate) fn wal_syncs(&self) -> Option<u64> {
        let stats = self.db.property_value("rocksdb.dbstats").ok()??;
        let line = stats.lines().find_map(|l| l.trim().strip_prefix("Cumulative WAL:"))?;
        let (_, after_writes) = line.split_once("writes,")?;
        after_writes.trim_start().split(' ').next()?.parse().ok()
    }

    fn rocks(&self, source: rocksdb::Error) -> ShardError {
        ShardError::Rocks { shard: self.shard, source }
    }

    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ShardError> {
        self.db.get_cf(self.cf(CF_META), key).map_err(|e| self.rocks(e))
    }

    pub fn get_meta_u64(&self, key: &[u8]) -> Result<Option<u64>, ShardError> {
        match self.get_meta(key)? {
            None => Ok(None),
            Some(v) => v.as_slice().try_into().map(|b| Some(u64::from_be_bytes(b))).map_err(|_| ShardError::Corrupt {
                shard: self.shard,
                what: format!("meta {} is not a u64", String::from_utf8_lossy(key)),
            }),
        }
    }

    pub fn get_queued(&self, seq: u64) -> Result<Option<QueueRecord>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_QUEUE), queue_key(seq)).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode_value(self.shard, &v).map(Some),
        }
    }

    /// Whether `seq` has a queue key (without decoding its record).
    pub fn is_queued(&self, seq: u64) -> Result<bool, ShardError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_QUEUE), queue_key(seq)).map_err(|e| self.rocks(e))?.is_some())
    }

    pub fn get_held(&self, seq: u64) -> Result<Option<HeldRecord>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_HELD), queue_key(seq)).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode_value(self.shard, &v).map(Some),
        }
    }

    /// Up to `limit` held messages from sequence `from`, in seq (= acceptance) order.
    pub fn scan_held(&self, from: u64, limit: usize) -> Result<Vec<(u64, HeldRecord)>, ShardError> {
        self.scan_bounded(CF_HELD, from, u64::MAX, limit)
    }

    pub fn get_status(&self, seq: u64) -> Result<Option<StatusRecord>, ShardError> {
        if self.fail_status_read.load(std::sync::atomic::Ordering::Relaxed) == seq {
            return Err(self.injected_error());
        }
        match self.db.get_pinned_cf(self.cf(CF_STATUS), queue_key(seq)).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode_value(self.shard, &v).map(Some),
        }
    }

    /// The stored snapshot of the session from `sender` to `recipient` (without the value version).
    pub fn get_session(&self, sender: &str, recipient: &str) -> Result<Option<Vec<u8>>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_SESSIONS), session_key(sender, recipient)).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => match v.split_first() {
                Some((&VALUE_VERSION, rest)) => Ok(Some(rest.to_vec())),
                _ => {
                    Err(ShardError::Corrupt { shard: self.shard, what: "session value has an unknown version".into() })
                }
            },
        }
    }

    /// The conversation record of `user` with `business`, if the user ever wrote.
    pub fn get_contact(&self, business: &str, user: &str) -> Result<Option<ContactRecord>, ShardError> {
        self.get_contact_by_key(&session_key(business, user))
    }

    /// The record of an upstream id (`upstream_ids`), if any.
    pub fn get_upstream_id(&self, prefix: &[u8], id: &str) -> Result<Option<UpstreamIdRecord>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_UPSTREAM_IDS), upstream_id_key(prefix, id)).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode_value(self.shard, &v).map(Some),
        }
    }

    /// The seq of the outbound message the upstream knows as `upstream_id` (its `sent` status
    /// recorded it), if any.
    pub fn seq_for_upstream_id(&self, upstream_id: &str) -> Result<Option<u64>, ShardError> {
        Ok(self.get_upstream_id(UPSTREAM_ID_OUTBOUND, upstream_id)?.map(|r| r.seq).filter(|s| *s > 0))
    }

    pub(crate) fn get_contact_by_key(&self, key: &[u8]) -> Result<Option<ContactRecord>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_CONTACTS), key).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode_value(self.shard, &v).map(Some),
        }
    }

    /// The live (younger than 24 h) idempotency record for `key`, if any.
    pub fn get_idempotency(&self, key: &[u8], now_ms: i64) -> Result<Option<IdempotencyRecord>, ShardError> {
        match self.db.get_pinned_cf(self.cf(CF_IDEMPOTENCY), key).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => {
                let r: IdempotencyRecord = decode_value(self.shard, &v)?;
                Ok((now_ms - r.created_at_ms <= IDEMPOTENCY_WINDOW_MS).then_some(r))
            }
        }
    }

    /// The keys of `released`: released held messages still in the queue.
    pub fn released_seqs(&self) -> Result<std::collections::BTreeSet<u64>, ShardError> {
        let mut out = std::collections::BTreeSet::new();
        for item in self.db.iterator_cf(self.cf(CF_RELEASED), rocksdb::IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.rocks(e))?;
            out.insert(
                decode_seq(&k).ok_or_else(|| ShardError::Corrupt {
                    shard: self.shard,
                    what: "released key is not a u64".into(),
                })?,
            );
        }
        Ok(out)
    }

    /// Test support: every key and value of a column family, in key order.
    #[doc(hidden)]
    pub fn dump_cf_for_test(&self, cf: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("a readable column family"))
            .collect()
    }

    /// Every pending idempotency intent, oldest first.
    pub fn idempotency_intents(&self) -> Result<Vec<(u64, IdempotencyIntent)>, ShardError> {
        self.scan_seq_keyed(CF_IDEMPOTENCY_INTENTS, ReadOptions::default(), 0, usize::MAX)
    }

    /// Up to `limit` queued messages with sequence in `[from, until)`, in queue order. Both bounds
    /// are given to RocksDB (`iterate_lower_bound`/`iterate_upper_bound`), so the iterator never
    /// looks at tombstones outside the range.
    /// Every dispatch mark (see "Dispatch marks"), in seq order.
    pub fn dispatch_marks(&self) -> Result<Vec<(u64, DispatchRecord)>, ShardError> {
        self.scan_bounded(CF_DISPATCHED, 0, u64::MAX, usize::MAX)
    }

    pub fn scan_queue_range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        self.scan_bounded(CF_QUEUE, from, until, limit)
    }

    /// Up to `limit` queued messages starting at sequence `from`, in queue order.
    pub fn scan_queue(&self, from: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        self.scan_seq_keyed(CF_QUEUE, opts, from, limit)
    }

    /// Up to `limit` status events with sequence in `[from, until)`, in order.
    pub fn scan_outbox(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, CallbackRecord)>, ShardError> {
        use std::sync::atomic::Ordering;
        if self.fail_outbox_scans.load(Ordering::Relaxed) > 0
            && self.fail_outbox_scans.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
        {
            return Err(self.injected_error());
        }
        self.scan_bounded(CF_OUTBOX, from, until, limit)
    }

    /// A scan of a sequence-keyed column family with both iterate bounds set to `[from, until)`.
    fn scan_bounded<M: prost::Message + Default>(
        &self,
        cf: &str,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, M)>, ShardError> {
        if from >= until {
            return Ok(Vec::new());
        }
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        opts.set_iterate_lower_bound(queue_key(from).to_vec());
        opts.set_iterate_upper_bound(queue_key(until).to_vec());
        self.scan_seq_keyed(cf, opts, from, limit)
    }

    /// Up to `limit` `(seq, value)` pairs of a column family keyed by u64 big-endian, from `from`.
    fn scan_seq_keyed<M: prost::Message + Default>(
        &self,
        cf: &str,
        opts: ReadOptions,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, M)>, ShardError> {
        let iter = self.db.iterator_cf_opt(
            self.cf(cf),
            opts,
            rocksdb::IteratorMode::From(&queue_key(from), rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let seq = decode_seq(&k)
                .ok_or_else(|| ShardError::Corrupt { shard: self.shard, what: format!("{cf} key is not a u64") })?;
            out.push((seq, decode_value(self.shard, &v)?));
        }
        Ok(out)
    }

    pub fn compact_outbox(&self) {
        self.db.compact_range_cf(self.cf(CF_OUTBOX), None::<&[u8]>, None::<&[u8]>);
    }

    pub fn compact_queue(&self) {
        self.db.compact_range_cf(self.cf(CF_QUEUE), None::<&[u8]>, None::<&[u8]>);
    }

    /// Approximate number of held messages (paced templates; RocksDB estimate).
    pub fn estimated_held_len(&self) -> u64 {
        self.db.property_int_value_cf(self.cf(CF_HELD), "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
    }

    /// Approximate number of live keys in the queue (RocksDB estimate).
    pub fn estimated_queue_len(&self) -> u64 {
        self.db.property_int_value_cf(self.cf(CF_QUEUE), "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
    }

    /// RocksDB's size figures, summed over the shard's column families (a property read each;
    /// cheap enough for a metrics scrape, not for a hot path).
    pub fn disk_usage(&self) -> DiskUsage {
        let sum = |property: &str| -> u64 {
            ALL_CFS
                .iter()
                .map(|name| self.db.property_int_value_cf(self.cf(name), property).ok().flatten().unwrap_or(0))
                .sum()
        };
        DiskUsage {
            sst_bytes: sum("rocksdb.total-sst-files-size"),
            pending_compaction_bytes: sum("rocksdb.estimate-pending-compaction-bytes"),
        }
    }
}
