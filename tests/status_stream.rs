//! `WatchStatuses` end to end: ferry (ingest + delivery) and the reference chat server in this
//! process, a gRPC client on a real socket. A client that disconnects and resumes from the cursor
//! of the last event it saw receives every status of every message exactly once; filters and bad
//! requests behave as documented.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_coordinator::CoordinatorConfig;
use ferry_delivery::DeliveryConfig;
use ferry_proto::v1;
use support::{Client, Delivering, text, wait_until_read};
use tonic::Streaming;

async fn start() -> (ChatSim, Delivering) {
    let sim = ChatSim::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ChatSimConfig::for_test())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig::for_test(dir.path(), 3);
    let ferry =
        Delivering::start(dir, config, sim.local_addr(), DeliveryConfig::for_test(), ferry_model::clock::system())
            .await;
    (sim, ferry)
}

async fn watch(client: &mut Client, request: v1::WatchStatusesRequest) -> Streaming<v1::StatusEvent> {
    client.watch_statuses(request).await.expect("watch").into_inner()
}

async fn next(stream: &mut Streaming<v1::StatusEvent>) -> v1::StatusEvent {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an event within 30 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Nothing more arrives within `quiet`.
async fn assert_no_more(stream: &mut Streaming<v1::StatusEvent>, quiet: Duration) {
    if let Ok(m) = tokio::time::timeout(quiet, stream.message()).await {
        panic!("unexpected extra event: {m:?}");
    }
}

async fn send_n(client: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut m = text(&format!("+4479220{i:05}"), "hello");
        m.biz_opaque_callback_data = format!("cb-{i}");
        ids.push(client.send(m).await.unwrap().into_inner().message_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watch_misses_nothing_and_repeats_nothing() {
    let (sim, ferry) = start().await;
    let mut client = ferry.node.client().await;
    let mut first = watch(&mut client, v1::WatchStatusesRequest::default()).await;
    let ids = send_n(&mut client, 20).await;

    // Take 15 events, then go away.
    let mut seen: Vec<v1::StatusEvent> = Vec::new();
    for _ in 0..15 {
        seen.push(next(&mut first).await);
    }
    let cursor = seen.last().unwrap().cursor.clone();
    drop(first);
    wait_until_read(&client, &ids, Duration::from_secs(60)).await;

    // Resume: exactly the other 45 events arrive, then nothing.
    let mut resumed = watch(&mut client, v1::WatchStatusesRequest { cursor, ..Default::default() }).await;
    for _ in 15..60 {
        seen.push(next(&mut resumed).await);
    }
    assert_no_more(&mut resumed, Duration::from_millis(500)).await;

    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &seen {
        by_id.entry(e.message_id.as_str()).or_default().push(e.status.as_str());
        assert!(e.timestamp_ms > 0);
        assert!(e.biz_opaque_callback_data.starts_with("cb-"));
        assert_eq!(e.r#type, "text");
    }
    for id in &ids {
        assert_eq!(by_id.get(id.as_str()).map(Vec::as_slice), Some(&["sent", "delivered", "read"][..]), "{id}");
    }
    ferry.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_events_and_bad_requests_are_refused() {
    let (sim, ferry) = start().await;
    let mut client = ferry.node.client().await;
    let ids = send_n(&mut client, 6).await;
    wait_until_read(&client, &ids, Duration::from_secs(60)).await;

    // From the oldest retained event, one recipient: that recipient's three statuses.
    let oldest = v1::StartFrom::Oldest as i32;
    let mut by_recipient = watch(
        &mut client,
        v1::WatchStatusesRequest { recipient: "+44 79220 00002".into(), start: oldest, ..Default::default() },
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let e = next(&mut by_recipient).await;
        assert_eq!(e.message_id, ids[2]);
        assert_eq!(e.recipient, "447922000002");
        statuses.push(e.status);
    }
    assert_eq!(statuses, ["sent", "delivered", "read"]);
    assert_no_more(&mut by_recipient, Duration::from_millis(300)).await;

    // Two message ids: their six statuses.
    let wanted = vec![ids[0].clone(), ids[5].clone()];
    let mut by_id = watch(
        &mut client,
        v1::WatchStatusesRequest { message_ids: wanted.clone(), start: oldest, ..Default::default() },
    )
    .await;
    for _ in 0..6 {
        assert!(wanted.contains(&next(&mut by_id).await.message_id));
    }
    assert_no_more(&mut by_id, Duration::from_millis(300)).await;

    // Without a cursor and from the latest: nothing old arrives.
    let mut latest = watch(&mut client, v1::WatchStatusesRequest::default()).await;
    assert_no_more(&mut latest, Duration::from_millis(300)).await;

    // Bad input: INVALID_ARGUMENT naming the field, with the reference code.
    for (request, field) in [
        (v1::WatchStatusesRequest { cursor: "c1.1.2".into(), ..Default::default() }, "cursor"),
        (v1::WatchStatusesRequest { cursor: "nonsense".into(), ..Default::default() }, "cursor"),
        (v1::WatchStatusesRequest { message_ids: vec!["wamid.nope".into()], ..Default::default() }, "message_ids[0]"),
        (v1::WatchStatusesRequest { recipient: "+1 abc".into(), ..Default::default() }, "recipient"),
        (v1::WatchStatusesRequest { start: 7, ..Default::default() }, "start"),
    ] {
        let status = client.watch_statuses(request).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        assert_eq!(status.metadata().get("ferry-error-field").unwrap().to_str().unwrap(), field);
        assert_eq!(status.metadata().get("ferry-error-code").unwrap().to_str().unwrap(), "1009", "{field}");
    }
    ferry.stop().await;
    sim.shutdown().await;
}
