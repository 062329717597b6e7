//! Settling against a real shard: an ack removes the message from the queue and writes its status
//! in one batch; receipts move the status forward only; every forward change writes one status
//! event in the same batch. Events survive reopens; retention drops old events only below the
//! webhook cursor, which is durable.

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::test_support::resources;
use ferry_shard::{NewMessage, Settlement, Shard, ShardConfig, SharedResources};

fn open(dir: &std::path::Path, resources: &SharedResources, callbacks: bool) -> Shard {
    open_with(dir, resources, ShardConfig { callbacks, ..ShardConfig::default() })
}

fn open_with(dir: &std::path::Path, resources: &SharedResources, config: ShardConfig) -> Shard {
    Shard::open(dir, ShardId(0), 1, 9, resources, &config).unwrap()
}

/// [`ferry_shard::test_support::message`] with callback data `cb`.
fn message(n: u32) -> NewMessage {
    let mut m = ferry_shard::test_support::message(n);
    m.record.biz_opaque_callback_data = "cb".into();
    m
}

#[tokio::test]
async fn ack_and_receipts_settle_with_one_callback_per_forward_change() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res, true);
    let out = shard.append_durably(vec![message(1), message(2)]).unwrap().await.unwrap();
    let (a, b) = (out[0].seq, out[1].seq);
    let base = status_base(&shard.get_queued(a).unwrap().unwrap());

    let changes = vec![
        Settlement::Sent { seq: a, message: base.clone(), at_ms: 2_000 },
        Settlement::Receipt { seq: a, status: MessageStatus::Read, at_ms: 3_000 },
        // Backwards: ignored, no callback.
        Settlement::Receipt { seq: a, status: MessageStatus::Delivered, at_ms: 4_000 },
    ];
    shard.settle_durably(changes, Some(b)).unwrap().await.unwrap();
    assert!(shard.get_queued(a).unwrap().is_none(), "acked message left the queue");
    assert!(shard.get_queued(b).unwrap().is_some(), "the other one is still queued");
    assert_eq!(shard.get_status(a).unwrap().unwrap().status, MessageStatus::Read.code());
    assert_eq!(shard.queue_low_watermark(), b);

    let until = shard.committed_next_outbox_seq();
    let outbox = shard.scan_outbox(1, until, 100).unwrap();
    let statuses: Vec<u32> = outbox.iter().map(|(_, c)| c.status).collect();
    assert_eq!(statuses, vec![MessageStatus::Sent.code(), MessageStatus::Read.code()]);
    assert!(outbox.iter().all(|(_, c)| c.seq == a && c.biz_opaque_callback_data == "cb"));

    // Durable across a reopen; the webhook cursor of a new shard starts at its first event.
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res, true);
    assert_eq!(shard.scan_outbox(1, shard.committed_next_outbox_seq(), 100).unwrap().len(), 2);
    assert_eq!(shard.webhook_cursor(), 1);
    let (first, second) = (outbox[0].0, outbox[1].0);
    shard.advance_webhook_cursor(second).unwrap().await.unwrap();
    shard.close();
    drop(shard);

    // Reopened with a zero retention: every event is "old", but only those below the (persisted)
    // cursor may go.
    let zero = ShardConfig { callbacks: true, status_events_retention_secs: 0, ..ShardConfig::default() };
    let shard = open_with(dir.path(), &res, zero);
    assert_eq!(shard.webhook_cursor(), second, "cursor persisted");
    shard.compact_events_for_test();
    let left: Vec<u64> = shard.scan_outbox(1, u64::MAX, 100).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, vec![second], "event {first} was accepted and old: dropped; {second} was not accepted: kept");
    shard.close();
}

#[tokio::test]
async fn receipts_that_overtake_the_ack_are_all_reported_once_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res, true);
    let seq = shard.append_durably(vec![message(5)]).unwrap().await.unwrap()[0].seq;
    let base = status_base(&shard.get_queued(seq).unwrap().unwrap());
    // After a restart the server pushes both receipts before it answers the resend.
    let receipts = vec![
        Settlement::Receipt { seq, status: MessageStatus::Delivered, at_ms: 3_000 },
        Settlement::Receipt { seq, status: MessageStatus::Read, at_ms: 4_000 },
    ];
    shard.settle_durably(receipts, None).unwrap().await.unwrap();
    assert!(shard.scan_outbox(1, shard.committed_next_outbox_seq(), 10).unwrap().is_empty(), "no fields yet");
    // The answer to the resend (a duplicate ack) comes last, with the latest time.
    shard.settle_durably(vec![Settlement::Sent { seq, message: base, at_ms: 5_000 }], None).unwrap().await.unwrap();
    let events = shard.scan_outbox(1, shard.committed_next_outbox_seq(), 10).unwrap();
    let got: Vec<(u32, i64)> = events.iter().map(|(_, c)| (c.status, c.at_ms)).collect();
    assert_eq!(
        got,
        vec![
            (MessageStatus::Sent.code(), 3_000),
            (MessageStatus::Delivered.code(), 3_000),
            (MessageStatus::Read.code(), 4_000)
        ],
        "in status order, times never going backwards"
    );
    assert!(events.iter().all(|(_, c)| c.wa_id == "16315550005" && c.biz_opaque_callback_data == "cb"));
    shard.close();
}

#[tokio::test]
async fn without_a_webhook_events_are_kept_for_the_retention_only() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res, false);
    assert_eq!(shard.webhook_cursor(), u64::MAX);
    let out = shard.append_durably(vec![message(3)]).unwrap().await.unwrap();
    let base = status_base(&shard.get_queued(out[0].seq).unwrap().unwrap());
    shard
        .settle_durably(vec![Settlement::Sent { seq: out[0].seq, message: base, at_ms: now_ms() }], None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(shard.get_status(out[0].seq).unwrap().unwrap().status, MessageStatus::Sent.code());
    // The status stream reads the event...
    let events = shard.scan_outbox(1, shard.committed_next_outbox_seq(), 10).unwrap();
    assert_eq!(events.len(), 1);
    // ...and a young event survives compaction under the default retention (1 h).
    shard.compact_events_for_test();
    assert_eq!(shard.scan_outbox(1, u64::MAX, 10).unwrap().len(), 1);
    shard.close();
    drop(shard);
    // With a zero retention and no webhook, compaction drops it.
    let zero = ShardConfig { status_events_retention_secs: 0, ..ShardConfig::default() };
    let shard = open_with(dir.path(), &res, zero);
    std::thread::sleep(std::time::Duration::from_millis(5));
    shard.compact_events_for_test();
    assert!(shard.scan_outbox(1, u64::MAX, 10).unwrap().is_empty());
    shard.close();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
