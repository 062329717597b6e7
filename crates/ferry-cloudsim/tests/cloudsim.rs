//! Contract tests of the reference Cloud API server: a real cloudsim on 127.0.0.1:0, a real webhook
//! receiver on 127.0.0.1:0, a hyper client; webhooks are checked with the shared verifier of
//! `ferry-cloud`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use ferry_cloud::{SendResponse, StatusKind, WebhookPayload};
use ferry_cloudsim::{CloudSim, CloudSimConfig, Stats};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

const NUMBER: &str = "106540352242922";
const TOKEN: &str = "token-1";
const PHONE: &str = "15550100000";
const SECRET: &str = "app-secret";
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn one_number(config: CloudSimConfig) -> CloudSimConfig {
    CloudSimConfig { numbers: vec![format!("{NUMBER}={TOKEN}::{PHONE}").parse().unwrap()], ..config }
}

async fn start(config: CloudSimConfig) -> CloudSim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    CloudSim::start(listener, config).await.unwrap()
}

/// One POST the receiver took: its X-Hub-Signature-256 and raw body.
type Post = (Option<String>, Bytes);

/// What the webhook receiver saw.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Post>>>,
    /// Answer 500 to this many POSTs first.
    fail_first: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/cloud", listener.local_addr().unwrap());
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/webhooks/cloud",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    {
                        let mut fail = state.fail_first.lock();
                        if *fail > 0 {
                            *fail -= 1;
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                    }
                    let signature = headers.get(ferry_cloud::SIGNATURE_HEADER).map(|v| v.to_str().unwrap().to_owned());
                    state.posts.lock().push((signature, body));
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn payloads(&self) -> Vec<WebhookPayload> {
        self.posts.lock().iter().map(|(_, body)| serde_json::from_slice(body).unwrap()).collect()
    }

    /// Every status received, in arrival order.
    fn statuses(&self) -> Vec<ferry_cloud::Status> {
        self.payloads().iter().flat_map(|p| p.statuses().map(|(_, s)| s.clone()).collect::<Vec<_>>()).collect()
    }

    /// Waits (up to [`TIMEOUT`]) until `done` holds for the statuses received.
    async fn wait_for_statuses(&self, what: &str, done: impl Fn(&[ferry_cloud::Status]) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let statuses = self.statuses();
            if done(&statuses) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; saw {statuses:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn webhook_config(url: &str) -> CloudSimConfig {
    one_number(CloudSimConfig {
        webhook_url: Some(url.into()),
        app_secret: SECRET.into(),
        ..CloudSimConfig::for_test()
    })
}

fn text_to(to: &str, marker: Option<&str>) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "body": "hello" },
    });
    if let Some(marker) = marker {
        body["biz_opaque_callback_data"] = json!(marker);
    }
    body
}

/// POSTs `body` as a send of `number` with `token`; the status and the JSON answer.
async fn send_raw(
    client: &HttpClient,
    addr: SocketAddr,
    number: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, Value), hyper_util::client::legacy::Error> {
    let mut request = hyper::Request::post(format!("http://{addr}/v23.0/{number}/messages"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client.request(request.body(Full::new(Bytes::from(body))).unwrap()).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))))
}

async fn send(client: &HttpClient, sim: &CloudSim, body: &Value) -> (StatusCode, Value) {
    let sent = send_raw(client, sim.local_addr(), NUMBER, Some(TOKEN), serde_json::to_vec(body).unwrap());
    tokio::time::timeout(TIMEOUT, sent).await.expect("an answer in time").expect("a complete answer")
}

