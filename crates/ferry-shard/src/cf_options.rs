//! The options of a shard's column families: block cache, bloom filters, memtables (from the
//! node's [`SharedResources`]) and the compaction filters that enforce retention (idempotency
//! window, status and upstream-id retention, status events below the webhook cursor). Used for a
//! shard's own database and for a node's shared one (`crate::node_db`) alike.

use std::sync::atomic::Ordering;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, Options};

use crate::resources::SharedResources;
use crate::storage::{
    ALL_CFS, CF_IDEMPOTENCY, CF_OUTBOX, CF_STATUS, CF_UPSTREAM_IDS, CallbackRecord, EventRetention,
    IDEMPOTENCY_WINDOW_MS, IdempotencyRecord, StatusRecord, UpstreamIdRecord, decode_seq, decode_value, now_ms,
};

/// The column families of one shard, named `{prefix}{name}` for every name of [`ALL_CFS`], with
/// the shard's compaction filters. `prefix` is empty in a database of the shard's own, and
/// [`shared_cf_prefix`] in a node's shared database (`crate::node_db`).
pub(crate) fn shard_cf_descriptors(
    prefix: &str,
    resources: &SharedResources,
    status_retention_ms: i64,
    events: &EventRetention,
) -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS
        .iter()
        .map(|name| {
            let mut cf_opts = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&resources.block_cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            cf_opts.set_block_based_table_factory(&table);
            resources.apply_cf_options(&mut cf_opts);
            if *name == CF_IDEMPOTENCY {
                cf_opts.set_compaction_filter("ferry-idempotency-expiry", |_level, _key, value| {
                    match decode_value::<IdempotencyRecord>(0, value) {
                        Ok(r) if now_ms() - r.created_at_ms > IDEMPOTENCY_WINDOW_MS + 60_000 => {
                            rocksdb::CompactionDecision::Remove
                        }
                        _ => rocksdb::CompactionDecision::Keep,
                    }
                });
            }
            if *name == CF_STATUS {
                cf_opts.set_compaction_filter(
                    "ferry-status-retention",
                    move |_level, _key, value| match decode_value::<StatusRecord>(0, value) {
                        Ok(r) if now_ms() - r.updated_at_ms > status_retention_ms => {
                            rocksdb::CompactionDecision::Remove
                        }
                        _ => rocksdb::CompactionDecision::Keep,
                    },
                );
            }
            if *name == CF_UPSTREAM_IDS {
                cf_opts.set_compaction_filter("ferry-upstream-id-retention", move |_level, _key, value| {
                    match decode_value::<UpstreamIdRecord>(0, value) {
                        Ok(r) if now_ms() - r.at_ms > status_retention_ms => rocksdb::CompactionDecision::Remove,
                        _ => rocksdb::CompactionDecision::Keep,
                    }
                });
            }
            if *name == CF_OUTBOX {
                let EventRetention { retention_ms, webhook_floor } = events.clone();
                cf_opts.set_compaction_filter("ferry-status-event-retention", move |_level, key, value| {
                    let below_webhook = decode_seq(key).is_some_and(|seq| seq < webhook_floor.load(Ordering::Acquire));
                    match decode_value::<CallbackRecord>(0, value) {
                        Ok(r) if below_webhook && now_ms() - r.at_ms > retention_ms => {
                            rocksdb::CompactionDecision::Remove
                        }
                        _ => rocksdb::CompactionDecision::Keep,
                    }
                });
                // An outbox that receives few writes would otherwise keep old files uncompacted
                // (and so unfiltered) for a long time.
                cf_opts.set_periodic_compaction_seconds((retention_ms / 1000).clamp(600, 86_400) as u64);
            }
            ColumnFamilyDescriptor::new(format!("{prefix}{name}"), cf_opts)
        })
        .collect()
}

/// The prefix of shard `shard`'s column-family names in a node's shared database: `shard-07/`
/// (so `shard-07/queue`, `shard-07/status`, ...).
pub fn shared_cf_prefix(shard: u16) -> String {
    format!("shard-{shard:02}/")
}
