//! Settling against a real shard: an ack removes the message from the queue and writes its status
//! in one batch; receipts move the status forward only; with callbacks enabled every forward
//! change writes one outbox entry in the same batch, which survives a reopen until removed.

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::{NewMessage, QueueRecord, Settlement, Shard, ShardConfig, SharedResources, StorageTuning};

fn resources() -> SharedResources {
    SharedResources::new(&StorageTuning { block_cache_mib: 8, write_buffer_total_mib: 16, ..StorageTuning::default() })
        .unwrap()
}

fn open(dir: &std::path::Path, resources: &SharedResources, callbacks: bool) -> Shard {
    let config = ShardConfig { callbacks, ..ShardConfig::default() };
    Shard::open(dir, ShardId(0), 1, 9, resources, &config).unwrap()
}

fn message(n: u32) -> NewMessage {
    NewMessage {
        record: QueueRecord {
            wa_id: format!("1631555{n:04}"),
            sender: "15550100000".into(),
            message_type: "text".into(),
            accepted_at_ms: 1_000,
            expires_at_ms: 99_000,
            payload: b"{}".to_vec(),
            biz_opaque_callback_data: "cb".into(),
            idempotency_key: String::new(),
        },
        idempotency: None,
    }
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

    // Durable across a reopen, until removed.
    shard.close();
    drop(shard);
    let shard = open(dir.path(), &res, true);
    assert_eq!(shard.scan_outbox(1, shard.committed_next_outbox_seq(), 100).unwrap().len(), 2);
    let seqs = outbox.iter().map(|(s, _)| *s).collect();
    shard.remove_outbox_durably(seqs).unwrap().await.unwrap();
    assert!(shard.scan_outbox(1, shard.committed_next_outbox_seq(), 100).unwrap().is_empty());
    shard.close();
}

#[tokio::test]
async fn without_callbacks_nothing_goes_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources();
    let shard = open(dir.path(), &res, false);
    let out = shard.append_durably(vec![message(3)]).unwrap().await.unwrap();
    let base = status_base(&shard.get_queued(out[0].seq).unwrap().unwrap());
    shard
        .settle_durably(vec![Settlement::Sent { seq: out[0].seq, message: base, at_ms: 2_000 }], None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(shard.get_status(out[0].seq).unwrap().unwrap().status, MessageStatus::Sent.code());
    assert!(shard.scan_outbox(1, u64::MAX, 10).unwrap().is_empty());
    shard.close();
}
