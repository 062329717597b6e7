//! A number's requests reach the Cloud API evenly spaced even when the shard's syncs are slow
//! (issue 11, "limits": no number exceeds its rate by more than a small burst).
//!
//! Each request's durable dispatch mark goes through the shard's group commit; a slow sync
//! finishes many marks at once. Requests paced *before* their marks then left in bunches past
//! Meta's burst, and were refused 130429 (benches/cloud.sh, pacing: 21 % refused on a loaded
//! machine). Here the shard's writer is held for 200 ms at a time, so every sync is slow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_cloudsim::{CloudSim, CloudSimConfig, DEFAULT_TOKEN};
use ferry_delivery::upstream::cloud::CloudShared;
use ferry_delivery::upstream::cloud::config::{CloudConfig, ResolvedNumber};
use ferry_delivery::{DeliveryConfig, DeliveryEngine};
use ferry_model::ShardId;
use ferry_shard::{NewMessage, QueueRecord, Shard, ShardConfig, SharedResources, StorageTuning};

const SENDER: &str = "15550100000";
const PHONE_NUMBER_ID: &str = "106540352242922";
const RATE: u32 = 100;
const COUNT: u64 = 300;

fn message(i: u64) -> NewMessage {
    let now = ferry_model::clock::system_now_ms();
    let to = format!("4479140{i:05}");
    NewMessage {
        record: QueueRecord {
            wa_id: to.clone(),
            sender: SENDER.into(),
            message_type: "text".into(),
            accepted_at_ms: now,
            expires_at_ms: now + 3_600_000,
            payload: format!(r#"{{"to":"{to}","type":"text","text":{{"body":"paced {i}"}}}}"#).into_bytes(),
            ..QueueRecord::default()
        },
        idempotency: None,
        held_template: None,
    }
}

async fn cloudsim() -> CloudSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Meta's default burst (a tenth of the rate); no pair limit (every recipient is new anyway).
    let config = CloudSimConfig { throughput_per_sec: RATE, pair_interval_ms: 0, ..CloudSimConfig::default() };
    CloudSim::start(listener, config).await.unwrap()
}

fn cloud_shared(addr: SocketAddr) -> Arc<CloudShared> {
    let config = CloudConfig { base_url: format!("http://{addr}"), ..CloudConfig::default() };
    let number = ResolvedNumber {
        phone_number: SENDER.into(),
        phone_number_id: PHONE_NUMBER_ID.into(),
        token: DEFAULT_TOKEN.into(),
        throughput_per_sec: RATE,
    };
    CloudShared::new(&config, vec![number], 1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_leave_evenly_spaced_when_the_dispatch_marks_sync_in_bunches() {
    let dir = tempfile::tempdir().unwrap();
    let resources = SharedResources::new(&StorageTuning::default()).unwrap();
    let shard = Arc::new(Shard::open(dir.path(), ShardId(0), 1, 7, &resources, &ShardConfig::default()).unwrap());
    shard.append_durably((0..COUNT).map(message).collect()).unwrap().await.unwrap();
    let sim = cloudsim().await;

    // Every sync is slow: the writer is held 200 ms, let go for 10 ms, held again.
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (shard, stop) = (shard.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let hold = shard.pause_writer_for_test();
                std::thread::sleep(Duration::from_millis(200));
                drop(hold);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let engine = DeliveryEngine::start_cloud(
        std::slice::from_ref(&shard),
        cloud_shared(sim.local_addr()),
        DeliveryConfig::default(),
        ferry_model::clock::system(),
    )
    .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sim.stats().messages_taken < COUNT && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    let stats = sim.stats();
    engine.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;

    assert_eq!(stats.messages_taken, COUNT, "every message taken: {stats:?}");
    assert_eq!(stats.duplicate_messages, 0, "{stats:?}");
    let number = &stats.numbers[PHONE_NUMBER_ID];
    // Marks finish ~20 at a time; paced before the marks, about half of each bunch was refused.
    assert_eq!(stats.refused(130429), 0, "no request over the number's rate: {stats:?}");
    assert!(number.max_per_second <= u64::from(RATE + RATE / 10 + 1), "busiest second: {number:?}");
}
