//! A crash between the message write and the idempotency record write (key shard ≠ recipient
//! shard) must not let a retry create a second message: the message's shard answers the retry
//! from its copy of the key's record, and start-up replays the intent to the key shard.

use ferry_coordinator::routing::{shard_for_idempotency_key, shard_for_recipient};
use ferry_coordinator::{Coordinator, CoordinatorConfig, SendCommand};
use ferry_model::message::OutboundMessage;
use ferry_model::phone;
use ferry_shard::storage::idempotency_key;

fn text_to(to: &str) -> OutboundMessage {
    serde_json::from_value(serde_json::json!({"to": to, "type": "text", "text": {"body": "pay 10"}})).unwrap()
}

#[tokio::test]
async fn intent_left_by_a_crash_is_replayed_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 8);
    let sender = phone::normalize(&config.default_sender, &config.country_code).unwrap();
    // Find a key whose key shard differs from the recipient's shard.
    let to = "+16315551234";
    let wa = phone::normalize(to, "1").unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| shard_for_idempotency_key(&idempotency_key(sender.as_str(), k), 8) != shard_for_recipient(&wa, 8))
        .unwrap();
    let command = SendCommand { message: text_to(to), idempotency_key: Some(key.clone()), sender: None };

    let node = Coordinator::open(&config).await.unwrap();
    node.failpoint_skip_key_shard_write(true);
    let first = node.send(command.clone()).await.unwrap();
    node.close();
    drop(node);

    let node = Coordinator::open(&config).await.unwrap();
    let retry = node.send(command.clone()).await.unwrap();
    assert_eq!(retry.message_id, first.message_id, "the retry answers the first id");
    assert!(retry.idempotent_replay);
    let appended: u64 = node.shard_stats().iter().map(|s| s.appended).sum();
    assert_eq!(appended, 0, "the retry wrote nothing");
    node.close();
}

#[tokio::test]
async fn the_message_shard_answers_a_retry_whose_key_record_was_never_written() {
    // The key-shard write is skipped (a crash there, or in a cluster a coordinator that never
    // learned the outcome): the key shard has no record, yet the retry is no second message,
    // because the message's shard keeps a copy of the key's record and answers it at apply.
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 8);
    let sender = phone::normalize(&config.default_sender, &config.country_code).unwrap();
    let wa = phone::normalize("+16315551234", "1").unwrap();
    let key = key_for(sender.as_str(), &wa, 8, true);
    let storage_key = idempotency_key(sender.as_str(), &key);
    let key_shard = shard_for_idempotency_key(&storage_key, 8);
    let command = SendCommand { message: text_to("+16315551234"), idempotency_key: Some(key), sender: None };
    let node = Coordinator::open(&config).await.unwrap();
    node.failpoint_skip_key_shard_write(true);
    let a = node.send(command.clone()).await.unwrap();
    let now = node.clock().now_ms();
    let on_key_shard = node.shards()[key_shard.index()].get_idempotency(&storage_key, now).unwrap();
    assert!(on_key_shard.is_none(), "the failpoint skipped the key shard's record");
    let b = node.send(command.clone()).await.unwrap();
    assert_eq!(b.message_id, a.message_id, "the retry answers the first id");
    assert!(b.idempotent_replay);
    let queued =
        |node: &Coordinator| node.shards()[shard_for_recipient(&wa, 8).index()].scan_queue(0, 100).unwrap().len();
    assert_eq!(queued(&node), 1, "one message for one key");
    // With the key-shard write back on, a replay writes the missing record there.
    node.failpoint_skip_key_shard_write(false);
    let c = node.send(command).await.unwrap();
    assert_eq!(c.message_id, a.message_id);
    assert_eq!(queued(&node), 1);
    let on_key_shard = node.shards()[key_shard.index()].get_idempotency(&storage_key, now).unwrap();
    assert_eq!(on_key_shard.map(|r| r.message_id), Some(a.message_id.as_str().to_owned()));
    node.close();
}

/// A key whose key shard differs from the recipient's shard (`elsewhere`), or equals it.
fn key_for(sender: &str, wa: &ferry_model::WaId, shards: u16, elsewhere: bool) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            (shard_for_idempotency_key(&idempotency_key(sender, k), shards) != shard_for_recipient(wa, shards))
                == elsewhere
        })
        .unwrap()
}

fn appended(node: &Coordinator) -> u64 {
    node.shard_stats().iter().map(|s| s.appended).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_mid_write_leaves_its_key_answered_for_the_retry() {
    // The caller's future is dropped while its append waits in the writer (a client deadline):
    // a retry right after must find the key, for keys on the message's shard and on another one.
    for elsewhere in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::for_test(dir.path(), 8);
        let sender = phone::normalize(&config.default_sender, &config.country_code).unwrap();
        let to = "+16315551234";
        let wa = phone::normalize(to, "1").unwrap();
        let key = key_for(sender.as_str(), &wa, 8, elsewhere);
        let command = SendCommand { message: text_to(to), idempotency_key: Some(key), sender: None };
        let node = Coordinator::open(&config).await.unwrap();

        let pause = node.pause_shard_writer_for_test(shard_for_recipient(&wa, 8));
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), node.send(command.clone())).await;
        assert!(cut.is_err(), "the paused writer kept the first send waiting until its deadline");
        drop(pause);
        let retry = node.send(command).await.unwrap();
        assert!(retry.idempotent_replay, "the retry answers the first send's id (key elsewhere: {elsewhere})");
        assert_eq!(appended(&node), 1, "one message for one key (key elsewhere: {elsewhere})");
        node.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_key_shard_delays_the_key_record_but_never_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), 8);
    // A database per shard, so a writer per shard: the key shard's can be blocked while the
    // message's shard appends (in a shared database one writer serves both).
    config.storage.shared_wal = false;
    let sender = phone::normalize(&config.default_sender, &config.country_code).unwrap();
    let to = "+16315551234";
    let wa = phone::normalize(to, "1").unwrap();
    let key = key_for(sender.as_str(), &wa, 8, true);
    let key_shard = shard_for_idempotency_key(&idempotency_key(sender.as_str(), &key), 8);
    let command = SendCommand { message: text_to(to), idempotency_key: Some(key), sender: None };
    let node = std::sync::Arc::new(Coordinator::open(&config).await.unwrap());

    // The key shard's mailbox is full (its writer blocked): the record's write must wait, not be
    // refused and forgotten.
    let full = node.hold_shard_writer_for_test(key_shard);
    let first = {
        let (node, command) = (node.clone(), command.clone());
        tokio::spawn(async move { node.send(command).await })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while appended(&node) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message was never appended");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Give the send time to reach the key shard while it is full.
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
    while !first.is_finished() && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(full);
    let first = first.await.unwrap().unwrap();
    let retry = node.send(command).await.unwrap();
    assert_eq!(retry.message_id, first.message_id, "the retry answers the first id");
    assert!(retry.idempotent_replay);
    assert_eq!(appended(&node), 1);
    node.close();
}
