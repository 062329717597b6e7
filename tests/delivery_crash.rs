//! Crash test of delivery: real `ferry serve` and `ferry chatsim` processes; ferry is killed with
//! SIGKILL several times during a run of 20,000 messages, while sends are in flight and delivery
//! is running, and restarted on the same data dir.
//!
//! Afterwards the chat server has every accepted message exactly once (`unique_messages` equals
//! the accepted ids, one id per idempotency key, although a send cut off by each kill is retried
//! with the same keys), every id is `read` with `delivered` in its history once the receipts
//! drain (so no receipt was acknowledged before it was durable), and the resends (`duplicate_messages`) are bounded by
//! what was really in flight at the kills: messages the chat server had received whose ack ferry
//! had not yet written (the server's unique count at the kill less ferry's settled count before it).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::v1;
use support::{ChatSimProcess, FerryProcess, chat_stats, connect, http_get, status_of, text, wait_for};

const MESSAGES: usize = 20_000;
const SHARDS: u16 = 4;
const KILLS: usize = 3;

/// Sends keys `range` in batches of 250 with idempotency keys, pushing each answered id to `ids`
/// (in key order); returns at the first refused batch (the server was killed under it: its keys
/// are sent again after the restart, and those it had written answer their first id).
async fn send_keyed(
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    ids: Arc<Mutex<Vec<String>>>,
) -> Result<(), tonic::Status> {
    let mut client = connect(addr).await;
    let keys: Vec<usize> = range.collect();
    for chunk in keys.chunks(250) {
        let messages = chunk
            .iter()
            .map(|&i| {
                let mut m = text(&format!("+1631{:07}", i % 5_000), &format!("crash run {i}"));
                m.idempotency_key = format!("crash-{i}");
                m
            })
            .collect();
        let results = client.send_batch(v1::SendBatchRequest { messages }).await?.into_inner().results;
        let mut ids = ids.lock().unwrap();
        for result in results {
            match result.outcome {
                Some(v1::send_result::Outcome::Accepted(a)) => ids.push(a.message_id),
                other => panic!("rejected: {other:?}"),
            }
        }
    }
    Ok(())
}

/// Sum of a counter over its shard labels in ferry's `/metrics`.
async fn metric_sum(http: SocketAddr, name: &str) -> u64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The chat server's unique count once it stops changing (what reached it before the kill).
async fn settled_unique(chat: SocketAddr) -> u64 {
    let mut last = chat_stats(chat).await.unique_messages;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = chat_stats(chat).await.unique_messages;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the chat server's count kept changing with ferry dead ({last})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_nothing_and_duplicates_are_bounded() {
    let chat = ChatSimProcess::spawn("127.0.0.1:0", &["--delivered-after-ms", "10", "--read-after-ms", "30"]);
    let chat_addr = chat.addr;
    let upstream = chat_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    // Text to users who never wrote: the customer-service window is not what this test is about.
    let flags = ["--upstream", upstream.as_str(), "--customer-service-window", "off"];

    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let per_round = MESSAGES / (KILLS + 1);
    // Messages settled (acked, written) by the killed processes, and the bound on resends.
    let (mut settled_before, mut in_flight_bound) = (0u64, 0u64);
    for round in 0..=KILLS {
        let ferry = FerryProcess::spawn_with(dir.path(), SHARDS, &flags);
        // Resend from the first key not yet answered (keys a kill cut off answer their first id).
        let next = ids.lock().unwrap().len();
        let end = if round == KILLS { MESSAGES } else { (round + 1) * per_round };
        let sender = tokio::spawn(send_keyed(ferry.addr, next..end, ids.clone()));
        if round < KILLS {
            // Kill with sends in flight (a third of the round answered) and delivery running (the
            // chat server received some of this round's messages).
            let (unique_at_start, answered_by) = (chat_stats(chat_addr).await.unique_messages, next + per_round / 3);
            let ids2 = ids.clone();
            wait_for(Duration::from_secs(60), "a third of the round answered and delivered from", || {
                let ids = ids2.clone();
                async move {
                    let answered = ids.lock().unwrap().len();
                    let unique = chat_stats(chat_addr).await.unique_messages;
                    if answered >= answered_by && unique > unique_at_start {
                        Ok(())
                    } else {
                        Err(format!(
                            "{answered} of {answered_by} answered; the chat server has {unique} (had {unique_at_start})"
                        ))
                    }
                }
            })
            .await;
            let settled = metric_sum(ferry.http_addr, "ferry_delivery_settled_total").await;
            ferry.kill9();
            let cut = sender.await.unwrap();
            assert!(cut.is_err(), "round {round}: the kill came after the round's last send was answered");
            let unique_at_kill = settled_unique(chat_addr).await;
            settled_before += settled;
            assert!(unique_at_kill >= settled_before, "settled {settled_before} > received {unique_at_kill}");
            in_flight_bound += unique_at_kill - settled_before;
            eprintln!(
                "kill {round}: settled {settled_before} before it, chat server had {unique_at_kill}: resend bound now {in_flight_bound}"
            );
        } else {
            sender.await.unwrap().expect("ferry up for the whole last round");
            let expected = ids.lock().unwrap().len() as u64;
            wait_for(Duration::from_secs(120), "the chat server has every accepted message", || async move {
                let unique = chat_stats(chat_addr).await.unique_messages;
                if unique >= expected { Ok(()) } else { Err(format!("{unique} of {expected}")) }
            })
            .await;
            let ids = ids.lock().unwrap().clone();
            let distinct: HashSet<&String> = ids.iter().collect();
            assert_eq!(distinct.len(), MESSAGES, "one id per idempotency key");
            // The chat server sends both receipts for every message: each must be recorded (a
            // `read` alone would hide a lost `delivered`, and `delivered` a lost `read`).
            let mut client = connect(ferry.addr).await;
            for id in &ids {
                let c = client.clone();
                let id2 = id.clone();
                wait_for(Duration::from_secs(30), &format!("{id} read, with delivered in its history"), || {
                    let mut c = c.clone();
                    let id = id2.clone();
                    async move {
                        let r = status_of(&mut c, &id).await;
                        let history: Vec<&str> = r.history.iter().map(|h| h.status.as_str()).collect();
                        if r.status == "read" && history.contains(&"delivered") {
                            Ok(())
                        } else {
                            Err(format!("status {}, history {history:?}", r.status))
                        }
                    }
                })
                .await;
            }
            let stats = chat_stats(chat_addr).await;
            eprintln!("resends {} (bound {in_flight_bound})", stats.duplicate_messages);
            assert_eq!(stats.unique_messages, MESSAGES as u64, "exactly the accepted messages arrived");
            assert_eq!(stats.decrypt_failures, 0);
            assert!(
                stats.duplicate_messages <= in_flight_bound,
                "resends ({}) exceed what was in flight at the kills ({in_flight_bound})",
                stats.duplicate_messages
            );
            let last = status_of(&mut client, ids.last().unwrap()).await;
            assert_ne!(last.status, "failed");
            assert_eq!(ferry.terminate().code(), Some(0), "SIGTERM drains and exits 0");
        }
    }
}
