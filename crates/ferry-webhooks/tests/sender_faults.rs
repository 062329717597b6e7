//! The webhook sender under faults of its own inputs — a status-event read that fails must not move
//! the cursor past events it did not read, and a receiver that never finishes its response body
//! must not hold the node-wide request permit — and how it fills a POST (statuses of several
//! business numbers share one, in both shapes).
//!
//! A real shard (status events written by settling messages) and a raw HTTP/1.1 receiver on a
//! port-0 socket, so the test controls every byte of the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_model::ShardId;
use ferry_shard::settle::status_base;
use ferry_shard::test_support::message;
use ferry_shard::{Settlement, Shard, ShardConfig, SharedResources, StorageTuning};
use ferry_webhooks::{WebhookConfig, WebhookEngine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A shard with `n` messages settled as `sent`: `n` status events.
async fn shard_with_events(dir: &std::path::Path, res: &SharedResources, n: u32) -> Arc<Shard> {
    shard_with_events_from(dir, res, n, &["15550100000"]).await
}

/// [`shard_with_events`], message `i` sent from `senders[i % len]`.
async fn shard_with_events_from(dir: &std::path::Path, res: &SharedResources, n: u32, senders: &[&str]) -> Arc<Shard> {
    let config = ShardConfig { callbacks: true, ..ShardConfig::default() };
    let shard = Arc::new(Shard::open(dir, ShardId(0), 1, 9, res, &config).unwrap());
    let messages = (0..n)
        .map(|i| {
            let mut m = message(i);
            m.record.sender = senders[i as usize % senders.len()].into();
            m
        })
        .collect();
    let out = shard.append_durably(messages).unwrap().await.unwrap();
    let changes = out
        .iter()
        .map(|o| Settlement::Sent {
            seq: o.seq,
            message: status_base(&shard.get_queued(o.seq).unwrap().unwrap()),
            at_ms: 2_000,
        })
        .collect();
    shard.settle_durably(changes, None).unwrap().await.unwrap();
    shard
}

/// Message ids (`"id"` of each status) received by the raw receiver, in order.
type Received = Arc<std::sync::Mutex<Vec<String>>>;
/// Every POST body the raw receiver took, in order.
type Bodies = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Reads from `conn` into `buf` until `done(buf)`; false if the connection ended first.
async fn read_until(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) -> bool {
    while !done(buf) {
        let mut chunk = [0u8; 4096];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// A raw HTTP/1.1 receiver. With `stall_first`, its first answer is `200` with a body it never
/// sends (the connection stays open); every other answer is a complete `200`.
async fn receiver(stall_first: bool) -> (String, Received) {
    let (url, received, _) = receiver_with_bodies(stall_first).await;
    (url, received)
}

/// [`receiver`], also keeping every body.
async fn receiver_with_bodies(stall_first: bool) -> (String, Received, Bodies) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let bodies: Bodies = Arc::default();
    let stalled = Arc::new(AtomicBool::new(!stall_first));
    let (got, kept) = (received.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (got, kept, stalled) = (got.clone(), kept.clone(), stalled.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then Content-Length bytes.
                    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                    if !read_until(&mut conn, &mut buf, |b| head_end(b).is_some()).await {
                        return;
                    }
                    let end = head_end(&buf).unwrap();
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if !read_until(&mut conn, &mut buf, |b| b.len() >= end + len).await {
                        return;
                    }
                    let body: serde_json::Value = serde_json::from_slice(&buf[end..end + len]).unwrap();
                    buf.drain(..end + len);
                    let cloud = body["entry"].as_array().into_iter().flatten().flat_map(|e| {
                        e["changes"].as_array().into_iter().flatten().flat_map(|c| c["value"]["statuses"].as_array())
                    });
                    for s in body["statuses"].as_array().into_iter().chain(cloud).flatten() {
                        got.lock().unwrap().push(s["id"].as_str().unwrap().to_owned());
                    }
                    kept.lock().unwrap().push(body);
                    if !stalled.swap(true, Ordering::AcqRel) {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n").await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received, bodies)
}

async fn wait_for(received: &Received, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = received.lock().unwrap().len();
        if got >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {got} of {n} statuses arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_read_never_moves_the_cursor_past_unread_events() {
    let dir = tempfile::tempdir().unwrap();
    let res = SharedResources::new(&StorageTuning::default()).unwrap();
    let shard = shard_with_events(dir.path(), &res, 20).await;
    shard.failpoint_fail_outbox_scans(3);
    let (url, received) = receiver(false).await;
    let config = WebhookConfig { max_statuses_per_post: 5, ..WebhookConfig::for_test(url) };
    let engine = WebhookEngine::start(std::slice::from_ref(&shard), config).unwrap();
    wait_for(&received, 20, "every event is read again after the failed reads").await;
    let mut ids = received.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each message's status arrived");
    engine.shutdown().await;
    shard.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_ends_its_body_does_not_hold_the_permit() {
    let dir = tempfile::tempdir().unwrap();
    let res = SharedResources::new(&StorageTuning::default()).unwrap();
    let shard = shard_with_events(dir.path(), &res, 10).await;
    let (url, received) = receiver(true).await;
    // One permit for the whole node, and a deadline short enough for a test.
    let config = WebhookConfig {
        max_concurrent_requests: 1,
        request_timeout_ms: 500,
        max_statuses_per_post: 1,
        ..WebhookConfig::for_test(url)
    };
    let engine = WebhookEngine::start(std::slice::from_ref(&shard), config).unwrap();
    wait_for(&received, 10, "the statuses after a stalled answer still go out").await;
    engine.shutdown().await;
    shard.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_of_several_numbers_share_a_post_in_both_shapes() {
    let numbers = ["15550100001", "15550100002", "15550100003"];
    for shape in [ferry_webhooks::Shape::Onprem, ferry_webhooks::Shape::Cloud] {
        let dir = tempfile::tempdir().unwrap();
        let res = SharedResources::new(&StorageTuning::default()).unwrap();
        // Twelve events, the numbers taking turns: all on disk before the sender starts.
        let shard = shard_with_events_from(dir.path(), &res, 12, &numbers).await;
        let (url, received, bodies) = receiver_with_bodies(false).await;
        let config = WebhookConfig { max_statuses_per_post: 12, shape, ..WebhookConfig::for_test(url) };
        let engine = WebhookEngine::start(std::slice::from_ref(&shard), config).unwrap();
        wait_for(&received, 12, "every status").await;
        engine.shutdown().await;
        shard.close();
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1, "{shape:?}: one POST for twelve statuses of three numbers: {bodies:?}");
        if shape == ferry_webhooks::Shape::Cloud {
            // One change per number, each naming its number, its statuses in order.
            let changes = bodies[0]["entry"][0]["changes"].as_array().unwrap().clone();
            let named: Vec<&str> =
                changes.iter().map(|c| c["value"]["metadata"]["phone_number_id"].as_str().unwrap()).collect();
            assert_eq!(named, numbers);
            for c in &changes {
                assert_eq!(c["value"]["statuses"].as_array().unwrap().len(), 4, "{c}");
            }
        }
        let ids = received.lock().unwrap().clone();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 12, "{shape:?}: each status once: {ids:?}");
    }
}
