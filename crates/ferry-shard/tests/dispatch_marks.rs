//! Dispatch marks (`dispatched`, see the storage docs): written before a request to an upstream
//! that cannot deduplicate, they leave with the message's queue key (settled or removed), survive
//! a crash for messages still queued, and a message that left the queue is never marked.

use ferry_model::ShardId;
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{message, resources};
use ferry_shard::{Settlement, Shard, ShardConfig, SharedResources};

fn open(dir: &std::path::Path, resources: &SharedResources) -> Shard {
    Shard::open(dir, ShardId(0), 1, 9, resources, &ShardConfig::default()).unwrap()
}

fn base(shard: &Shard, seq: u64) -> ferry_shard::StatusRecord {
    status_base(&shard.get_queued(seq).unwrap().unwrap())
}

fn marks(shard: &Shard) -> Vec<u64> {
    shard.dispatch_marks().unwrap().into_iter().map(|(seq, _)| seq).collect()
}

#[tokio::test]
async fn a_mark_leaves_with_its_message_and_survives_a_crash_while_queued() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let out = shard.append_durably(vec![message(1), message(2), message(3), message(4)]).unwrap().await.unwrap();
    let seqs: Vec<u64> = out.iter().map(|o| o.seq).collect();
    shard.mark_dispatched_durably(seqs[..3].to_vec(), 5_000).unwrap().await.unwrap();
    assert_eq!(marks(&shard), seqs[..3].to_vec());
    assert_eq!(shard.dispatch_marks().unwrap()[0].1.at_ms, 5_000);

    // Settled `sent`, settled `failed`, removed (TTL): each takes its mark along.
    let sent = Settlement::Sent { seq: seqs[0], message: base(&shard, seqs[0]), at_ms: 6_000 };
    shard.settle_durably(vec![sent], None).unwrap().await.unwrap();
    assert_eq!(marks(&shard), seqs[1..3].to_vec());
    let reason = ferry_shard::FailureReason { code: 131026, title: "undeliverable".into(), details: String::new() };
    let failed = Settlement::Failed { seq: seqs[1], message: base(&shard, seqs[1]), at_ms: 6_000, reason };
    shard.settle_durably(vec![failed], None).unwrap().await.unwrap();
    shard.remove_durably(vec![seqs[3]]).unwrap().await.unwrap();
    assert_eq!(marks(&shard), vec![seqs[2]], "removing an unmarked message touches no mark");

    // A mark asked for after its message left (a request's mark racing its settle) is not
    // written; the mark of the queued message survives a crash.
    shard.mark_dispatched_durably(vec![seqs[0], seqs[2]], 7_000).unwrap().await.unwrap();
    assert_eq!(marks(&shard), vec![seqs[2]], "no mark for a message that left the queue");
    shard.crash_for_test();
    drop(shard);
    let shard = open(dir.path(), &res);
    assert_eq!(marks(&shard), vec![seqs[2]], "only the queued message's mark is left");

    // A refusal clears the mark while the message stays queued (ClearDispatched rides on the
    // next batch: an empty settle is the barrier).
    shard.clear_dispatched(vec![seqs[2]]);
    shard.settle_durably(Vec::new(), None).unwrap().await.unwrap();
    assert!(marks(&shard).is_empty(), "cleared");
    assert!(shard.get_queued(seqs[2]).unwrap().is_some(), "still queued");

    // After a reopen the writer still knows a mark: settling the message deletes it.
    shard.mark_dispatched_durably(vec![seqs[2]], 9_000).unwrap().await.unwrap();
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res);
    assert_eq!(marks(&shard), vec![seqs[2]]);
    let sent = Settlement::Sent { seq: seqs[2], message: base(&shard, seqs[2]), at_ms: 10_000 };
    shard.settle_durably(vec![sent], None).unwrap().await.unwrap();
    assert!(marks(&shard).is_empty());
}
