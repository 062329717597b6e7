//! Graceful drain of a real `ferry serve` process: SIGTERM under load loses no accepted message,
//! answers every send it wrote (it finishes the calls in flight) and exits 0; a drain that hangs is cut short by a second signal (exit 130) or by
//! `shutdown_grace_secs` (exit 1).

mod support;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{FerryProcess, LoadOutcome, SendLoad, assert_all_kept, connect, http_get, http_post_json, text};

fn signal(ferry: &FerryProcess, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &ferry.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig}");
}

/// Polls the child until it exits or `timeout` passes; returns the exit code and how long it took.
fn wait_exit(ferry: &mut FerryProcess, timeout: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = ferry.child.try_wait().unwrap() {
            return (status.code(), start.elapsed());
        }
        assert!(start.elapsed() < timeout, "ferry did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 4);
    let client = connect(ferry.addr).await;

    // 16 senders; SIGTERM once 2,000 sends were answered, while others are in flight.
    const TERM_AFTER: usize = 2_000;
    let load = SendLoad::start(&client, 16, "+4420");
    load.wait_answered(TERM_AFTER).await;
    let code = tokio::task::spawn_blocking(move || ferry.terminate().code()).await.unwrap();
    assert_eq!(code, Some(0), "SIGTERM under load drains and exits 0");
    let LoadOutcome { ids, errors, .. } = load.finish().await;
    // The drain refused the senders (each stops at its first refusal): none was cut off silently.
    assert!(!errors.is_empty(), "no sender was refused: the load ended before the drain");
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an id was answered twice");

    // Every id a client got back is there after the restart.
    let ferry = FerryProcess::spawn(dir.path(), 4);
    let mut client = connect(ferry.addr).await;
    assert_all_kept(&mut client, &ids, "SIGTERM").await;
    assert_no_send_written_unanswered(&mut client, &ids).await;
    assert_eq!(ferry.terminate().code(), Some(0));
}

/// The drain finished every call in flight: no send was written without its answer reaching the
/// client. A shard's sequence numbers are dense (1, 2, ...), so a marker sent to each shard after
/// the restart takes the next one, and every seq below it must be one of the `answered` ids.
async fn assert_no_send_written_unanswered(client: &mut support::Client, answered: &[String]) {
    use ferry_model::MessageId;
    use std::collections::{BTreeMap, BTreeSet};
    const SHARDS: usize = 4;
    let key = |id: &str| MessageId::decode(id).unwrap_or_else(|| panic!("not a message id: {id}"));
    let mut seqs: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for id in answered {
        let k = key(id);
        seqs.entry(k.shard.index()).or_default().insert(k.seq);
    }
    // The first marker answered on each shard (recipients are spread over shards by hash).
    let mut markers: BTreeMap<usize, u64> = BTreeMap::new();
    for n in 0..400 {
        if markers.len() == SHARDS {
            break;
        }
        let id = client.send(text(&format!("+4421{n:08}"), "after the drain")).await.unwrap().into_inner().message_id;
        let k = key(&id);
        markers.entry(k.shard.index()).or_insert(k.seq);
    }
    assert_eq!(markers.len(), SHARDS, "400 markers did not reach every shard: {markers:?}");
    for (shard, marker) in markers {
        let answered = seqs.remove(&shard).unwrap_or_default();
        let unanswered: Vec<u64> = (1..marker).filter(|s| !answered.contains(s)).collect();
        assert!(
            unanswered.is_empty(),
            "shard {shard}: {} of the {} messages written before the restart were never answered \
             (the drain cut their calls): seqs {unanswered:?}",
            unanswered.len(),
            marker - 1
        );
    }
}

/// A webhook receiver that accepts connections and reads requests but never answers: the
/// webhook sender's POST hangs until its (long) request timeout, and so does the drain.
struct HangingReceiver {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl HangingReceiver {
    fn start() -> HangingReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        HangingReceiver { port, requests }
    }
}

/// `ferry serve` whose drain hangs on a webhook POST, with `shutdown_grace_secs = grace`.
async fn ferry_with_hanging_drain(dir: &std::path::Path, grace: u64) -> (FerryProcess, HangingReceiver) {
    let receiver = HangingReceiver::start();
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_grace_secs = {grace}\n[webhook]\nurl = \"http://127.0.0.1:{}/hook\"\nrequest_timeout_ms = 600000\n",
            receiver.port
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let ferry = FerryProcess::spawn_with(&data, 2, &["--config", config.to_str().unwrap()]);
    let mut client = connect(ferry.addr).await;
    client.send(text("+16315550100", "status callbacks will hang")).await.unwrap();
    let start = Instant::now();
    while receiver.requests.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ferry, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ferry, _receiver) = ferry_with_hanging_drain(dir.path(), 600).await;
    assert_eq!(http_get(ferry.http_addr, "/readyz").await.0, 200);
    signal(&ferry, "-TERM");
    // The drain waits for the hanging POST: still running, and no longer ready, while live.
    let start = Instant::now();
    while http_get(ferry.http_addr, "/readyz").await.0 != 503 {
        assert!(start.elapsed() < Duration::from_secs(20), "/readyz never turned 503 during the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(ferry.http_addr, "/healthz").await.0, 200, "live while draining");
    let text = serde_json::json!({"to": "+16315550101", "type": "text", "text": {"body": "too late"}});
    let (status, body) = http_post_json(ferry.http_addr, "/v1/messages", &text).await;
    assert_eq!(status, 503, "HTTP sends are refused while draining: {body}");
    assert!(body.contains("1011"), "{body}");
    // gRPC stops accepting (its in-flight calls finish first).
    let start = Instant::now();
    while tokio::net::TcpStream::connect(ferry.addr).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(20), "gRPC still accepts connections during the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ferry.child.try_wait().unwrap().is_none(), "the drain should still be waiting on the webhook");
    signal(&ferry, "-TERM");
    // "At once": long before the hanging POST (600 s) or the grace period (600 s) would end it.
    let (code, _) = wait_exit(&mut ferry, Duration::from_secs(60));
    assert_eq!(code, Some(130), "a second signal exits at once with 130");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_grace_period_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ferry, _receiver) = ferry_with_hanging_drain(dir.path(), 2).await;
    signal(&ferry, "-TERM");
    let (code, took) = wait_exit(&mut ferry, Duration::from_secs(20));
    assert_eq!(code, Some(1), "the grace watchdog exits 1");
    assert!(took >= Duration::from_millis(1900), "exited before the grace period: {took:?}");
}
