//! Hostile input and resource bounds (issue #14), replayed against a real `ferry serve`.
//!
//! The corpus is `tests/hostile/corpus.json`: literal bad requests and recipes for the big ones
//! (the 4 MiB `SendBatch` of 840,000 tiny messages, the `Send` with 2 million empty contacts, the
//! 1 MiB JSON body of empty contacts). Each case is sent to the process and must be refused in
//! the documented shape (gRPC code + `ferry-error-code`; HTTP status + the route's JSON error with
//! its code), and the big ones must not grow the process's resident memory (VmRSS of
//! `/proc/<pid>/status`) by more than the case's `max_rss_growth_mib`. Then the connection
//! bounds: caps per source address on both ports, idle and trickling HTTP connections cut by the
//! header timeout, and the gRPC in-flight decode budget.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use serde_json::Value;
use support::{FerryProcess, connect, text, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw protobuf bytes, so a test can send what no generated client would.
#[derive(Default, Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(addr: SocketAddr, method: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!("/ferry.v1.Messages/{method}")).unwrap();
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(tonic::Response::into_inner)
}

fn corpus() -> Value {
    let text = include_str!("hostile/corpus.json");
    serde_json::from_str(text).expect("tests/hostile/corpus.json is json")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `number` holding `inner`.
fn delimited(number: u64, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len() + 12);
    varint(number << 3 | 2, &mut out);
    varint(inner.len() as u64, &mut out);
    out.extend_from_slice(inner);
    out
}

/// The bytes of a gRPC case (see the corpus's `about`).
fn grpc_bytes(case: &Value) -> Vec<u8> {
    if let Some(h) = case["hex"].as_str() {
        return hex(h);
    }
    let r = &case["repeat"];
    let item = delimited(r["field"].as_u64().unwrap(), &hex(r["item_hex"].as_str().unwrap()));
    let mut body = item.repeat(r["count"].as_u64().unwrap() as usize);
    for w in r["wrap"].as_array().unwrap() {
        body = delimited(w.as_u64().unwrap(), &body);
    }
    let mut out = hex(r["prefix_hex"].as_str().unwrap());
    out.extend_from_slice(&body);
    out
}

fn http_body(case: &Value) -> String {
    if let Some(b) = case["body"].as_str() {
        return b.to_owned();
    }
    if let Some(n) = case.get("body_nest") {
        let depth = n["depth"].as_u64().unwrap() as usize;
        return format!(
            "{}{}{}{}",
            n["before"].as_str().unwrap(),
            "[".repeat(depth),
            "]".repeat(depth),
            n["after"].as_str().unwrap()
        );
    }
    let r = &case["json_repeat"];
    let items = vec![r["item"].as_str().unwrap(); r["count"].as_u64().unwrap() as usize].join(",");
    format!("{}{items}{}", r["before"].as_str().unwrap(), r["after"].as_str().unwrap())
}

