//! Webhook throughput: how fast the senders drain the status-event logs into a local receiver.
//!
//! In this process: a node's shards (no delivery), each filled with `--messages` messages whose
//! `sent`, `delivered` and `read` changes are settled durably (3 status events each), and an HTTP
//! receiver on port 0 that parses every body and counts its statuses (answering 200). Then a
//! `WebhookEngine` starts and the clock runs until every callback was accepted. Signed bodies
//! (HMAC-SHA256), `max_concurrent_requests` and `max_statuses_per_post` as given.
//!
//! ```sh
//! cargo bench --bench webhooks -- --shards 8 --messages 20000 --per-post 1
//! cargo bench --bench webhooks -- --shards 8 --messages 20000 --per-post 50
//! ```

/// The same allocator as the `ferry` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_coordinator::{Coordinator, CoordinatorConfig};
use ferry_model::MessageStatus;
use ferry_shard::settle::status_base;
use ferry_shard::{NewMessage, QueueRecord, Settlement};
use ferry_webhooks::{WebhookConfig, WebhookEngine};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 8)]
    shards: u16,
    /// Messages per run (each makes 3 callbacks).
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// `webhook.max_statuses_per_post`.
    #[arg(long, default_value_t = 1)]
    per_post: usize,
    /// `webhook.max_concurrent_requests`.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let counted = Arc::new(AtomicU64::new(0));
    let state = counted.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json body");
                let n = v["statuses"].as_array().map_or(0, Vec::len) as u64;
                state.fetch_add(n, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), args.shards);
    config.shard.callbacks = true;
    config.shard.queue_capacity = 1 << 20;
    let coordinator = Coordinator::open(&config).await.expect("open node");
    let shards = coordinator.shards().to_vec();
    let per_shard = args.messages.div_ceil(shards.len());
    let fill = Instant::now();
    for shard in &shards {
        for chunk_start in (0..per_shard).step_by(1000) {
            let n = 1000.min(per_shard - chunk_start);
            let messages = (0..n)
                .map(|i| NewMessage {
                    record: QueueRecord {
                        wa_id: format!("1631{:07}", chunk_start + i),
                        sender: "15550100000".into(),
                        message_type: "text".into(),
                        accepted_at_ms: 1,
                        expires_at_ms: i64::MAX,
                        payload: b"{}".to_vec(),
                        biz_opaque_callback_data: "bench".into(),
                        idempotency_key: String::new(),
                        held_at_ms: 0,
                    },
                    idempotency: None,
                    held_template: None,
                })
                .collect();
            let out = shard.append_durably(messages).unwrap().await.unwrap();
            let mut changes = Vec::with_capacity(3 * n);
            for o in &out {
                let base = status_base(&shard.get_queued(o.seq).unwrap().unwrap());
                changes.push(Settlement::Sent { seq: o.seq, message: base, at_ms: 2 });
                changes.push(Settlement::Receipt { seq: o.seq, status: MessageStatus::Delivered, at_ms: 3 });
                changes.push(Settlement::Receipt { seq: o.seq, status: MessageStatus::Read, at_ms: 4 });
            }
            shard.settle_durably(changes, None).unwrap().await.unwrap();
        }
    }
    let total = (per_shard * shards.len() * 3) as u64;
    println!("filled {} shards with {total} status events in {:.2} s", shards.len(), fill.elapsed().as_secs_f64());

    let webhook = WebhookConfig {
        secret: Some("bench-secret".into()),
        max_statuses_per_post: args.per_post,
        max_concurrent_requests: args.concurrency,
        ..WebhookConfig::for_test(url)
    };
    let started = Instant::now();
    let engine = WebhookEngine::start(&shards, webhook).expect("webhooks");
    while counted.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "webhooks: {} shards, {} statuses per POST, {} requests in flight at most: {total} callbacks in {secs:.2} s = {:.0} callbacks/s ({:.0} POST/s)",
        shards.len(),
        args.per_post,
        args.concurrency,
        total as f64 / secs,
        total as f64 / secs / args.per_post as f64,
    );
    engine.shutdown().await;
    coordinator.close();
}
