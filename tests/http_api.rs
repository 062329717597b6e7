//! The JSON messages API (`ferry_http::messages`) over real HTTP: an in-process coordinator served
//! by `ferry_http::serve` on a port-0 listener, called with a hyper client.
//!
//! - Every reference JSON request example (the fixtures of `crates/ferry-model/tests/fixtures/
//!   reference/`, i.e. the examples of `/work/shared/reference/` with only the syntax slips and
//!   placeholders fixed, see their README) is accepted by On-Prem `/v1/messages` and by the Cloud
//!   route, with each flavour's answer shape.
//! - `the_reference_examples_are_all_covered_by_fixtures` walks the reference text itself, finds
//!   every JSON request body in it and checks that a fixture covers each one (so none is
//!   forgotten when the reference grows).
//! - Invalid variants get the flavour's error shape, status and code.
//! - `[tls]`: a real `ferry serve` with an rcgen certificate answers the JSON API over https and
//!   gRPC over TLS, and refuses plaintext.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_coordinator::{Coordinator, CoordinatorConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const CLOUD_PATH: &str = "/v21.0/106540352242922/messages";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    lifecycle: Arc<ferry_http::Lifecycle>,
    /// The server task: it must still run when the test is done with it (one that ended early,
    /// e.g. on a panic, fails the test instead of going unnoticed).
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.task.is_finished() && !std::thread::panicking() {
            panic!("the HTTP server task ended before the test stopped it (a panic, or serve returned)");
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(max_body_bytes: usize) -> Server {
    start_with(max_body_bytes, |_| {}).await
}

/// [`start`] with the node's config adjusted by `adjust`.
async fn start_with(max_body_bytes: usize, adjust: impl FnOnce(&mut CoordinatorConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::for_test(dir.path(), 2);
    adjust(&mut config);
    let coordinator = Arc::new(Coordinator::open(&config).await.expect("open node"));
    let lifecycle = Arc::new(ferry_http::Lifecycle::default());
    let state = Arc::new(ferry_http::HttpState {
        coordinator,
        lifecycle: lifecycle.clone(),
        max_body_bytes,
        ops: ferry_http::ops::Ops::default(),
        auth: Arc::new(ferry_auth::Auth::disabled()),
        settings: Value::Null,
        read_timeout: std::time::Duration::from_secs(ferry_http::DEFAULT_READ_TIMEOUT_SECS),
        cloud: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let read_timeout = std::time::Duration::from_secs(ferry_http::DEFAULT_READ_TIMEOUT_SECS);
    let serve = ferry_http::serve(listener, ferry_http::router(state), read_timeout, async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(async move {
        serve.await.expect("the HTTP server runs");
    });
    Server { addr, stop: Some(stop), lifecycle, task, _dir: dir }
}

/// POSTs `body`; answers the status and the JSON body.
async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::post(format!("http://{addr}{path}"));
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client.request(request.body(Full::new(Bytes::from(body))).unwrap()).await.expect("http request");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{path} answered {status} with a non-json body ({e}): {}", String::from_utf8_lossy(&bytes))
    });
    assert_eq!(content_type.as_deref(), Some("application/json"), "{path}: {value}");
    (status, value)
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    post(addr, path, Some("application/json"), &[], body.to_string().into_bytes()).await
}

fn with_product(body: &Value) -> Value {
    let mut b = body.clone();
    b.as_object_mut().unwrap().insert("messaging_product".into(), json!("whatsapp"));
    b
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferry-model/tests/fixtures/reference")
}

fn json_files(dir: &Path) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Asserts the On-Prem error shape and answers `(code, details)`.
fn onprem_error(status: u16, body: &Value, want_status: u16) -> (u64, String) {
    assert_eq!(status, want_status, "{body}");
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("no errors[]: {body}"));
    assert_eq!(errors.len(), 1, "{body}");
    let e = &errors[0];
    assert!(e["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert_eq!(body["meta"]["api_status"], "stable", "{body}");
    assert_eq!(body["meta"]["version"], env!("CARGO_PKG_VERSION"), "{body}");
    (e["code"].as_u64().unwrap(), e["details"].as_str().unwrap().to_owned())
}

/// Asserts the Cloud error shape and answers `(code, details)`.
fn cloud_error(status: u16, body: &Value, want_status: u16) -> (u64, String) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    let code = e["code"].as_u64().unwrap_or_else(|| panic!("no error.code: {body}"));
    assert!(e["message"].as_str().unwrap().starts_with(&format!("(#{code}) ")), "{body}");
    assert_eq!(e["type"], "OAuthException", "{body}");
    assert_eq!(e["error_data"]["messaging_product"], "whatsapp", "{body}");
    assert!(e["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    (code, e["error_data"]["details"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_example_is_accepted_by_both_flavours() {
    let server = start(ferry_http::DEFAULT_MAX_BODY_BYTES).await;
    let fixtures = json_files(&fixtures_dir());
    assert!(fixtures.len() >= 30, "only {} fixtures", fixtures.len());
    let mut ids = BTreeSet::new();
    for (name, body) in &fixtures {
        let (status, answer) = post_json(server.addr, "/v1/messages", body).await;
        assert_eq!(status, 201, "{name}: {answer}");
        let id = answer["messages"][0]["id"].as_str().unwrap_or_else(|| panic!("{name}: {answer}"));
        assert!(ids.insert(id.to_owned()), "{name}: id {id} answered twice");
        assert_eq!(answer["meta"], json!({"api_status": "stable", "version": env!("CARGO_PKG_VERSION")}), "{name}");

        let (status, answer) = post_json(server.addr, CLOUD_PATH, &with_product(body)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["messaging_product"], "whatsapp", "{name}: {answer}");
        assert_eq!(answer["contacts"][0]["input"], body["to"], "{name}: {answer}");
        let wa_id = answer["contacts"][0]["wa_id"].as_str().unwrap();
        assert!(!wa_id.is_empty() && wa_id.bytes().all(|b| b.is_ascii_digit()), "{name}: {answer}");
        assert_eq!(answer["messages"][0]["message_status"], "accepted", "{name}: {answer}");
        let id = answer["messages"][0]["id"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "{name}: id {id} answered twice");
    }
    println!("{} reference examples accepted by both flavours", fixtures.len());
}

/// Top-level `{...}` blocks of `text` (braces counted naively: the examples' placeholders such as
/// `{{Recipient-WA-ID}}` are balanced).
fn brace_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(&text[start..=i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// The `"key":` names of a JSON-ish text, lowercased, identifiers only.
fn keys_of(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        let word = &after[..j];
        let tail = after[j + 1..].trim_start();
        if tail.starts_with(':')
            && !word.is_empty()
            && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            keys.insert(word.to_lowercase());
            rest = tail;
        } else {
            rest = &after[j + 1..];
        }
    }
    keys
}

/// A request body or a fragment of one (a component, a parameter, a contact), as opposed to a
/// response or callback example.
fn is_request(block: &str) -> bool {
    let compact: String = block.chars().filter(|c| !c.is_whitespace()).collect();
    let response_prefixes = ["{\"messages\"", "{\"statuses\"", "{\"error\"", "{\"errors\"", "{\"object\""];
    let cloud_response = compact.starts_with("{\"messaging_product\":\"whatsapp\",\"contacts\"");
    let keys = keys_of(block);
    (keys.contains("type") || keys.contains("addresses"))
        && !cloud_response
        && !response_prefixes.iter().any(|p| compact.starts_with(p))
}

#[test]
fn the_reference_examples_are_all_covered_by_fixtures() {
    // FERRY_REFERENCE_DIR, else shared/reference beside the repo (as CI lays it), else the
    // developers' /work/shared/reference. None of them: a failure, unless the skip is explicit
    // (FERRY_SKIP_REFERENCE_TEXTS=1, set by scripts/test.sh, whose summary counts it).
    let candidates: Vec<PathBuf> = match std::env::var_os("FERRY_REFERENCE_DIR") {
        Some(d) => vec![d.into()],
        None => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"),
            "/work/shared/reference".into(),
        ],
    };
    let Some(dir) = candidates.iter().find(|d| d.is_dir()).cloned() else {
        let why = format!("no reference texts at {candidates:?} (set FERRY_REFERENCE_DIR)");
        assert!(std::env::var("FERRY_SKIP_REFERENCE_TEXTS").is_ok_and(|v| v == "1"), "{why}");
        support::skip("the_reference_examples_are_all_covered_by_fixtures", &why);
        return;
    };
    let mut fixtures: Vec<(String, BTreeSet<String>)> = Vec::new();
    for sub in [fixtures_dir(), fixtures_dir().join("over-limit")] {
        for (name, v) in json_files(&sub) {
            fixtures.push((name, keys_of(&v.to_string())));
        }
    }
    // Keys the fixtures renamed (see their README): a typo and a capitalised key.
    let renamed = |k: &String| k != "_id";
    let mut found = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "txt") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for block in brace_blocks(&text).into_iter().filter(|b| is_request(b)) {
            let compact: String = block.chars().filter(|c| !c.is_whitespace()).collect();
            if !found.insert(compact) {
                continue; // the same example in another translation
            }
            let keys: BTreeSet<String> = keys_of(block).into_iter().filter(renamed).collect();
            let mut covered = fixtures.iter().any(|(_, f)| keys.is_subset(f));
            if !covered && let Some(first_or) = block.find("# OR") {
                // An example with `# OR` alternatives is split into one fixture per alternative:
                // the fixtures that share its keys before the first alternative cover it together.
                let common = keys_of(&block[..first_or]);
                let union: BTreeSet<String> =
                    fixtures.iter().filter(|(_, f)| common.is_subset(f)).flat_map(|(_, f)| f.iter().cloned()).collect();
                covered = keys.is_subset(&union);
            }
            assert!(covered, "{}: no fixture covers this request example (keys {keys:?}):\n{block}", path.display());
        }
    }
    println!("{} distinct JSON request examples in {files} reference files, all covered by fixtures", found.len());
    assert!(found.len() >= 25, "only {} request examples found in {}", found.len(), dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_the_documented_error_shape_and_code() {
    let server = start(ferry_http::DEFAULT_MAX_BODY_BYTES).await;
    let text = |body: &str| json!({"to": "+16315551234", "type": "text", "text": {"body": body}});
    let button =
        |i: usize| json!({"type": "reply", "reply": {"id": format!("id-{i}"), "title": format!("Button {i}")}});
    let buttons = |n: usize| {
        json!({"to": "+16315551234", "type": "interactive", "interactive": {
            "type": "button", "body": {"text": "pick one"},
            "action": {"buttons": (0..n).map(button).collect::<Vec<_>>()}}})
    };
    let row = |i: usize| json!({"id": format!("row-{i}"), "title": format!("Row {i}")});
    let list = |n: usize| {
        json!({"to": "+16315551234", "type": "interactive", "interactive": {
            "type": "list", "body": {"text": "pick one"},
            "action": {"button": "Options", "sections": [{"title": "All", "rows": (0..n).map(row).collect::<Vec<_>>()}]}}})
    };
    assert_eq!(post_json(server.addr, "/v1/messages", &buttons(3)).await.0, 201);
    assert_eq!(post_json(server.addr, "/v1/messages", &list(10)).await.0, 201);

    let over_limit = fixtures_dir().join("over-limit");
    let mut cases: Vec<(String, Value, u64, u64, &str)> = vec![
        ("over-long text".into(), text(&"x".repeat(4097)), 1001, 131009, "text.body"),
        ("missing to".into(), json!({"type": "text", "text": {"body": "hi"}}), 1008, 131008, "`to`"),
        ("missing text object".into(), json!({"to": "+16315551234", "type": "text"}), 1008, 131008, "`text`"),
        ("four buttons".into(), buttons(4), 1009, 131009, "interactive.action.buttons"),
        ("eleven rows".into(), list(11), 1009, 131009, "rows"),
        (
            "unknown type".into(),
            json!({"to": "+16315551234", "type": "hologram", "hologram": {}}),
            1009,
            131051,
            "hologram",
        ),
        (
            "deprecated hsm".into(),
            json!({"to": "+16315551234", "type": "hsm", "hsm": {"namespace": "x"}}),
            1009,
            131051,
            "template",
        ),
    ];
    for (name, v) in json_files(&over_limit) {
        cases.push((format!("over-limit/{name}"), v, 0, 0, "interactive.action"));
    }
    for (name, body, onprem_code, cloud_code, mention) in cases {
        let (status, answer) = post_json(server.addr, "/v1/messages", &body).await;
        let (code, details) = onprem_error(status, &answer, 400);
        if onprem_code != 0 {
            assert_eq!(code, onprem_code, "{name}: {answer}");
        } else {
            assert!(code == 1001 || code == 1009, "{name}: {answer}");
        }
        assert!(details.contains(mention), "{name}: details should mention {mention}: {answer}");

        let (status, answer) = post_json(server.addr, CLOUD_PATH, &with_product(&body)).await;
        let (code, details) = cloud_error(status, &answer, 400);
        if cloud_code != 0 {
            assert_eq!(code, cloud_code, "{name}: {answer}");
        } else {
            assert_eq!(code, 131009, "{name}: {answer}");
        }
        assert!(details.contains(mention), "{name}: details should mention {mention}: {answer}");
    }

    // Cloud only: messaging_product is required and must be "whatsapp".
    let (status, answer) = post_json(server.addr, CLOUD_PATH, &text("hi")).await;
    let (code, details) = cloud_error(status, &answer, 400);
    assert_eq!(code, 131008, "{answer}");
    assert!(details.contains("messaging_product"), "{answer}");
    let mut wrong = text("hi");
    wrong["messaging_product"] = json!("telegram");
    let (status, answer) = post_json(server.addr, CLOUD_PATH, &wrong).await;
    let (code, details) = cloud_error(status, &answer, 400);
    assert_eq!(code, 131009);
    assert!(details.contains("\"whatsapp\"") && details.contains("telegram"), "{details}");
    // A body that is not json at all.
    let (status, answer) =
        post(server.addr, "/v1/messages", Some("application/json"), &[], b"{not json".to_vec()).await;
    let (code, details) = onprem_error(status, &answer, 400);
    assert_eq!(code, 1009);
    assert!(details.contains("not valid json"), "{details}");
    // A path that is not a Cloud version or phone number id.
    let (status, answer) = post_json(server.addr, "/latest/106540352242922/messages", &with_product(&text("hi"))).await;
    let (code, details) = cloud_error(status, &answer, 404);
    assert_eq!(code, 100);
    assert!(details.contains("`latest`"), "{details}");
    let (status, answer) = post_json(server.addr, "/v21.0/my-phone/messages", &with_product(&text("hi"))).await;
    let (code, details) = cloud_error(status, &answer, 400);
    assert_eq!(code, 131009);
    assert!(details.contains("`my-phone`"), "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_and_body_size_are_checked_in_each_flavours_shape() {
    let server = start(2048).await;
    let body = json!({"to": "+16315551234", "type": "text", "text": {"body": "hi"}, "messaging_product": "whatsapp"});
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let (status, answer) = post(server.addr, "/v1/messages", ct, &[], body.to_string().into_bytes()).await;
        let (code, details) = onprem_error(status, &answer, 415);
        assert_eq!(code, 1009);
        assert!(details.contains("application/json"), "{details}");
        let (status, answer) = post(server.addr, CLOUD_PATH, ct, &[], body.to_string().into_bytes()).await;
        let (code, details) = cloud_error(status, &answer, 415);
        assert_eq!(code, 131009);
        assert!(details.contains("application/json"), "{details}");
    }
    let (status, _) =
        post(server.addr, "/v1/messages", Some("application/json; charset=utf-8"), &[], body.to_string().into_bytes())
            .await;
    assert_eq!(status, 201);

    let big = json!({"to": "+16315551234", "type": "text", "text": {"body": "x".repeat(3000)}, "messaging_product": "whatsapp"});
    let (status, answer) = post_json(server.addr, "/v1/messages", &big).await;
    let (code, details) = onprem_error(status, &answer, 413);
    assert_eq!(code, 1001);
    assert!(details.contains("2048 bytes") && details.contains("max_body_bytes"), "{details}");
    let (status, answer) = post_json(server.addr, CLOUD_PATH, &big).await;
    let (code, details) = cloud_error(status, &answer, 413);
    assert_eq!(code, 131009);
    assert!(details.contains("2048 bytes"), "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_and_cloud_sender() {
    let server = start(ferry_http::DEFAULT_MAX_BODY_BYTES).await;
    let body = json!({"to": "+16315551234", "type": "text", "text": {"body": "once"}}).to_string().into_bytes();
    let key = [("Idempotency-Key", "order-42")];
    let (s1, a1) = post(server.addr, "/v1/messages", Some("application/json"), &key, body.clone()).await;
    let (s2, a2) = post(server.addr, "/v1/messages", Some("application/json"), &key, body.clone()).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(a1["messages"][0]["id"], a2["messages"][0]["id"], "a retry with the same key answers the same id");
    let (_, a3) = post(server.addr, "/v1/messages", Some("application/json"), &[], body).await;
    assert_ne!(a1["messages"][0]["id"], a3["messages"][0]["id"], "no key: a new message");
    let other = json!({"to": "+16315551234", "type": "text", "text": {"body": "different"}}).to_string().into_bytes();
    let (status, answer) = post(server.addr, "/v1/messages", Some("application/json"), &key, other).await;
    onprem_error(status, &answer, 409);

    // A `+` phone number in the Cloud path is the sender: sending to it is "sender is recipient".
    let to_self = with_product(&json!({"to": "+15557770000", "type": "text", "text": {"body": "hi"}}));
    let (status, answer) = post_json(server.addr, "/v21.0/+15557770000/messages", &to_self).await;
    let (code, _) = cloud_error(status, &answer, 400);
    assert_eq!(code, 131021, "{answer}");
    let (status, answer) = post_json(server.addr, "/v21.0/106540352242922/messages", &to_self).await;
    assert_eq!(status, 200, "a numeric phone number id sends from the default sender: {answer}");
}

/// A CA and a server certificate for `localhost` signed by it (PEM), and a client config that
/// trusts only that CA.
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, rustls::ClientConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ferry test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (cert_file, key_file, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_json_api_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file, client_tls) = test_pki(dir.path());
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let ferry = support::FerryProcess::spawn_with(&data, 2, &["--config", config.to_str().unwrap()]);

    // JSON API over https (the certificate names localhost).
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls.clone())
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
    let body = json!({"to": "+16315551234", "type": "text", "text": {"body": "over tls"}}).to_string();
    let request = hyper::Request::post(format!("https://localhost:{}/v1/messages", ferry.http_addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let response = client.request(request).await.expect("https request");
    assert_eq!(response.status(), 201);
    let answer: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(answer["messages"][0]["id"].as_str().unwrap().starts_with("wamid."), "{answer}");
    // Plain http on the TLS port gets no answer.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("http://{}/v1/messages", ferry.http_addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let refused = tokio::time::timeout(std::time::Duration::from_secs(15), plain.request(request))
        .await
        .expect("answered or closed");
    assert!(refused.is_err(), "plaintext http must not be served: {refused:?}");

    // gRPC over TLS with ALPN h2, through a connector that trusts only the test CA.
    let mut grpc_tls = client_tls;
    grpc_tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(grpc_tls));
    let grpc_addr = ferry.addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", grpc_addr.port()))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: hyper::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(grpc_addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server negotiates h2");
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("grpc over tls");
    let mut grpc = ferry_proto::v1::messages_client::MessagesClient::new(channel);
    let sent = grpc.send(support::text("+16315551234", "grpc over tls")).await.expect("send over tls").into_inner();
    assert!(sent.message_id.starts_with("wamid."), "{sent:?}");
    // The CLI over TLS: an https:// target, trusting the CA given in FERRY_CA_CERT.
    let out = support::ferry_command()
        .args(["send", "--target", &format!("https://localhost:{}", grpc_addr.port())])
        .args(["--to", "+16315551234", "--text", "cli over tls"])
        .env("FERRY_CA_CERT", dir.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wamid."));
    ferry.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_template_answers_held_in_both_flavours() {
    let server = start_with(ferry_http::DEFAULT_MAX_BODY_BYTES, |c| c.pacing.templates = vec!["promo".into()]).await;
    let template = |name: &str| {
        json!({"to": "+16315551234", "type": "template",
               "template": {"name": name, "language": {"policy": "deterministic", "code": "en_US"}}})
    };
    let (status, answer) = post_json(server.addr, CLOUD_PATH, &with_product(&template("promo"))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["messages"][0]["message_status"], "held_for_quality_assessment", "{answer}");
    let (status, answer) = post_json(server.addr, "/v1/messages", &template("promo")).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["messages"][0]["message_status"], "held_for_quality_assessment", "{answer}");
    // Not paced: accepted, and the On-Prem answer keeps the reference's shape (id only).
    let (_, answer) = post_json(server.addr, CLOUD_PATH, &with_product(&template("hello_world"))).await;
    assert_eq!(answer["messages"][0]["message_status"], "accepted", "{answer}");
    let (_, answer) = post_json(server.addr, "/v1/messages", &template("hello_world")).await;
    assert_eq!(answer["messages"][0].as_object().unwrap().len(), 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_refuses_sends_with_503_and_writes_nothing() {
    let server = start(ferry_http::DEFAULT_MAX_BODY_BYTES).await;
    let body = json!({"to": "+16315551234", "type": "text", "text": {"body": "late"}});
    let (status, _) = post_json(server.addr, "/v1/messages", &body).await;
    assert_eq!(status, 201);
    server.lifecycle.start_draining();
    let (status, answer) = post_json(server.addr, "/v1/messages", &body).await;
    let (code, details) = onprem_error(status, &answer, 503);
    assert_eq!(code, 1011, "{answer}");
    assert!(details.contains("draining"), "{details}");
    let (status, answer) = post_json(server.addr, CLOUD_PATH, &with_product(&body)).await;
    let (code, _) = cloud_error(status, &answer, 503);
    assert_eq!(code, 131016, "{answer}");
}
