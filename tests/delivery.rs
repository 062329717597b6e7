//! Delivery end to end, in one process over real sockets: ferry's ingest and delivery loops on
//! port 0, the reference chat server (`ferry_chatsim`) on port 0, talking gRPC to each other.
//!
//! What must hold: every accepted message is decrypted and acked by the server exactly once, its
//! status moves accepted → sent → delivered → read and never back; an expired message fails with
//! 410; sessions survive a restart and an eviction without a new key agreement; an upstream outage
//! loses nothing; a rate-limited recipient backs off alone (waits growing 4^X, at least the
//! server's retry-after) and a marketing-limited one fails with 131049 after its retries.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::CoordinatorConfig;
use ferry_delivery::DeliveryConfig;
use ferry_model::clock::{ManualClock, SharedClock};
use ferry_proto::v1;
use support::{Delivering, chat_stats, eventually, status_of, text, wait_for};

async fn chatsim(config: ChatSimConfig) -> ChatSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ChatSim::start(listener, config).await.expect("start chatsim")
}

/// A TCP proxy in front of the chat server, owned by the test: the node is pointed at its
/// listener, bound once on port 0 and never released, so an outage needs no port given up and
/// bound again. It forwards every connection to the current backend; routed to `None` (an outage)
/// it cuts the connections it forwards and closes every new one at once, counting each.
struct Proxy {
    addr: SocketAddr,
    backend: tokio::sync::watch::Sender<Option<SocketAddr>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(Some(backend));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.expect("the proxy accepts");
                let mut route = rx.clone();
                let backend = *route.borrow_and_update();
                let refused = counter.clone();
                tokio::spawn(async move {
                    let server = match backend {
                        Some(backend) => tokio::net::TcpStream::connect(backend).await.ok(),
                        None => None,
                    };
                    let Some(mut server) = server else {
                        refused.fetch_add(1, Ordering::AcqRel);
                        return; // `client` dropped: closed at once
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = route.changed() => {} // rerouted (an outage): cut
                    }
                });
            }
        });
        Proxy { addr, backend: tx, refused, task }
    }

    /// Forwards new connections to `backend` from now on (`None`: closes them); cuts the ones open.
    fn route(&self, backend: Option<SocketAddr>) {
        self.backend.send_replace(backend);
    }

    /// Connections closed at once so far (accepted during an outage, or the backend refused them).
    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn node(shards: u16, upstream: SocketAddr, delivery: DeliveryConfig, clock: SharedClock) -> Delivering {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), shards);
    Delivering::start(dir, config, upstream, delivery, clock).await
}

async fn restart(dir: tempfile::TempDir, shards: u16, upstream: SocketAddr, delivery: DeliveryConfig) -> Delivering {
    let config = CoordinatorConfig::for_test(dir.path(), shards);
    Delivering::start(dir, config, upstream, delivery, ferry_model::clock::system()).await
}

/// Sends `n` text messages to `recipients` distinct numbers in batches; returns the ids in order.
async fn send_texts(client: &mut support::Client, n: usize, recipients: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let all: Vec<v1::SendRequest> =
        (0..n).map(|i| text(&format!("+44791{:06}", i % recipients), &format!("{tag} {i}"))).collect();
    for chunk in all.chunks(500) {
        let r = client
            .send_batch(v1::SendBatchRequest { messages: chunk.to_vec() })
            .await
            .expect("batch accepted")
            .into_inner();
        for result in r.results {
            match result.outcome {
                Some(v1::send_result::Outcome::Accepted(a)) => ids.push(a.message_id),
                other => panic!("message rejected: {other:?}"),
            }
        }
    }
    ids
}

fn rank(status: &str) -> u8 {
    match status {
        "accepted" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        other => panic!("unexpected status {other}"),
    }
}

