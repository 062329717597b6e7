//! One bad step fails one op: a read error while the writer builds a group commit fails the op
//! that needed the read, and every other op of that commit (appends above all) is still written
//! and answered.

use ferry_model::ShardId;
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{self, held_message, resources};
use ferry_shard::{HeldAction, NewMessage, Settlement, Shard, ShardConfig};

fn message(n: u32, held: bool) -> NewMessage {
    if held { held_message(n) } else { test_support::message(n) }
}

#[tokio::test]
async fn a_failed_status_read_fails_its_settle_only_not_the_appends_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &ShardConfig::default()).unwrap();
    let out = shard.append_durably(vec![message(1, false), message(2, false)]).unwrap().await.unwrap();
    let (bad, good) = (out[0].seq, out[1].seq);
    let base = |seq| status_base(&shard.get_queued(seq).unwrap().unwrap());
    let (bad_base, good_base) = (base(bad), base(good));

    shard.failpoint_fail_status_read(Some(bad));
    // Pause the writer so that the three ops below are committed as one batch.
    let pause = shard.pause_writer_for_test();
    let bad_settle =
        shard.settle_durably(vec![Settlement::Sent { seq: bad, message: bad_base, at_ms: 2_000 }], None).unwrap();
    let append = shard.append_durably(vec![message(3, false)]).unwrap();
    let good_settle =
        shard.settle_durably(vec![Settlement::Sent { seq: good, message: good_base, at_ms: 2_000 }], None).unwrap();
    drop(pause);

    let appended = append.await.expect("the append beside a failed settle is written");
    assert!(bad_settle.await.is_err(), "the settle whose read failed is refused");
    good_settle.await.expect("the other settle of the batch is written");
    shard.failpoint_fail_status_read(None);

    assert!(shard.get_queued(appended[0].seq).unwrap().is_some(), "the appended message is durable");
    assert!(shard.get_queued(bad).unwrap().is_some(), "the refused settle changed nothing: still queued");
    assert!(shard.get_status(bad).unwrap().is_none(), "and no status was written for it");
    assert!(shard.get_queued(good).unwrap().is_none(), "the good settle removed its message");
    assert!(shard.get_status(good).unwrap().is_some());
    shard.close();
}

#[tokio::test]
async fn a_failed_read_fails_its_resolve_only() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &ShardConfig::default()).unwrap();
    let held = shard.append_durably(vec![message(1, true)]).unwrap().await.unwrap()[0].seq;

    shard.failpoint_fail_status_read(Some(held));
    let pause = shard.pause_writer_for_test();
    let reason = ferry_shard::FailureReason { code: 132015, title: "Template is paused".into(), details: "t".into() };
    let drop_op = shard.resolve_held_durably(vec![held], HeldAction::Drop(reason), 2_000).unwrap();
    let append = shard.append_durably(vec![message(2, false)]).unwrap();
    drop(pause);

    let appended = append.await.expect("the append beside a failed resolve is written");
    assert!(drop_op.await.is_err(), "the resolve whose read failed is refused");
    shard.failpoint_fail_status_read(None);
    assert!(shard.get_queued(appended[0].seq).unwrap().is_some());
    assert!(shard.get_held(held).unwrap().is_some(), "the refused drop left the message held");
    shard.close();
}
