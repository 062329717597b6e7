//! Users, tokens and roles on a real `ferry serve` with auth on, over HTTP and gRPC: login, no
//! token, wrong password, expired, revoked and deleted-user tokens, a role too low; tokens and
//! revocations across a restart; the generated admin password printed once; tenancy (a user's
//! `senders`) on every send, read and watch path; deny by default for unnamed endpoints.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use ferry_proto::v1::messages_client::MessagesClient;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use support::{FerryProcess, text};
use tonic::Code;

/// One HTTP call: (status, `WWW-Authenticate`, JSON body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<String>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request).await.expect("http call");
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (status, challenge, json)
}

fn basic(user: &str, password: &str) -> Option<String> {
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> String {
    let (status, _, body) = http(addr, "POST", "/v1/users/login", basic(user, password), None).await;
    assert_eq!(status, 200, "login {user}: {body}");
    let expires = body["users"][0]["expires_after"].as_str().unwrap();
    assert!(expires.ends_with("+00:00") && expires.len() == 25, "{expires}");
    body["users"][0]["token"].as_str().unwrap().to_owned()
}

/// A refusal in the On-Prem shape with `status` and code 1005.
#[track_caller]
fn assert_refused((status, challenge, body): (u16, Option<String>, Value), want: u16, details: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["errors"][0]["code"], 1005, "{body}");
    let got = body["errors"][0]["details"].as_str().unwrap();
    assert!(got.contains(details), "details {got:?} should contain {details:?}");
    assert_eq!(challenge.is_some(), want == 401, "WWW-Authenticate on 401 only");
}

/// `Send` over gRPC with this token (or none): Ok or the status code and message.
async fn grpc_send(addr: SocketAddr, token: Option<&str>) -> Result<(), (Code, String)> {
    let mut client = MessagesClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(text("+15551230001", "hi"));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.send(request).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned()))
}

/// The admin-only `ResolveHeld` over gRPC with this token.
async fn grpc_resolve_held(addr: SocketAddr, token: &str) -> Result<(), (Code, String)> {
    let mut client = MessagesClient::connect(format!("http://{addr}")).await.unwrap();
    let action = ferry_proto::v1::HeldAction::Release as i32;
    let mut request =
        tonic::Request::new(ferry_proto::v1::ResolveHeldRequest { template_name: "promo".into(), action });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.resolve_held(request).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned()))
}

