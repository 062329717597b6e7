//! A three-node cluster of real `ferry serve` processes (issue #12): every shard a Raft group of
//! the three, delivering to one real `ferry chatsim`.
//!
//! Under keyed sends through every node, the leader of shard 0 is SIGKILLed. The other two elect a
//! new leader, which delivers what the old one had not; sends that failed with 1011 during the
//! election are retried with the same key; the killed node comes back on its data dir and catches
//! up. Then the history check: every answered id is delivered to the chat server, none is lost or
//! answered for two keys, the ids stay in the shard's id space, and the chat server has exactly
//! one message per key: a retry after an unknown outcome (the first send may have committed)
//! answers the first id through any node, because the message's shard answers a key it appended
//! before at apply (see ARCHITECTURE.md, "Replication").

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::v1;
use support::cluster::Cluster;
use support::{chat_stats, connect, text, wait_for};

const SHARDS: u16 = 2;

/// What the senders saw.
#[derive(Default)]
struct History {
    /// key → every id answered for it.
    answered: HashMap<String, Vec<String>>,
    /// Sends that failed after they may have reached a leader (1011 with "unknown"): each may
    /// have committed once.
    indeterminate: usize,
    /// Other UNAVAILABLE answers (no leader yet, node down): nothing was written.
    unavailable: usize,
}

