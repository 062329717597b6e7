//! End-to-end delivery bench: accepted → acked by the chat server, over real sockets.
//!
//! Starts, in this process: the reference chat server (`ferry_chatsim`, port 0), a ferry node
//! (coordinator + shards + delivery loops + gRPC ingest, port 0). Then sends `--count` text
//! messages with `SendBatch` from `--concurrency` callers and waits until the chat server has
//! decrypted and acked every one (`unique_messages`). Every accept is durable (WAL synced), every
//! message is encrypted with its recipient's session, every ack is recorded durably (queue delete
//! + status in one synced batch) — as always.
//!
//! `--recipients N` spreads the messages over N recipients (sessions are set up once each);
//! `--new-recipients` sends every message to a recipient never seen before (a session set-up per
//! message: bundle fetch + X3DH on both sides).
//!
//! ```sh
//! cargo bench --bench delivery_e2e -- --shards 32 --count 200000
//! cargo bench --bench delivery_e2e -- --shards 1 --count 100000
//! cargo bench --bench delivery_e2e -- --shards 32 --count 20000 --new-recipients
//! ```

/// The same allocator as the `ferry` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::{Coordinator, CoordinatorConfig, WindowPolicy};
use ferry_delivery::{DeliveryConfig, DeliveryEngine};
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, send_request::Content};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 32)]
    shards: u16,
    /// Messages to send in all.
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// Messages per SendBatch call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct recipients the messages are spread over.
    #[arg(long, default_value_t = 10_000)]
    recipients: usize,
    /// Every message to a new recipient (overrides --recipients).
    #[arg(long)]
    new_recipients: bool,
    /// Text body size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Messages per shard held in memory by the delivery loop.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Envelopes in flight per recipient (1 keeps each recipient's messages in send order).
    #[arg(long, default_value_t = 1)]
    per_recipient: usize,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let tmp = tempfile::tempdir().unwrap();
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_config = ChatSimConfig { read_receipts: false, ..ChatSimConfig::default() };
    let sim = ChatSim::start(sim_listener, sim_config).await.expect("chatsim");

    let mut config = CoordinatorConfig {
        data_dir: tmp.path().to_path_buf(),
        shards: args.shards,
        // The bench's recipients never wrote first: no customer-service window check.
        customer_service_window: WindowPolicy::Off,
        ..Default::default()
    };
    config.shard.queue_capacity = 1 << 20;
    let coordinator = Arc::new(Coordinator::open(&config).await.expect("open node"));
    let delivery_config = DeliveryConfig {
        window: args.window,
        max_in_flight_per_recipient: args.per_recipient,
        max_window_per_recipient: args.per_recipient.max(DeliveryConfig::default().max_window_per_recipient),
        ..DeliveryConfig::default()
    };
    let delivery = DeliveryEngine::start(
        coordinator.shards(),
        &sim.local_addr().to_string(),
        delivery_config,
        coordinator.clock().clone(),
    )
    .expect("delivery");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let c = coordinator.clone();
    tokio::spawn(async move { ferry_ingest::serve(listener, c, std::future::pending()).await.unwrap() });

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(MessagesClient::connect(endpoint.clone()).await.expect("connect"));
    }
    let body = "x".repeat(args.payload);
    // 0 % new recipients means known ones: set up every session first (one message each), outside
    // the timed run.
    let mut warm = 0u64;
    if !args.new_recipients {
        let mut client = clients[0].clone();
        let all: Vec<usize> = (0..args.recipients.max(1)).collect();
        for chunk in all.chunks(1000) {
            let messages = chunk
                .iter()
                .map(|r| v1::SendRequest {
                    to: format!("+1{:010}", 2_000_000_000 + *r as u64),
                    content: Some(Content::Text(v1::TextMessage { body: "warm-up".into(), preview_url: false })),
                    ..Default::default()
                })
                .collect();
            client.send_batch(v1::SendBatchRequest { messages }).await.expect("warm-up batch");
        }
        warm = all.len() as u64;
        while delivery.totals().settled < warm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let setups_before = delivery.totals().session_setups;
    let calls = args.count.div_ceil(args.batch);
    let next_call = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (next_call, errors, body) = (next_call.clone(), errors.clone(), body.clone());
        let (batch, recipients, new_recipients) = (args.batch, args.recipients.max(1), args.new_recipients);
        tasks.push(tokio::spawn(async move {
            loop {
                let call = next_call.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    break;
                }
                let messages = (0..batch)
                    .map(|i| {
                        let n = call * batch + i;
                        let r = if new_recipients { n } else { n % recipients };
                        v1::SendRequest {
                            to: format!("+1{:010}", 2_000_000_000 + r as u64),
                            content: Some(Content::Text(v1::TextMessage { body: body.clone(), preview_url: false })),
                            ..Default::default()
                        }
                    })
                    .collect();
                loop {
                    match client.send_batch(v1::SendBatchRequest { messages: Vec::clone(&messages) }).await {
                        Ok(r) => {
                            let bad = r
                                .into_inner()
                                .results
                                .iter()
                                .filter(|r| !matches!(r.outcome, Some(v1::send_result::Outcome::Accepted(_))))
                                .count();
                            errors.fetch_add(bad, Ordering::Relaxed);
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(_) => {
                            errors.fetch_add(batch, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accept_elapsed = started.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    let accepted = (calls * args.batch - errors) as u64;
    loop {
        if sim.stats().unique_messages >= warm + accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked_elapsed = started.elapsed();
    // Settling (queue delete + status) of the last acks is asynchronous; wait for it too.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while delivery.totals().settled < warm + accepted && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let settled_elapsed = started.elapsed();
    let stats = sim.stats();
    let totals = delivery.totals();
    let mode = if args.new_recipients {
        "every message to a new recipient".to_owned()
    } else {
        format!("{} known recipients (sessions set up before the run)", args.recipients)
    };
    println!(
        "delivery_e2e: {} shards, {mode}, SendBatch of {} x {} callers, {} B text, window {}, {} in flight per recipient",
        args.shards, args.batch, args.concurrency, args.payload, args.window, args.per_recipient
    );
    println!(
        "  accepted {accepted} ({errors} errors) in {:.2} s = {:.0} msg/s",
        accept_elapsed.as_secs_f64(),
        accepted as f64 / accept_elapsed.as_secs_f64()
    );
    println!(
        "  acked by the chat server (decrypted) in {:.2} s = {:.0} msg/s end to end",
        acked_elapsed.as_secs_f64(),
        accepted as f64 / acked_elapsed.as_secs_f64()
    );
    println!(
        "  settled durably in {:.2} s; server: {} unique, {} duplicates, {} decrypt failures, {} sessions",
        settled_elapsed.as_secs_f64(),
        stats.unique_messages,
        stats.duplicate_messages,
        stats.decrypt_failures,
        stats.sessions_established
    );
    println!(
        "  ferry: {} retries, {} session set-ups during the run, {} session hits",
        totals.retries,
        totals.session_setups - setups_before,
        totals.session_hits
    );
    let shard_stats = coordinator.shard_stats();
    let synced: u64 = shard_stats.iter().map(|s| s.synced_writes).sum();
    println!(
        "  shards: {synced} synced writes (appends, settles, sessions) = {:.0} fsyncs/s",
        synced as f64 / settled_elapsed.as_secs_f64()
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(rss) = status.lines().find(|l| l.starts_with("VmHWM"))
    {
        println!(
            "  peak RSS of the process (client + node + chat server): {}",
            rss.trim_start_matches("VmHWM:").trim()
        );
    }
    delivery.shutdown(Duration::from_secs(10)).await;
    sim.shutdown().await;
}