#[track_caller]
fn assert_unauthenticated(r: Result<(), (Code, String)>, details: &str) {
    let (code, message) = r.expect_err("refused");
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains(details), "{message:?} should contain {details:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_over_http_and_grpc_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with_auth(dir.path(), 2, Some("admin-pass-1"), &[]);
    assert_eq!(ferry.generated_admin_password, None, "a configured password is not printed");
    let (h, g) = (ferry.http_addr, ferry.addr);

    // Probes and metrics are open; everything else needs a token.
    let (status, _, _) = http(h, "GET", "/healthz", None, None).await;
    assert_ne!(status, 401, "/healthz is open");
    assert_refused(http(h, "GET", "/v1/settings", None, None).await, 401, "no token");
    assert_refused(http(h, "POST", "/v1/messages", None, Some(json!({}))).await, 401, "no token");
    // The Cloud route refuses in the Cloud shape, which Cloud clients parse.
    let (status, challenge, body) = http(h, "POST", "/v21.0/106540352242922/messages", None, Some(json!({}))).await;
    assert_eq!((status, challenge.is_some()), (401, true), "{body}");
    assert_eq!(body["error"]["type"], "OAuthException", "{body}");
    assert!(body["error"]["error_data"]["details"].as_str().unwrap().contains("no token"), "{body}");
    assert_refused(http(h, "GET", "/v1/settings", bearer("forged"), None).await, 401, "unknown or revoked");
    assert_unauthenticated(grpc_send(g, None).await, "no token");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{g}")).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest { service: "ferry.v1.Messages".into() };
    health.check(request).await.expect("gRPC health is open without a token");
    assert_unauthenticated(grpc_send(g, Some("forged")).await, "unknown or revoked");

    // Wrong password, unknown user, no credentials: 401 with a Basic challenge.
    let wrong = http(h, "POST", "/v1/users/login", basic("admin", "nope-nope"), None).await;
    assert_eq!(wrong.1.as_deref(), Some("Basic realm=\"ferry\""));
    assert_refused(wrong, 401, "wrong user name or password");
    assert_refused(http(h, "POST", "/v1/users/login", basic("ghost", "admin-pass-1"), None).await, 401, "wrong");
    assert_refused(http(h, "POST", "/v1/users/login", None, None).await, 401, "Basic");

    // Admin: settings (secrets masked) and user management.
    let admin = login(h, "admin", "admin-pass-1").await;
    let (status, _, settings) = http(h, "GET", "/v1/settings", bearer(&admin), None).await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["settings"]["auth"]["admin_password"], "********");
    let created =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"bob","password":"bob-pass-1"}))).await;
    assert_eq!((created.0, &created.2["users"][0]["role"]), (201, &json!("user")), "{}", created.2);
    let bad =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"eve","password":"x","role":"root"})))
            .await;
    assert_eq!((bad.0, &bad.2["errors"][0]["code"]), (400, &json!(1009)), "{}", bad.2);
    let dup =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"bob","password":"bob-pass-2"}))).await;
    assert!(dup.2["errors"][0]["details"].as_str().unwrap().contains("exists already"), "{}", dup.2);

    // A user: messages yes, admin endpoints no (403, no challenge).
    let bob = login(h, "bob", "bob-pass-1").await;
    let bob2 = login(h, "bob", "bob-pass-1").await;
    grpc_send(g, Some(&bob)).await.expect("a user may send over gRPC");
    grpc_send(g, Some(&admin)).await.expect("an admin may send over gRPC");
    assert_refused(http(h, "GET", "/v1/settings", bearer(&bob), None).await, 403, "needs role `admin`");
    let as_bob = Some(json!({"username":"mallory","password":"mallory-pass"}));
    assert_refused(http(h, "POST", "/v1/users", bearer(&bob), as_bob).await, 403, "needs role `admin`");
    assert_refused(http(h, "DELETE", "/v1/users/admin", bearer(&bob), None).await, 403, "needs role `admin`");
    // Over gRPC: the admin-only `ResolveHeld` (paced templates) refuses a user, serves an admin.
    let (code, message) = grpc_resolve_held(g, &bob).await.expect_err("a user may not resolve held messages");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("admin"), "{message}");
    grpc_resolve_held(g, &admin).await.expect("an admin may resolve held messages");

    // Logout revokes that token only, on both APIs.
    let (status, _, _) = http(h, "POST", "/v1/users/logout", bearer(&bob), None).await;
    assert_eq!(status, 200);
    assert_refused(http(h, "POST", "/v1/users/logout", bearer(&bob), None).await, 401, "unknown or revoked");
    assert_unauthenticated(grpc_send(g, Some(&bob)).await, "unknown or revoked");
    grpc_send(g, Some(&bob2)).await.expect("the other token of bob still works");

    // Deleting a user revokes all its tokens, and ends their open status streams.
    let mut watch = MessagesClient::connect(format!("http://{g}")).await.unwrap();
    let mut request = tonic::Request::new(ferry_proto::v1::WatchStatusesRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {bob2}").parse().unwrap());
    let mut stream = watch.watch_statuses(request).await.expect("bob may watch").into_inner();
    let (status, _, body) = http(h, "DELETE", "/v1/users/bob", bearer(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue, // events of earlier sends may still arrive
                Ok(None) => panic!("the stream ended without an error"),
                Err(s) => return s,
            }
        }
    })
    .await
    .expect("a revoked caller's WatchStatuses stream ends within the re-check period");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert_unauthenticated(grpc_send(g, Some(&bob2)).await, "unknown or revoked");
    assert_refused(http(h, "GET", "/v1/users/bob", bearer(&bob2), None).await, 401, "unknown or revoked");
    let (status, _, body) = http(h, "GET", "/v1/users/bob", bearer(&admin), None).await;
    assert_eq!((status, &body["errors"][0]["code"]), (404, &json!(1006)), "{body}");

    // After a restart: the admin token still works, the revoked one stays revoked, and the
    // configured password does not replace the stored one.
    assert_eq!(ferry.terminate().code(), Some(0));
    let ferry = FerryProcess::spawn_with_auth(dir.path(), 2, Some("other-pass-2"), &[]);
    let (h, g) = (ferry.http_addr, ferry.addr);
    let (status, _, body) = http(h, "GET", "/v1/users/admin", bearer(&admin), None).await;
    assert_eq!((status, &body["users"][0]["role"]), (200, &json!("admin")), "{body}");
    grpc_send(g, Some(&admin)).await.expect("the admin token survives the restart");
    assert_unauthenticated(grpc_send(g, Some(&bob)).await, "unknown or revoked");
    assert_refused(http(h, "POST", "/v1/users/login", basic("admin", "other-pass-2"), None).await, 401, "wrong");
    assert_eq!(ferry.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_password_is_printed_once_and_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[auth]\ntoken_ttl_secs = 2\n").unwrap();
    let data = dir.path().join("data");
    let flags = ["--config", config.to_str().unwrap()];
    let ferry = FerryProcess::spawn_with_auth(&data, 1, None, &flags);
    let password = ferry.generated_admin_password.clone().expect("first start prints a generated password");
    let (h, g) = (ferry.http_addr, ferry.addr);
    let token = login(h, "admin", &password).await;
    grpc_send(g, Some(&token)).await.expect("fresh token");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_unauthenticated(grpc_send(g, Some(&token)).await, "expired");
    assert_refused(http(h, "GET", "/v1/settings", bearer(&token), None).await, 401, "expired");
    assert_eq!(ferry.terminate().code(), Some(0));

    let ferry = FerryProcess::spawn_with_auth(&data, 1, None, &flags);
    assert_eq!(ferry.generated_admin_password, None, "the password is printed at first start only");
    login(ferry.http_addr, "admin", &password).await;
    assert_eq!(ferry.terminate().code(), Some(0));
}

