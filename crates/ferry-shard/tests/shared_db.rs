//! A single node's shards in one RocksDB (data dir format 2, `node_db`): each shard keeps its own
//! data, sequence numbers and status across a reopen, every group commit still syncs the (shared)
//! WAL before it answers, a settle written unsynced by one shard is made durable by another shard's
//! append (the WAL they share), and a format-1 data dir still opens as one database per shard.
//! One writer thread serves every shard of the database: ops of several shards waiting together
//! are one write with one sync, and closing or crashing one shard leaves the others writing.

use ferry_shard::settle::status_base;
use ferry_shard::test_support::{message, resources};
use ferry_shard::{NodeLayout, Settlement, Shard, ShardConfig, StorageLayout, open_node_shards};

fn open(dir: &std::path::Path, shards: u16, create_as: StorageLayout) -> Vec<Shard> {
    let layout = NodeLayout::open_or_create(dir, shards, create_as).unwrap();
    open_node_shards(&layout, &resources(), &ShardConfig::default()).unwrap()
}

async fn append(shard: &Shard, n: u32) -> u64 {
    shard.append_durably(vec![message(n)]).unwrap().await.unwrap()[0].seq
}

#[tokio::test]
async fn shards_in_one_database_keep_their_own_data_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 3, StorageLayout::SharedDatabase);
    assert!(dir.path().join("shards").is_dir(), "format 2: one database under shards/");
    assert!(!dir.path().join("shard-00").exists(), "format 2 has no per-shard database");

    // Shard 0 gets three messages, shard 2 one, shard 1 none: every shard numbers its own from 1.
    let zero: Vec<u64> = [append(&shards[0], 1).await, append(&shards[0], 2).await, append(&shards[0], 3).await].into();
    let two = append(&shards[2], 4).await;
    assert_eq!(zero, vec![1, 2, 3]);
    assert_eq!(two, 1, "shard 2's first seq is its own, not the next of the shared database");
    // Shard 0 settles its first message: it leaves shard 0's queue only.
    let base = status_base(&shards[0].get_queued(1).unwrap().unwrap());
    shards[0]
        .settle_durably(vec![Settlement::Sent { seq: 1, message: base, at_ms: 2_000 }], None)
        .unwrap()
        .await
        .unwrap();
    for shard in &shards {
        shard.close();
    }
    drop(shards);

    let shards = open(dir.path(), 3, StorageLayout::DatabasePerShard);
    let next: Vec<u64> = shards.iter().map(|s| s.committed_next_seq()).collect();
    assert_eq!(next, vec![4, 1, 2], "each shard's next seq survives the reopen");
    assert!(shards[0].get_queued(1).unwrap().is_none(), "settled: out of shard 0's queue");
    assert_eq!(shards[0].get_status(1).unwrap().map(|s| s.wa_id), Some(message(1).record.wa_id));
    assert_eq!(shards[0].get_queued(2).unwrap().map(|r| r.wa_id), Some(message(2).record.wa_id));
    assert_eq!(shards[2].get_queued(1).unwrap().map(|r| r.wa_id), Some(message(4).record.wa_id));
    assert!(shards[2].get_status(1).unwrap().is_none(), "shard 0's status is not shard 2's");
    assert!(shards[1].get_queued(1).unwrap().is_none(), "shard 1 was never written");
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn every_group_commit_in_a_shared_database_syncs_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 2, StorageLayout::SharedDatabase);
    let syncs_before = shards[0].wal_syncs_for_test();
    let batches_before: u64 = shards.iter().map(|s| s.stats().batches).sum();
    // One commit at a time, alternating shards: none can share another's sync.
    for n in 0..6 {
        append(&shards[(n % 2) as usize], n).await;
    }
    let batches = shards.iter().map(|s| s.stats().batches).sum::<u64>() - batches_before;
    let syncs = shards[1].wal_syncs_for_test() - syncs_before;
    assert_eq!(batches, 6);
    assert_eq!(
        syncs, batches,
        "each commit synced the shared WAL before it answered ({syncs} syncs, {batches} batches)"
    );
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn another_shards_append_makes_a_settle_durable() {
    let dir = tempfile::tempdir().unwrap();
    let layout = NodeLayout::open_or_create(dir.path(), 2, StorageLayout::SharedDatabase).unwrap();
    // A minute: within this test, no writer syncs a settle by itself.
    let config = ShardConfig { settle_sync_delay_ms: 60_000, ..ShardConfig::default() };
    let shards = open_node_shards(&layout, &resources(), &config).unwrap();
    let first = append(&shards[0], 1).await;
    let base = status_base(&shards[0].get_queued(first).unwrap().unwrap());
    let settle =
        shards[0].settle_durably(vec![Settlement::Sent { seq: first, message: base, at_ms: 2_000 }], None).unwrap();
    tokio::pin!(settle);
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut settle).await;
    assert!(early.is_err(), "answered before any sync: {early:?}");

    // Shard 1's append syncs the shared WAL, which holds shard 0's settle: shard 0's writer is
    // woken by that sync and answers.
    append(&shards[1], 2).await;
    let answered = tokio::time::timeout(std::time::Duration::from_secs(5), &mut settle).await;
    assert!(answered.is_ok(), "shard 1's synced append did not make shard 0's settle durable");
    assert_eq!(shards[0].stats().settle_syncs, 0, "shard 0's writer synced nothing itself");
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn appends_of_several_shards_waiting_together_are_one_write_with_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 4, StorageLayout::SharedDatabase);
    let syncs_before = shards[0].wal_syncs_for_test();
    let pause = shards[0].pause_writer_for_test();
    let appends: Vec<_> = shards
        .iter()
        .zip(1..)
        .map(|(shard, n)| tokio::spawn(shard.append_durably(vec![message(n)]).unwrap()))
        .collect();
    // Pausing shard 0's writer pauses every shard's: they have one.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!appends.iter().any(|a| a.is_finished()), "an append was answered while the node's writer was paused");
    drop(pause);
    for (append, shard) in appends.into_iter().zip(&shards) {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), append).await.expect("answered");
        assert_eq!(outcome.unwrap().unwrap()[0].seq, 1, "shard {} numbers its own messages", shard.id());
    }
    let syncs = shards[0].wal_syncs_for_test() - syncs_before;
    assert_eq!(syncs, 1, "four shards' appends taken together: one write, one WAL sync ({syncs} syncs)");
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn closing_or_crashing_one_shard_leaves_the_others_writing() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 3, StorageLayout::SharedDatabase);
    append(&shards[0], 1).await;
    shards[0].close();
    let refused = shards[0].append_durably(vec![message(2)]).err();
    assert!(matches!(refused, Some(ferry_shard::ShardError::Stopped(0))), "{refused:?}");
    assert_eq!(append(&shards[1], 3).await, 1, "shard 1 still writes after shard 0 closed");
    shards[1].crash_for_test();
    assert_eq!(append(&shards[2], 4).await, 1, "shard 2 still writes after shard 1 crashed");
    assert_eq!(append(&shards[2], 5).await, 2);
    for shard in &shards {
        shard.close();
    }
    drop(shards);

    let shards = open(dir.path(), 3, StorageLayout::SharedDatabase);
    let next: Vec<u64> = shards.iter().map(|s| s.committed_next_seq()).collect();
    assert_eq!(next, vec![2, 2, 3], "what each shard committed before the close or crash is there");
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn a_data_dir_of_format_1_still_opens_one_database_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 2, StorageLayout::DatabasePerShard);
    assert!(dir.path().join("shard-00").is_dir() && dir.path().join("shard-01").is_dir());
    append(&shards[1], 7).await;
    for shard in &shards {
        shard.close();
    }
    drop(shards);

    // Opened by a node that would create format 2: the data dir keeps format 1.
    let shards = open(dir.path(), 2, StorageLayout::SharedDatabase);
    assert!(!dir.path().join("shards").exists(), "no shared database was created beside the shard dirs");
    assert_eq!(shards[1].get_queued(1).unwrap().map(|r| r.wa_id), Some(message(7).record.wa_id));
    for shard in &shards {
        shard.close();
    }
}

