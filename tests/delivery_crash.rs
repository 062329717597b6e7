//! Crash test of delivery: real `ferry serve` and `ferry chatsim` processes; ferry is killed with
//! SIGKILL several times during a run of 20,000 messages and restarted on the same data dir.
//!
//! Afterwards the chat server has every accepted message exactly once (`unique_messages` equals
//! the accepted ids), every id's status is at least `sent`, and the resends (`duplicate_messages`)
//! are bounded by what can be in flight at the kills (window × shards per kill).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use ferry_proto::v1;
use support::{ChatSimProcess, FerryProcess, chat_stats, connect, eventually, status_of, text};

const MESSAGES: usize = 20_000;
const SHARDS: u16 = 4;
const KILLS: usize = 3;
const WINDOW: usize = 4096;

/// Sends every message with an idempotency key, retrying (same key) until each is answered: a
/// send cut off by a kill is retried after the restart and answers the first id, so every key
/// maps to exactly one message.
async fn send_all_keyed(addr: std::net::SocketAddr, range: std::ops::Range<usize>) -> Result<Vec<String>, usize> {
    let mut client = connect(addr).await;
    let mut ids = Vec::with_capacity(range.len());
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
        match client.send_batch(v1::SendBatchRequest { messages }).await {
            Ok(r) => {
                for result in r.into_inner().results {
                    match result.outcome {
                        Some(v1::send_result::Outcome::Accepted(a)) => ids.push(a.message_id),
                        other => panic!("rejected: {other:?}"),
                    }
                }
            }
            Err(_) => return Err(ids.len()),
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_nothing_and_duplicates_are_bounded() {
    let chat = ChatSimProcess::spawn("127.0.0.1:0", &["--delivered-after-ms", "10", "--read-after-ms", "30"]);
    let chat_addr = chat.addr;
    let upstream = chat_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    // Text to users who never wrote: the customer-service window is not what this test is about.
    let flags = ["--upstream", upstream.as_str(), "--customer-service-window", "off"];

    let mut ids: Vec<String> = Vec::new();
    let per_round = MESSAGES / (KILLS + 1);
    let mut next = 0usize;
    for round in 0..=KILLS {
        let ferry = FerryProcess::spawn_with(dir.path(), SHARDS, &flags);
        let end = if round == KILLS { MESSAGES } else { next + per_round };
        // Resend from the first key not yet answered (earlier answers replay their ids).
        let answered = send_all_keyed(ferry.addr, next..end).await.expect("ferry up for the whole round");
        ids.extend(answered);
        next = end;
        if round < KILLS {
            // Let delivery get going, then kill in the middle of it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            ferry.kill9();
        } else {
            let addr = ferry.addr;
            let expected = ids.len() as u64;
            eventually(Duration::from_secs(120), "the chat server has every accepted message", || async move {
                chat_stats(chat_addr).await.unique_messages >= expected
            })
            .await;
            let stats = chat_stats(chat_addr).await;
            let distinct: HashSet<&String> = ids.iter().collect();
            assert_eq!(distinct.len(), MESSAGES, "one id per idempotency key");
            assert_eq!(stats.unique_messages, MESSAGES as u64, "exactly the accepted messages arrived");
            assert_eq!(stats.decrypt_failures, 0);
            assert!(
                stats.duplicate_messages <= (KILLS * WINDOW * SHARDS as usize) as u64,
                "resends bounded by what was in flight at the kills: {}",
                stats.duplicate_messages
            );
            let mut client = connect(addr).await;
            for id in &ids {
                let c = client.clone();
                let id2 = id.clone();
                eventually(Duration::from_secs(30), "status at least sent", || {
                    let mut c = c.clone();
                    let id = id2.clone();
                    async move { matches!(status_of(&mut c, &id).await.status.as_str(), "sent" | "delivered" | "read") }
                })
                .await;
            }
            let last = status_of(&mut client, ids.last().unwrap()).await;
            assert_ne!(last.status, "failed");
            ferry.terminate();
        }
    }
}
