//! Users, tokens and roles on a real `ferry serve` with auth on, over HTTP and gRPC: login, no
//! token, wrong password, expired, revoked and deleted-user tokens, a role too low; tokens and
//! revocations across a restart; the generated admin password printed once.

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
