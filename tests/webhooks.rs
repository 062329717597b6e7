//! Status callbacks end to end: ferry (ingest + delivery + webhook senders) and the reference chat
//! server in this process, and a real HTTP webhook receiver on port 0 that refuses (500) its first
//! requests and then accepts. Every status of every message must arrive, in order per message,
//! signed, in the configured shape.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::CoordinatorConfig;
use ferry_delivery::DeliveryConfig;
use ferry_webhooks::{Shape, WebhookConfig, WebhookEngine};
use hmac::{Hmac, KeyInit, Mac};
use support::{Delivering, eventually, text};

const SECRET: &str = "app-secret";

#[derive(Default)]
struct Received {
    refused: usize,
    bodies: Vec<serde_json::Value>,
    bad_signatures: usize,
}

type Shared = Arc<Mutex<(usize, Received)>>; // (requests to refuse, what arrived)

async fn hook(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    // A receiver that takes a moment per request, as real ones do (and so callbacks are still
    // flowing when the crash test kills ferry).
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut s = state.lock().unwrap();
    if s.0 > 0 {
        s.0 -= 1;
        s.1.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().concat();
    let got = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or("");
    if got != format!("sha256={expected}") {
        s.1.bad_signatures += 1;
    }
    s.1.bodies.push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

async fn receiver(refuse_first: usize) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new((refuse_first, Received::default())));
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), state)
}

/// `(message id, status)` of every callback received, in arrival order.
fn statuses(shape: Shape, bodies: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in bodies {
        let list = match shape {
            Shape::Onprem => &b["statuses"],
            Shape::Cloud => {
                assert_eq!(b["object"], "whatsapp_business_account");
                &b["entry"][0]["changes"][0]["value"]["statuses"]
            }
        };
        for s in list.as_array().expect("statuses array") {
            out.push((s["id"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned()));
        }
    }
    out
}

async fn every_status_arrives_in_order(shape: Shape) {
    let (url, state) = receiver(5).await;
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), 2);
    config.shard.callbacks = true;
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    let hooks = WebhookEngine::start(
        ferry.node.coordinator.shards(),
        WebhookConfig { secret: Some(SECRET.into()), shape, ..WebhookConfig::for_test(url) },
    )
    .unwrap();
    let mut client = ferry.node.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut m = text(&format!("+4479110{i:05}"), "hello");
        m.biz_opaque_callback_data = format!("cb-{i}");
        ids.push(client.send(m).await.unwrap().into_inner().message_id);
    }
    // sent, delivered and read for each of the 20 messages.
    eventually(Duration::from_secs(60), "60 callbacks", || async {
        statuses(shape, &state.lock().unwrap().1.bodies).len() >= 60
    })
    .await;
    let received = std::mem::take(&mut state.lock().unwrap().1);
    assert_eq!(received.refused, 5, "the receiver refused its first requests");
    assert_eq!(received.bad_signatures, 0, "every callback is signed with the app secret");
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (id, status) in statuses(shape, &received.bodies) {
        by_id.entry(id).or_default().push(status);
    }
    for id in &ids {
        assert_eq!(
            by_id.get(id).map(Vec::as_slice),
            Some(&["sent".to_owned(), "delivered".into(), "read".into()][..]),
            "{id}"
        );
    }
    hooks.shutdown().await;
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onprem_callbacks_survive_refusals_and_arrive_in_order() {
    every_status_arrives_in_order(Shape::Onprem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_callbacks_survive_refusals_and_arrive_in_order() {
    every_status_arrives_in_order(Shape::Cloud).await;
}

/// A real `ferry serve` process with a webhook, killed with SIGKILL while callbacks flow and
/// restarted on the same data dir: every status of every message still reaches the receiver
/// (possibly twice: the first arrivals are in order per message), all signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_callback_is_lost_across_sigkill() {
    use support::{ChatSimProcess, FerryProcess, connect};
    let (url, state) = receiver(3).await;
    let chat = ChatSimProcess::spawn("127.0.0.1:0", &["--delivered-after-ms", "10", "--read-after-ms", "30"]);
    let upstream = chat.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!("[webhook]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nbackoff_step_ms = 20\nbackoff_max_ms = 200\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let flags =
        ["--upstream", upstream.as_str(), "--config", config.to_str().unwrap(), "--customer-service-window", "off"];
    let arrived = |state: &Shared| statuses(Shape::Onprem, &state.lock().unwrap().1.bodies).len();

    let mut ids = Vec::new();
    let ferry = FerryProcess::spawn_with(&data, 2, &flags);
    let mut client = connect(ferry.addr).await;
    for i in 0..150 {
        ids.push(
            client.send(text(&format!("+4479330{i:05}"), "before the kill")).await.unwrap().into_inner().message_id,
        );
    }
    // Kill while callbacks are flowing: some have arrived, most have not.
    eventually(Duration::from_secs(60), "the first callbacks", || async { arrived(&state) >= 20 }).await;
    ferry.kill9();
    let at_kill = arrived(&state);
    assert!(at_kill < 450, "the kill came before every callback was sent ({at_kill})");

    let ferry = FerryProcess::spawn_with(&data, 2, &flags);
    let mut client = connect(ferry.addr).await;
    for i in 150..200 {
        ids.push(
            client.send(text(&format!("+4479330{i:05}"), "after the kill")).await.unwrap().into_inner().message_id,
        );
    }
    let all = ids.clone();
    eventually(Duration::from_secs(120), "sent, delivered and read of all 200 messages", || {
        let (state, all) = (state.clone(), all.clone());
        async move {
            let got = statuses(Shape::Onprem, &state.lock().unwrap().1.bodies);
            let mut per: HashMap<String, usize> = HashMap::new();
            for (id, status) in got {
                if status == "read" {
                    *per.entry(id).or_default() += 1;
                }
            }
            all.iter().all(|id| per.contains_key(id))
        }
    })
    .await;
    let received = std::mem::take(&mut state.lock().unwrap().1);
    assert_eq!(received.bad_signatures, 0);
    let mut first_arrivals: HashMap<String, Vec<String>> = HashMap::new();
    for (id, status) in statuses(Shape::Onprem, &received.bodies) {
        let list = first_arrivals.entry(id).or_default();
        if !list.contains(&status) {
            list.push(status);
        }
    }
    for id in &ids {
        assert_eq!(
            first_arrivals.get(id).map(Vec::as_slice),
            Some(&["sent".to_owned(), "delivered".into(), "read".into()][..]),
            "{id}"
        );
    }
    drop(ferry);
    drop(chat);
}
