//! Inbound user messages and the 24-hour customer-service window, end to end: ferry (ingest,
//! delivery, webhooks) and the reference chat server in this process. A user's message, made with
//! chatsim's `SimulateInbound`, travels over the delivery stream, is recorded in the shard that
//! owns the user, reaches the webhook in the configured shape, and opens the window; time is
//! controlled, so the window can be seen to close after 24 hours. Inbound messages and receipts
//! that arrive on another shard's stream are recorded in their own shard, and a failed write of
//! one is retried.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::{CoordinatorConfig, WindowPolicy, routing};
use ferry_delivery::DeliveryConfig;
use ferry_model::WaId;
use ferry_model::clock::ManualClock;
use ferry_proto::chat::v1::SimulateInboundRequest;
use ferry_proto::chat::v1::chat_admin_client::ChatAdminClient;
use ferry_proto::v1::{self, send_request::Content};
use ferry_webhooks::{Shape, WebhookConfig, WebhookEngine};
use support::{Delivering, text, wait_for, wait_for_count};

const BUSINESS: &str = "15550100000"; // the default sender, in wa_id form

fn template(to: &str) -> v1::SendRequest {
    v1::SendRequest {
        to: to.into(),
        content: Some(Content::Template(v1::TemplateMessage {
            name: "order_update".into(),
            language: Some(v1::TemplateLanguage { policy: "deterministic".into(), code: "en_US".into() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn simulate_inbound(sim: &ChatSim, from: &str, text: &str) {
    let mut admin = ChatAdminClient::connect(format!("http://{}", sim.local_addr())).await.unwrap();
    let request = SimulateInboundRequest {
        from: from.into(),
        to: BUSINESS.into(),
        text: text.into(),
        profile_name: "Kerry".into(),
    };
    admin.simulate_inbound(request).await.expect("simulate inbound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_opens_with_a_user_message_and_closes_after_24_hours() {
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), 4);
    config.customer_service_window = WindowPolicy::Enforce;
    let clock = ManualClock::new();
    let ferry = Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), clock.clone()).await;
    let mut client = ferry.node.client().await;
    let user = "+44 7911 123456";

    // Never wrote: a text is refused (470, FAILED_PRECONDITION, on `to`) and writes nothing; a
    // template is accepted.
    let refused = client.send(text(user, "hi")).await.expect_err("outside the window");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.metadata().get("ferry-error-code").unwrap(), "470");
    assert_eq!(refused.metadata().get("ferry-error-field").unwrap(), "to");
    assert!(refused.message().contains("never"), "{}", refused.message());
    client.send(template(user)).await.expect("templates need no window");

    // The user writes: the window opens (once the message is durable in the user's shard).
    simulate_inbound(&sim, "447911123456", "hello").await;
    wait_for(Duration::from_secs(30), "a text accepted inside the window", || {
        let mut c = client.clone();
        async move { c.send(text(user, "thanks for writing")).await.map(drop).map_err(|e| format!("{e:?}")) }
    })
    .await;
    // Every shard's stream acknowledged what it recorded.
    wait_for(Duration::from_secs(10), "the inbound message acknowledged", || async {
        let acked = sim.stats().inbound_acked;
        if acked == 1 { Ok(()) } else { Err(format!("{acked} inbound messages acknowledged")) }
    })
    .await;

    // 23 hours later still open; 24 hours and a minute later closed again.
    clock.advance(Duration::from_secs(23 * 3600));
    let mut keyed = text(user, "still open");
    keyed.idempotency_key = "late-retry".into();
    let first = client.send(keyed.clone()).await.expect("within 24 h").into_inner();
    clock.advance(Duration::from_secs(3600 + 60));
    let refused = client.send(text(user, "too late")).await.expect_err("the window closed");
    assert_eq!(refused.metadata().get("ferry-error-code").unwrap(), "470");
    assert!(refused.message().contains("24 hours ago"), "{}", refused.message());
    // A client retry of the message accepted while the window was open answers its first id.
    let retry = client.send(keyed.clone()).await.expect("a keyed retry is a replay, not a new send").into_inner();
    assert_eq!((retry.message_id, retry.idempotent_replay), (first.message_id, true));
    keyed.idempotency_key = "fresh-key".into();
    let refused = client.send(keyed).await.expect_err("a new key is a new send: outside the window");
    assert_eq!(refused.metadata().get("ferry-error-code").unwrap(), "470");
    client.send(template(user)).await.expect("a template reopens the conversation");

    ferry.stop().await;
    sim.shutdown().await;
}

type Bodies = Arc<Mutex<Vec<serde_json::Value>>>;

async fn receiver() -> (String, Bodies) {
    let bodies: Bodies = Arc::default();
    let state = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), bodies)
}

async fn inbound_reaches_the_webhook(shape: Shape) {
    let (url, bodies) = receiver().await;
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), 3);
    config.shard.callbacks = true;
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    let hooks =
        WebhookEngine::start(ferry.node.coordinator.shards(), WebhookConfig { shape, ..WebhookConfig::for_test(url) })
            .unwrap();
    // Users on different shards (one stream carries them all; each is recorded in its own shard).
    let users: Vec<String> = (0..6).map(|i| format!("4479110{i:05}")).collect();
    for u in &users {
        simulate_inbound(&sim, u, &format!("hi from {u}")).await;
    }
    wait_for_count(Duration::from_secs(30), "6 inbound callbacks", 6, || async { bodies.lock().unwrap().len() }).await;
    let bodies = bodies.lock().unwrap().clone();
    let mut seen = Vec::new();
    for b in &bodies {
        let value = match shape {
            Shape::Onprem => b.clone(),
            Shape::Cloud => {
                assert_eq!(b["object"], "whatsapp_business_account");
                let change = &b["entry"][0]["changes"][0];
                assert_eq!(change["field"], "messages");
                assert_eq!(change["value"]["metadata"]["phone_number_id"], BUSINESS);
                change["value"].clone()
            }
        };
        let (contact, message) = (&value["contacts"][0], &value["messages"][0]);
        assert_eq!(contact["profile"]["name"], "Kerry");
        assert_eq!(contact["wa_id"], message["from"]);
        assert_eq!(message["type"], "text");
        let from = message["from"].as_str().unwrap().to_owned();
        assert_eq!(message["text"]["body"], format!("hi from {from}"));
        assert!(message["id"].as_str().unwrap().starts_with("chatsim.in."));
        seen.push(from);
    }
    seen.sort();
    assert_eq!(seen, users, "each user's message arrived once");
    hooks.shutdown().await;
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_messages_reach_the_webhook_onprem() {
    inbound_reaches_the_webhook(Shape::Onprem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_messages_reach_the_webhook_cloud() {
    inbound_reaches_the_webhook(Shape::Cloud).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_that_arrive_on_another_shards_stream_are_recorded_in_their_shard() {
    // The server pushes every receipt to the stream that said Hello last: one shard's stream gets
    // the receipts of every shard's messages.
    let config = ChatSimConfig { misroute_receipts: true, ..ChatSimConfig::for_test() };
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 4);
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    let mut client = ferry.node.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(client.send(template(&format!("+4479112{i:05}"))).await.unwrap().into_inner().message_id);
    }
    support::wait_until_read(&client, &ids, Duration::from_secs(30)).await;
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_message_whose_write_fails_is_retried_until_recorded() {
    use ferry_delivery::failpoint::{self, Point};
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 2);
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    // One user per shard, so whichever stream the server picks, one of them belongs to another
    // shard; the first write of each fails.
    let users: Vec<String> = (0..2u16)
        .map(|shard| {
            (0..)
                .map(|i| format!("4479113{i:05}"))
                .find(|u| routing::shard_for_recipient(&WaId::from_normalized(u.clone()), 2).0 == shard)
                .unwrap()
        })
        .collect();
    for u in &users {
        failpoint::arm(Point::InboundWrite, u, 1);
        simulate_inbound(&sim, u, "hello").await;
    }
    wait_for(Duration::from_secs(30), "both inbound messages recorded and acknowledged", || async {
        let acked = sim.stats().inbound_acked;
        if acked == 2 { Ok(()) } else { Err(format!("{acked} inbound messages acknowledged")) }
    })
    .await;
    let shards = ferry.node.coordinator.shards();
    for u in &users {
        let owner = &shards[usize::from(routing::shard_for_recipient(&WaId::from_normalized(u.clone()), 2).0)];
        assert!(owner.get_contact(BUSINESS, u).unwrap().is_some(), "{u} recorded in its shard");
    }
    ferry.stop().await;
    sim.shutdown().await;
}

/// Receipts and inbound messages are acknowledged to the chat server only once their record is
/// durable. While the shard's writes of them fail, the server sees no ack for any of them (the
/// loop writes them again, and the server keeps them); once the writes go through, every one is
/// recorded, then acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_inbound_messages_are_acked_only_once_durable() {
    const USER: &str = "447911300002";
    const ARMED: u64 = 1_000_000;
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One shard: the receipts and the inbound message are written by the stream's own shard.
    let config = CoordinatorConfig::for_test(dir.path(), 1);
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    let shard = ferry.node.coordinator.shards()[0].clone();
    // Every write of a receipt or an inbound message fails from now on (the message's own writes
    // go through: it is sent and acked).
    shard.failpoint_fail_event_settles(ARMED);
    let failed = || ARMED - shard.failpoint_event_settles_left();
    let mut client = ferry.node.client().await;
    let id = client.send(template("+447911300001")).await.unwrap().into_inner().message_id;
    simulate_inbound(&sim, USER, "hello").await;
    wait_for(Duration::from_secs(30), "the server pushed both receipts and the inbound message", || async {
        let s = sim.stats();
        if s.unique_messages == 1 && s.receipts_sent >= 2 && s.inbound_sent >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Two more failed writes after that: the receipts and the inbound message reached the loop
    // and it tried to write them (again) since.
    let before = failed();
    wait_for_count(
        Duration::from_secs(30),
        "two more failed writes of receipts or inbound messages",
        before as usize + 2,
        || async { failed() as usize },
    )
    .await;
    let s = sim.stats();
    assert_eq!((s.receipts_acked, s.inbound_acked), (0, 0), "acknowledged before durable: {s:?}");
    let status = support::status_of(&mut client, &id).await.status;
    assert!(matches!(status.as_str(), "accepted" | "sent"), "no receipt was recorded, yet the status is {status}");
    assert!(shard.get_contact(BUSINESS, USER).unwrap().is_none(), "the inbound message was not recorded");

    shard.failpoint_fail_event_settles(0);
    support::wait_until_read(&client, std::slice::from_ref(&id), Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(30), "both receipts and the inbound message acknowledged", || async {
        let s = sim.stats();
        if s.receipts_acked >= 2 && s.inbound_acked == 1 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert!(shard.get_contact(BUSINESS, USER).unwrap().is_some(), "the inbound message is recorded");
    drop(shard);
    ferry.stop().await;
    sim.shutdown().await;
}
