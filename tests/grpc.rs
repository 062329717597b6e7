//! gRPC integration tests: a real ferry (coordinator + ingest) on a port-0 socket, a real client.

mod support;

use ferry_coordinator::routing::shard_for_recipient;
use ferry_model::WaId;
use ferry_proto::v1::{self, send_request::Content, send_result::Outcome};
use support::{InProcess, text};
use tonic::Code;

fn must_accept(r: &v1::SendResult) -> &v1::SendResponse {
    match &r.outcome {
        Some(Outcome::Accepted(a)) => a,
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn must_reject(r: &v1::SendResult) -> &v1::Error {
    match &r.outcome {
        Some(Outcome::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn send_then_get_shows_the_durable_record() {
    let ferry = InProcess::start(8).await;
    let mut client = ferry.client().await;
    let mut req = text("+1 (631) 555-1234", "hello");
    req.biz_opaque_callback_data = "order-17".into();
    let sent = client.send(req).await.expect("accepted").into_inner();
    assert!(sent.message_id.starts_with("wamid."), "{}", sent.message_id);
    assert_eq!(sent.wa_id, "16315551234");
    assert_eq!(sent.message_status, "accepted");
    assert!(!sent.idempotent_replay);

    let record = client
        .get_message(v1::GetMessageRequest { message_id: sent.message_id.clone() })
        .await
        .expect("found")
        .into_inner();
    assert_eq!(record.message_id, sent.message_id);
    assert_eq!(record.to, "16315551234");
    assert_eq!(record.status, "accepted");
    assert_eq!(record.r#type, "text");
    assert_eq!(record.biz_opaque_callback_data, "order-17");
    assert_eq!(record.shard, shard_for_recipient(&WaId::from_normalized("16315551234".into()), 8).0 as u32);
    assert_eq!(record.expires_at_ms - record.accepted_at_ms, 30 * 24 * 3600 * 1000, "default TTL is 30 days");
    assert_eq!(record.history.len(), 1);
    ferry.stop().await;
}

#[tokio::test]
async fn recipient_without_plus_gets_the_country_code() {
    let ferry = InProcess::start(2).await;
    let mut client = ferry.client().await;
    let sent = client.send(text("(631) 555-1234", "hi")).await.unwrap().into_inner();
    assert_eq!(sent.wa_id, "16315551234", "default country code is 1");
    ferry.stop().await;
}

#[tokio::test]
async fn invalid_message_is_rejected_with_code_field_and_expectation() {
    let ferry = InProcess::start(2).await;
    let mut client = ferry.client().await;
    let long = "x".repeat(4097);
    let status = client.send(text("+16315551234", &long)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1001"), "{}", status.message());
    assert!(status.message().contains("text.body"), "{}", status.message());
    assert!(status.message().contains("4096"), "{}", status.message());
    assert_eq!(status.metadata().get("ferry-error-code").unwrap(), "1001");
    assert_eq!(status.metadata().get("ferry-error-field").unwrap(), "text.body");
    let details: v1::Error = prost::Message::decode(status.details()).expect("details hold a ferry.v1.Error");
    assert_eq!((details.code, details.field.as_str()), (1001, "text.body"));

    let missing = client.send(v1::SendRequest { to: "+16315551234".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(missing.metadata().get("ferry-error-code").unwrap(), "1008");

    // Nothing was written: every shard is still empty.
    assert!(ferry.coordinator.shard_stats().iter().all(|s| s.appended == 0));
    ferry.stop().await;
}

#[tokio::test]
async fn batch_answers_each_message_in_order() {
    let ferry = InProcess::start(4).await;
    let mut client = ferry.client().await;
    let bad_buttons = v1::SendRequest {
        to: "+16315550000".into(),
        content: Some(Content::Interactive(v1::InteractiveMessage {
            r#type: "button".into(),
            body: Some(v1::InteractiveText { text: "pick".into() }),
            action: Some(v1::InteractiveAction {
                buttons: (0..4)
                    .map(|i| v1::InteractiveButton {
                        r#type: "reply".into(),
                        reply: Some(v1::InteractiveReply { id: format!("b{i}"), title: format!("B{i}") }),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let messages = vec![
        text("+16315550001", "one"),
        text("", "no recipient"),
        text("+447911123456", "two"),
        bad_buttons,
        text("+5511987654321", "three"),
    ];
    let results = client.send_batch(v1::SendBatchRequest { messages }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 5);
    assert_eq!(must_accept(&results[0]).wa_id, "16315550001");
    assert_eq!(must_reject(&results[1]).code, 1008);
    assert_eq!(must_accept(&results[2]).wa_id, "447911123456");
    let e = must_reject(&results[3]);
    assert_eq!(e.code, 1009);
    assert!(e.field.starts_with("interactive.action.buttons"), "{}", e.field);
    assert_eq!(must_accept(&results[4]).wa_id, "5511987654321");

    for r in [&results[0], &results[2], &results[4]] {
        let id = must_accept(r).message_id.clone();
        let rec = client.get_message(v1::GetMessageRequest { message_id: id }).await.unwrap().into_inner();
        assert_eq!(rec.status, "accepted");
    }
    let appended: u64 = ferry.coordinator.shard_stats().iter().map(|s| s.appended).sum();
    assert_eq!(appended, 3, "only the valid messages were written");

    let empty = client.send_batch(v1::SendBatchRequest { messages: vec![] }).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many = (0..1001).map(|i| text(&format!("+1631555{i:04}"), "x")).collect();
    let status = client.send_batch(v1::SendBatchRequest { messages: too_many }).await.unwrap_err();
    assert!(status.message().contains("1000"), "{}", status.message());
    ferry.stop().await;
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let ferry = InProcess::start(2).await;
    let mut client = ferry.client().await;
    for id in ["wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI4MjZGRDA0OUE2OTQ3RkEyMzcA", "nonsense"] {
        let s = client.get_message(v1::GetMessageRequest { message_id: id.into() }).await.unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{id}");
        assert_eq!(s.metadata().get("ferry-error-code").unwrap(), "1006");
    }
    ferry.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_id_and_refuses_another_payload() {
    let ferry = InProcess::start(8).await;
    let mut client = ferry.client().await;
    let mut first = text("+16315551234", "pay 10");
    first.idempotency_key = "order-1".into();
    let a = client.send(first.clone()).await.unwrap().into_inner();
    let b = client.send(first.clone()).await.unwrap().into_inner();
    assert_eq!(a.message_id, b.message_id);
    assert!(b.idempotent_replay && !a.idempotent_replay);

    let mut changed = first.clone();
    changed.content = Some(Content::Text(v1::TextMessage { body: "pay 20".into(), preview_url: false }));
    let conflict = client.send(changed).await.unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    assert!(conflict.message().contains("order-1"), "{}", conflict.message());

    let mut other_recipient = first.clone();
    other_recipient.to = "+447911123456".into();
    assert_eq!(client.send(other_recipient).await.unwrap_err().code(), Code::AlreadyExists);

    // Another sender may use the same key.
    let mut other_sender = first.clone();
    other_sender.sender = "+15550109999".into();
    let c = client.send(other_sender).await.unwrap().into_inner();
    assert_ne!(c.message_id, a.message_id);

    // Many keys: whichever shard owns the key, a retry answers the same id (covers keys whose
    // key shard differs from the recipient's shard).
    for i in 0..40 {
        let mut m = text(&format!("+1631555{i:04}"), "k");
        m.idempotency_key = format!("key-{i}");
        let x = client.send(m.clone()).await.unwrap().into_inner();
        let y = client.send(m).await.unwrap().into_inner();
        assert_eq!(x.message_id, y.message_id);
        assert!(y.idempotent_replay);
    }

    // Within one batch: a repeat answers the first's id, another payload is a conflict.
    let mut k = text("+16315557777", "batch");
    k.idempotency_key = "in-batch".into();
    let mut k_other = k.clone();
    k_other.content = Some(Content::Text(v1::TextMessage { body: "different".into(), preview_url: false }));
    let results = client
        .send_batch(v1::SendBatchRequest { messages: vec![k.clone(), k.clone(), k_other] })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(must_accept(&results[0]).message_id, must_accept(&results[1]).message_id);
    assert!(must_accept(&results[1]).idempotent_replay);
    assert_eq!(must_reject(&results[2]).code, 1009);
    let appended: u64 = ferry.coordinator.shard_stats().iter().map(|s| s.appended).sum();
    assert_eq!(appended, 1 + 1 + 40 + 1, "replays and conflicts write nothing");
    ferry.stop().await;
}

/// `grpc.health.v1.Health/Check` of `service` and the services reflection lists, over `channel`.
async fn health_and_services(
    channel: tonic::transport::Channel,
    service: &str,
) -> (tonic_health::pb::health_check_response::ServingStatus, Vec<String>) {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut health = HealthClient::new(channel.clone());
    let h = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    (h.status(), list.service.into_iter().map(|s| s.name).collect())
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let ferry = InProcess::start(1).await;
    let endpoint = format!("http://{}", ferry.addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();
    let (status, names) = health_and_services(channel, "ferry.v1.Messages").await;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving);
    assert!(names.iter().any(|n| n == "ferry.v1.Messages"), "{names:?}");
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
    ferry.stop().await;
}

#[tokio::test]
async fn chatsim_serves_health_and_reflection_too() {
    // grpcurl and dynamic clients read chatsim's Stats without the .proto files.
    let chat = support::ChatSimProcess::spawn("127.0.0.1:0", &[]);
    let endpoint = format!("http://{}", chat.addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();
    let (status, names) = health_and_services(channel, "ferry.chat.v1.ChatAdmin").await;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving);
    for service in ["ferry.chat.v1.Chat", "ferry.chat.v1.ChatAdmin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
}

#[tokio::test]
async fn full_shard_mailbox_fails_fast_with_1015() {
    let ferry = InProcess::start(1).await;
    let mut client = ferry.client().await;
    // Fill the shard's mailbox to capacity with a held op: the writer is blocked and the mailbox
    // is full, so a send must be refused at once instead of queueing.
    let hold = ferry.coordinator.hold_shard_writer_for_test(ferry_model::ShardId(0));
    let refused = client.send(text("+16315559999", "over")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.metadata().get("ferry-error-code").unwrap(), "1015");
    assert!(refused.message().contains("overloaded"), "{}", refused.message());
    let batch = client.send_batch(v1::SendBatchRequest { messages: vec![text("+16315559998", "x")] }).await;
    assert_eq!(must_reject(&batch.unwrap().into_inner().results[0]).code, 1015);
    drop(hold);
    // The writer frees the mailbox as soon as it wakes: sends are accepted again.
    let mut accepted = None;
    for _ in 0..100 {
        match client.send(text("+16315559999", "after")).await {
            Ok(r) => {
                accepted = Some(r.into_inner());
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(accepted.expect("accepted after the writer resumed").message_id.starts_with("wamid."));
    ferry.stop().await;
}

/// Message ids of two data dirs never collide: two nodes with the same config and shard count,
/// the same sends to the same recipients, and no id in common (an id carries its node's id, drawn
/// at random when the data dir is created, beside the shard and the shard's sequence number).
#[tokio::test]
async fn two_data_dirs_never_issue_the_same_id() {
    use std::collections::HashSet;
    let nodes = [InProcess::start(4).await, InProcess::start(4).await];
    let mut ids: [Vec<String>; 2] = Default::default();
    for (node, ids) in nodes.iter().zip(&mut ids) {
        let mut client = node.client().await;
        for i in 0..100 {
            let id = client.send(text(&format!("+4479114{i:05}"), "the same on both")).await.unwrap();
            ids.push(id.into_inner().message_id);
        }
    }
    let first: HashSet<&String> = ids[0].iter().collect();
    let shared: Vec<&String> = ids[1].iter().filter(|id| first.contains(id)).collect();
    assert!(shared.is_empty(), "{} ids issued by both data dirs, e.g. {:?}", shared.len(), shared.first());
    let node_ids: Vec<HashSet<u64>> = ids
        .iter()
        .map(|ids| ids.iter().map(|id| ferry_model::MessageId::decode(id).expect("a ferry id").space).collect())
        .collect();
    assert_eq!(node_ids[0].len(), 1);
    assert!(node_ids[0].is_disjoint(&node_ids[1]), "both data dirs have node id {:?}", node_ids[0]);
    for node in nodes {
        node.stop().await;
    }
}
