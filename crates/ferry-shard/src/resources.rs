//! Memory and threads shared by every shard of a node.
//!
//! RocksDB's per-instance defaults (64 MB write buffers per column family, a block cache per
//! instance, background jobs per instance) multiply with 32 shards. A node therefore builds one
//! [`SharedResources`] and every shard's database uses it: one LRU block cache, one write-buffer
//! manager that caps all memtables of all shards (charged to that same cache, so memtables plus
//! cached blocks stay under one budget), and one RocksDB `Env` whose flush/compaction thread pools
//! serve all shards. Memory is then bounded whatever the shard count.

use rocksdb::{Cache, Env, Options, WriteBufferManager};
use serde::{Deserialize, Serialize};

/// Storage knobs of a node (config keys under `[storage]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTuning {
    /// One block cache shared by all shards, in MiB; memtables are charged to it too.
    pub block_cache_mib: usize,
    /// Cap on all memtables of all shards, in MiB (enforced by one write-buffer manager).
    pub write_buffer_total_mib: usize,
    /// Memtable size of one column family, in MiB.
    pub write_buffer_mib: usize,
    /// Threads flushing memtables (shared by all shards).
    pub flush_threads: i32,
    /// Threads compacting (shared by all shards).
    pub compaction_threads: i32,
    /// Open SST files per shard (-1 = unlimited).
    pub max_open_files_per_shard: i32,
    /// Whether a **new** single-node data dir keeps every shard in one RocksDB (one column-family
    /// set per shard, one WAL), so one WAL sync makes the group commits of all shards durable
    /// (format 2 of the data dir, see `crate::layout`). `false`: one RocksDB per shard, each with
    /// its own WAL (format 1). A data dir keeps the layout it was created with; a replicated node
    /// always has one database per shard (a Raft snapshot is a checkpoint of one).
    pub shared_wal: bool,
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning {
            block_cache_mib: 256,
            write_buffer_total_mib: 128,
            write_buffer_mib: 8,
            flush_threads: 1,
            compaction_threads: 2,
            max_open_files_per_shard: 256,
            shared_wal: true,
        }
    }
}

impl StorageTuning {
    pub fn validate(&self) -> Result<(), String> {
        if self.block_cache_mib < 8 {
            return Err(format!("storage.block_cache_mib is {}: expected at least 8", self.block_cache_mib));
        }
        if self.write_buffer_mib == 0 || self.write_buffer_total_mib < self.write_buffer_mib {
            return Err(format!(
                "storage.write_buffer_mib ({}) must be positive and at most storage.write_buffer_total_mib ({})",
                self.write_buffer_mib, self.write_buffer_total_mib
            ));
        }
        if self.flush_threads < 1 || self.compaction_threads < 1 {
            return Err("storage.flush_threads and storage.compaction_threads must be at least 1".into());
        }
        Ok(())
    }
}

/// The cache, write-buffer manager and thread pools of one node. Clone-cheap handles.
pub struct SharedResources {
    pub(crate) block_cache: Cache,
    write_buffer_manager: WriteBufferManager,
    env: Env,
    tuning: StorageTuning,
}

const MIB: usize = 1024 * 1024;

impl SharedResources {
    pub fn new(tuning: &StorageTuning) -> Result<Self, rocksdb::Error> {
        let block_cache = Cache::new_lru_cache(tuning.block_cache_mib * MIB);
        let write_buffer_manager = WriteBufferManager::new_write_buffer_manager_with_cache(
            tuning.write_buffer_total_mib * MIB,
            // Stall writers rather than exceed the budget when flushes fall behind.
            true,
            block_cache.clone(),
        );
        let mut env = Env::new()?;
        env.set_high_priority_background_threads(tuning.flush_threads);
        env.set_background_threads(tuning.compaction_threads);
        Ok(SharedResources { block_cache, write_buffer_manager, env, tuning: tuning.clone() })
    }

    /// Options of a database holding `shards` shards (1: a shard's own database; the shard count:
    /// a node's shared database, `crate::node_db`).
    pub(crate) fn apply_db_options(&self, opts: &mut Options, shards: u16) {
        opts.set_env(&self.env);
        opts.set_write_buffer_manager(&self.write_buffer_manager);
        opts.set_max_background_jobs(self.tuning.flush_threads + self.tuning.compaction_threads);
        let open_files = self.tuning.max_open_files_per_shard;
        opts.set_max_open_files(if open_files < 0 { -1 } else { open_files.saturating_mul(i32::from(shards)) });
        // Several column families share one WAL: cap it so a quiet CF cannot pin old WAL files.
        // A shared database has more of them (and more writes per WAL file): a bigger cap, up to
        // 256 MiB, so quiet families are not flushed into tiny files all the time.
        opts.set_max_total_wal_size(64 * MIB as u64 * u64::from(shards.clamp(1, 4)));
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(8 * MIB);
        opts.set_enable_pipelined_write(true);
    }

    pub(crate) fn apply_cf_options(&self, opts: &mut Options) {
        opts.set_write_buffer_size(self.tuning.write_buffer_mib * MIB);
        opts.set_max_write_buffer_number(3);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_level_compaction_dynamic_level_bytes(true);
    }

    /// Bytes the shared block cache holds now (blocks plus charged memtables).
    pub fn block_cache_usage(&self) -> usize {
        self.block_cache.get_usage()
    }
}