/// A `Messages` client whose every call carries `Bearer token`.
fn grpc_request<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// `Send` of a text to `to` as `sender` ("" = none given): the message id, or (code, ferry code,
/// message).
async fn send_as(addr: SocketAddr, token: &str, to: &str, sender: &str) -> Result<String, (Code, String, String)> {
    let mut client = MessagesClient::connect(format!("http://{addr}")).await.unwrap();
    let mut message = text(to, "hi");
    message.sender = sender.into();
    match client.send(grpc_request(message, token)).await {
        Ok(r) => Ok(r.into_inner().message_id),
        Err(s) => {
            let code = s.metadata().get("ferry-error-code").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            Err((s.code(), code, s.message().to_owned()))
        }
    }
}

#[track_caller]
fn assert_sender_denied(r: Result<String, (Code, String, String)>, sender: &str) {
    let (code, ferry_code, message) = r.expect_err("a sender outside the user's list is refused");
    assert_eq!((code, ferry_code.as_str()), (Code::PermissionDenied, "1005"), "{message}");
    assert!(message.contains("`sender`") && message.contains(sender), "{message:?} should name {sender}");
}

async fn get_message(addr: SocketAddr, token: &str, id: &str) -> Result<ferry_proto::v1::MessageRecord, tonic::Status> {
    let mut client = MessagesClient::connect(format!("http://{addr}")).await.unwrap();
    let request = ferry_proto::v1::GetMessageRequest { message_id: id.into() };
    client.get_message(grpc_request(request, token)).await.map(|r| r.into_inner())
}

