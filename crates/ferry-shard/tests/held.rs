//! Paced templates against a real shard: a held message is written to `held` (not the queue) with
//! its seq; release moves it into the queue under the same seq, lowers the persisted low watermark
//! to it and keeps later watermarks below it until it leaves the queue; drop writes `failed`
//! (132015) and its status event in one batch; an expired held message fails with 410; a second
//! resolve of the same seq does nothing. Everything survives a reopen.

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{self, held_message, resources};
use ferry_shard::{FailureReason, HeldAction, NewMessage, Settlement, Shard, ShardConfig, SharedResources};

fn open(dir: &std::path::Path, resources: &SharedResources) -> Shard {
    Shard::open(dir, ShardId(0), 1, 9, resources, &ShardConfig::default()).unwrap()
}

fn message(n: u32, held: bool, expires_at_ms: i64) -> NewMessage {
    let mut m = if held { held_message(n) } else { test_support::message(n) };
    m.record.expires_at_ms = expires_at_ms;
    m
}

fn paused() -> FailureReason {
    FailureReason { code: 132015, title: "Template is paused".into(), details: "test".into() }
}

#[tokio::test]
async fn held_messages_stay_out_of_the_queue_until_released_under_the_same_seq() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let out = shard
        .append_durably(vec![message(1, false, 99_000), message(2, true, 99_000), message(3, false, 99_000)])
        .unwrap()
        .await
        .unwrap();
    let (a, held, c) = (out[0].seq, out[1].seq, out[2].seq);
    assert_eq!(out.iter().map(|o| o.held).collect::<Vec<_>>(), vec![false, true, false]);
    assert!(shard.get_queued(held).unwrap().is_none(), "a held message is not queued");
    assert_eq!(shard.get_held(held).unwrap().unwrap().template_name, "promo");
    let queued: Vec<u64> = shard.scan_queue_range(1, u64::MAX, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(queued, vec![a, c]);

    // The delivery loop settles both queued messages; the watermark passes the held seq.
    let settle = |seq: u64| Settlement::Sent {
        seq,
        message: status_base(&shard.get_queued(seq).unwrap().unwrap()),
        at_ms: 2_000,
    };
    let changes = vec![settle(a), settle(c)];
    shard.settle_durably(changes, Some(c + 1)).unwrap().await.unwrap();
    assert_eq!(shard.queue_low_watermark(), c + 1);

    // Release: same seq, in the queue, handed to the loop, watermark lowered to it.
    let r = shard.resolve_held_durably(vec![held, held], HeldAction::Release, 5_000).unwrap().await.unwrap();
    assert_eq!((r.released, r.dropped, r.expired), (vec![held], vec![], vec![]));
    assert!(shard.get_held(held).unwrap().is_none());
    assert_eq!(shard.get_queued(held).unwrap().unwrap().held_at_ms, 1_000);
    assert_eq!(shard.take_released(10), vec![held]);
    assert!(shard.take_released(10).is_empty());
    assert_eq!(shard.queue_low_watermark(), held);
    // A later settle asking for a higher watermark is clamped while the released one is queued.
    shard.settle_durably(vec![], Some(c + 5)).unwrap().await.unwrap();
    assert_eq!(shard.queue_low_watermark(), held);
    // Resolving again does nothing.
    let again = shard.resolve_held_durably(vec![held], HeldAction::Drop(paused()), 5_000).unwrap().await.unwrap();
    assert_eq!(again, Default::default());

    // A reopen (no settle since the release) starts the scan at or below the released seq.
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res);
    assert!(shard.queue_low_watermark() <= held);
    let base = status_base(&shard.get_queued(held).unwrap().unwrap());
    let history: Vec<u32> = base.history.iter().map(|e| e.status).collect();
    assert_eq!(history, vec![MessageStatus::Accepted.code(), MessageStatus::HeldForQualityAssessment.code()]);
    // Once it leaves the queue, the watermark moves on.
    shard
        .settle_durably(vec![Settlement::Sent { seq: held, message: base, at_ms: 6_000 }], Some(c + 1))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(shard.queue_low_watermark(), c + 1);
    assert_eq!(shard.get_status(held).unwrap().unwrap().status, MessageStatus::Sent.code());
}

#[tokio::test]
async fn drop_writes_failed_132015_with_its_event_and_expired_ones_fail_410() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let out = shard.append_durably(vec![message(1, true, 99_000), message(2, true, 4_000)]).unwrap().await.unwrap();
    let (live, stale) = (out[0].seq, out[1].seq);
    let events_before = shard.committed_next_outbox_seq();
    let watermark_before = shard.queue_low_watermark();

    let r = shard.resolve_held_durably(vec![live, stale], HeldAction::Drop(paused()), 5_000).unwrap().await.unwrap();
    assert_eq!((r.released, r.dropped, r.expired), (vec![], vec![live], vec![stale]));
    assert!(shard.get_held(live).unwrap().is_none() && shard.get_queued(live).unwrap().is_none());
    assert_eq!(shard.queue_low_watermark(), watermark_before, "a drop does not touch the queue");
    let failed = shard.get_status(live).unwrap().unwrap();
    assert_eq!((failed.status, failed.error_code), (MessageStatus::Failed.code(), 132015));
    let history: Vec<u32> = failed.history.iter().map(|e| e.status).collect();
    assert_eq!(history, vec![0, MessageStatus::HeldForQualityAssessment.code(), MessageStatus::Failed.code()]);
    assert_eq!(shard.get_status(stale).unwrap().unwrap().error_code, 410);

    // One status event per failed message, in the same batch.
    let events = shard.scan_outbox(events_before, u64::MAX, 10).unwrap();
    let got: Vec<(u64, u32, u32)> = events.iter().map(|(_, e)| (e.seq, e.status, e.error_code)).collect();
    assert_eq!(got, vec![(live, MessageStatus::Failed.code(), 132015), (stale, MessageStatus::Failed.code(), 410)]);

    // Durable across a reopen.
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res);
    assert!(shard.scan_held(0, 10).unwrap().is_empty());
    assert_eq!(shard.get_status(live).unwrap().unwrap().error_code, 132015);
}

#[tokio::test]
async fn held_messages_survive_a_reopen_in_acceptance_order() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res);
    let out = shard.append_durably((0..5).map(|n| message(n, n % 2 == 0, 99_000)).collect()).unwrap().await.unwrap();
    let held: Vec<u64> = out.iter().filter(|o| o.held).map(|o| o.seq).collect();
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res);
    let scanned: Vec<u64> = shard.scan_held(0, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(scanned, held);
    assert_eq!(shard.scan_held(held[1], 1).unwrap()[0].0, held[1]);
}
