//! A crash between the message write and the idempotency record write (key shard ≠ recipient
//! shard) must not let a retry create a second message: start-up replays the intent.

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
async fn without_replay_a_retry_would_duplicate() {
    // Guards the test above: with the failpoint on and no restart, the record is missing, so the
    // retry is (wrongly) fresh. This shows the failpoint really skips the key-shard write.
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 8);
    let sender = phone::normalize(&config.default_sender, &config.country_code).unwrap();
    let wa = phone::normalize("+16315551234", "1").unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| shard_for_idempotency_key(&idempotency_key(sender.as_str(), k), 8) != shard_for_recipient(&wa, 8))
        .unwrap();
    let command = SendCommand { message: text_to("+16315551234"), idempotency_key: Some(key), sender: None };
    let node = Coordinator::open(&config).await.unwrap();
    node.failpoint_skip_key_shard_write(true);
    let a = node.send(command.clone()).await.unwrap();
    let b = node.send(command).await.unwrap();
    assert_ne!(a.message_id, b.message_id);
    node.close();
}