/// Tenancy: a user with `senders` sends only as those numbers (both APIs, both JSON routes, an
/// omitted sender checked as `default_sender`), reads only their messages (another sender's is
/// answered like an unknown id) and watches only their status events; an admin and a user
/// without a list are unrestricted; bad lists are 400 naming the field and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_restrict_sends_reads_and_watches_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with_auth(dir.path(), 2, Some("admin-pass-1"), &[]);
    let (h, g) = (ferry.http_addr, ferry.addr);
    let admin = login(h, "admin", "admin-pass-1").await;

    // Bad lists: 400 naming the field; nothing is created or changed.
    let bad = json!({"username":"shop","password":"shop-pass-1","senders":["+1 555 010 0001","call me"]});
    let (status, _, body) = http(h, "POST", "/v1/users", bearer(&admin), Some(bad)).await;
    assert_eq!((status, &body["errors"][0]["code"]), (400, &json!(1009)), "{body}");
    assert!(body["errors"][0]["details"].as_str().unwrap().contains("senders[1]"), "{body}");
    let (status, _, body) = http(h, "GET", "/v1/users/shop", bearer(&admin), None).await;
    assert_eq!(status, 404, "a refused create creates nothing: {body}");
    let not_a_list = json!({"username":"shop","password":"shop-pass-1","senders":"+15550100001"});
    let (status, _, body) = http(h, "POST", "/v1/users", bearer(&admin), Some(not_a_list)).await;
    assert!(status == 400 && body["errors"][0]["details"].as_str().unwrap().contains("senders"), "{body}");

    // `shop` may send as +1 555 010 0001 only (normalized like a sender); `free` has no list.
    let shop_user = json!({"username":"shop","password":"shop-pass-1","senders":["+1 (555) 010-0001"]});
    let (status, _, body) = http(h, "POST", "/v1/users", bearer(&admin), Some(shop_user)).await;
    assert_eq!((status, &body["users"][0]["senders"]), (201, &json!(["15550100001"])), "{body}");
    let (status, _, body) =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"free","password":"free-pass-1"}))).await;
    assert_eq!((status, &body["users"][0]["senders"]), (201, &Value::Null), "{body}");
    let shop = login(h, "shop", "shop-pass-1").await;
    let free = login(h, "free", "free-pass-1").await;

    // gRPC Send: its own number yes (written without `+`: the country code is prepended); the
    // default sender (omitted) and other numbers no.
    let own = send_as(g, &shop, "+15551230001", "5550100001").await.expect("shop sends as its number");
    assert_sender_denied(send_as(g, &shop, "+15551230001", "").await, "+15550100000");
    assert_sender_denied(send_as(g, &shop, "+15551230001", "+15550100002").await, "+15550100002");
    let others = send_as(g, &admin, "+15551230002", "").await.expect("an admin sends as anyone");
    send_as(g, &free, "+15551230003", "+15550100002").await.expect("a user without a list sends as anyone");

    // gRPC SendBatch: the refused message gets its own 1005 result, the allowed one is accepted.
    let mut client = MessagesClient::connect(format!("http://{g}")).await.unwrap();
    let (mut allowed, mut refused) = (text("+15551230004", "a"), text("+15551230005", "b"));
    allowed.sender = "+15550100001".into();
    refused.sender = "+15550100009".into();
    let batch = ferry_proto::v1::SendBatchRequest { messages: vec![allowed, refused] };
    let results = client.send_batch(grpc_request(batch, &shop)).await.expect("batch answered").into_inner().results;
    use ferry_proto::v1::send_result::Outcome;
    assert!(matches!(results[0].outcome, Some(Outcome::Accepted(_))), "{:?}", results[0]);
    match &results[1].outcome {
        Some(Outcome::Error(e)) => assert_eq!((e.code, e.field.as_str()), (1005, "sender"), "{e:?}"),
        other => panic!("expected a 1005 result, got {other:?}"),
    }

    // Both JSON routes: On-Prem and a numeric Cloud id send as default_sender (refused); the
    // Cloud route with the user's own number is accepted, another number refused, in the Cloud
    // shape (code 10).
    let message = json!({"messaging_product":"whatsapp","to":"+15551230006","type":"text","text":{"body":"hi"}});
    let (status, _, body) = http(h, "POST", "/v1/messages", bearer(&shop), Some(message.clone())).await;
    assert_eq!((status, &body["errors"][0]["code"]), (403, &json!(1005)), "{body}");
    assert!(body["errors"][0]["details"].as_str().unwrap().contains("default_sender"), "{body}");
    let (status, _, body) =
        http(h, "POST", "/v21.0/106540352242922/messages", bearer(&shop), Some(message.clone())).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!(10)), "{body}");
    let (status, _, body) = http(h, "POST", "/v21.0/+15550100002/messages", bearer(&shop), Some(message.clone())).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!(10)), "{body}");
    assert!(body["error"]["error_data"]["details"].as_str().unwrap().contains("+15550100002"), "{body}");
    let (status, _, body) = http(h, "POST", "/v21.0/+15550100001/messages", bearer(&shop), Some(message.clone())).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(h, "POST", "/v1/messages", bearer(&free), Some(message.clone())).await;
    assert_eq!(status, 201, "{body}");

    // GetMessage: its own message yes; another sender's answered exactly like an unknown id.
    assert_eq!(get_message(g, &shop, &own).await.expect("its own message").sender, "15550100001");
    get_message(g, &admin, &others).await.expect("an admin reads everything");
    let hidden = get_message(g, &shop, &others).await.expect_err("another sender's message is hidden");
    let key = ferry_model::MessageId::decode(&others).unwrap();
    let unknown_id = ferry_model::MessageId::encode(ferry_model::MessageKey { seq: key.seq + 1_000_000, ..key });
    let unknown = get_message(g, &shop, unknown_id.as_str()).await.expect_err("no such message");
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    assert_eq!(hidden.code(), unknown.code());
    assert_eq!(hidden.message().replace(&others, "ID"), unknown.message().replace(unknown_id.as_str(), "ID"));
    assert_eq!(hidden.metadata().get("ferry-error-code"), unknown.metadata().get("ferry-error-code"));

    // WatchStatuses from the oldest event: only events of shop's sender, up to its message's
    // `read` (the other messages were sent earlier, so their events are in the log before it).
    let mut watch = MessagesClient::connect(format!("http://{g}")).await.unwrap();
    let oldest = ferry_proto::v1::WatchStatusesRequest {
        start: ferry_proto::v1::StartFrom::Oldest as i32,
        ..Default::default()
    };
    let mut stream = watch.watch_statuses(grpc_request(oldest.clone(), &admin)).await.unwrap().into_inner();
    let saw_others = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = stream.message().await.unwrap() {
            if e.message_id == others {
                return;
            }
        }
    })
    .await;
    assert!(saw_others.is_ok(), "the admin's watch sees the admin's message");
    let mut stream = watch.watch_statuses(grpc_request(oldest, &shop)).await.unwrap().into_inner();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(e) = stream.message().await.unwrap() {
            assert_eq!(e.sender, "15550100001", "shop's watch yields only its sender's events: {e:?}");
            seen.push((e.message_id.clone(), e.status.clone()));
            if e.message_id == own && e.status == "read" {
                break;
            }
        }
        seen
    })
    .await
    .expect("shop's message is read and its events are watched");
    assert!(seen.iter().all(|(id, _)| *id != others), "{seen:?}");

    // PATCH: a bad list is refused and changes nothing; null lifts the restriction at once.
    let (status, _, body) =
        http(h, "PATCH", "/v1/users/shop", bearer(&admin), Some(json!({"senders":["+1-555-abc"]}))).await;
    assert!(status == 400 && body["errors"][0]["details"].as_str().unwrap().contains("senders[0]"), "{body}");
    assert_sender_denied(send_as(g, &shop, "+15551230001", "").await, "+15550100000");
    let (status, _, body) = http(h, "PATCH", "/v1/users/shop", bearer(&shop), Some(json!({"senders":null}))).await;
    assert_eq!(status, 403, "only an admin sets senders: {body}");
    let (status, _, body) = http(h, "PATCH", "/v1/users/shop", bearer(&admin), Some(json!({"senders":null}))).await;
    assert_eq!((status, &body["users"][0]["senders"]), (200, &Value::Null), "{body}");
    send_as(g, &shop, "+15551230001", "").await.expect("unrestricted now, with the same token");
    let (status, _, body) =
        http(h, "PATCH", "/v1/users/shop", bearer(&admin), Some(json!({"senders":["+15550100000"]}))).await;
    assert_eq!((status, &body["users"][0]["senders"]), (200, &json!(["15550100000"])), "{body}");
    send_as(g, &shop, "+15551230001", "").await.expect("the default sender is in the list now");
    assert_eq!(ferry.terminate().code(), Some(0));
}

