//! The writer's durability promise, checked inside the process (a SIGKILL test cannot check it: the
//! kernel keeps what was written but not synced, so every crash test passes with the sync gone).
//!
//! - Every group commit syncs the WAL: RocksDB's own count of WAL syncs (`rocksdb.dbstats`,
//!   "Cumulative WAL: … syncs") advances by one with each batch the writer commits.
//! - A batch of nothing but settles is written unsynced and answered only once a sync covers it:
//!   the next append's, or, when none comes within `shard.settle_sync_delay_ms`, a WAL sync of the
//!   writer's own (also while other lazy ops keep coming). Its status events reach no reader before
//!   that.
//! - A failed write fails every op of its batch: with the write failpoint on, no append of that
//!   batch is answered with an id, no settle of it is answered done, and nothing of it is readable;
//!   the next batch is written, and no sequence number of the failed one is reused.

use ferry_model::ShardId;
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{message, resources};
use ferry_shard::{Settlement, Shard, ShardConfig};

#[tokio::test]
async fn every_group_commit_syncs_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &ShardConfig::default()).unwrap();
    let (syncs_before, batches_before) = (shard.wal_syncs_for_test(), shard.stats().batches);

    // Five appends one after another: five batches.
    let mut seqs = Vec::new();
    for n in 1..=5 {
        seqs.push(shard.append_durably(vec![message(n)]).unwrap().await.unwrap()[0].seq);
    }
    // Eight appends and a settle submitted while the writer is paused: one group commit.
    let pause = shard.pause_writer_for_test();
    let appends: Vec<_> = (10..18).map(|n| shard.append_durably(vec![message(n)]).unwrap()).collect();
    let base = status_base(&shard.get_queued(seqs[0]).unwrap().unwrap());
    let settle =
        shard.settle_durably(vec![Settlement::Sent { seq: seqs[0], message: base, at_ms: 2_000 }], None).unwrap();
    drop(pause);
    for a in appends {
        a.await.unwrap();
    }
    settle.await.unwrap();

    let batches = shard.stats().batches - batches_before;
    let syncs = shard.wal_syncs_for_test() - syncs_before;
    assert_eq!(batches, 6, "five single appends and one group commit");
    assert_eq!(syncs, batches, "every committed batch synced the WAL once ({syncs} syncs for {batches} batches)");
    shard.close();
}

fn lazy_config(settle_sync_delay_ms: u64) -> ShardConfig {
    ShardConfig { settle_sync_delay_ms, ..ShardConfig::default() }
}

#[tokio::test]
async fn a_settle_alone_waits_for_the_next_append_to_make_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    // A minute: within this test, only an append can make the settle durable.
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &lazy_config(60_000)).unwrap();
    let first = shard.append_durably(vec![message(1)]).unwrap().await.unwrap()[0].seq;
    let base = status_base(&shard.get_queued(first).unwrap().unwrap());
    let (syncs_before, outbox_before) = (shard.wal_syncs_for_test(), shard.committed_next_outbox_seq());

    let settle =
        shard.settle_durably(vec![Settlement::Sent { seq: first, message: base, at_ms: 2_000 }], None).unwrap();
    tokio::pin!(settle);
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut settle).await;
    assert!(early.is_err(), "a settle written unsynced was answered before any sync: {early:?}");
    assert_eq!(shard.stats().unsynced_writes, 1, "the settle was written, unsynced");
    assert_eq!(shard.wal_syncs_for_test(), syncs_before, "nothing synced the WAL yet");
    assert_eq!(shard.committed_next_outbox_seq(), outbox_before, "its status event reached no reader yet");

    // The next append's synced write covers the settle written before it.
    shard.append_durably(vec![message(2)]).unwrap().await.unwrap();
    settle.await.unwrap();
    assert_eq!(shard.wal_syncs_for_test() - syncs_before, 1, "the append's sync made both durable");
    assert!(shard.committed_next_outbox_seq() > outbox_before, "the settle's status event is published");
    assert_eq!(shard.stats().settle_syncs, 0, "the writer needed no sync of its own");
    shard.close();
}