/// Sends keys `from..to`, spreading them over `nodes` round robin; a failed send is retried (same
/// key, next node) until it is answered, for at most 60 s per key.
async fn send_keys(nodes: Vec<SocketAddr>, from: usize, to: usize, history: Arc<Mutex<History>>) {
    let mut clients = Vec::new();
    for addr in &nodes {
        clients.push(connect(*addr).await);
    }
    for (turn, k) in (from..to).enumerate() {
        let key = format!("cluster-key-{k}");
        let mut request = text(&format!("+1631{:07}", k % 997), &format!("cluster {k}"));
        request.idempotency_key = key.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        loop {
            let c = &mut clients[(turn + attempt) % nodes.len()];
            attempt += 1;
            match tokio::time::timeout(Duration::from_secs(10), c.send(request.clone())).await {
                Ok(Ok(r)) => {
                    history.lock().unwrap().answered.entry(key.clone()).or_default().push(r.into_inner().message_id);
                    break;
                }
                Ok(Err(status)) => {
                    let mut h = history.lock().unwrap();
                    if status.message().contains("unknown") {
                        h.indeterminate += 1;
                    } else {
                        h.unavailable += 1;
                    }
                }
                Err(_) => history.lock().unwrap().indeterminate += 1,
            }
            assert!(tokio::time::Instant::now() < deadline, "key {key} was not answered within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_shard_leader_loses_nothing_and_a_new_leader_delivers() {
    let mut cluster = Cluster::start(3, SHARDS);
    let leader = cluster.wait_leader(0, None, Duration::from_secs(60)).await;
    let leader_1 = cluster.wait_leader(1, None, Duration::from_secs(60)).await;
    let all: Vec<SocketAddr> = cluster.running().into_iter().map(|(_, a)| a).collect();
    let history = Arc::new(Mutex::new(History::default()));
    // `ferry cluster status`: every node answers for both groups and names the same leaders.
    let status = cluster.status();
    assert_eq!(status.len(), 3, "{status:?}");
    for node in &status {
        let groups = node["groups"].as_array().unwrap_or_else(|| panic!("groups of {node}"));
        assert_eq!(groups.len(), SHARDS as usize, "{node}");
        for (shard, expected) in [(0, leader), (1, leader_1)] {
            let g = groups.iter().find(|g| g["shard"] == shard).unwrap_or_else(|| panic!("shard {shard} in {node}"));
            assert_eq!(g["leader"], expected, "node {} names the leader of shard {shard}: {g}", node["node"]);
            assert_eq!(g["voters"], serde_json::json!([1, 2, 3]), "{g}");
        }
    }

    // A node that leads nothing (leaders start spread: shard 0 on node 1, shard 1 on node 2)
    // accepts everything: its writes are forwarded.
    if let Some(idle) = (1..=3).find(|id| ![leader, leader_1].contains(id)) {
        send_keys(vec![cluster.node(idle).addr], 0, 50, history.clone()).await;
    }
    send_keys(all.clone(), 50, 150, history.clone()).await;

    // Two rounds: SIGKILL shard 0's leader with sends in flight through the others; a new
    // leader delivers; the killed node comes back on its data dir.
    let mut next_key = 150;
    let mut failovers = Vec::new();
    let mut leader = leader;
    for _ in 0..2 {
        let survivors: Vec<SocketAddr> =
            (cluster.running().into_iter()).filter(|(id, _)| *id != leader).map(|(_, a)| a).collect();
        let load = tokio::spawn(send_keys(survivors, next_key, next_key + 150, history.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill9(leader);
        let killed_at = std::time::Instant::now();
        let new_leader = cluster.wait_leader(0, Some(leader), Duration::from_secs(30)).await;
        failovers.push((leader, new_leader, killed_at.elapsed()));
        load.await.expect("the senders ran");
        cluster.restart(leader);
        next_key += 150;
        leader = new_leader;
    }
    let all: Vec<SocketAddr> = cluster.running().into_iter().map(|(_, a)| a).collect();
    send_keys(all.clone(), next_key, next_key + 100, history.clone()).await;
    let keys = next_key + 100;

    // The history check.
    let h = std::mem::take(&mut *history.lock().unwrap());
    let mut ids = HashSet::new();
    for (key, answered) in &h.answered {
        let first = &answered[0];
        assert!(answered.iter().all(|id| id == first), "key {key} was answered with two ids: {answered:?}");
        assert!(ids.insert(first.clone()), "id {first} was answered for two keys");
    }
    assert_eq!(h.answered.len(), keys, "every key was answered");
    // Every answered id reaches the chat server (through any node: each reads its replica).
    let mut readers = Vec::new();
    for addr in &all {
        readers.push(connect(*addr).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let c = &readers[n % readers.len()];
        wait_for(Duration::from_secs(60), &format!("{id} delivered"), || {
            let mut c = c.clone();
            let id = id.clone();
            async move {
                match c.get_message(v1::GetMessageRequest { message_id: id }).await {
                    Ok(r) => match r.into_inner().status.as_str() {
                        "sent" | "delivered" | "read" => Ok(()),
                        other => Err(format!("status {other}")),
                    },
                    Err(status) => Err(format!("GetMessage: {status}")),
                }
            }
        })
        .await;
    }
    let stats = chat_stats(cluster.chatsim.addr).await;
    let unique = stats.unique_messages as usize;
    assert_eq!(
        unique,
        ids.len(),
        "the chat server has {unique} messages for {} keys ({} sends had an unknown outcome and were retried)",
        ids.len(),
        h.indeterminate
    );
    println!(
        "cluster history: {} keys answered; failovers (killed, new leader delivering, after): {failovers:?}; {} \
         unavailable and {} unknown outcomes retried; chat server: {unique} unique, {} resent; first leader of \
         shard 1: node {leader_1}",
        ids.len(),
        h.unavailable,
        h.indeterminate,
        stats.duplicate_messages
    );

    // Per-recipient order: each recipient's first arrivals at the chat server carry increasing
    // seqs (one envelope per recipient in flight, in seq order), across both failovers.
    let ordered = support::order::assert_recipient_order(cluster.chatsim.addr).await;
    assert!(ordered >= ids.len(), "{ordered} first arrivals checked for {} answered ids", ids.len());

    // Two of three down: a write to a shard is refused (503 / UNAVAILABLE, code 1011), never
    // answered with an id; one back: it is served again.
    let keep = leader;
    let down: Vec<u64> = (1..=3).filter(|id| *id != keep).collect();
    for id in &down {
        cluster.kill9(*id);
    }
    let mut c = connect(cluster.node(keep).addr).await;
    let mut request = text("+16310000001", "no quorum");
    request.idempotency_key = "no-quorum".into();
    let refused = c.send(request.clone()).await.expect_err("no quorum: no id");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let code = refused.metadata().get("ferry-error-code").and_then(|v| v.to_str().ok());
    assert_eq!(code, Some("1011"), "{refused:?}");
    cluster.restart(down[0]);
    wait_for(Duration::from_secs(60), "a send is served once a quorum is back", || {
        let mut c = c.clone();
        let request = request.clone();
        async move { c.send(request).await.map(|_| ()).map_err(|s| s.to_string()) }
    })
    .await;
}

/// A leader paused (SIGSTOP) stops being one: the others elect a new leader, which delivers; when
/// the old one resumes, its gate is closed (it measured the pause) and the chat server refuses its
/// stale stream, so nothing it sends is taken twice; it rejoins as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_off_and_rejoins_as_a_follower() {
    let cluster = Cluster::start(3, 1);
    let leader = cluster.wait_leader(0, None, Duration::from_secs(60)).await;
    let all: Vec<SocketAddr> = cluster.running().into_iter().map(|(_, a)| a).collect();
    let history = Arc::new(Mutex::new(History::default()));
    send_keys(all.clone(), 0, 100, history.clone()).await;

    cluster.signal(leader, "STOP");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Some(l) = cluster.delivering_leader_among(0, &others).await {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader among {others:?} while {leader} is paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let survivors: Vec<SocketAddr> =
        (cluster.running().into_iter()).filter(|(id, _)| *id != leader).map(|(_, a)| a).collect();
    send_keys(survivors, 100, 200, history.clone()).await;

    cluster.signal(leader, "CONT");
    // The resumed node learns the new term and follows; the new leader keeps delivering.
    wait_for(Duration::from_secs(30), "the resumed node follows the new leader", || {
        let view = cluster.raft_view(leader, 0);
        async move {
            match view.await {
                Some(v) if v["role"] == "follower" && v["leader"] == new_leader && v["delivering"] == false => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    send_keys(all, 200, 250, history.clone()).await;

    let h = std::mem::take(&mut *history.lock().unwrap());
    let ids: HashSet<String> = h.answered.values().map(|v| v[0].clone()).collect();
    assert_eq!(ids.len(), 250, "one id per key");
    let mut reader = connect(cluster.node(new_leader).addr).await;
    for id in &ids {
        let r = reader.get_message(v1::GetMessageRequest { message_id: id.clone() }).await;
        assert!(r.is_ok(), "{id} is kept: {r:?}");
    }
    wait_for(Duration::from_secs(60), "every answered id delivered", || {
        let addr = cluster.chatsim.addr;
        let want = ids.len() as u64;
        async move {
            let stats = chat_stats(addr).await;
            if stats.unique_messages >= want { Ok(()) } else { Err(format!("{} of {want}", stats.unique_messages)) }
        }
    })
    .await;
    let stats = chat_stats(cluster.chatsim.addr).await;
    assert_eq!(
        stats.unique_messages as usize,
        ids.len(),
        "{} messages for {} keys ({} unknown outcomes retried)",
        stats.unique_messages,
        ids.len(),
        h.indeterminate
    );
    println!(
        "paused leader {leader} → {new_leader}; chat server: {} unique, {} stale-term envelopes refused, {} stale \
         hellos refused",
        stats.unique_messages, stats.stale_term_envelopes, stats.stale_term_refused
    );
    // Per-recipient order holds across the pause: the fenced old leader's stream got nothing acked.
    let ordered = support::order::assert_recipient_order(cluster.chatsim.addr).await;
    assert!(ordered >= ids.len(), "{ordered} first arrivals checked for {} answered ids", ids.len());
}

/// The order check of the history checks can fail: a reordered recipient, a recipient whose ids
/// change shard, and a foreign id are each reported.
#[test]
fn the_recipient_order_check_reports_a_reordered_recipient() {
    use ferry_model::{MessageId, MessageKey, ShardId};
    use ferry_proto::chat::v1::RecipientHistory;
    let id =
        |shard: u16, seq: u64| MessageId::encode(MessageKey { shard: ShardId(shard), space: 7, seq }).into_string();
    let recipient = |to: &str, ids: Vec<String>| RecipientHistory {
        sender: "15550001111".into(),
        recipient: to.into(),
        delivered: ids.len() as u64,
        message_ids: ids,
        truncated: false,
    };
    let in_order = [recipient("16310000001", vec![id(0, 1), id(0, 2), id(0, 5)])];
    assert_eq!(support::order::recipient_order_violations(&in_order), Vec::<String>::new());
    let broken = [
        recipient("16310000001", vec![id(0, 1), id(0, 3), id(0, 2), id(0, 4)]),
        recipient("16310000002", vec![id(1, 1), id(0, 2)]),
        recipient("16310000003", vec![id(1, 1), "wamid.not-ours".into(), id(1, 1)]),
    ];
    let violations = support::order::recipient_order_violations(&broken);
    assert_eq!(violations.len(), 4, "{violations:#?}");
    assert!(violations[0].contains("(seq 2) arrived after") && violations[0].contains("(seq 3)"), "{violations:?}");
    assert!(violations[1].contains("shard 0") && violations[1].contains("shard 1"), "{violations:?}");
    assert!(violations[2].contains("is not a ferry id"), "{violations:?}");
    assert!(violations[3].contains("(seq 1) arrived after"), "a repeated first arrival: {violations:?}");
}
