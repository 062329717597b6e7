//! Status callbacks end to end: ferry (ingest + delivery + webhook senders) and the reference chat
//! server in this process, and a real HTTP webhook receiver on port 0 that refuses (500) its first
//! requests and then accepts. Every status of every message must arrive, in order per message,
//! signed, in the configured shape.
//!
//! HTTPS: the same receiver behind TLS (rustls), with a CA and a server certificate for
//! `localhost` / 127.0.0.1 generated at test time. With the CA in `webhook.ca_file` callbacks
//! arrive; without it the handshake fails and the callbacks wait in the outbox (cursor unmoved)
//! until an engine that trusts the CA takes them.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::CoordinatorConfig;
use ferry_delivery::DeliveryConfig;
use ferry_webhooks::{Shape, WebhookConfig, WebhookEngine};
use hmac::{Hmac, KeyInit, Mac};
use support::{Delivering, text, wait_for, wait_for_count, wait_until_read};

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

fn app(state: &Shared) -> axum::Router {
    axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone())
}

async fn receiver(refuse_first: usize) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new((refuse_first, Received::default())));
    let app = app(&state);
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
    wait_for_count(Duration::from_secs(60), "60 callbacks", 60, || async {
        statuses(shape, &state.lock().unwrap().1.bodies).len()
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
    wait_for_count(Duration::from_secs(60), "the first callbacks", 20, || async { arrived(&state) }).await;
    ferry.kill9();
    let at_kill = arrived(&state);
    assert!(at_kill < 450, "the kill came before every callback was sent ({at_kill})");
    // Refusals on both sides of the kill: the first 3 POSTs before it, the first 3 after it.
    {
        let mut s = state.lock().unwrap();
        assert_eq!((s.0, s.1.refused), (0, 3), "the receiver refused its first 3 POSTs before the kill");
        s.0 = 3;
    }

    let ferry = FerryProcess::spawn_with(&data, 2, &flags);
    let mut client = connect(ferry.addr).await;
    for i in 150..200 {
        ids.push(
            client.send(text(&format!("+4479330{i:05}"), "after the kill")).await.unwrap().into_inner().message_id,
        );
    }
    let all = ids.clone();
    wait_for(Duration::from_secs(120), "sent, delivered and read of all 200 messages", || {
        let (state, all) = (state.clone(), all.clone());
        async move {
            let got = statuses(Shape::Onprem, &state.lock().unwrap().1.bodies);
            let mut per: HashMap<String, usize> = HashMap::new();
            for (id, status) in got {
                if status == "read" {
                    *per.entry(id).or_default() += 1;
                }
            }
            let unread: Vec<&String> = all.iter().filter(|id| !per.contains_key(*id)).collect();
            match unread.first() {
                None => Ok(()),
                Some(first) => Err(format!("{} of {} without a read callback, e.g. {first}", unread.len(), all.len())),
            }
        }
    })
    .await;
    let received = std::mem::take(&mut state.lock().unwrap().1);
    assert_eq!(received.bad_signatures, 0);
    assert_eq!(received.refused, 6, "3 POSTs refused before the kill and 3 after it");
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
    assert_eq!(ferry.terminate().code(), Some(0), "SIGTERM drains and exits 0");
    drop(chat);
}

/// A test PKI: a self-signed CA (`ca_pem`) and a server configuration whose certificate that CA
/// signed, for `localhost` and 127.0.0.1.
struct TestPki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ferry test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    TestPki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// Why TLS handshakes with the receiver failed, one entry per failure.
type HandshakeErrors = Arc<Mutex<Vec<String>>>;

/// The receiver of [`receiver`] over TLS on 127.0.0.1, port 0. Returns its
/// `https://localhost:PORT/hook` URL, its state, and its failed TLS handshakes.
async fn tls_receiver(refuse_first: usize, tls: Arc<rustls::ServerConfig>) -> (String, Shared, HandshakeErrors) {
    let state: Shared = Arc::new(Mutex::new((refuse_first, Received::default())));
    let app = app(&state);
    let failed_handshakes = HandshakeErrors::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let failed = failed_handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, app, failed) = (acceptor.clone(), app.clone(), failed.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    }
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            });
        }
    });
    (format!("https://localhost:{port}/hook"), state, failed_handshakes)
}

/// Sends `n` text messages and returns their ids.
async fn send_texts(client: &mut support::Client, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(client.send(text(&format!("{prefix}{i:05}"), "hello")).await.unwrap().into_inner().message_id);
    }
    ids
}

/// Asserts that the statuses of every message in `ids` arrived exactly as sent, delivered, read.
fn assert_sent_delivered_read(received: &[(String, String)], ids: &[String]) {
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, status) in received {
        by_id.entry(id).or_default().push(status);
    }
    for id in ids {
        assert_eq!(by_id.get(id.as_str()).map(Vec::as_slice), Some(&["sent", "delivered", "read"][..]), "{id}");
    }
}

async fn start_node(shards: u16) -> (ChatSim, Delivering) {
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), shards);
    config.shard.callbacks = true;
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    (sim, ferry)
}

