//! Released held messages are on disk (`released` column family), not in writer memory: after a
//! restart, a settle asking for a low watermark above a released message that is still queued is
//! clamped to it, as before the restart. And a database from before the column family opens (it
//! is created, empty) and keeps its ids.

use ferry_model::{MessageId, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{self, held_message, resources};
use ferry_shard::{HeldAction, Settlement, Shard, ShardConfig, SharedResources};

fn open(dir: &std::path::Path, resources: &SharedResources) -> Shard {
    Shard::open(dir, ShardId(0), 1, 9, resources, &ShardConfig::default()).unwrap()
}

fn sent(shard: &Shard, seq: u64) -> Settlement {
    Settlement::Sent { seq, message: status_base(&shard.get_queued(seq).unwrap().unwrap()), at_ms: 2_000 }
}

#[tokio::test]
async fn the_watermark_floor_of_a_released_message_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let out = shard
        .append_durably(vec![held_message(1), test_support::message(2), test_support::message(3)])
        .unwrap()
        .await
        .unwrap();
    let (held, b, c) = (out[0].seq, out[1].seq, out[2].seq);
    shard.settle_durably(vec![sent(&shard, b)], Some(c)).unwrap().await.unwrap();
    let r = shard.resolve_held_durably(vec![held], HeldAction::Release, 5_000).unwrap().await.unwrap();
    assert_eq!(r.released, vec![held]);
    assert_eq!(shard.queue_low_watermark(), held, "a release lowers the watermark to it");
    shard.close();
    drop(shard);

    let shard = open(dir.path(), &res);
    assert_eq!(shard.queue_low_watermark(), held);
    // The delivery loop (it read past the released message before the restart, say) settles `c`
    // and asks for a watermark past it: clamped, the released message is still queued.
    shard.settle_durably(vec![sent(&shard, c)], Some(c + 1)).unwrap().await.unwrap();
    assert!(shard.get_queued(held).unwrap().is_some(), "the released message is still queued");
    assert_eq!(
        shard.queue_low_watermark(),
        held,
        "no persisted watermark passes a released message still queued, also after a restart"
    );
    shard.close();
    drop(shard);

    // Once it leaves the queue, the floor goes with it.
    let shard = open(dir.path(), &res);
    assert_eq!(shard.queue_low_watermark(), held, "what was persisted");
    shard.settle_durably(vec![sent(&shard, held)], Some(c + 1)).unwrap().await.unwrap();
    assert_eq!(shard.queue_low_watermark(), c + 1);
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res);
    shard.settle_durably(vec![], Some(c + 2)).unwrap().await.unwrap();
    assert_eq!(shard.queue_low_watermark(), c + 2, "no floor left behind on disk");
    shard.close();
}

#[tokio::test]
async fn a_database_without_the_released_column_family_opens_and_keeps_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let first = shard.append_durably(vec![test_support::message(1)]).unwrap().await.unwrap();
    shard.close();
    drop(shard);
    // Make it a database of the previous format: no `released` column family, no `meta/id_space`.
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        assert!(cfs.iter().any(|c| c == "released"));
        let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &cfs).unwrap();
        db.drop_cf("released").unwrap();
        db.delete_cf(db.cf_handle("meta").unwrap(), b"id_space").unwrap();
        db.flush_wal(true).unwrap();
    }

    let shard = open(dir.path(), &res);
    assert_eq!(shard.id_space(), 9, "an old database's id space is its node id");
    let key = MessageId::decode(first[0].message_id.as_str()).unwrap();
    assert_eq!((key.space, key.seq), (9, first[0].seq), "ids issued before decode to the same space");
    let next = shard.append_durably(vec![held_message(2)]).unwrap().await.unwrap();
    assert_eq!(next[0].seq, first[0].seq + 1);
    let r = shard.resolve_held_durably(vec![next[0].seq], HeldAction::Release, 5_000).unwrap().await.unwrap();
    assert_eq!(r.released, vec![next[0].seq], "the recreated column family takes releases");
    shard.close();
}
