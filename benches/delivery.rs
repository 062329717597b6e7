//! Criterion bench of delivery in-process: one batch of messages from the coordinator's durable
//! append to the chat server's ack, and its durable settlement.
//!
//! In this process: the reference chat server (port 0, read receipts off), a ferry node
//! (coordinator + shards + delivery loops), no gRPC ingest. Sessions for the 1,000 recipients are
//! set up before measuring. One iteration = `Coordinator::send_many` of a batch (synced append)
//! → every message encrypted, streamed, decrypted and acked by the chat server → every ack recorded
//! (queue delete + status, synced). Polling granularity is 1 ms (tokio timers).
//!
//! `cargo bench --bench delivery -- --warm-up-time 1 --measurement-time 5`

/// The same allocator as the `ferry` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::{Coordinator, CoordinatorConfig, SendCommand, WindowPolicy};
use ferry_delivery::{DeliveryConfig, DeliveryEngine};
use ferry_model::message::OutboundMessage;

const RECIPIENTS: usize = 1_000;

struct Node {
    coordinator: Arc<Coordinator>,
    delivery: DeliveryEngine,
    sim: ChatSim,
    _dir: tempfile::TempDir,
}

fn commands(from: usize, n: usize) -> Vec<SendCommand> {
    (from..from + n)
        .map(|i| {
            let json = format!(
                r#"{{"to":"+1{:010}","type":"text","text":{{"body":"delivery bench message {i:08} with a body of about a hundred bytes, as most notifications"}}}}"#,
                2_100_000_000 + (i % RECIPIENTS) as u64
            );
            let message: OutboundMessage = serde_json::from_str(&json).expect("sample message");
            SendCommand { message, idempotency_key: None, sender: None }
        })
        .collect()
}

async fn start(shards: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = ChatSim::start(sim_listener, ChatSimConfig { read_receipts: false, ..ChatSimConfig::default() })
        .await
        .expect("chatsim");
    // The bench's recipients never wrote first: no customer-service window check (with it on, a
    // non-template send costs one more point read in the recipient's shard).
    let mut config = CoordinatorConfig {
        data_dir: dir.path().to_path_buf(),
        shards,
        customer_service_window: WindowPolicy::Off,
        ..Default::default()
    };
    config.shard.queue_capacity = 1 << 20;
    let coordinator = Arc::new(Coordinator::open(&config).await.expect("open node"));
    let delivery = DeliveryEngine::start(
        coordinator.shards(),
        &sim.local_addr().to_string(),
        DeliveryConfig::default(),
        coordinator.clock().clone(),
    )
    .expect("delivery");
    let node = Node { coordinator, delivery, sim, _dir: dir };
    // Set up every recipient's session outside the measurement.
    deliver(&node, 0, RECIPIENTS).await;
    node
}

/// Sends `n` messages and waits until the chat server acked them and ferry recorded the acks.
async fn deliver(node: &Node, from: usize, n: usize) {
    let acked_before = node.sim.stats().unique_messages;
    let settled_before = node.delivery.totals().settled;
    for r in node.coordinator.send_many(commands(from, n)).await {
        r.expect("accepted");
    }
    let n = n as u64;
    while node.sim.stats().unique_messages < acked_before + n || node.delivery.totals().settled < settled_before + n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn delivery(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("deliver_batch");
    g.sample_size(10);
    for shards in [1u16, 8] {
        let node = runtime.block_on(start(shards));
        let mut next = RECIPIENTS;
        for batch in [100usize, 1000] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("{shards}_shards/batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        runtime.block_on(deliver(&node, next, batch));
                        next += batch;
                    }
                    started.elapsed()
                })
            });
        }
        runtime.block_on(async {
            node.delivery.shutdown(Duration::from_secs(10)).await;
            node.sim.shutdown().await;
        });
        node.coordinator.close();
    }
    g.finish();
}

criterion_group!(benches, delivery);
criterion_main!(benches);
