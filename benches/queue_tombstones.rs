//! Queue hygiene: what a FIFO on an LSM costs after many deletes at its head.
//!
//! Appends N messages to one shard (synced batches of 4,096), removes them all with the queue's
//! `SingleDelete` (as acks do, oldest first), appends 10 more, then times reading the next 10
//! queued messages two ways:
//! - `naive`: seek to the start of the queue and iterate (steps over every tombstone still in
//!   memtables and SSTs);
//! - `bounded`: `scan_queue_range(low_watermark, next_seq)`, as the delivery loop does
//!   (`iterate_lower_bound` at the low watermark: the deleted head is never visited).
//!
//! Then compacts the queue and times both again.
//!
//! Run: `cargo bench --bench queue_tombstones` (N = 10,000,000; `FERRY_BENCH_TOMBSTONES=N` to
//! change). Results are in benches/README.md.

use std::time::Instant;

use ferry_model::ShardId;
use ferry_shard::{NewMessage, QueueRecord, Shard, ShardConfig, SharedResources, StorageTuning};

fn record() -> NewMessage {
    NewMessage {
        record: QueueRecord {
            wa_id: "16315551234".into(),
            sender: "15550100000".into(),
            message_type: "text".into(),
            payload: br#"{"type":"text","text":{"body":"hello"}}"#.to_vec(),
            ..QueueRecord::default()
        },
        idempotency: None,
        held_template: None,
    }
}

fn time<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!("{what:<58} {:>10.3} ms", start.elapsed().as_secs_f64() * 1e3);
    out
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n: u64 = std::env::var("FERRY_BENCH_TOMBSTONES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resources = SharedResources::new(&StorageTuning::default()).unwrap();
    let config = ShardConfig { queue_capacity: 1 << 20, ..ShardConfig::default() };
    let shard = Shard::open(dir.path(), ShardId(0), 1, 7, &resources, &config).unwrap();

    const BATCH: u64 = 4096;
    time(&format!("append {n} messages (synced batches of {BATCH})"), || {
        let mut done = 0;
        while done < n {
            let k = BATCH.min(n - done);
            rt.block_on(shard.append_durably((0..k).map(|_| record()).collect()).unwrap()).unwrap();
            done += k;
        }
    });
    time(&format!("remove {n} messages (SingleDelete, oldest first)"), || {
        let mut seq = 1;
        while seq <= n {
            let end = (seq + BATCH).min(n + 1);
            rt.block_on(shard.remove_durably((seq..end).collect()).unwrap()).unwrap();
            seq = end;
        }
    });
    rt.block_on(shard.append_durably((0..10).map(|_| record()).collect()).unwrap()).unwrap();
    let next = shard.committed_next_seq();

    for phase in ["before compaction", "after compaction"] {
        if phase == "after compaction" {
            time("compact the queue column family", || shard.compact_queue());
        }
        let naive = time(&format!("naive: seek to start, read 10 ({phase})"), || shard.scan_queue(0, 10).unwrap());
        let bounded = time(&format!("bounded: scan [low watermark, next) read 10 ({phase})"), || {
            shard.scan_queue_range(n + 1, next, 10).unwrap()
        });
        assert_eq!(naive.len(), 10);
        assert_eq!(
            naive.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            bounded.iter().map(|(s, _)| *s).collect::<Vec<_>>()
        );
    }
    shard.close();
}