#[tokio::test]
async fn a_dead_writer_fails_every_write_at_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 2, StorageLayout::SharedDatabase);
    assert_eq!(append(&shards[1], 1).await, 1);
    assert!(!shards[0].writer_stopped() && !shards[1].writer_stopped());
    shards[0].panic_writer_for_test();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !shards[1].writer_stopped() {
        assert!(std::time::Instant::now() < deadline, "the writer's death was never noticed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(shards[0].writer_stopped(), "one writer for both shards: both report it");
    // Nothing hangs: a write is refused at once, or its answer is `Stopped`.
    let outcome = match shards[1].append_durably(vec![message(2)]) {
        Err(e) => Err(e),
        Ok(answer) => tokio::time::timeout(std::time::Duration::from_secs(5), answer).await.expect("answered"),
    };
    assert!(matches!(outcome, Err(ferry_shard::ShardError::Stopped(1))), "{outcome:?}");
    for shard in &shards {
        shard.close();
    }
    assert!(!shards[1].writer_stopped(), "a closed shard's writer is not reported dead");
    drop(shards);

    let shards = open(dir.path(), 2, StorageLayout::SharedDatabase);
    assert_eq!(shards[1].committed_next_seq(), 2, "what was answered before the panic is there");
    for shard in &shards {
        shard.close();
    }
}