/// Resident memory of the process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http_raw(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the http port");
    stream.write_all(format!("{head}\r\n").as_bytes()).await.unwrap();
    // The server may answer (and close) before it read the whole body.
    let _ = stream.write_all(body.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("an http response, got {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

/// The ferry error code of an HTTP error body: On-Prem `errors[0].code` or Cloud `error.code`.
fn json_error_code(body: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["errors"][0]["code"].as_i64().or_else(|| v["error"]["code"].as_i64())
}

fn check_status(name: &str, got: &Result<Vec<u8>, tonic::Status>, expect: &Value) {
    let want = expect["grpc"].as_str().unwrap();
    let status = match got {
        Ok(_) if want == "Ok" => return,
        Ok(_) => panic!("{name}: accepted, expected {want}"),
        Err(s) => s,
    };
    assert_eq!(format!("{:?}", status.code()), want, "{name}: {status:?}");
    let code = status.metadata().get("ferry-error-code").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(code.as_deref(), Some(expect["code"].to_string().as_str()), "{name}: {status:?}");
    let contains = expect["contains"].as_str().unwrap();
    assert!(status.message().contains(contains), "{name}: `{}` lacks `{contains}`", status.message());
}

/// Every corpus case, one after the other, each refused in its documented shape without growing
/// the process's memory by more than its bound; nothing of it is written.
#[tokio::test(flavor = "multi_thread")]
async fn every_corpus_case_is_refused_in_shape_without_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 1);
    let pid = ferry.child.id();
    // Warm up: one ordinary send, so the first case does not pay for lazy initialization.
    let mut client = connect(ferry.addr).await;
    client.send(text("15550009999", "warm up")).await.expect("a valid send");
    let mut figures = Vec::new();
    for case in corpus()["grpc"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = grpc_bytes(case);
        let before = rss_kib(pid);
        let got = raw_call(ferry.addr, case["method"].as_str().unwrap(), bytes).await;
        let after = rss_kib(pid);
        check_status(name, &got, &case["expect"]);
        let growth_mib = after.saturating_sub(before) / 1024;
        figures.push(format!("grpc {name}: VmRSS {} -> {} MiB", before / 1024, after / 1024));
        if let Some(max) = case["max_rss_growth_mib"].as_u64() {
            assert!(growth_mib <= max, "{name}: VmRSS grew {growth_mib} MiB ({before} -> {after} KiB), bound {max}");
        }
    }
    for case in corpus()["http"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let body = http_body(case);
        let headers: Vec<&str> =
            case["headers"].as_array().map(|h| h.iter().map(|v| v.as_str().unwrap()).collect()).unwrap_or_default();
        let method = case["method"].as_str().unwrap_or("POST");
        let before = rss_kib(pid);
        let (status, answer) = http_raw(ferry.http_addr, method, case["path"].as_str().unwrap(), &headers, &body).await;
        let after = rss_kib(pid);
        let expect = &case["expect"];
        // An answer that echoes the input is itself a finding: shown shortened.
        let short: String = answer.chars().take(400).collect();
        assert!(answer.len() < 4096, "{name}: a {} byte answer: {short}", answer.len());
        assert_eq!(i64::from(status), expect["status"].as_i64().unwrap(), "{name}: {status} {short}");
        assert_eq!(json_error_code(&answer), expect["code"].as_i64(), "{name}: {short}");
        let contains = expect["contains"].as_str().unwrap();
        assert!(answer.contains(contains), "{name}: `{short}` lacks `{contains}`");
        let growth_mib = after.saturating_sub(before) / 1024;
        figures.push(format!("http {name}: VmRSS {} -> {} MiB", before / 1024, after / 1024));
        if let Some(max) = case["max_rss_growth_mib"].as_u64() {
            assert!(growth_mib <= max, "{name}: VmRSS grew {growth_mib} MiB ({before} -> {after} KiB), bound {max}");
        }
    }
    for f in &figures {
        println!("{f}");
    }
    // Nothing of the refused input was written: the warm-up is the only message.
    let (status, metrics) = support::http_get(ferry.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let appended: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ferry_shard_appended_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(appended, 1.0, "messages written: {appended}");
}

/// Eight of the biggest refused requests at once, on each API: refused, memory flat.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_amplifying_requests_is_refused_with_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn(dir.path(), 1);
    let pid = ferry.child.id();
    let mut client = connect(ferry.addr).await;
    client.send(text("15550009999", "warm up")).await.expect("a valid send");
    let corpus = corpus();
    let batch = grpc_bytes(&corpus["grpc"][0]);
    let contacts = grpc_bytes(&corpus["grpc"][2]);
    let json = http_body(&corpus["http"][0]);
    let before = rss_kib(pid);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (b, c, j) = (batch.clone(), contacts.clone(), json.clone());
        let (addr, http) = (ferry.addr, ferry.http_addr);
        calls.spawn(async move {
            let e = raw_call(addr, "SendBatch", b).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            let e = raw_call(addr, "Send", c).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            let (status, body) = http_raw(http, "POST", "/v1/messages", &[], &j).await;
            assert_eq!(status, 400, "{body}");
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let after = rss_kib(pid);
    println!(
        "flood of 8 x (4 MiB batch, 1 MB contacts Send, 1 MiB JSON): VmRSS {} -> {} MiB",
        before / 1024,
        after / 1024
    );
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(growth_mib <= 128, "VmRSS grew {growth_mib} MiB under the flood ({before} -> {after} KiB)");
}

fn write_config(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Reads until the server closes the connection (EOF or reset) or `deadline` passes: true when it
/// closed.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `[http] max_connections_per_address`: the connection over the cap is closed at once, the ones
/// under it are served; an idle connection, and one trickling its header, are cut by the header
/// timeout (`read_timeout_secs`), which frees their places.
#[tokio::test(flavor = "multi_thread")]
async fn http_connections_are_capped_and_idle_or_trickling_ones_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[http]\nmax_connections_per_address = 3\nread_timeout_secs = 2\n");
    let data = dir.path().join("data");
    let ferry = FerryProcess::spawn_with(&data, 1, &["--config", config.to_str().unwrap()]);
    let addr = ferry.http_addr;
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut quiet = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The three are admitted (each holds a place); a fourth is closed before any answer.
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut first = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(30), over.read(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the connection over the cap was served: {:?}", String::from_utf8_lossy(&first[..n])),
        Err(_) => panic!("the connection over the cap stayed open"),
    }
    // A header trickled a byte at a time is cut by the header timeout, however slow the bytes.
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if trickling.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed_by_server(&mut trickling, Duration::from_secs(30)).await
    });
    assert!(closed_by_server(&mut idle, Duration::from_secs(30)).await, "an idle connection stayed open");
    assert!(closed_by_server(&mut quiet, Duration::from_secs(30)).await, "an idle connection stayed open");
    assert!(trickle.await.unwrap(), "a trickling header was not cut");
    // Their places are free again.
    wait_for(Duration::from_secs(30), "a new connection is served after the idle ones were cut", || async {
        let (status, body) = support::http_get(addr, "/healthz").await;
        if status == 200 { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
}

/// `[grpc] max_connections_per_address`: with the cap taken by connections that never speak, a
/// new client cannot connect; once one closes, it can.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_connections_are_capped_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[grpc]\nmax_connections_per_address = 2\n");
    let data = dir.path().join("data");
    let ferry = FerryProcess::spawn_with(&data, 1, &["--config", config.to_str().unwrap()]);
    let silent_a = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    let _silent_b = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    // Connections are admitted in accept order: give the two time to be accepted before the
    // third; the check below waits (with a deadline) for what it asserts.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", ferry.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let mut refused = None;
    for _ in 0..50 {
        let channel = endpoint.connect_lazy();
        let mut c = ferry_proto::v1::messages_client::MessagesClient::new(channel);
        match c.send(text("15550001", "over the cap")).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // The connection is closed when accepted: the client sees a transport error (reset or
    // closed before the HTTP/2 handshake: tonic reports Unavailable, Unknown or, when the close
    // races its request, Cancelled), never an answer.
    let e = refused.expect("a third connection from one address was served");
    let transport = [tonic::Code::Unavailable, tonic::Code::Unknown, tonic::Code::Cancelled];
    assert!(transport.contains(&e.code()), "{e:?}");
    assert!(e.metadata().get("ferry-error-code").is_none(), "{e:?}");
    drop(silent_a);
    wait_for(Duration::from_secs(30), "a send succeeds once a place is free", || async {
        let channel = endpoint.connect_lazy();
        let mut c = ferry_proto::v1::messages_client::MessagesClient::new(channel);
        c.send(text("15550001", "under the cap")).await.map(drop).map_err(|e| format!("{e:?}"))
    })
    .await;
}

/// `[grpc] max_inflight_request_bytes_per_connection`: a batch whose decoded size would pass the
/// connection's budget is RESOURCE_EXHAUSTED (1016) before it is decoded; a smaller one passes.
#[tokio::test(flavor = "multi_thread")]
async fn the_inflight_decode_budget_refuses_what_would_pass_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[grpc]\nmax_inflight_request_bytes = 1048576\nmax_inflight_request_bytes_per_connection = 1048576\n",
    );
    let data = dir.path().join("data");
    let ferry = FerryProcess::spawn_with(&data, 1, &["--config", config.to_str().unwrap()]);
    let mut client = connect(ferry.addr).await;
    let batch = |n: usize| ferry_proto::v1::SendBatchRequest {
        messages: (0..n).map(|i| text(&format!("1555{i:07}"), "hello")).collect(),
    };
    let e = client.send_batch(batch(1000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.metadata().get("ferry-error-code").unwrap(), "1016");
    assert!(e.message().contains("max_inflight_request_bytes"), "{}", e.message());
    let ok = client.send_batch(batch(50)).await.expect("a batch within the budget");
    assert_eq!(ok.into_inner().results.len(), 50);
}

/// `[grpc] max_header_list_bytes`: a call with 20 KB of metadata (over ferry's 16 KiB, under the
/// 64 KiB h2 announces) is RESOURCE_EXHAUSTED (1001) in gRPC's shape, not h2's bare 431, and the
/// next call on the same channel is served.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_metadata_is_refused_in_grpc_shape_and_the_channel_survives() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with(&dir.path().join("data"), 1, &[]);
    let mut client = connect(ferry.addr).await;
    let mut request = tonic::Request::new(text("15550001", "big metadata"));
    request.metadata_mut().insert("x-pad", "p".repeat(20_000).parse().unwrap());
    let e = client.send(request).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.metadata().get("ferry-error-code").map(|v| v.to_str().unwrap()), Some("1001"), "{e:?}");
    assert!(e.message().contains("max_header_list_bytes"), "{}", e.message());
    let ok = client.send(text("15550001", "small metadata")).await.expect("the channel still serves");
    assert!(!ok.into_inner().message_id.is_empty());
}