/// Deny by default: an endpoint the access table does not name is admin-only, on both APIs
/// (unknown HTTP paths and methods, gRPC services this port does not serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_the_access_table_does_not_name_are_admin_only() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with_auth(dir.path(), 1, Some("admin-pass-1"), &[]);
    let (h, g) = (ferry.http_addr, ferry.addr);
    let admin = login(h, "admin", "admin-pass-1").await;
    let (status, _, _) =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"bob","password":"bob-pass-1"}))).await;
    assert_eq!(status, 201);
    let bob = login(h, "bob", "bob-pass-1").await;

    // HTTP: an unknown path, and a known path with another method.
    assert_refused(http(h, "GET", "/v1/nope", None, None).await, 401, "no token");
    assert_refused(http(h, "GET", "/v1/nope", bearer(&bob), None).await, 403, "needs role `admin`");
    assert_refused(http(h, "GET", "/v1/messages", bearer(&bob), None).await, 403, "needs role `admin`");
    let (status, _, _) = http(h, "GET", "/v1/nope", bearer(&admin), None).await;
    assert_eq!(status, 404, "an admin gets the router's answer");
    // What the table opens stays open.
    let (status, _, _) = http(h, "GET", "/readyz", None, None).await;
    assert_ne!(status, 401);

    // gRPC: a service described by reflection but not served here, with a user's token and none.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{g}")).unwrap().connect().await.unwrap();
    let mut chat_admin = ferry_proto::chat::v1::chat_admin_client::ChatAdminClient::new(channel.clone());
    let denied = chat_admin.stats(grpc_request(ferry_proto::chat::v1::StatsRequest {}, &bob)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.metadata().get("ferry-error-code").unwrap(), "1005");
    let anonymous = chat_admin.stats(ferry_proto::chat::v1::StatsRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let served = chat_admin.stats(grpc_request(ferry_proto::chat::v1::StatsRequest {}, &admin)).await.unwrap_err();
    assert_eq!(served.code(), Code::Unimplemented, "an admin reaches the router: {served:?}");
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("open");
    assert_eq!(ferry.terminate().code(), Some(0));
}

