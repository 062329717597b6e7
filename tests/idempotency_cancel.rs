//! An idempotency key answers one message whatever happens to the caller's future: keyed sends cut
//! off by tiny deadlines (gRPC) or dropped connections (HTTP), each then retried with the same key,
//! put exactly one message per key on the wire to the chat server.
//!
//! A real `ferry serve` delivers to a real `ferry chatsim` process; the count of messages ferry
//! created comes from its own `/metrics` (`ferry_shard_appended_total`), the count delivered from
//! the chat server's `Stats`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{ChatSimProcess, FerryProcess, chat_stats, connect, http_get, text, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small deterministic generator, so a failing run can be repeated.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A deadline between 50 µs and 4 ms: around one synced write on this kind of machine.
    fn deadline(&mut self) -> Duration {
        Duration::from_micros(50 + self.next() % 4_000)
    }
}

/// Sum over shards of a counter in ferry's Prometheus scrape.
async fn scrape_sum(http: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text scrape");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Waits until the chat server acked `n` distinct messages, then checks that ferry created exactly
/// `n` messages (a duplicate per key would be one more) and that no more than `n` reach the server.
async fn assert_one_message_per_key(ferry: &FerryProcess, chat: SocketAddr, n: usize) {
    let created = scrape_sum(ferry.http_addr, "ferry_shard_appended_total").await as usize;
    assert_eq!(created, n, "ferry created {created} messages for {n} idempotency keys");
    // The accepted counter counts at the durable write, not at the answer: a send whose caller
    // was cut off is counted too (and its replay is not).
    let counted = scrape_sum(ferry.http_addr, "ferry_messages_accepted_total").await as usize;
    assert_eq!(counted, n, "ferry_messages_accepted_total counts every durable message once");
    wait_for(Duration::from_secs(60), &format!("{n} messages delivered"), || async move {
        let unique = chat_stats(chat).await.unique_messages as usize;
        if unique >= n { Ok(()) } else { Err(format!("{unique} at the chat server")) }
    })
    .await;
    let stats = chat_stats(chat).await;
    assert_eq!(stats.unique_messages as usize, n, "exactly one message per key reached the chat server");
}

fn start() -> (ChatSimProcess, FerryProcess, tempfile::TempDir) {
    let chat = ChatSimProcess::spawn("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let upstream = chat.addr.to_string();
    let ferry = FerryProcess::spawn_with(dir.path(), 8, &["--upstream", &upstream, "--customer-service-window", "off"]);
    (chat, ferry, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sends_cut_by_deadlines_then_retried_make_one_message_per_key() {
    const KEYS: usize = 2_000;
    const SENDERS: usize = 32;
    let (chat, ferry, _dir) = start();
    let client = connect(ferry.addr).await;

    let tasks: Vec<_> = (0..SENDERS)
        .map(|t| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut ids = Vec::new();
                for k in (t..KEYS).step_by(SENDERS) {
                    let request = || {
                        let mut r = text(&format!("+1555{k:07}"), &format!("order {k}"));
                        r.idempotency_key = format!("order-{k}");
                        r
                    };
                    // The first try is cut off: the server drops the call at its deadline, the
                    // client stops waiting at the same time.
                    let deadline = rng.deadline();
                    let mut cut = tonic::Request::new(request());
                    cut.set_timeout(deadline);
                    let _ = tokio::time::timeout(deadline, c.send(cut)).await;
                    // The retry waits as long as it takes: a full shard answers 1015, and a
                    // connection the server closed (HTTP/2 caps streams reset by clients) is
                    // reconnected by the channel. Both: back off and retry.
                    let id = loop {
                        match c.send(request()).await {
                            Ok(r) => break r.into_inner().message_id,
                            Err(s)
                                if matches!(
                                    s.code(),
                                    tonic::Code::ResourceExhausted
                                        | tonic::Code::Unavailable
                                        | tonic::Code::Unknown
                                        | tonic::Code::Cancelled
                                ) =>
                            {
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                            Err(s) => panic!("retry of order-{k} refused: {s}"),
                        }
                    };
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(KEYS);
    for t in tasks {
        ids.extend(t.await.expect("sender task"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), KEYS, "every key answered its own id");
    assert_one_message_per_key(&ferry, chat.addr, KEYS).await;
}

/// One raw HTTP/1.1 POST of a keyed On-Prem send. `cut`: drop the connection after that long
/// instead of reading the answer. Returns the status and body when not cut.
async fn post_keyed(http: SocketAddr, k: usize, cut: Option<Duration>) -> Option<(u16, String)> {
    let body =
        serde_json::json!({"to": format!("+1556{k:07}"), "type": "text", "text": {"body": format!("order {k}")}})
            .to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nIdempotency-Key: order-{k}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect to the http port");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    match cut {
        Some(after) => {
            let _ = tokio::time::timeout(after, stream.read_to_string(&mut raw)).await;
            None // dropped here: the server sees the connection close mid-request
        }
        None => {
            stream.read_to_string(&mut raw).await.unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").expect("an http response");
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
            Some((status, body.to_owned()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_cut_by_closed_connections_then_retried_make_one_message_per_key() {
    const KEYS: usize = 800;
    const SENDERS: usize = 16;
    let (chat, ferry, _dir) = start();
    let http = ferry.http_addr;
    let tasks: Vec<_> = (0..SENDERS)
        .map(|t| {
            tokio::spawn(async move {
                let mut rng = XorShift(0xD1B5_4A32_D192_ED03 ^ (t as u64 + 1));
                let mut ids = Vec::new();
                for k in (t..KEYS).step_by(SENDERS) {
                    post_keyed(http, k, Some(rng.deadline())).await;
                    let id = loop {
                        let (status, body) = post_keyed(http, k, None).await.expect("not cut");
                        match status {
                            201 => {
                                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                                break v["messages"][0]["id"].as_str().expect("an id").to_owned();
                            }
                            429 => tokio::time::sleep(Duration::from_millis(5)).await,
                            other => panic!("retry of order-{k} answered {other}: {body}"),
                        }
                    };
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(KEYS);
    for t in tasks {
        ids.extend(t.await.expect("sender task"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), KEYS, "every key answered its own id");
    assert_one_message_per_key(&ferry, chat.addr, KEYS).await;
}