/// `[grpc] read_timeout_secs`: a connection that never sends the HTTP/2 preface is closed, and a
/// `Send` whose body never completes is DEADLINE_EXCEEDED (1009) instead of holding its stream
/// and its decode budget forever.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_connections_without_a_preface_and_unfinished_bodies_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[grpc]\nread_timeout_secs = 1\n");
    let ferry = FerryProcess::spawn_with(&dir.path().join("data"), 1, &["--config", config.to_str().unwrap()]);

    let mut silent = tokio::net::TcpStream::connect(ferry.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(15)).await, "a silent gRPC connection was kept open");

    // One complete SendRequest frame, then the body stays open forever.
    let first = prost::Message::encode_to_vec(&text("15550001", "never finished"));
    use tokio_stream::StreamExt as _;
    let body = tokio_stream::once(first).chain(tokio_stream::pending());
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ferry.addr)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ferry.v1.Messages/Send");
    let call = grpc.client_streaming(tonic::Request::new(body), path, RawCodec);
    let e = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("a Send whose body never completed was never answered")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert_eq!(e.metadata().get("ferry-error-code").map(|v| v.to_str().unwrap()), Some("1009"), "{e:?}");
    assert!(e.message().contains("read_timeout_secs"), "{}", e.message());
}

/// Peak resident memory of the process so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM in kB")
}