/// Raw HTTP/1.1 over one connection: writes `request`, then reads until the server closes or
/// `within` passes. Returns what arrived and whether the server closed the connection in time.
async fn raw_http(addr: SocketAddr, request: &[u8], within: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Opens a `WatchStatuses` stream, retrying (up to 10 s) while the user's slots are still held
/// by streams the client closed but the server has not seen closed yet.
async fn watch_when_free(
    client: &MessagesClient<tonic::transport::Channel>,
    token: &str,
) -> tonic::Streaming<ferry_proto::v1::StatusEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = client.clone();
        let request = grpc_request(ferry_proto::v1::WatchStatusesRequest::default(), token);
        match client.watch_statuses(request).await {
            Ok(r) => return r.into_inner(),
            Err(e) if e.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a stream once the user's slots are free: {e:?}"),
        }
    }
}

/// Limits: open `WatchStatuses` streams per user, HTTP/2 streams per gRPC connection, the body
/// limit and read timeouts of every HTTP route (headers and body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_grpc_streams_bodies_and_read_timeouts_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[http]\nmax_body_bytes = 1024\nread_timeout_secs = 1\n[grpc]\nmax_concurrent_streams = 3\n\
         [auth]\nmax_watch_streams_per_user = 2\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let ferry = FerryProcess::spawn_with_auth(&data, 1, Some("admin-pass-1"), &["--config", config.to_str().unwrap()]);
    let (h, g) = (ferry.http_addr, ferry.addr);
    let admin = login(h, "admin", "admin-pass-1").await;
    let (status, _, _) =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"bob","password":"bob-pass-1"}))).await;
    assert_eq!(status, 201);
    let bob = login(h, "bob", "bob-pass-1").await;
    let watch = |client: &mut MessagesClient<tonic::transport::Channel>, token: &str| {
        let mut client = client.clone();
        let request = grpc_request(ferry_proto::v1::WatchStatusesRequest::default(), token);
        async move { client.watch_statuses(request).await.map(|r| r.into_inner()) }
    };

    // WatchStatuses per user: two open, the third refused (RESOURCE_EXHAUSTED, 1015) until one
    // closes; another user is not affected. Each stream on its own connection.
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(MessagesClient::connect(format!("http://{g}")).await.unwrap());
    }
    let first = watch(&mut connections[0], &bob).await.expect("1st stream");
    let second = watch(&mut connections[1], &bob).await.expect("2nd stream");
    let refused = watch(&mut connections[2], &bob).await.expect_err("3rd stream of the same user");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.metadata().get("ferry-error-code").unwrap(), "1015");
    assert!(refused.message().contains("max_watch_streams_per_user = 2"), "{}", refused.message());
    let admins = watch(&mut connections[3], &admin).await.expect("another user has its own count");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let third = loop {
        match watch(&mut connections[2], &bob).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("a closed stream frees its slot: {e:?}"),
        }
    };
    drop((admins, second, third));

    // HTTP/2 streams per gRPC connection (`[grpc] max_concurrent_streams = 3`): with three
    // streams open on one connection, a fourth call on it waits until one closes.
    let mut shared = MessagesClient::connect(format!("http://{g}")).await.unwrap();
    // The admin's stream above is closed too; the server frees its slot once it notices.
    let s1 = watch_when_free(&shared, &admin).await;
    let _s2 = watch_when_free(&shared, &admin).await;
    let other = MessagesClient::connect(format!("http://{g}")).await.unwrap();
    // bob's streams above are closed; the server frees their slots once it notices.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let _s3 = loop {
        match watch(&mut shared, &bob).await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("3rd stream on the connection: {e:?}"),
        }
    };
    let get = |client: &MessagesClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let request = grpc_request(ferry_proto::v1::GetMessageRequest { message_id: "wamid.x".into() }, &admin);
        async move { client.get_message(request).await }
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(800), get(&shared)).await.is_err(),
        "a 4th stream on a connection with 3 open waits"
    );
    let answered =
        tokio::time::timeout(Duration::from_secs(5), get(&other)).await.expect("other connections are served");
    assert_eq!(answered.unwrap_err().code(), Code::NotFound);
    drop(s1);
    let answered =
        tokio::time::timeout(Duration::from_secs(5), get(&shared)).await.expect("served once a stream closed");
    assert_eq!(answered.unwrap_err().code(), Code::NotFound);

    // Body limit on every route (here user management): 413 in the On-Prem shape.
    let big = json!({"username":"carol","password":"carol-pass-1","role":"user","pad":"x".repeat(2000)});
    let (status, _, body) = http(h, "POST", "/v1/users", bearer(&admin), Some(big)).await;
    assert_eq!((status, &body["errors"][0]["code"]), (413, &json!(1001)), "{body}");
    assert!(body["errors"][0]["details"].as_str().unwrap().contains("max_body_bytes"), "{body}");

    // Body read timeout on every route: a body that stops arriving is 408 after 1 s.
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"username\":"
    );
    let (answer, _) = raw_http(h, head.as_bytes(), Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("read_timeout_secs"), "{answer:?}");

    // Header read timeout: a connection whose headers never end is closed.
    let (_, closed) = raw_http(h, b"GET /healthz HTTP/1.1\r\nHost: ferry\r\n", Duration::from_secs(4)).await;
    assert!(closed, "a connection that never finishes its headers is closed after the read timeout");
    assert_eq!(ferry.terminate().code(), Some(0));
}