/// Checks the Graph error shape and returns `error.code`.
fn must_be_graph_error(status: StatusCode, answer: &Value, code: u64) -> &Value {
    let error = &answer["error"];
    assert_eq!(error["code"], code, "expected graph error {code}, got {status} {answer}");
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("(#{code}) ")), "message {message:?}");
    assert!(error["type"].is_string(), "{answer}");
    assert!(error["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()), "{answer}");
    assert_eq!(error["error_data"]["messaging_product"], "whatsapp", "{answer}");
    assert!(error["error_data"]["details"].as_str().is_some_and(|d| !d.is_empty()), "{answer}");
    error
}

async fn stats_over_http(client: &HttpClient, sim: &CloudSim) -> Stats {
    let uri: hyper::Uri = format!("http://{}/cloudsim/stats", sim.local_addr()).parse().unwrap();
    let response = client.get(uri).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn answers_a_valid_send_like_the_cloud_api() {
    let sim = start(one_number(CloudSimConfig::for_test())).await;
    let client = client();
    let (status, answer) = send(&client, &sim, &text_to("+1 (631) 555-1234", Some("m-1"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: SendResponse = serde_json::from_value(answer).unwrap();
    assert_eq!(answer.messaging_product, "whatsapp");
    assert_eq!(answer.contacts[0].input, "+1 (631) 555-1234");
    assert_eq!(answer.contacts[0].wa_id, "16315551234");
    assert!(answer.wamid().unwrap().starts_with("wamid."));
    let stats = stats_over_http(&client, &sim).await;
    assert_eq!((stats.requests, stats.messages_taken, stats.unique_messages), (1, 1, 1));
    assert_eq!(stats.numbers[NUMBER].messages_taken, 1);
    assert_eq!(stats.numbers[NUMBER].max_per_second, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_checks_refuse_with_190_and_take_nothing() {
    let mut config = one_number(CloudSimConfig::for_test());
    config.numbers.push("200000000000002=token-2".parse().unwrap());
    config.expired_numbers = vec!["200000000000002".into()];
    let sim = start(config).await;
    let client = client();
    let body = || serde_json::to_vec(&text_to("+16315551234", None)).unwrap();
    let (status, answer) = send_raw(&client, sim.local_addr(), NUMBER, None, body()).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    must_be_graph_error(status, &answer, 190);
    let (status, answer) = send_raw(&client, sim.local_addr(), NUMBER, Some("token-2"), body()).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(must_be_graph_error(status, &answer, 190)["error_subcode"], 460, "a wrong token");
    let (status, answer) =
        send_raw(&client, sim.local_addr(), "200000000000002", Some("token-2"), body()).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(must_be_graph_error(status, &answer, 190)["error_subcode"], 463, "an expired token");
    let (status, answer) = send_raw(&client, sim.local_addr(), "999", Some(TOKEN), body()).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(must_be_graph_error(status, &answer, 100)["error_subcode"], 33, "an unknown phone number id");
    let (status, _) = send_raw(&client, sim.local_addr(), NUMBER, Some(TOKEN), body()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "the right token still works");
    let stats = sim.stats();
    assert_eq!(stats.refused(190), 3);
    assert_eq!(stats.refused(100), 1);
    assert_eq!(stats.messages_taken, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn body_validation_errors_name_metas_codes() {
    let sim = start(one_number(CloudSimConfig::for_test())).await;
    let client = client();
    let mut no_product = text_to("+16315551234", None);
    no_product.as_object_mut().unwrap().remove("messaging_product");
    let mut wrong_product = text_to("+16315551234", None);
    wrong_product["messaging_product"] = json!("sms");
    let no_text = json!({"messaging_product": "whatsapp", "to": "16315551234", "type": "text"});
    let unknown_type =
        json!({"messaging_product": "whatsapp", "to": "16315551234", "type": "hologram", "hologram": {}});
    let mut too_long = text_to("+16315551234", None);
    too_long["text"]["body"] = json!("x".repeat(4097));
    let to_self = text_to(&format!("+{PHONE}"), None);
    let no_to = json!({"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"}});
    let cases = [
        (no_product, 100),
        (wrong_product, 100),
        (no_text, 131008),
        (unknown_type, 131051),
        (too_long, 131009),
        (to_self, 131021),
        (no_to, 131008),
    ];
    for (body, code) in &cases {
        let (status, answer) = send(&client, &sim, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        must_be_graph_error(status, &answer, *code);
    }
    let not_json = send_raw(&client, sim.local_addr(), NUMBER, Some(TOKEN), b"{not json".to_vec()).await.unwrap();
    must_be_graph_error(not_json.0, &not_json.1, 100);
    let stats = sim.stats();
    assert_eq!(stats.messages_taken, 0, "a refused send takes nothing: {stats:?}");
    assert_eq!(stats.refused(131008), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_burst_over_the_throughput_is_refused_130429() {
    // 10 msg/s, burst 1 (a tenth of the rate), no pair limit: a burst of 40 sends is mostly refused.
    let config = CloudSimConfig {
        numbers: vec![format!("{NUMBER}={TOKEN}:10").parse().unwrap()],
        pair_interval_ms: 0,
        ..CloudSimConfig::for_test()
    };
    let sim = start(config).await;
    let client = client();
    let began = Instant::now();
    let addr = sim.local_addr();
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let (client, body) =
                (client.clone(), serde_json::to_vec(&text_to(&format!("+1631555{i:04}"), None)).unwrap());
            tokio::spawn(async move { send_raw(&client, addr, NUMBER, Some(TOKEN), body).await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for s in sends {
        answers.push(tokio::time::timeout(TIMEOUT, s).await.unwrap().unwrap());
    }
    let elapsed = began.elapsed();
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count() as u64;
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    for (status, answer) in &refused {
        assert_eq!(*status, StatusCode::BAD_REQUEST);
        must_be_graph_error(*status, answer, 130429);
    }
    // GCRA: at most the burst plus the rate times the time the burst took (plus one cell of rounding).
    let allowed = 1 + (elapsed.as_secs_f64() * 10.0).ceil() as u64 + 1;
    assert!(accepted >= 1 && accepted <= allowed, "accepted {accepted} in {elapsed:?}; allowed at most {allowed}");
    assert!(!refused.is_empty(), "a burst of 40 at 10 msg/s must be refused in part");
    let stats = sim.stats();
    assert_eq!(stats.refused(130429), refused.len() as u64);
    assert_eq!(stats.numbers[NUMBER].throughput_refusals, refused.len() as u64);
    assert_eq!(stats.numbers[NUMBER].messages_taken, accepted);
    assert!(stats.numbers[NUMBER].max_per_second <= accepted);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_pair_limit_refuses_131056_for_that_pair_only() {
    let config = CloudSimConfig {
        numbers: vec![
            format!("{NUMBER}={TOKEN}:1000").parse().unwrap(),
            "200000000000002=token-2:1000".parse().unwrap(),
        ],
        pair_interval_ms: 600_000,
        pair_burst: 2,
        ..CloudSimConfig::for_test()
    };
    let sim = start(config).await;
    let client = client();
    for _ in 0..2 {
        assert_eq!(send(&client, &sim, &text_to("+16315551234", None)).await.0, StatusCode::OK);
    }
    let (status, answer) = send(&client, &sim, &text_to("+16315551234", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    must_be_graph_error(status, &answer, 131056);
    let (status, answer) = send(&client, &sim, &text_to("+16315559999", None)).await;
    assert_eq!(status, StatusCode::OK, "another recipient of the same number: {answer}");
    let other_number = serde_json::to_vec(&text_to("+16315551234", None)).unwrap();
    let (status, answer) =
        send_raw(&client, sim.local_addr(), "200000000000002", Some("token-2"), other_number).await.unwrap();
    assert_eq!(status, StatusCode::OK, "the same recipient from another number: {answer}");
    let stats = sim.stats();
    assert_eq!(stats.refused(131056), 1);
    assert_eq!(stats.refused(130429), 0);
    assert_eq!(stats.numbers[NUMBER].pair_refusals, 1);
    assert_eq!(stats.messages_taken, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn status_webhooks_are_signed_and_carry_the_marker() {
    let (receiver, url) = Receiver::start().await;
    let config = CloudSimConfig { invalid_prefix: Some("1999".into()), ..webhook_config(&url) };
    let sim = start(config).await;
    let client = client();
    let (status, answer) = send(&client, &sim, &text_to("+16315551234", Some("ferry-m-1"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let wamid = answer["messages"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = send(&client, &sim, &text_to("+19995550000", Some("ferry-m-2"))).await;
    assert_eq!(status, StatusCode::OK, "an invalid recipient is taken, then fails by webhook");
    receiver
        .wait_for_statuses("sent, delivered, read of m-1 and failed of m-2", |s| {
            s.iter().filter(|s| s.id == wamid).count() == 3 && s.iter().any(|s| s.status == StatusKind::Failed)
        })
        .await;
    for (signature, body) in receiver.posts.lock().iter() {
        assert_eq!(ferry_cloud::verify(SECRET.as_bytes(), body, signature.as_deref()), Ok(()));
        assert_eq!(
            ferry_cloud::verify(b"another secret", body, signature.as_deref()),
            Err(ferry_cloud::SignatureError::Mismatch)
        );
    }
    let payload = &receiver.payloads()[0];
    assert_eq!(payload.object, "whatsapp_business_account");
    let (metadata, _) = payload.statuses().next().unwrap();
    assert_eq!((metadata.phone_number_id.as_str(), metadata.display_phone_number.as_str()), (NUMBER, PHONE));
    let statuses = receiver.statuses();
    let mine: Vec<_> = statuses.iter().filter(|s| s.id == wamid).collect();
    let mut kinds: Vec<_> = mine.iter().map(|s| s.status).collect();
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, vec![StatusKind::Delivered, StatusKind::Read, StatusKind::Sent]);
    for s in &mine {
        assert_eq!(s.biz_opaque_callback_data.as_deref(), Some("ferry-m-1"));
        assert_eq!(s.recipient_id, "16315551234");
        if s.status != StatusKind::Read {
            assert_eq!(s.conversation.as_ref().unwrap().origin.as_ref().unwrap().kind, "service");
            assert_eq!(s.pricing.as_ref().unwrap().pricing_model.as_deref(), Some("PMP"));
        }
    }
    let failed = statuses.iter().find(|s| s.status == StatusKind::Failed).unwrap();
    assert_eq!(failed.biz_opaque_callback_data.as_deref(), Some("ferry-m-2"));
    assert_eq!(failed.errors[0].code, 131026);
    assert_eq!(failed.errors[0].title, "Message undeliverable");
    assert!(!statuses.iter().any(|s| s.recipient_id == "19995550000" && s.status != StatusKind::Failed));
    let stats = sim.stats();
    assert_eq!(stats.failed_messages, 1);
    assert_eq!(stats.webhooks.statuses_delivered, 4);
    assert_eq!(stats.webhooks.pending, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_refused_webhook_is_posted_again() {
    let (receiver, url) = Receiver::start().await;
    *receiver.fail_first.lock() = 2;
    let config = CloudSimConfig { read_receipts: false, ..webhook_config(&url) };
    let sim = start(config).await;
    let client = client();
    assert_eq!(send(&client, &sim, &text_to("+16315551234", Some("r-1"))).await.0, StatusCode::OK);
    receiver.wait_for_statuses("sent and delivered despite two 500s", |s| s.len() == 2).await;
    let stats = sim.stats();
    assert_eq!(stats.webhooks.posts_failed, 2);
    assert_eq!(stats.webhooks.pending, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_marker_taken_twice_counts_as_a_duplicate() {
    let sim = start(one_number(CloudSimConfig::for_test())).await;
    let client = client();
    let (_, first) = send(&client, &sim, &text_to("+16315551234", Some("dup-1"))).await;
    let (_, second) = send(&client, &sim, &text_to("+16315551234", Some("dup-1"))).await;
    assert_ne!(first["messages"][0]["id"], second["messages"][0]["id"], "Meta gives every send its own wamid");
    assert_eq!(send(&client, &sim, &text_to("+16315551234", Some("dup-2"))).await.0, StatusCode::OK);
    assert_eq!(send(&client, &sim, &text_to("+16315551234", None)).await.0, StatusCode::OK);
    let stats = stats_over_http(&client, &sim).await;
    assert_eq!(stats.messages_taken, 4);
    assert_eq!(stats.unique_messages, 3, "dup-1, dup-2 and the unmarked one");
    assert_eq!(stats.duplicate_messages, 1);
    assert_eq!(stats.unmarked_messages, 1);
    assert_eq!((sim.marker_count("dup-1"), sim.marker_count("dup-2"), sim.marker_count("none")), (2, 1, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_takes_the_message_and_answers_late() {
    let (receiver, url) = Receiver::start().await;
    let slow_ms = 1_500;
    let config = CloudSimConfig { slow_rate: 1.0, slow_ms, ..webhook_config(&url) };
    let sim = start(config).await;
    let client = client();
    // A client whose timeout is shorter than the answer: it never sees a wamid...
    let body = serde_json::to_vec(&text_to("+16315551234", Some("doubt-1"))).unwrap();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(200),
        send_raw(&client, sim.local_addr(), NUMBER, Some(TOKEN), body),
    )
    .await;
    assert!(timed_out.is_err(), "the answer came before the client's timeout: {timed_out:?}");
    // ...yet the message was taken and its statuses carry the marker.
    receiver
        .wait_for_statuses("the sent status of the in-doubt message", |s| {
            s.iter().any(|s| s.status == StatusKind::Sent && s.biz_opaque_callback_data.as_deref() == Some("doubt-1"))
        })
        .await;
    assert_eq!(sim.marker_count("doubt-1"), 1);
    // A patient client gets the 200, no earlier than `slow_ms`.
    let began = Instant::now();
    let (status, answer) = send(&client, &sim, &text_to("+16315551234", Some("doubt-2"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(began.elapsed() >= Duration::from_millis(slow_ms), "answered after {:?}", began.elapsed());
    let stats = sim.stats();
    assert_eq!((stats.messages_taken, stats.slow_answers), (2, 2));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_after_taking_is_in_doubt_and_before_taking_is_not() {
    let after = start(CloudSimConfig { drop_after_rate: 1.0, ..one_number(CloudSimConfig::for_test()) }).await;
    let before = start(CloudSimConfig { drop_before_rate: 1.0, ..one_number(CloudSimConfig::for_test()) }).await;
    let client = client();
    for sim in [&after, &before] {
        let body = serde_json::to_vec(&text_to("+16315551234", Some("drop-1"))).unwrap();
        let outcome = tokio::time::timeout(TIMEOUT, send_raw(&client, sim.local_addr(), NUMBER, Some(TOKEN), body))
            .await
            .unwrap();
        assert!(outcome.is_err(), "the connection must close without an answer, got {outcome:?}");
    }
    let (after_stats, before_stats) = (after.stats(), before.stats());
    assert_eq!((after_stats.messages_taken, after_stats.dropped_after_taking), (1, 1));
    assert_eq!(after.marker_count("drop-1"), 1);
    assert_eq!((before_stats.messages_taken, before_stats.dropped_before_taking), (0, 1));
    after.shutdown().await;
    before.shutdown().await;
}

#[tokio::test]
async fn injected_errors_are_graph_131000_or_a_bare_502() {
    let errors = start(CloudSimConfig { error_rate: 1.0, ..one_number(CloudSimConfig::for_test()) }).await;
    let bare = start(CloudSimConfig { server_error_rate: 1.0, ..one_number(CloudSimConfig::for_test()) }).await;
    let client = client();
    let (status, answer) = send(&client, &errors, &text_to("+16315551234", None)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    must_be_graph_error(status, &answer, 131000);
    let (status, answer) = send(&client, &bare, &text_to("+16315551234", None)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(answer.get("error").is_none(), "no graph body: {answer}");
    assert_eq!(errors.stats().messages_taken + bare.stats().messages_taken, 0);
    errors.shutdown().await;
    bare.shutdown().await;
}

#[tokio::test]
async fn refuse_and_fail_rules_answer_with_their_codes() {
    let (receiver, url) = Receiver::start().await;
    let config = CloudSimConfig {
        refuse: vec!["1555013=131047".parse().unwrap()],
        fail: vec!["1555014=131049".parse().unwrap()],
        ..webhook_config(&url)
    };
    let sim = start(config).await;
    let client = client();
    let (status, answer) = send(&client, &sim, &text_to("+15550130000", None)).await;
    must_be_graph_error(status, &answer, 131047);
    let (status, _) = send(&client, &sim, &text_to("+15550140000", Some("f-1"))).await;
    assert_eq!(status, StatusCode::OK);
    receiver
        .wait_for_statuses("a failed 131049", |s| s.iter().any(|s| s.errors.first().is_some_and(|e| e.code == 131049)))
        .await;
    assert_eq!(sim.stats().messages_taken, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn reordered_and_duplicated_webhooks_are_injected() {
    let (receiver, url) = Receiver::start().await;
    let config = CloudSimConfig { webhook_reorder_rate: 1.0, webhook_duplicate_rate: 1.0, ..webhook_config(&url) };
    let sim = start(config).await;
    let client = client();
    assert_eq!(send(&client, &sim, &text_to("+16315551234", Some("o-1"))).await.0, StatusCode::OK);
    receiver.wait_for_statuses("three statuses, each twice", |s| s.len() == 6).await;
    let statuses = receiver.statuses();
    let first_sent = statuses.iter().position(|s| s.status == StatusKind::Sent).unwrap();
    let first_read = statuses.iter().position(|s| s.status == StatusKind::Read).unwrap();
    assert!(first_read < first_sent, "read before sent: {statuses:?}");
    let stats = sim.stats();
    assert_eq!((stats.webhooks.reordered_messages, stats.webhooks.duplicates_injected), (1, 3));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_inbound_endpoint_posts_a_signed_user_message() {
    let (receiver, url) = Receiver::start().await;
    let sim = start(webhook_config(&url)).await;
    let client = client();
    let request = hyper::Request::post(format!("http://{}/cloudsim/inbound", sim.local_addr()))
        .body(Full::new(Bytes::from(
            json!({"phone_number_id": NUMBER, "from": "16315551234", "text": "hi there", "profile_name": "Kerry"})
                .to_string(),
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + TIMEOUT;
    while receiver.posts.lock().is_empty() {
        assert!(Instant::now() < deadline, "no inbound webhook");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (signature, body) = receiver.posts.lock()[0].clone();
    assert_eq!(ferry_cloud::verify(SECRET.as_bytes(), &body, signature.as_deref()), Ok(()));
    let payload: WebhookPayload = serde_json::from_slice(&body).unwrap();
    let (metadata, contact, message) = payload.inbound_messages().next().unwrap();
    assert_eq!(metadata.phone_number_id, NUMBER);
    assert_eq!(contact.unwrap().profile.name, "Kerry");
    assert_eq!((message.from.as_str(), message.kind.as_str()), ("16315551234", "text"));
    assert_eq!(message.text.as_ref().unwrap().body, "hi there");
    assert_eq!(sim.stats().webhooks.inbound_delivered, 1);
    sim.shutdown().await;
}