/// Unary sends from 64 tasks for `secs`: messages answered per second.
async fn send_rate(addr: SocketAddr, secs: u64) -> f64 {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64u64 {
        tasks.spawn(async move {
            let mut client = connect(addr).await;
            let mut n = 0u64;
            while tokio::time::Instant::now() < end {
                client.send(text(&format!("1555{:07}", t * 100_000 + n), "rate")).await.expect("a valid send");
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    total as f64 / secs as f64
}

/// The figures of `benches/README.md` ("Hostile input"), not a test: the send rate with and
/// without 1,500 silent connections held open on the gRPC port, then peak RSS (VmHWM) under a
/// flood of the most amplifying invalid requests of the corpus, then under one of the largest
/// valid batches. Delivery is pointed at an address nobody listens on, so what the figures show is
/// ingest and storage only (the embedded chat server would keep every delivered message in this
/// process). Run with
/// `cargo test --release --workspace --locked --test hostile_input -- --ignored --nocapture hostile_figures`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: prints figures"]
async fn hostile_figures() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::spawn_with(
        &dir.path().join("data"),
        8,
        &["--upstream", "127.0.0.1:9", "--customer-service-window", "off"],
    );
    let pid = ferry.child.id();
    let mut client = connect(ferry.addr).await;
    client.send(text("15550009999", "warm up")).await.expect("a valid send");

    let quiet = send_rate(ferry.addr, 5).await;
    let mut silent = Vec::new();
    for _ in 0..1500 {
        silent.push(tokio::net::TcpStream::connect(ferry.addr).await.unwrap());
    }
    let crowded = send_rate(ferry.addr, 5).await;
    drop(silent);
    println!("unary Send, 64 callers, 5 s: {quiet:.0} msg/s; with 1,500 silent connections open: {crowded:.0} msg/s");

    // The most amplifying invalid requests of the corpus, 8 callers, 5 rounds each.
    let base = rss_kib(pid);
    let base_peak = peak_rss_kib(pid);
    let corpus = corpus();
    let batch = grpc_bytes(&corpus["grpc"][0]);
    let contacts = grpc_bytes(&corpus["grpc"][2]);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (b, c, addr) = (batch.clone(), contacts.clone(), ferry.addr);
        calls.spawn(async move {
            for _ in 0..5 {
                assert!(raw_call(addr, "SendBatch", b.clone()).await.is_err());
                assert!(raw_call(addr, "Send", c.clone()).await.is_err());
            }
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let invalid_peak = peak_rss_kib(pid);
    println!(
        "RSS {} MiB (peak so far {} MiB); 8 callers x 5 x (4 MiB SendBatch of 838,000 tiny messages + 2M-contacts \
         Send), all refused: peak {} MiB",
        base / 1024,
        base_peak / 1024,
        invalid_peak / 1024
    );

    // The largest valid SendBatch: 1,000 texts of 3,900 characters (~3.9 MB, under the 4 MiB
    // limit), 8 callers, 5 rounds each.
    let before = rss_kib(pid);
    let body = "x".repeat(3_900);
    let mut calls = tokio::task::JoinSet::new();
    for c in 0..8u64 {
        let (addr, body) = (ferry.addr, body.clone());
        calls.spawn(async move {
            let mut client = connect(addr).await;
            for round in 0..5u64 {
                let messages =
                    (0..1000u64).map(|i| text(&format!("1556{:07}", (c * 5 + round) * 1000 + i), &body)).collect();
                let r = client.send_batch(ferry_proto::v1::SendBatchRequest { messages }).await;
                assert_eq!(r.expect("a valid batch").into_inner().results.len(), 1000);
            }
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    println!(
        "RSS {} MiB; 8 callers x 5 valid SendBatch of 1,000 x 3,900-char texts (156 MB accepted): peak {} MiB, after {} MiB",
        before / 1024,
        peak_rss_kib(pid) / 1024,
        rss_kib(pid) / 1024
    );
}