/// Logout and user management have their own lane: a flood of logins (argon2 each) does not
/// starve them. Checked by order, not by duration: while a logout (or a user creation) is
/// answered, fewer logins finish than the 300 waiting (starved, it would wait behind them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_user_management_are_not_starved_by_a_login_flood() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with_auth(dir.path(), 1, Some("admin-pass-1"), &[]);
    let h = ferry.http_addr;
    let admin = login(h, "admin", "admin-pass-1").await;
    let spare = login(h, "admin", "admin-pass-1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicUsize::new(0));
    const FLOOD: usize = 300;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (stop, logins) = (stop.clone(), logins.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = http(h, "POST", "/v1/users/login", basic("admin", "wrong-password"), None).await;
                    logins.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The flood is on: logins are being answered (and 300 more wait at any moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while logins.load(Ordering::Relaxed) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the login flood never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let at_start = logins.load(Ordering::Relaxed);
    let (status, _, body) = http(h, "POST", "/v1/users/logout", bearer(&spare), None).await;
    let logins_during_logout = logins.load(Ordering::Relaxed) - at_start;
    let at_start = logins.load(Ordering::Relaxed);
    let (created, _, created_body) =
        http(h, "POST", "/v1/users", bearer(&admin), Some(json!({"username":"dora","password":"dora-pass-1"}))).await;
    let logins_during_create = logins.load(Ordering::Relaxed) - at_start;
    let (got, _, _) = http(h, "GET", "/v1/users/dora", bearer(&admin), None).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    assert_eq!(status, 200, "logout under a login flood: {body}");
    assert!(
        logins_during_logout < FLOOD / 2,
        "logout waited behind the flood: {logins_during_logout} logins finished meanwhile"
    );
    assert_eq!(created, 201, "create user under a login flood: {created_body}");
    assert!(
        logins_during_create < FLOOD / 2,
        "create user waited behind the flood: {logins_during_create} logins finished meanwhile"
    );
    assert_eq!(got, 200);
    assert_eq!(ferry.terminate().code(), Some(0));
}