/// Opens a shard with `settle_sync_delay_ms`, appends a message, then settles it in a batch of its
/// own and waits for the answer. Returns the shard, its directory and RocksDB's count of WAL syncs
/// just before the settle.
async fn settle_alone(settle_sync_delay_ms: u64) -> (Shard, tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &resources(), &lazy_config(settle_sync_delay_ms)).unwrap();
    let first = shard.append_durably(vec![message(1)]).unwrap().await.unwrap()[0].seq;
    let base = status_base(&shard.get_queued(first).unwrap().unwrap());
    let syncs_before = shard.wal_syncs_for_test();
    shard
        .settle_durably(vec![Settlement::Sent { seq: first, message: base, at_ms: 2_000 }], None)
        .unwrap()
        .await
        .unwrap();
    (shard, dir, syncs_before)
}

#[tokio::test]
async fn a_settle_nothing_else_covers_is_synced_by_its_writer() {
    let (shard, _dir, syncs_before) = settle_alone(20).await;
    // The writer's own sync is `FlushWAL(true)` (RocksDB: "flushes and syncs the WAL"), which
    // `rocksdb.dbstats` does not count among its WAL syncs; the writer counts it.
    let stats = shard.stats();
    assert_eq!((stats.unsynced_writes, stats.settle_syncs), (1, 1), "written unsynced, then synced by the writer");
    assert_eq!(shard.wal_syncs_for_test(), syncs_before, "no synced write covered it: the writer's sync did");
    shard.close();

    // Off (`0`): a settle is one synced write, as an append is.
    let (shard, _dir, syncs_before) = settle_alone(0).await;
    assert_eq!(shard.stats().unsynced_writes, 0);
    assert_eq!(shard.wal_syncs_for_test() - syncs_before, 1);
    shard.close();
}

#[tokio::test]
async fn a_steady_stream_of_lazy_ops_does_not_put_off_a_settles_sync() {
    let dir = tempfile::tempdir().unwrap();
    let shard = std::sync::Arc::new(Shard::open(dir.path(), ShardId(0), 1, 9, &resources(), &lazy_config(20)).unwrap());
    let first = shard.append_durably(vec![message(1)]).unwrap().await.unwrap()[0].seq;
    let base = status_base(&shard.get_queued(first).unwrap().unwrap());
    // Another thread keeps the writer's mailbox non-empty with lazy ops (no appends anywhere).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (shard, stop) = (shard.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                shard.clear_intents(Vec::new());
            }
        })
    };
    let settle =
        shard.settle_durably(vec![Settlement::Sent { seq: first, message: base, at_ms: 2_000 }], None).unwrap();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(3), settle).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stream.join().unwrap();
    assert!(answered.is_ok(), "the settle waited past its 20 ms delay for as long as lazy ops kept coming");
    assert!(shard.stats().settle_syncs >= 1, "the writer synced it itself");
    shard.close();
}

#[tokio::test]
async fn a_failed_write_answers_no_op_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &ShardConfig::default()).unwrap();
    let first = shard.append_durably(vec![message(1)]).unwrap().await.unwrap()[0].seq;
    let base = status_base(&shard.get_queued(first).unwrap().unwrap());

    // One batch of four appends (two messages each) and a settle; its write fails.
    let pause = shard.pause_writer_for_test();
    shard.failpoint_fail_writes(1);
    let appends: Vec<_> = (2..6).map(|n| shard.append_durably(vec![message(n), message(n + 100)]).unwrap()).collect();
    let settle =
        shard.settle_durably(vec![Settlement::Sent { seq: first, message: base, at_ms: 2_000 }], None).unwrap();
    drop(pause);
    for a in appends {
        let answer = a.await;
        assert!(answer.is_err(), "an append of the failed batch was answered: {answer:?}");
    }
    assert!(settle.await.is_err(), "the settle of the failed batch was answered done");
    let queued: Vec<u64> = shard.scan_queue(0, 100).unwrap().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(queued, vec![first], "nothing of the failed batch is readable");
    assert!(shard.get_status(first).unwrap().is_none(), "the failed settle wrote no status");

    // The next batch is written; the failed batch's sequence numbers are not reused.
    let after = shard.append_durably(vec![message(9)]).unwrap().await.unwrap()[0].seq;
    assert!(after > first + 8, "seq {after} reuses one of the failed batch's (after {first})");
    assert_eq!(shard.scan_queue(0, 100).unwrap().len(), 2);
    shard.close();
}