/// `https://localhost:PORT/hook` with the test CA in `webhook.ca_file`: every status arrives, in
/// order, signed, after the receiver's first refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_arrive_with_the_ca_file() {
    let pki = test_pki();
    let (url, state, failed_handshakes) = tls_receiver(2, pki.server.clone()).await;
    assert!(url.starts_with("https://localhost:"));
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let (sim, ferry) = start_node(2).await;
    let hooks = WebhookEngine::start(
        ferry.node.coordinator.shards(),
        WebhookConfig { secret: Some(SECRET.into()), ca_file: Some(ca_file), ..WebhookConfig::for_test(url) },
    )
    .unwrap();
    let mut client = ferry.node.client().await;
    let ids = send_texts(&mut client, "+4479440", 10).await;
    wait_for_count(Duration::from_secs(60), "30 callbacks over https", 30, || async {
        statuses(Shape::Onprem, &state.lock().unwrap().1.bodies).len()
    })
    .await;
    let received = std::mem::take(&mut state.lock().unwrap().1);
    assert_eq!(received.refused, 2, "the receiver refused its first requests");
    assert_eq!(received.bad_signatures, 0);
    assert_sent_delivered_read(&statuses(Shape::Onprem, &received.bodies), &ids);
    assert_eq!(*failed_handshakes.lock().unwrap(), Vec::<String>::new(), "every TLS handshake succeeded");
    hooks.shutdown().await;
    ferry.stop().await;
    sim.shutdown().await;
}

/// The same receiver without `ca_file`: its certificate chains to no trusted root, so nothing
/// arrives, every attempt counts as failed and no cursor moves. An engine started afterwards with
/// the CA delivers every one of those callbacks: they were retried, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_an_untrusted_certificate_is_retried_not_lost() {
    let pki = test_pki();
    let (url, state, failed_handshakes) = tls_receiver(0, pki.server.clone()).await;
    let (sim, ferry) = start_node(2).await;
    let shards = ferry.node.coordinator.shards();
    let cursors_before: Vec<u64> = shards.iter().map(|s| s.webhook_cursor()).collect();
    let untrusting = WebhookEngine::start(shards, WebhookConfig::for_test(url.clone())).unwrap();
    let mut client = ferry.node.client().await;
    let ids = send_texts(&mut client, "+4479550", 10).await;
    // Every message read, so all 30 callbacks are in the outbox; several attempts failed.
    wait_until_read(&client, &ids, Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(30), "repeated failed attempts and handshakes", || async {
        let attempts = untrusting.stats().failed_attempts.load(Ordering::Relaxed);
        let handshakes = failed_handshakes.lock().unwrap().len();
        if attempts >= 6 && handshakes >= 6 {
            Ok(())
        } else {
            Err(format!("{attempts} failed attempts, {handshakes} failed handshakes"))
        }
    })
    .await;
    assert_eq!(untrusting.stats().delivered.load(Ordering::Relaxed), 0);
    untrusting.shutdown().await;
    // ferry refused the certificate (rustls answers an unknown issuer with the UnknownCA alert).
    let errors = failed_handshakes.lock().unwrap().clone();
    assert!(errors.iter().all(|e| e.contains("UnknownCA")), "{errors:?}");
    let seen = {
        let s = state.lock().unwrap();
        s.1.bodies.len() + s.1.refused
    };
    assert_eq!(seen, 0, "no request reached the receiver");
    let cursors_after: Vec<u64> = shards.iter().map(|s| s.webhook_cursor()).collect();
    assert_eq!(cursors_after, cursors_before, "no webhook cursor moved");

    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let trusting =
        WebhookEngine::start(shards, WebhookConfig { ca_file: Some(ca_file), ..WebhookConfig::for_test(url) }).unwrap();
    wait_for_count(Duration::from_secs(60), "the 30 held-back callbacks", 30, || async {
        statuses(Shape::Onprem, &state.lock().unwrap().1.bodies).len()
    })
    .await;
    assert_sent_delivered_read(&statuses(Shape::Onprem, &state.lock().unwrap().1.bodies), &ids);
    assert_eq!(trusting.stats().failed_attempts.load(Ordering::Relaxed), 0);
    trusting.shutdown().await;
    ferry.stop().await;
    sim.shutdown().await;
}

/// `max_statuses_per_post = 10`: the receiver holds its door shut (500) until every message is
/// read, so each shard has a backlog; then every status arrives, in bodies of at most 10 (full
/// ones among them), and per message in the order sent, delivered, read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_carry_up_to_max_statuses_per_post() {
    let (url, state) = receiver(usize::MAX).await;
    let (sim, ferry) = start_node(2).await;
    let hooks = WebhookEngine::start(
        ferry.node.coordinator.shards(),
        WebhookConfig { secret: Some(SECRET.into()), max_statuses_per_post: 10, ..WebhookConfig::for_test(url) },
    )
    .unwrap();
    let mut client = ferry.node.client().await;
    let ids = send_texts(&mut client, "+4479660", 40).await;
    wait_until_read(&client, &ids, Duration::from_secs(30)).await;
    state.lock().unwrap().0 = 0; // open the door
    wait_for_count(Duration::from_secs(60), "120 callbacks", 120, || async {
        statuses(Shape::Onprem, &state.lock().unwrap().1.bodies).len()
    })
    .await;
    let received = std::mem::take(&mut state.lock().unwrap().1);
    assert!(received.refused > 0, "the receiver refused while the backlog built up");
    assert_eq!(received.bad_signatures, 0);
    let sizes: Vec<usize> = received.bodies.iter().map(|b| b["statuses"].as_array().unwrap().len()).collect();
    assert!(sizes.iter().all(|&n| (1..=10).contains(&n)), "every body carries 1 to 10 statuses: {sizes:?}");
    assert!(sizes.iter().filter(|&&n| n == 10).count() >= 10, "the backlog went out in full bodies: {sizes:?}");
    let all = statuses(Shape::Onprem, &received.bodies);
    assert_eq!(all.len(), 120, "each status arrived once");
    assert_sent_delivered_read(&all, &ids);
    hooks.shutdown().await;
    ferry.stop().await;
    sim.shutdown().await;
}