/// Waits until every id's status is at least `sent` (the chat server acked it).
async fn wait_all_at_least_sent(client: &support::Client, ids: &[String], timeout: Duration) {
    eventually(timeout, "every message at least sent", || {
        let mut c = client.clone();
        let ids = ids.to_vec();
        async move {
            for id in &ids {
                if rank(&status_of(&mut c, id).await.status) < 1 {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_decrypted_and_acked_once_then_delivered_and_read() {
    let sim = chatsim(ChatSimConfig { delivered_after_ms: 20, read_after_ms: 60, ..ChatSimConfig::default() }).await;
    let ferry = node(4, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;

    const N: usize = 2_000;
    let ids = send_texts(&mut client, N, 300, "hello").await;
    eventually(Duration::from_secs(60), "chatsim acked every message", || async {
        sim.stats().unique_messages == N as u64
    })
    .await;
    let stats = chat_stats(sim.local_addr()).await;
    assert_eq!(stats.unique_messages, N as u64);
    assert_eq!(stats.duplicate_messages, 0, "no message may arrive twice without a crash");
    assert_eq!(stats.decrypt_failures, 0);
    assert_eq!(stats.sessions_established, 300, "one session per recipient");

    // Every status reaches read, through sent and delivered, in that order.
    for id in &ids {
        let mut c = client.clone();
        eventually(Duration::from_secs(30), "status read", || {
            let mut c = c.clone();
            let id = id.clone();
            async move { status_of(&mut c, &id).await.status == "read" }
        })
        .await;
        let record = status_of(&mut c, id).await;
        let history: Vec<&str> = record.history.iter().map(|h| h.status.as_str()).collect();
        assert_eq!(history, ["accepted", "sent", "delivered", "read"], "history of {id}");
        let times: Vec<i64> = record.history.iter().map(|h| h.timestamp_ms).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "history in time order: {times:?}");
        assert!(record.error.is_none());
    }
    let totals = ferry.totals();
    assert_eq!(totals.settled, N as u64);
    assert_eq!(totals.session_setups, 300);
    assert!(totals.session_hits >= (N - 300) as u64);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_one_recipient_arrive_in_send_order() {
    let sim = chatsim(ChatSimConfig::default()).await;
    let ferry = node(2, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    let ids = send_texts(&mut client, 200, 1, "ordered").await;
    eventually(Duration::from_secs(30), "all acked", || async { sim.stats().unique_messages == 200 }).await;
    let order = sim.delivery_order("44791000000");
    assert_eq!(order, ids, "the server saw the messages of one recipient in send order");
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authentication_template_expires_after_ten_minutes_with_410() {
    // The server is always "temporarily unavailable": nothing can be delivered.
    let sim = chatsim(ChatSimConfig { error_rate: 1.0, ..ChatSimConfig::default() }).await;
    let clock = ManualClock::new();
    let ferry = node(2, sim.local_addr(), DeliveryConfig::for_test(), clock.clone()).await;
    let mut client = ferry.node.client().await;

    let mut otp = text("+16315550001", "");
    otp.content = Some(v1::send_request::Content::Template(v1::TemplateMessage {
        name: "otp".into(),
        language: Some(v1::TemplateLanguage { policy: "deterministic".into(), code: "en_US".into() }),
        category: "authentication".into(),
        ..Default::default()
    }));
    let otp_id = client.send(otp).await.expect("accepted").into_inner().message_id;
    let plain_id = client.send(text("+16315550002", "no rush")).await.expect("accepted").into_inner().message_id;
    let record = status_of(&mut client, &otp_id).await;
    assert_eq!(record.expires_at_ms - record.accepted_at_ms, 600_000, "authentication templates live 10 minutes");

    // Retries go on while the TTL holds.
    eventually(Duration::from_secs(20), "retries happened", || async { ferry.totals().temporary_failures >= 4 }).await;
    assert_eq!(status_of(&mut client, &otp_id).await.status, "accepted");

    clock.advance(Duration::from_secs(10 * 60 + 1));
    let mut c = client.clone();
    eventually(Duration::from_secs(20), "the template failed", || {
        let mut c = c.clone();
        let id = otp_id.clone();
        async move { status_of(&mut c, &id).await.status == "failed" }
    })
    .await;
    let failed = status_of(&mut c, &otp_id).await;
    assert_eq!(failed.error.as_ref().map(|e| e.code), Some(410));
    // A plain text lives 30 days: still queued, still retried.
    assert_eq!(status_of(&mut c, &plain_id).await.status, "accepted");
    assert_eq!(sim.stats().unique_messages, 0);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_recipient_fails_with_1013() {
    let sim = chatsim(ChatSimConfig { invalid_prefix: Some("1999".into()), ..ChatSimConfig::default() }).await;
    let ferry = node(2, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    let bad = client.send(text("+19995550100", "nobody")).await.unwrap().into_inner().message_id;
    let good = client.send(text("+16315550100", "somebody")).await.unwrap().into_inner().message_id;
    let c = client.clone();
    eventually(Duration::from_secs(20), "both settled", || {
        let mut c = c.clone();
        let (bad, good) = (bad.clone(), good.clone());
        async move {
            status_of(&mut c, &bad).await.status == "failed" && status_of(&mut c, &good).await.status != "accepted"
        }
    })
    .await;
    assert_eq!(status_of(&mut client, &bad).await.error.map(|e| e.code), Some(1013));
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_an_eviction_reloads_them() {
    let sim = chatsim(ChatSimConfig::default()).await;
    // A cache of 2 sessions for 10 recipients: most encryptions follow an eviction.
    let delivery = DeliveryConfig { session_cache_capacity: 2, ..DeliveryConfig::for_test() };
    let ferry = node(1, sim.local_addr(), delivery.clone(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    send_texts(&mut client, 100, 10, "first").await;
    eventually(Duration::from_secs(30), "first round acked", || async { sim.stats().unique_messages == 100 }).await;
    let first = sim.stats();
    assert_eq!(first.bundles_served, 10, "one key agreement per recipient");
    assert!(ferry.totals().session_loads > 0, "evicted sessions were reloaded from the shard");
    assert_eq!(first.decrypt_failures, 0);
    let dir = ferry.stop().await;

    let ferry = restart(dir, 1, sim.local_addr(), delivery).await;
    let mut client = ferry.node.client().await;
    send_texts(&mut client, 100, 10, "second").await;
    eventually(Duration::from_secs(30), "second round acked", || async { sim.stats().unique_messages == 200 }).await;
    let second = sim.stats();
    assert_eq!(second.bundles_served, 10, "no new key agreement after the restart");
    assert_eq!(second.decrypt_failures, 0);
    assert_eq!(second.duplicate_messages, 0);
    assert_eq!(ferry.totals().session_setups, 0);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_loses_nothing_and_the_backlog_drains() {
    let sim = chatsim(ChatSimConfig::default()).await;
    // The node reaches the chat server through the test's proxy: the outage is made there.
    let proxy = Proxy::start(sim.local_addr()).await;
    let ferry = node(4, proxy.addr, DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;

    let mut ids = send_texts(&mut client, 1_000, 200, "before").await;
    // Every ack of the first part is recorded before the server goes away, so the two servers'
    // counts add up exactly.
    let mut c = client.clone();
    wait_all_at_least_sent(&c, &ids, Duration::from_secs(30)).await;
    let before = sim.stats();
    assert_eq!(before.unique_messages, 1_000);
    // The outage: every link is cut, every new connection closed at once, and the server goes.
    proxy.route(None);
    sim.shutdown().await;

    // Accepted while the chat server is down: durable, waiting. Once every one of them is in a
    // delivery loop's memory and the loops have tried the server again since (refused), none of
    // them may have been sent or failed.
    let during = send_texts(&mut client, 1_000, 200, "during").await;
    wait_for(Duration::from_secs(30), "the 1,000 messages sent during the outage in memory", || async {
        match ferry.totals().loaded {
            1_000 => Ok(()),
            n => Err(format!("{n} in memory")),
        }
    })
    .await;
    let refused = proxy.refused();
    wait_for(Duration::from_secs(60), "8 more connections refused (2 per shard)", || async {
        let n = proxy.refused() - refused;
        if n >= 8 { Ok(()) } else { Err(format!("{n} refused")) }
    })
    .await;
    for id in &during {
        assert_eq!(status_of(&mut c, id).await.status, "accepted", "{id}, sent during the outage");
    }
    ids.extend(during);

    // A new server (it knows no session), behind the same proxy address.
    let sim = chatsim(ChatSimConfig::default()).await;
    proxy.route(Some(sim.local_addr()));
    wait_all_at_least_sent(&c, &ids, Duration::from_secs(60)).await;
    let after = sim.stats();
    assert_eq!(before.unique_messages + after.unique_messages, 2_000, "every message reached a server once");
    assert_eq!(after.decrypt_failures, 0);
    for id in &ids {
        assert!(rank(&status_of(&mut c, id).await.status) >= 1);
    }
    ferry.stop().await;
    sim.shutdown().await;
}

/// When `id` was acked (the server's timestamp of its `sent` status), in ms since the epoch.
async fn sent_at(client: &mut support::Client, id: &str) -> i64 {
    let record = status_of(client, id).await;
    record
        .history
        .iter()
        .find(|c| c.status == "sent")
        .map(|c| c.timestamp_ms)
        .unwrap_or_else(|| panic!("{id} was not sent: {record:?}"))
}

/// Waits until `id` is `failed`; returns its record.
async fn wait_failed(client: &support::Client, id: &str, timeout: Duration) -> v1::MessageRecord {
    eventually(timeout, "the message failed", || {
        let mut c = client.clone();
        let id = id.to_owned();
        async move { status_of(&mut c, &id).await.status == "failed" }
    })
    .await;
    status_of(&mut client.clone(), id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_recipient_backs_off_alone_and_waits_the_servers_retry_after() {
    // One message per second per recipient; one shard, so every recipient shares one loop.
    let sim = chatsim(ChatSimConfig { rate_limit_per_recipient: 1, ..ChatSimConfig::for_test() }).await;
    let delivery = DeliveryConfig { rate_limit_base_ms: 20, ..DeliveryConfig::for_test() };
    let ferry = node(1, sim.local_addr(), delivery, ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;

    // Five messages to one recipient first (they need at least four seconds at 1/s), then one each
    // to 30 others, queued behind them.
    let mut busy = Vec::new();
    for i in 0..5 {
        busy.push(client.send(text("+16315550100", &format!("busy {i}"))).await.unwrap().into_inner().message_id);
    }
    let others: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..30 {
            let to = format!("+44792{i:06}");
            ids.push(client.send(text(&to, "other")).await.unwrap().into_inner().message_id);
        }
        ids
    };
    wait_all_at_least_sent(&client, &others, Duration::from_secs(20)).await;
    wait_all_at_least_sent(&client, &busy, Duration::from_secs(30)).await;
    // The others did not wait for the rate-limited recipient: the first of them (queued behind
    // all five) was acked before the last of the five, which needs four more one-second windows.
    // (Order of the server's ack times, not a duration measured here.)
    let others_first = sent_at(&mut client.clone(), &others[0]).await;
    let busy_last = sent_at(&mut client.clone(), &busy[4]).await;
    assert!(
        others_first < busy_last,
        "the others waited for the rate-limited recipient: acked at {others_first} ms, its last at {busy_last} ms"
    );
    assert_eq!(sim.delivery_order("16315550100"), busy, "backing off keeps the recipient's order");
    let totals = ferry.totals();
    let stats = chat_stats(sim.local_addr()).await;
    assert!(totals.rate_limited >= 1, "the limit was hit: {totals:?}");
    assert_eq!(totals.rate_limited, stats.rate_limited, "ferry counted every refusal");
    // With rate_limit_base_ms = 20 alone the retries would come after 20, 80, 320 ms (several
    // refusals per message); waiting at least the server's retry-after lands each retry in the
    // next one-second window, so each of the four later messages is refused at most once.
    assert!(stats.rate_limited <= 4, "retries ignored the server's retry-after: {stats:?}");
    assert_eq!(stats.unique_messages, 35);
    assert_eq!(totals.marketing_limited, 0);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marketing_limited_message_fails_with_131049_after_growing_waits_while_others_flow() {
    let sim = chatsim(ChatSimConfig { marketing_limit_prefix: Some("1888".into()), ..ChatSimConfig::for_test() }).await;
    // Waits of 100, 400, 1600 ms between the four attempts (4^X × 100 ms).
    let delivery = DeliveryConfig { rate_limit_base_ms: 100, marketing_limit_retries: 3, ..DeliveryConfig::for_test() };
    let ferry = node(1, sim.local_addr(), delivery, ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;

    // Waits only lengthen under load, so the time from before the send to the fourth refusal is
    // at least the three waits (100 + 400 + 1600 ms) however busy the machine is: a lower bound,
    // not a gap measured on a poll.
    let before_send = tokio::time::Instant::now();
    let limited = client.send(text("+18885550100", "offer")).await.unwrap().into_inner().message_id;
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(client.send(text(&format!("+16315551{i:03}"), "hello")).await.unwrap().into_inner().message_id);
    }
    eventually(Duration::from_secs(20), "four refusals", || async {
        let seen = sim.stats().marketing_limited;
        assert!(seen <= 4, "more attempts than marketing_limit_retries + 1: {seen}");
        seen == 4
    })
    .await;
    let took = before_send.elapsed();
    assert!(took >= Duration::from_millis(2_100), "the waits grow (100, 400, 1600 ms): four refusals within {took:?}");

    let failed = wait_failed(&client, &limited, Duration::from_secs(20)).await;
    let error = failed.error.expect("a failed message has an error");
    assert_eq!(error.code, 131049, "{error:?}");
    assert_eq!(error.title, "This message was not delivered to maintain healthy ecosystem engagement");
    assert!(error.details.contains("refused 4 times"), "{error:?}");
    wait_all_at_least_sent(&client, &others, Duration::from_secs(20)).await;
    // Every other recipient was delivered, and the failed message is not sent again: the loop
    // holds no message any more (none in memory, none in flight), so it has nothing to resend.
    wait_for(Duration::from_secs(20), "the delivery loop holds no message", || async {
        let t = ferry.totals();
        if (t.loaded, t.in_flight) == (0, 0) {
            Ok(())
        } else {
            Err(format!("{} in memory, {} in flight", t.loaded, t.in_flight))
        }
    })
    .await;
    let stats = chat_stats(sim.local_addr()).await;
    assert_eq!(stats.marketing_limited, 4, "marketing_limit_retries + 1 attempts");
    assert_eq!(stats.unique_messages, 20);
    let totals = ferry.totals();
    assert_eq!((totals.marketing_limited, totals.rate_limited, totals.failed), (4, 0, 1));
    ferry.stop().await;
    sim.shutdown().await;
}

/// Sends `n` texts to one recipient in batches of 500; returns the ids in send order.
async fn send_to_one(client: &mut support::Client, to: &str, n: usize, tag: &str) -> Vec<String> {
    let all: Vec<v1::SendRequest> = (0..n).map(|i| text(to, &format!("{tag} {i}"))).collect();
    let mut ids = Vec::with_capacity(n);
    for chunk in all.chunks(500) {
        let r = client.send_batch(v1::SendBatchRequest { messages: chunk.to_vec() }).await.expect("batch").into_inner();
        for result in r.results {
            match result.outcome {
                Some(v1::send_result::Outcome::Accepted(a)) => ids.push(a.message_id),
                other => panic!("message rejected: {other:?}"),
            }
        }
    }
    ids
}

/// No more than `delivery.window` messages are in memory however deep the queue: 600 messages
/// (300 to one recipient, more than its cap, and 3 each to 100 others) queued before delivery
/// starts, a window of 32. The loop's high-water mark of messages in memory reaches the window
/// (the queue is deep enough to fill it) and never passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_the_window_is_in_memory_with_a_deep_queue() {
    use std::sync::atomic::Ordering;
    const WINDOW: u64 = 32;
    let delivery =
        DeliveryConfig { window: WINDOW as usize, max_window_per_recipient: 8, ..DeliveryConfig::for_test() };
    // Queue everything while the chat server never answers (a listener nobody accepts on; kept
    // bound, so no other test's server can take its port meanwhile).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ferry = node(1, silent.local_addr().unwrap(), delivery.clone(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    let mut ids = send_to_one(&mut client, "+16315550177", 300, "deep").await;
    ids.extend(send_texts(&mut client, 300, 100, "wide").await);
    let dir = ferry.stop().await;
    drop(silent);

    let sim = chatsim(ChatSimConfig { ack_latency_ms: 5, ..ChatSimConfig::for_test() }).await;
    let ferry = restart(dir, 1, sim.local_addr(), delivery).await;
    eventually(Duration::from_secs(60), "all 600 acked", || async { sim.stats().unique_messages == 600 }).await;
    wait_all_at_least_sent(&ferry.node.client().await, &ids, Duration::from_secs(30)).await;
    let most = ferry.delivery.as_ref().unwrap().shard_stats()[0].loaded_max.load(Ordering::Relaxed);
    assert_eq!(most, WINDOW, "most messages in memory at once: {most}, window {WINDOW}");
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_rate_limited_recipient_leaves_its_surplus_on_disk_and_the_shard_flows() {
    // Five messages per second per recipient; one shard, so every recipient shares one window.
    let sim = chatsim(ChatSimConfig { rate_limit_per_recipient: 5, ..ChatSimConfig::for_test() }).await;
    let delivery = DeliveryConfig {
        max_window_per_recipient: 8,
        rate_limit_base_ms: 20,
        rate_limit_max_backoff_ms: 1_000,
        ..DeliveryConfig::for_test()
    };
    let ferry = node(1, sim.local_addr(), delivery, ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;

    // 10,000 messages to one recipient (more than twice the window of 4,096), then one each to
    // 1,000 others, queued behind them.
    const DEEP: &str = "16315550199";
    let deep = send_to_one(&mut client, &format!("+{DEEP}"), 10_000, "deep").await;
    send_texts(&mut client, 1_000, 1_000, "other").await;
    let others_delivered = || sim.stats().unique_messages as usize - sim.delivery_order(DEEP).len();
    eventually(Duration::from_secs(60), "the 1,000 others delivered while the deep recipient is limited", || async {
        others_delivered() == 1_000
    })
    .await;
    assert!(sim.delivery_order(DEEP).len() < 10_000);
    eventually(Duration::from_secs(10), "only the deep recipient's share left in memory", || async {
        let totals = ferry.totals();
        totals.loaded <= 8 && totals.recipients_capped == 1
    })
    .await;

    // Its surplus is read again from disk as it drains: it keeps flowing, in send order.
    eventually(Duration::from_secs(30), "the deep recipient refilled from disk several times", || async {
        sim.delivery_order(DEEP).len() >= 40
    })
    .await;
    let order = sim.delivery_order(DEEP);
    assert_eq!(order, deep[..order.len()], "the deep recipient's messages arrive in send order");
    assert_eq!(sim.stats().duplicate_messages, 0);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_or_settle_task_is_a_temporary_failure_of_what_it_held() {
    use ferry_delivery::failpoint::{self, Point};
    let sim = chatsim(ChatSimConfig::for_test()).await;
    let ferry = node(1, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    failpoint::arm(Point::SessionTask, "16315550301", 1);
    failpoint::arm(Point::SettleTask, "16315550302", 1);
    let mut ids = Vec::new();
    for to in ["+16315550301", "+16315550302", "+16315550304"] {
        ids.push(client.send(text(to, "despite a panic")).await.unwrap().into_inner().message_id);
    }
    wait_all_at_least_sent(&client, &ids, Duration::from_secs(30)).await;
    let stats = ferry.delivery.as_ref().expect("running").shard_stats()[0].snapshot();
    assert_eq!((stats.task_panics, stats.loop_restarts), (2, 0), "{stats:?}");
    assert_eq!(sim.stats().unique_messages, 3);
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_loop_is_restarted_and_delivers_what_it_held() {
    use ferry_delivery::failpoint::{self, Point};
    let sim = chatsim(ChatSimConfig::for_test()).await;
    let ferry = node(1, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    failpoint::arm(Point::ShardLoop, "16315550303", 1);
    let mut ids = Vec::new();
    for to in ["+16315550303", "+16315550305", "+16315550303"] {
        ids.push(client.send(text(to, "despite a dead loop")).await.unwrap().into_inner().message_id);
    }
    wait_all_at_least_sent(&client, &ids, Duration::from_secs(30)).await;
    let shard = &ferry.delivery.as_ref().expect("running").shard_stats()[0];
    let stats = shard.snapshot();
    assert_eq!((stats.task_panics, stats.loop_restarts), (1, 1), "{stats:?}");
    assert!(!shard.delivery_restarting(), "health shows the loop running again");
    assert_eq!(sim.stats().unique_messages, 3);
    assert_eq!(sim.delivery_order("16315550303"), [ids[0].clone(), ids[2].clone()], "order kept across the restart");
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_but_keeps_the_stream_is_reconnected_after_timeouts_in_a_row() {
    // Each stream answers 5 envelopes, then reads without answering and stays open.
    let sim = chatsim(ChatSimConfig { stall_after: 5, ..ChatSimConfig::for_test() }).await;
    let delivery =
        DeliveryConfig { ack_timeout_ms: 300, ack_timeouts_before_reconnect: 2, ..DeliveryConfig::for_test() };
    let ferry = node(1, sim.local_addr(), delivery, ferry_model::clock::system()).await;
    let mut client = ferry.node.client().await;
    let ids = send_texts(&mut client, 20, 20, "stalled").await;
    wait_all_at_least_sent(&client, &ids, Duration::from_secs(30)).await;
    let stats = sim.stats();
    assert_eq!(stats.unique_messages, 20);
    assert!(stats.connections >= 4, "a new stream after each stall: {stats:?}");
    let totals = ferry.totals();
    assert!(totals.ack_timeouts >= 2 && totals.link_resets >= 3, "{totals:?}");
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_ttl_passes_while_its_attempt_is_unanswered_waits_for_the_answer() {
    // Every answer comes 1.5 s after the envelope, after ferry's ack timeout of 1 s; no receipts
    // within the test, so the status is ferry's own verdict.
    let sim = chatsim(ChatSimConfig {
        ack_latency_ms: 1_500,
        delivered_after_ms: 600_000,
        read_receipts: false,
        ..ChatSimConfig::for_test()
    })
    .await;
    let clock = ManualClock::new();
    let delivery = DeliveryConfig { ack_timeout_ms: 1_000, ..DeliveryConfig::for_test() };
    let ferry = node(1, sim.local_addr(), delivery, clock.clone()).await;
    let mut client = ferry.node.client().await;
    let id = client.send(text("+16315550401", "a late answer")).await.unwrap().into_inner().message_id;
    eventually(Duration::from_secs(10), "the first attempt is out", || async { ferry.totals().envelopes_sent >= 1 })
        .await;
    // The TTL (30 days) passes while the attempt is unanswered.
    clock.advance(Duration::from_secs(31 * 24 * 3600));
    eventually(Duration::from_secs(20), "the message settled", || {
        let mut c = client.clone();
        let id = id.clone();
        async move { status_of(&mut c, &id).await.status != "accepted" }
    })
    .await;
    let record = status_of(&mut client, &id).await;
    assert_ne!(record.status, "failed", "the server acked it: not a false 410 ({:?})", record.error);
    assert_eq!(record.status, "sent");
    let totals = ferry.totals();
    assert!(totals.ack_timeouts >= 1 && totals.failed == 0, "the answer came after the ack timeout: {totals:?}");
    assert_eq!(sim.stats().unique_messages, 1);
    ferry.stop().await;
    sim.shutdown().await;
}
