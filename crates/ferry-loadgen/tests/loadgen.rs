//! Loadgen against stub servers written here: a `ferry.v1.Messages` stub (configurable delay and
//! rejections) and a `ferry.chat.v1.ChatAdmin` stub (acks each accepted message a fixed time
//! later), both on port 0. The logic under test is the loadgen's scheduler, latency, error
//! counting, ack accounting and report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_loadgen::{LoadgenArgs, run};
use ferry_proto::chat::v1::chat_admin_server::{ChatAdmin, ChatAdminServer};
use ferry_proto::chat::v1::{SimulateInboundRequest, SimulateInboundResponse, StatsRequest, StatsResponse};
use ferry_proto::v1::messages_server::{Messages, MessagesServer};
use ferry_proto::v1::{self, send_result::Outcome};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct StubConfig {
    /// Sleep before answering each call.
    delay: Duration,
    /// Reject every `reject_every`th message (1-based count of messages received); 0 = never.
    reject_every: u64,
}

/// What the stub saw: when each message arrived and when each was accepted.
#[derive(Default)]
struct Seen {
    received: Vec<Instant>,
    accepted: Vec<Instant>,
    /// `(from, to)` of every SimulateInbound call.
    inbound: Vec<(String, String)>,
    /// Message types of every message received.
    types: Vec<&'static str>,
}

#[derive(Clone)]
struct StubMessages {
    config: StubConfig,
    seen: Arc<Mutex<Seen>>,
}

impl StubMessages {
    /// Records one message; `true` when it is accepted.
    fn take(&self, m: &v1::SendRequest) -> bool {
        use v1::send_request::Content;
        let mut seen = self.seen.lock().unwrap();
        seen.received.push(Instant::now());
        seen.types.push(match &m.content {
            Some(Content::Text(_)) => "text",
            Some(Content::Image(_)) => "image",
            Some(Content::Template(_)) => "template",
            Some(Content::Interactive(_)) => "interactive",
            Some(Content::Location(_)) => "location",
            _ => "other",
        });
        let n = seen.received.len() as u64;
        let accept = self.config.reject_every == 0 || !n.is_multiple_of(self.config.reject_every);
        if accept {
            seen.accepted.push(Instant::now());
        }
        accept
    }

    fn accepted() -> v1::SendResponse {
        v1::SendResponse {
            message_id: "wamid.stub".into(),
            wa_id: "1".into(),
            message_status: "accepted".into(),
            idempotent_replay: false,
        }
    }
}

#[tonic::async_trait]
impl Messages for StubMessages {
    async fn send(&self, request: Request<v1::SendRequest>) -> Result<Response<v1::SendResponse>, Status> {
        tokio::time::sleep(self.config.delay).await;
        if self.take(&request.into_inner()) {
            Ok(Response::new(Self::accepted()))
        } else {
            let mut status = Status::invalid_argument("stub rejects this one");
            status.metadata_mut().insert("ferry-error-code", "1009".parse().unwrap());
            Err(status)
        }
    }

    async fn send_batch(
        &self,
        request: Request<v1::SendBatchRequest>,
    ) -> Result<Response<v1::SendBatchResponse>, Status> {
        tokio::time::sleep(self.config.delay).await;
        let results = request
            .into_inner()
            .messages
            .iter()
            .map(|m| v1::SendResult {
                outcome: Some(if self.take(m) {
                    Outcome::Accepted(Self::accepted())
                } else {
                    Outcome::Error(v1::Error { code: 1001, title: "too long".into(), ..Default::default() })
                }),
            })
            .collect();
        Ok(Response::new(v1::SendBatchResponse { results }))
    }

    async fn get_message(
        &self,
        _request: Request<v1::GetMessageRequest>,
    ) -> Result<Response<v1::MessageRecord>, Status> {
        Err(Status::unimplemented("stub"))
    }

    type WatchStatusesStream = tokio_stream::Empty<Result<v1::StatusEvent, Status>>;

    async fn watch_statuses(
        &self,
        _request: Request<v1::WatchStatusesRequest>,
    ) -> Result<Response<Self::WatchStatusesStream>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn resolve_held(
        &self,
        _request: Request<v1::ResolveHeldRequest>,
    ) -> Result<Response<v1::ResolveHeldResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

/// Acks every accepted message `ack_after` after its accept, on top of `preexisting` unique
/// messages from before the run.
struct StubChatAdmin {
    seen: Arc<Mutex<Seen>>,
    ack_after: Duration,
    preexisting: u64,
}

#[tonic::async_trait]
impl ChatAdmin for StubChatAdmin {
    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let seen = self.seen.lock().unwrap();
        let acked = seen.accepted.iter().filter(|t| t.elapsed() >= self.ack_after).count() as u64;
        let inbound_acked = seen.inbound.len() as u64;
        Ok(Response::new(StatsResponse {
            unique_messages: self.preexisting + acked,
            inbound_acked,
            ..Default::default()
        }))
    }

