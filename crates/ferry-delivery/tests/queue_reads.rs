//! What the delivery loop's queue reads cost on its tokio worker (issue 15 §1, "blocking calls on
//! async workers"): `load_from_queue` and the window refills call `Shard::scan_queue_range` (at
//! most 1,024 records a scan, 4,096 a turn) and `Shard::get_queued` (released held messages)
//! inline. A measurement, not a check: ignored by default; run it with
//! `cargo test --release --workspace --locked --tests -- --ignored --nocapture queue_reads_cost`.
//! Figures: `ARCHITECTURE.md`, "Blocking calls".

use std::time::{Duration, Instant};

use ferry_model::ShardId;
use ferry_shard::{NewMessage, QueueRecord, Shard, ShardConfig, SharedResources, StorageTuning};

fn message(i: u64) -> NewMessage {
    NewMessage {
        record: QueueRecord {
            wa_id: format!("1631555{:04}", i % 1000),
            sender: "15550100000".into(),
            message_type: "text".into(),
            // A typical text message's JSON (about 200 bytes).
            payload: format!(r#"{{"type":"text","text":{{"body":"{}"}}}}"#, "x".repeat(160)).into_bytes(),
            ..QueueRecord::default()
        },
        idempotency: None,
        held_template: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what:<44} n={:<5} p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        samples.len(),
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
        us(*samples.last().unwrap())
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn queue_reads_cost() {
    const N: u64 = 200_000;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = std::env::temp_dir().join(format!("ferry-queue-reads-cost-{}", std::process::id()));
    let resources = SharedResources::new(&StorageTuning::default()).unwrap();
    let config = ShardConfig { queue_capacity: 1 << 20, ..ShardConfig::default() };
    let shard = Shard::open(&dir, ShardId(0), 1, 7, &resources, &config).unwrap();
    let mut done = 0;
    while done < N {
        rt.block_on(shard.append_durably((done..done + 4096).map(message).collect()).unwrap()).unwrap();
        done += 4096;
    }
    let until = shard.committed_next_seq();
    // Fresh (memtable and the first flushed files), as right after a burst of sends.
    let mut scans = Vec::new();
    let mut from = 1;
    while from < until {
        let start = Instant::now();
        let chunk = shard.scan_queue_range(from, until, 1024).unwrap();
        scans.push(start.elapsed());
        from = chunk.last().map_or(until, |(seq, _)| seq + 1);
    }
    report("scan_queue_range, 1,024 records", scans);
    let mut points = Vec::new();
    for i in 0..10_000u64 {
        let seq = 1 + (i * 7919) % (until - 1);
        let start = Instant::now();
        assert!(shard.get_queued(seq).unwrap().is_some());
        points.push(start.elapsed());
    }
    report("get_queued (point read)", points);
    drop(shard);
    let _ = std::fs::remove_dir_all(&dir);
}
