//! The writer's durability promise, checked inside the process (a SIGKILL test cannot check it: the
//! kernel keeps what was written but not synced, so every crash test passes with the sync gone).
//!
//! - Every group commit syncs the WAL: RocksDB's own count of WAL syncs (`rocksdb.dbstats`,
//!   "Cumulative WAL: … syncs") advances by one with each batch the writer commits.
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
