//! gRPC ingest load bench: durable accepts per second over real sockets.
//!
//! Starts a ferry node in-process on a port-0 listener (or targets `--target` if given), then
//! drives it with `--concurrency` callers, each either sending unary `Send` (`--batch 1`) or
//! `SendBatch` of `--batch` messages, until `--count` messages were accepted. Prints accepted msg/s
//! and call latency percentiles. Every accept is durable (WAL synced) as always.
//!
//! ```sh
//! cargo bench --bench ingest_grpc -- --shards 8 --batch 100 --concurrency 8 --count 400000
//! cargo bench --bench ingest_grpc -- --shards 8 --batch 1 --concurrency 64 --count 100000
//! ```

/// The same allocator as the `ferry` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_coordinator::{Coordinator, CoordinatorConfig, WindowPolicy};
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, send_request::Content};

#[derive(Parser, Debug)]
struct Args {
    /// Shards of the in-process node.
    #[arg(long, default_value_t = 8)]
    shards: u16,
    /// Messages per call; 1 = unary Send, more = SendBatch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// gRPC connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Messages to accept in all.
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// Text body size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Target an already running ferry (e.g. http://127.0.0.1:50051) instead of an in-process one.
    #[arg(long)]
    target: Option<String>,
    /// Data dir for the in-process node (default: a temp dir).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
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
    let (endpoint, node) = match &args.target {
        Some(t) => (t.clone(), None),
        None => {
            let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
            // No customer-service window check: the bench's recipients never wrote first.
            let mut config = CoordinatorConfig {
                data_dir: dir,
                shards: args.shards,
                customer_service_window: WindowPolicy::Off,
                ..CoordinatorConfig::default()
            };
            config.shard.queue_capacity = 1 << 20;
            let coordinator = Arc::new(Coordinator::open(&config).await.expect("open node"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let c = coordinator.clone();
            tokio::spawn(async move { ferry_ingest::serve(listener, c, std::future::pending()).await.unwrap() });
            (format!("http://{addr}"), Some(coordinator))
        }
    };
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(MessagesClient::connect(endpoint.clone()).await.expect("connect"));
    }
    let body = "x".repeat(args.payload);
    let calls = args.count.div_ceil(args.batch);
    let next_call = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (next_call, errors, body, batch) = (next_call.clone(), errors.clone(), body.clone(), args.batch);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let call = next_call.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    break latencies;
                }
                let make = |i: usize| v1::SendRequest {
                    to: format!("+1{:010}", (call * batch + i) as u64 * 7_919 % 10_000_000_000),
                    content: Some(Content::Text(v1::TextMessage { body: body.clone(), preview_url: false })),
                    ..Default::default()
                };
                let t = Instant::now();
                if batch == 1 {
                    if client.send(make(0)).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let messages = (0..batch).map(make).collect();
                    match client.send_batch(v1::SendBatchRequest { messages }).await {
                        Ok(r) => {
                            let bad = r
                                .into_inner()
                                .results
                                .iter()
                                .filter(|r| !matches!(r.outcome, Some(v1::send_result::Outcome::Accepted(_))))
                                .count();
                            errors.fetch_add(bad, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(batch, Ordering::Relaxed);
                        }
                    }
                }
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let sent = calls * args.batch;
    let errors = errors.load(Ordering::Relaxed);
    let mode = if args.batch == 1 { "unary Send".to_string() } else { format!("SendBatch of {}", args.batch) };
    println!(
        "ingest_grpc: {mode}, {} callers over {} connections, {} shards, {} B text",
        args.concurrency, args.connections, args.shards, args.payload
    );
    println!(
        "  accepted {} msgs ({} errors) in {:.2} s = {:.0} msg/s durable",
        sent - errors,
        errors,
        elapsed.as_secs_f64(),
        (sent - errors) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  call latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    if let Some(node) = node {
        let stats = node.shard_stats();
        let writes: u64 = stats.iter().map(|s| s.synced_writes).sum();
        let appended: u64 = stats.iter().map(|s| s.appended).sum();
        println!(
            "  shards: {appended} appended in {writes} synced writes ({:.1} msgs per fsync)",
            appended as f64 / writes.max(1) as f64
        );
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(rss) = status.lines().find(|l| l.starts_with("VmHWM"))
        {
            println!("  peak RSS of the process (client + node): {}", rss.trim_start_matches("VmHWM:").trim());
        }
    }
}