    async fn history(
        &self,
        _request: Request<ferry_proto::chat::v1::HistoryRequest>,
    ) -> Result<Response<ferry_proto::chat::v1::HistoryResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn simulate_inbound(
        &self,
        request: Request<SimulateInboundRequest>,
    ) -> Result<Response<SimulateInboundResponse>, Status> {
        let r = request.into_inner();
        self.seen.lock().unwrap().inbound.push((r.from, r.to));
        Ok(Response::new(SimulateInboundResponse { id: "in".into(), pushed: true }))
    }
}

struct Stub {
    target: String,
    chatsim: String,
    seen: Arc<Mutex<Seen>>,
}

async fn start_stub(config: StubConfig, ack_after: Duration) -> Stub {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let messages = StubMessages { config, seen: seen.clone() };
    let admin = StubChatAdmin { seen: seen.clone(), ack_after, preexisting: 1_000 };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MessagesServer::new(messages))
            .add_service(ChatAdminServer::new(admin))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    Stub { target: format!("http://{addr}"), chatsim: format!("http://{addr}"), seen }
}

fn args(stub: &Stub) -> LoadgenArgs {
    let mut args = LoadgenArgs::for_target(stub.target.clone());
    args.quiet = true;
    args.connections = 2;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_issues_rate_times_duration_sends_spread_over_the_duration() {
    let stub = start_stub(StubConfig::default(), Duration::ZERO).await;
    let mut a = args(&stub);
    a.rate = Some(200.0);
    a.duration = Some(Duration::from_secs(1));
    let before = Instant::now();
    let report = run(a).await.unwrap();
    let seen = stub.seen.lock().unwrap();
    assert_eq!(seen.received.len(), 200, "200 msg/s for 1 s");
    assert_eq!(report.sent, 200);
    assert_eq!(report.accepted, 200);
    // Spread over the second, evenly: send k is due 5 ms × k after the start and never goes out
    // early, so the k-th arrival comes at least 5 ms × k after `before` (a burst would break
    // this). Load can only delay sends, so this bound cannot fail on a busy machine; how late
    // they come is not asserted (a wall-clock upper bound would be).
    for (k, at) in seen.received.iter().enumerate() {
        let due = Duration::from_millis(5 * k as u64).saturating_sub(Duration::from_millis(1));
        assert!(*at - before >= due, "arrival {k} came {:?} after the start, before its slot ({due:?})", *at - before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_with_batches_sends_rate_messages_not_rate_calls() {
    let stub = start_stub(StubConfig::default(), Duration::ZERO).await;
    let mut a = args(&stub);
    a.rate = Some(1000.0);
    a.batch = 10;
    a.duration = Some(Duration::from_millis(500));
    let report = run(a).await.unwrap();
    assert_eq!(stub.seen.lock().unwrap().received.len(), 500);
    assert_eq!(report.calls, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_runs_from_the_scheduled_time_so_queueing_shows() {
    // One slot, 50 ms per call, but scheduled every 10 ms: call i is answered near (i + 1) * 50 ms
    // though scheduled at i * 10 ms. Measured from the send, every call would take 50 ms.
    let stub = start_stub(StubConfig { delay: Duration::from_millis(50), reject_every: 0 }, Duration::ZERO).await;
    let mut a = args(&stub);
    a.rate = Some(100.0);
    a.count = Some(20);
    a.concurrency = 1;
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 20);
    let l = report.accept_latency_ms;
    assert!(l.p50 >= 50.0, "every call takes ≥ the stub's 50 ms sleep: {l:?}");
    assert!(l.max >= 700.0, "the last call waited for 19 before it: {l:?}");
    assert!(l.p50 >= 300.0, "queueing delay counts: {l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_latency_is_at_least_the_server_time() {
    let stub = start_stub(StubConfig { delay: Duration::from_millis(30), reject_every: 0 }, Duration::ZERO).await;
    let mut a = args(&stub);
    a.count = Some(40);
    a.concurrency = 8;
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 40);
    assert!(
        report.accept_latency_ms.p50 >= 30.0 && report.accept_latency_ms.p50 < 200.0,
        "{:?}",
        report.accept_latency_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_rejections_are_counted_by_ferry_error_code() {
    let stub = start_stub(StubConfig { delay: Duration::ZERO, reject_every: 4 }, Duration::ZERO).await;
    let mut a = args(&stub);
    a.count = Some(40);
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 30);
    assert_eq!(report.errors.get("1009"), Some(&10), "{:?}", report.errors);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors_total, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rejections_are_counted_by_result_error_code() {
    let stub = start_stub(StubConfig { delay: Duration::ZERO, reject_every: 5 }, Duration::ZERO).await;
    let mut a = args(&stub);
    a.count = Some(95);
    a.batch = 10;
    let report = run(a).await.unwrap();
    assert_eq!(report.sent, 95, "the last batch is partial");
    assert_eq!(report.calls, 10);
    assert_eq!(report.accepted, 76);
    assert_eq!(report.errors.get("1001"), Some(&19), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_calls_are_counted_by_grpc_code() {
    // A server that answers nothing ferry-like: the Messages service is missing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = StubChatAdmin { seen: Default::default(), ack_after: Duration::ZERO, preexisting: 0 };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ChatAdminServer::new(admin))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    let mut a = LoadgenArgs::for_target(format!("http://{addr}"));
    a.quiet = true;
    a.count = Some(5);
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 0);
    assert_eq!(report.errors.get("grpc:Unimplemented"), Some(&5), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_count_from_the_baseline_and_ack_latency_is_estimated() {
    let stub = start_stub(StubConfig::default(), Duration::from_millis(300)).await;
    let mut a = args(&stub);
    a.chatsim = Some(stub.chatsim.clone());
    a.rate = Some(500.0);
    a.duration = Some(Duration::from_secs(1));
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 500);
    assert_eq!(report.acked, Some(500), "the 1,000 acked before the run are not counted");
    let acked_per_sec = report.acked_per_sec.unwrap();
    assert!((350.0..=500.0).contains(&acked_per_sec), "500 acked by ~1.3 s: {acked_per_sec}");
    let l = report.accept_to_ack_latency_ms.unwrap();
    assert!((250.0..=450.0).contains(&l.p50), "acks come 300 ms after accepts: {l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_has_the_contract_keys_and_plot_is_an_svg() {
    let stub = start_stub(StubConfig { delay: Duration::ZERO, reject_every: 3 }, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(&stub);
    a.count = Some(30);
    a.rate = Some(30.0);
    a.json = Some(dir.path().join("report.json"));
    a.plot = Some(dir.path().join("report.svg"));
    a.token = Some("secret".into());
    run(a).await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert!(json["accepted_per_sec"].as_f64().unwrap() > 0.0);
    assert!(json.get("acked_per_sec").is_some(), "present (null without --chatsim)");
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["accept_latency_ms"][p].is_number(), "accept_latency_ms.{p}");
    }
    assert_eq!(json["errors"]["1009"], 10);
    assert_eq!(json["config"]["count"], 30);
    assert_eq!(json["config"]["batch"], 1);
    assert!(json["config"].get("token").is_none(), "the token is not written out");
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("accepted/s"), "{}", &svg[..svg.len().min(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_recipient_share_is_exact() {
    let mut a = LoadgenArgs::for_target("http://127.0.0.1:1");
    a.recipients = 10;
    a.new_recipients = 0.25;
    let factory = ferry_loadgen::client::MessageFactory::new(&a);
    let recipients: Vec<String> = (0..1000).map(|n| factory.recipient(n)).collect();
    let distinct: std::collections::HashSet<&String> = recipients.iter().collect();
    assert_eq!(distinct.len(), 10 + 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_windows_writes_first_and_types_and_unary_share_mix() {
    let stub = start_stub(StubConfig::default(), Duration::from_millis(1)).await;
    let mut a = args(&stub);
    a.count = Some(200);
    a.batch = 10;
    a.recipients = 40;
    a.chatsim = Some(stub.chatsim.clone());
    a.open_windows = true;
    a.unary_share = 0.5;
    a.types = ferry_loadgen::client::TypeMix::parse("text=3,template=1").unwrap();
    let report = run(a).await.unwrap();
    assert_eq!(report.accepted, 200);
    let seen = stub.seen.lock().unwrap();
    // Every known recipient wrote to the default business before the first send.
    let mut from: Vec<&str> = seen.inbound.iter().map(|(f, _)| f.as_str()).collect();
    from.sort();
    from.dedup();
    assert_eq!(from.len(), 40);
    assert!(seen.inbound.iter().all(|(_, to)| to == "15550100000"));
    // 3:1 text to template.
    let templates = seen.types.iter().filter(|t| **t == "template").count();
    assert_eq!((seen.types.len(), templates), (200, 50));
}

#[tokio::test]
async fn open_windows_needs_chatsim() {
    let mut a = LoadgenArgs::for_target("http://127.0.0.1:1");
    a.open_windows = true;
    assert!(a.validate().unwrap_err().to_string().contains("--open-windows needs --chatsim"));
}
