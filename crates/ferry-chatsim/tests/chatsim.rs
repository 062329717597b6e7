//! Contract tests of the reference chat server: a real chatsim on 127.0.0.1:0, a real tonic client,
//! sessions set up with ferry-session exactly as ferry's delivery loop does.

use std::collections::HashMap;
use std::time::Duration;

use ferry_chatsim::{ChatSim, ChatSimConfig};
use ferry_proto::chat::v1::chat_admin_client::ChatAdminClient;
use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_proto::chat::v1::{
    ClientFrame, DeliveryError, Envelope, EnvelopeResult, FetchPreKeyBundleRequest, Hello, HistoryRequest,
    InboundMessage, Receipt, ReceiptAck, ServerFrame, SessionHeader, SimulateInboundRequest, StatsRequest,
    client_frame, delivery_error, envelope_result, receipt, server_frame,
};
use ferry_session::{IdentityKeyPair, PreKeyBundle, SendingSession};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const SENDER: &str = "15550001111";
const RECIPIENT: &str = "16315551234";
const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(config: ChatSimConfig) -> ChatSim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    ChatSim::start(listener, config).await.unwrap()
}

async fn client(chatsim: &ChatSim) -> ChatClient<Channel> {
    ChatClient::connect(format!("http://{}", chatsim.local_addr())).await.unwrap()
}

/// The sending side of a test: one identity, one session per recipient.
struct Sender {
    identity: IdentityKeyPair,
    client: ChatClient<Channel>,
    sessions: HashMap<String, SendingSession>,
}

impl Sender {
    fn new(client: ChatClient<Channel>) -> Self {
        Sender { identity: IdentityKeyPair::generate(), client, sessions: HashMap::new() }
    }

    async fn rekey(&mut self, recipient: &str) {
        let request = FetchPreKeyBundleRequest { recipient: recipient.to_owned() };
        let wire = self.client.fetch_pre_key_bundle(request).await.unwrap().into_inner();
        let bundle = PreKeyBundle::try_from(&wire).unwrap();
        let mut session = SendingSession::initiate(&self.identity, &bundle).unwrap();
        session.reserve(1000);
        self.sessions.insert(recipient.to_owned(), session);
    }

    async fn envelope(&mut self, message_id: &str, recipient: &str, body: &[u8]) -> Envelope {
        if !self.sessions.contains_key(recipient) {
            self.rekey(recipient).await;
        }
        let session = self.sessions.get_mut(recipient).unwrap();
        let (header, ciphertext) = session.encrypt(message_id, SENDER, recipient, body).unwrap();
        Envelope {
            message_id: message_id.to_owned(),
            sender: SENDER.to_owned(),
            recipient: recipient.to_owned(),
            header: Some(SessionHeader::from(&header)),
            ciphertext,
            attempt: 1,
        }
    }
}

/// One `Deliver` stream, with the receipts it has seen.
struct Stream {
    frames_out: mpsc::Sender<ClientFrame>,
    frames_in: Streaming<ServerFrame>,
    receipts: Vec<Receipt>,
}

impl Stream {
    async fn open(client: &mut ChatClient<Channel>, client_id: &str, channel: u32) -> Stream {
        let (frames_out, outbound) = mpsc::channel(1024);
        let hello = Hello { client_id: client_id.to_owned(), channel, ..Hello::default() };
        frames_out.send(ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) }).await.unwrap();
        let frames_in = client.deliver(ReceiverStream::new(outbound)).await.unwrap().into_inner();
        Stream { frames_out, frames_in, receipts: Vec::new() }
    }

    /// [`Stream::open`] with a fenced `Hello` (a replicated shard's leader at `term`).
    async fn open_fenced(
        client: &mut ChatClient<Channel>,
        client_id: &str,
        channel: u32,
        term: u64,
        node: u64,
    ) -> Stream {
        let (frames_out, outbound) = mpsc::channel(1024);
        let hello = Hello { client_id: client_id.to_owned(), channel, term, leader_node: node };
        frames_out.send(ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) }).await.unwrap();
        let frames_in = client.deliver(ReceiverStream::new(outbound)).await.unwrap().into_inner();
        Stream { frames_out, frames_in, receipts: Vec::new() }
    }

    async fn send(&self, envelope: Envelope) {
        self.frames_out.send(ClientFrame { frame: Some(client_frame::Frame::Envelope(envelope)) }).await.unwrap();
    }

    async fn ack_receipts(&self, receipt_ids: Vec<u64>) {
        let ack = ReceiptAck { receipt_ids };
        self.frames_out.send(ClientFrame { frame: Some(client_frame::Frame::ReceiptAck(ack)) }).await.unwrap();
    }

    /// The next envelope result (receipts on the way are collected).
    async fn next_result(&mut self) -> EnvelopeResult {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.frames_in.message()).await.unwrap().unwrap().unwrap();
            match frame.frame.unwrap() {
                server_frame::Frame::Result(result) => return result,
                server_frame::Frame::Receipt(receipt) => self.receipts.push(receipt),
                server_frame::Frame::Inbound(_) => {}
            }
        }
    }

    /// Waits until `count` receipts have been seen (or `within` passes).
    async fn collect_receipts(&mut self, count: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.receipts.len() < count {
            let Ok(frame) = tokio::time::timeout_at(deadline, self.frames_in.message()).await else { return };
            match frame.unwrap().unwrap().frame.unwrap() {
                server_frame::Frame::Receipt(receipt) => self.receipts.push(receipt),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

async fn send_one(stream: &mut Stream, envelope: Envelope) -> EnvelopeResult {
    stream.send(envelope).await;
    stream.next_result().await
}

fn must_ack(result: &EnvelopeResult, duplicate: bool) {
    match &result.outcome {
        Some(envelope_result::Outcome::Ack(ack)) => {
            assert_eq!(ack.duplicate, duplicate, "{result:?}");
            assert!(ack.timestamp_ms > 0);
        }
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn must_fail(result: &EnvelopeResult, kind: delivery_error::Kind) -> DeliveryError {
    match &result.outcome {
        Some(envelope_result::Outcome::Error(error)) => {
            assert_eq!(error.kind(), kind, "{error:?}");
            error.clone()
        }
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

#[tokio::test]
async fn decrypted_envelopes_are_acked_and_counted_once() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    for i in 0..3 {
        let envelope = sender.envelope(&format!("wamid.{i}"), RECIPIENT, b"{\"type\":\"text\"}").await;
        let result = send_one(&mut stream, envelope).await;
        assert_eq!(result.message_id, format!("wamid.{i}"));
        must_ack(&result, false);
    }
    let stats = chatsim.stats();
    assert_eq!(stats.unique_messages, 3);
    assert_eq!(stats.envelopes_received, 3);
    assert_eq!(stats.sessions_established, 1);
    assert_eq!(stats.bundles_served, 1);
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.decrypt_failures, 0);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn resend_of_an_acked_id_is_a_duplicate_and_not_delivered_again() {
    let config = ChatSimConfig { read_receipts: false, ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let first = sender.envelope("wamid.dup", RECIPIENT, b"hi").await;
    must_ack(&send_one(&mut stream, first.clone()).await, false);
    // Re-encrypted resend (a fresh counter).
    let again = sender.envelope("wamid.dup", RECIPIENT, b"hi").await;
    must_ack(&send_one(&mut stream, again).await, true);
    // Byte-identical resend (its counter is used: recognised, not decrypted).
    must_ack(&send_one(&mut stream, first).await, true);
    // Resend on a new session after a re-key.
    sender.rekey(RECIPIENT).await;
    let rekeyed = sender.envelope("wamid.dup", RECIPIENT, b"hi").await;
    must_ack(&send_one(&mut stream, rekeyed).await, true);
    let stats = chatsim.stats();
    assert_eq!(stats.unique_messages, 1);
    assert_eq!(stats.duplicate_messages, 3);
    // Only the first ack scheduled a receipt.
    stream.collect_receipts(2, Duration::from_millis(300)).await;
    assert_eq!(stream.receipts.len(), 1, "{:?}", stream.receipts);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn tampered_ciphertext_is_session_unknown_and_never_acked() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let genuine = sender.envelope("wamid.t", RECIPIENT, b"payload").await;
    let mut tampered = genuine.clone();
    tampered.ciphertext[0] ^= 1;
    must_fail(&send_one(&mut stream, tampered).await, delivery_error::Kind::SessionUnknown);
    let mut wrong_id = genuine.clone();
    wrong_id.message_id = "wamid.other".to_owned();
    must_fail(&send_one(&mut stream, wrong_id).await, delivery_error::Kind::SessionUnknown);
    let mut short_key = genuine.clone();
    short_key.header.as_mut().unwrap().ephemeral_key.pop();
    let error = must_fail(&send_one(&mut stream, short_key).await, delivery_error::Kind::SessionUnknown);
    assert!(error.detail.contains("ephemeral_key"), "{error:?}");
    let stats = chatsim.stats();
    assert_eq!(stats.decrypt_failures, 3);
    assert_eq!(stats.session_unknown, 3);
    assert_eq!(stats.unique_messages, 0);
    // The forgeries did not disturb the session: the genuine envelope still decrypts.
    must_ack(&send_one(&mut stream, genuine).await, false);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn invalid_recipients_are_recipient_invalid() {
    let config = ChatSimConfig { invalid_prefix: Some("1999".to_owned()), ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let envelope = sender.envelope("wamid.i", "19995550000", b"x").await;
    must_fail(&send_one(&mut stream, envelope).await, delivery_error::Kind::RecipientInvalid);
    let mut not_a_wa_id = sender.envelope("wamid.j", RECIPIENT, b"x").await;
    not_a_wa_id.recipient = "not-a-number".to_owned();
    must_fail(&send_one(&mut stream, not_a_wa_id).await, delivery_error::Kind::RecipientInvalid);
    let status =
        sender.client.fetch_pre_key_bundle(FetchPreKeyBundleRequest { recipient: "123".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(chatsim.stats().recipient_invalid, 2);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn marketing_limited_recipients_are_refused_before_decrypting() {
    let config = ChatSimConfig { marketing_limit_prefix: Some("1888".to_owned()), ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    for id in ["wamid.m0", "wamid.m1"] {
        let envelope = sender.envelope(id, "18885550000", b"x").await;
        let error = must_fail(&send_one(&mut stream, envelope).await, delivery_error::Kind::MarketingLimited);
        assert_eq!(error.retry_after_ms, 0, "{error:?}");
        assert!(error.detail.contains("marketing") && error.detail.contains("18885550000"), "{error:?}");
    }
    // Plausibility comes first: a non-wa_id is invalid, not marketing-limited.
    let mut not_a_wa_id = sender.envelope("wamid.m2", "18885550001", b"x").await;
    not_a_wa_id.recipient = "1888-not-a-number".to_owned();
    must_fail(&send_one(&mut stream, not_a_wa_id).await, delivery_error::Kind::RecipientInvalid);
    // Other recipients are delivered.
    let other = sender.envelope("wamid.m3", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut stream, other).await, false);
    let stats = chatsim.stats();
    assert_eq!(stats.marketing_limited, 2);
    assert_eq!((stats.decrypt_failures, stats.unique_messages, stats.recipient_invalid), (0, 1, 1));
    assert_eq!(stats.sessions_established, 1, "no receiving session for the refused recipient");
    chatsim.shutdown().await;
}

#[tokio::test]
async fn over_the_rate_limit_is_rate_limited_with_retry_after() {
    let config = ChatSimConfig { rate_limit_per_recipient: 2, ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    // Prepare first so all three land within one second.
    let envelopes = [
        sender.envelope("wamid.r0", RECIPIENT, b"x").await,
        sender.envelope("wamid.r1", RECIPIENT, b"x").await,
        sender.envelope("wamid.r2", RECIPIENT, b"x").await,
        sender.envelope("wamid.r3", RECIPIENT, b"x").await,
    ];
    let mut results = Vec::new();
    for envelope in envelopes {
        results.push(send_one(&mut stream, envelope).await);
    }
    let limited: Vec<_> = results
        .iter()
        .filter(|r| matches!(&r.outcome, Some(envelope_result::Outcome::Error(e)) if e.kind() == delivery_error::Kind::RateLimited))
        .collect();
    // Two per second: at least one of four (two if they all fell in the same second) is limited.
    assert!(!limited.is_empty(), "{results:?}");
    for result in &limited {
        let error = must_fail(result, delivery_error::Kind::RateLimited);
        assert!((1..=1000).contains(&error.retry_after_ms), "{error:?}");
    }
    assert_eq!(chatsim.stats().rate_limited, limited.len() as u64);
    // Another recipient is not affected.
    let other = sender.envelope("wamid.other", "16315550000", b"x").await;
    must_ack(&send_one(&mut stream, other).await, false);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn receipts_are_delivered_then_read_and_repushed_after_reconnect_until_acked() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 3).await;
    let envelope = sender.envelope("wamid.rc", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut stream, envelope).await, false);
    stream.collect_receipts(2, TIMEOUT).await;
    let statuses: Vec<_> = stream.receipts.iter().map(|r| r.status()).collect();
    assert_eq!(statuses, [receipt::Status::Delivered, receipt::Status::Read]);
    assert!(stream.receipts.iter().all(|r| r.message_id == "wamid.rc" && r.recipient == RECIPIENT));
    assert!(stream.receipts[0].timestamp_ms <= stream.receipts[1].timestamp_ms);
    let first_ids: Vec<u64> = stream.receipts.iter().map(|r| r.receipt_id).collect();
    drop(stream);

    // A stream on another channel does not get them.
    let mut other_channel = Stream::open(&mut sender.client, "node-1", 4).await;
    other_channel.collect_receipts(1, Duration::from_millis(200)).await;
    assert!(other_channel.receipts.is_empty());

    // Reconnect with the same hello: pushed again (not acked yet). Ack the delivered one only.
    let mut again = Stream::open(&mut sender.client, "node-1", 3).await;
    again.collect_receipts(2, TIMEOUT).await;
    let mut ids: Vec<u64> = again.receipts.iter().map(|r| r.receipt_id).collect();
    ids.sort();
    assert_eq!(ids, first_ids);
    again.ack_receipts(vec![first_ids[0]]).await;
    // Wait for the ack to be processed before reconnecting.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while chatsim.stats().receipts_acked < 1 {
        assert!(tokio::time::Instant::now() < deadline, "receipt ack not processed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(again);

    let mut third = Stream::open(&mut sender.client, "node-1", 3).await;
    third.collect_receipts(2, Duration::from_millis(300)).await;
    assert_eq!(third.receipts.iter().map(|r| r.receipt_id).collect::<Vec<_>>(), [first_ids[1]]);
    third.ack_receipts(vec![first_ids[1]]).await;
    while chatsim.stats().receipts_acked < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(third);
    let mut fourth = Stream::open(&mut sender.client, "node-1", 3).await;
    fourth.collect_receipts(1, Duration::from_millis(200)).await;
    assert!(fourth.receipts.is_empty(), "{:?}", fourth.receipts);
    let stats = chatsim.stats();
    assert_eq!(stats.receipts_sent, 5);
    assert_eq!(stats.receipts_acked, 2);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn offline_recipients_get_receipts_only_when_they_come_back() {
    let config = ChatSimConfig {
        offline_prefix: Some("1555".to_owned()),
        offline_for_ms: 700,
        read_receipts: false,
        ..ChatSimConfig::for_test()
    };
    let chatsim = start(config).await;
    let started = tokio::time::Instant::now();
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let offline = sender.envelope("wamid.off", "15550009999", b"x").await;
    must_ack(&send_one(&mut stream, offline).await, false);
    let online = sender.envelope("wamid.on", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut stream, online).await, false);
    stream.collect_receipts(1, TIMEOUT).await;
    assert_eq!(stream.receipts[0].message_id, "wamid.on");
    stream.collect_receipts(2, TIMEOUT).await;
    assert_eq!(stream.receipts[1].message_id, "wamid.off");
    assert!(started.elapsed() >= Duration::from_millis(600), "offline receipt came after {:?}", started.elapsed());
    chatsim.shutdown().await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let envelope = sender.envelope("wamid.h", RECIPIENT, b"x").await;
    let (frames_out, outbound) = mpsc::channel(4);
    frames_out.send(ClientFrame { frame: Some(client_frame::Frame::Envelope(envelope)) }).await.unwrap();
    let mut frames_in = sender.client.deliver(ReceiverStream::new(outbound)).await.unwrap().into_inner();
    let status = tokio::time::timeout(TIMEOUT, frames_in.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn fault_knobs_error_and_disconnect() {
    let config = ChatSimConfig { error_rate: 1.0, ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let envelope = sender.envelope("wamid.e", RECIPIENT, b"x").await;
    must_fail(&send_one(&mut stream, envelope).await, delivery_error::Kind::TemporarilyUnavailable);
    assert_eq!(chatsim.stats().temporarily_unavailable, 1);
    chatsim.shutdown().await;

    let config = ChatSimConfig { disconnect_rate: 1.0, ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    stream.send(sender.envelope("wamid.d", RECIPIENT, b"x").await).await;
    let status = tokio::time::timeout(TIMEOUT, stream.frames_in.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let stats = chatsim.stats();
    assert_eq!(stats.disconnects_injected, 1);
    assert_eq!(stats.unique_messages, 0);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn ack_latency_delays_without_serializing() {
    // 20 acks held back 1 s each: pipelined they all come after about 1 s; serialized the last
    // would come after 20 s. The bound between (10 s) leaves a loaded machine 9 s of slack.
    let config = ChatSimConfig { ack_latency_ms: 1_000, ..ChatSimConfig::for_test() };
    let chatsim = start(config).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let mut envelopes = Vec::new();
    for i in 0..20 {
        envelopes.push(sender.envelope(&format!("wamid.l{i}"), RECIPIENT, b"x").await);
    }
    let started = tokio::time::Instant::now();
    for envelope in envelopes {
        stream.send(envelope).await;
    }
    for i in 0..20 {
        let result = stream.next_result().await;
        assert_eq!(result.message_id, format!("wamid.l{i}"));
        must_ack(&result, false);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1_000), "acks came before their latency: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "acks were serialized (20 × 1 s): {elapsed:?}");
    chatsim.shutdown().await;
}

#[tokio::test]
async fn stats_over_grpc_and_shutdown_ends_streams() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    let envelope = sender.envelope("wamid.s", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut stream, envelope).await, false);
    let mut admin = ChatAdminClient::connect(format!("http://{}", chatsim.local_addr())).await.unwrap();
    let stats = admin.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats, chatsim.stats());
    assert_eq!(stats.unique_messages, 1);
    assert_eq!(stats.bundles_served, 1);
    assert_eq!(stats.connections, 1);
    let shutdown = tokio::time::timeout(TIMEOUT, chatsim.shutdown());
    let (shutdown_result, _) = tokio::join!(shutdown, async {
        // The stream ends (cleanly or with an error) once the server stops.
        while let Ok(Some(_)) = stream.frames_in.message().await {}
    });
    shutdown_result.expect("shutdown finished within the timeout");
}

#[test]
fn config_defaults_round_trip_and_validate() {
    let config: ChatSimConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, ChatSimConfig::default());
    config.validate().unwrap();
    let round_trip: ChatSimConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(round_trip, config);
    let bad = ChatSimConfig { error_rate: 1.5, ..ChatSimConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("error_rate"));
    let bad = ChatSimConfig { invalid_prefix: Some(String::new()), ..ChatSimConfig::default() };
    assert!(bad.validate().is_err());
    let bad = ChatSimConfig { marketing_limit_prefix: Some(String::new()), ..ChatSimConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("marketing_limit_prefix is empty"));
    let bad = ChatSimConfig { marketing_limit_prefix: Some("+1888".into()), ..ChatSimConfig::default() };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("marketing_limit_prefix is \"+1888\"") && e.contains("expected digits"), "{e}");
    assert!(serde_json::from_str::<ChatSimConfig>(r#"{"no_such_knob": 1}"#).is_err());
}

#[test]
fn cli_flags_match_the_defaults() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ferry_chatsim::ChatSimArgs,
    }
    let cli = Cli::try_parse_from(["chatsim"]).unwrap();
    assert_eq!(cli.args.listen, "127.0.0.1:50061");
    assert_eq!(cli.args.config, ChatSimConfig::default());
    let cli = Cli::try_parse_from([
        "chatsim",
        "--read-receipts",
        "false",
        "--error-rate",
        "0.1",
        "--invalid-prefix",
        "1999",
        "--marketing-limit-prefix",
        "1888",
    ])
    .unwrap();
    assert!(!cli.args.config.read_receipts);
    assert_eq!(cli.args.config.error_rate, 0.1);
    assert_eq!(cli.args.config.invalid_prefix.as_deref(), Some("1999"));
    assert_eq!(cli.args.config.marketing_limit_prefix.as_deref(), Some("1888"));
}

/// Many concurrent pipelined streams: every envelope is answered with an ack, counts add up, and
/// the rate is printed (`cargo test --release -p ferry-chatsim -- --nocapture throughput`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_many_streams_all_acked() {
    const STREAMS: usize = 8;
    const PER_STREAM: usize = 2500;
    const RECIPIENTS_PER_STREAM: usize = 25;
    let chatsim = start(ChatSimConfig { read_receipts: false, ..ChatSimConfig::for_test() }).await;
    let mut prepared = Vec::new();
    for s in 0..STREAMS {
        let mut sender = Sender::new(client(&chatsim).await);
        let mut envelopes = Vec::with_capacity(PER_STREAM);
        for i in 0..PER_STREAM {
            let recipient = format!("1631{s:03}{:04}", i % RECIPIENTS_PER_STREAM);
            envelopes.push(sender.envelope(&format!("wamid.{s}.{i}"), &recipient, &[b'x'; 200]).await);
        }
        prepared.push((sender, envelopes));
    }
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (s, (mut sender, envelopes)) in prepared.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut stream = Stream::open(&mut sender.client, "load", s as u32).await;
            let frames_out = stream.frames_out.clone();
            let feeder = tokio::spawn(async move {
                for envelope in envelopes {
                    frames_out
                        .send(ClientFrame { frame: Some(client_frame::Frame::Envelope(envelope)) })
                        .await
                        .unwrap();
                }
            });
            for _ in 0..PER_STREAM {
                must_ack(&stream.next_result().await, false);
            }
            feeder.await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = (STREAMS * PER_STREAM) as f64;
    eprintln!(
        "chatsim throughput: {total} envelopes over {STREAMS} streams in {elapsed:?} = {:.0} envelopes/s (client and server on the same cores)",
        total / elapsed.as_secs_f64()
    );
    let stats = chatsim.stats();
    assert_eq!(stats.unique_messages, (STREAMS * PER_STREAM) as u64);
    assert_eq!(stats.sessions_established, (STREAMS * RECIPIENTS_PER_STREAM) as u64);
    assert_eq!(stats.decrypt_failures, 0);
    chatsim.shutdown().await;
}

/// Inbound messages seen on `stream` within `within` (receipts are collected on the way).
async fn collect_inbound(stream: &mut Stream, count: usize, within: Duration) -> Vec<InboundMessage> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < count {
        let Ok(frame) = tokio::time::timeout_at(deadline, stream.frames_in.message()).await else { break };
        match frame.unwrap().unwrap().frame.unwrap() {
            server_frame::Frame::Inbound(m) => out.push(m),
            server_frame::Frame::Receipt(r) => stream.receipts.push(r),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn simulated_inbound_is_pushed_until_acked_even_before_any_stream() {
    let chatsim = start(ChatSimConfig::for_test()).await;
    let mut admin = ChatAdminClient::connect(format!("http://{}", chatsim.local_addr())).await.unwrap();
    // Nobody connected yet: it waits for the first stream.
    let request = SimulateInboundRequest {
        from: RECIPIENT.into(),
        to: SENDER.into(),
        text: "hi business".into(),
        profile_name: "Ada".into(),
    };
    let made = admin.simulate_inbound(request).await.unwrap().into_inner();
    assert!(!made.pushed);
    let bad = SimulateInboundRequest { from: "12ab".into(), to: SENDER.into(), ..Default::default() };
    assert_eq!(admin.simulate_inbound(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let mut client = client(&chatsim).await;
    let mut first = Stream::open(&mut client, "node-1", 0).await;
    let got = collect_inbound(&mut first, 1, TIMEOUT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!((m.id.as_str(), m.from.as_str(), m.to.as_str()), (made.id.as_str(), RECIPIENT, SENDER));
    assert_eq!((m.text_body.as_str(), m.profile_name.as_str(), m.r#type.as_str()), ("hi business", "Ada", "text"));
    assert!(m.timestamp_ms > 0 && m.receipt_id > 0);
    drop(first);

    // Not acknowledged: the next stream gets it again; acknowledged: never again.
    let mut second = Stream::open(&mut client, "node-1", 0).await;
    let again = collect_inbound(&mut second, 1, TIMEOUT).await;
    assert_eq!(again.iter().map(|m| m.receipt_id).collect::<Vec<_>>(), [m.receipt_id]);
    second.ack_receipts(vec![m.receipt_id]).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while chatsim.stats().inbound_acked < 1 {
        assert!(tokio::time::Instant::now() < deadline, "inbound ack not processed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(second);
    let mut third = Stream::open(&mut client, "node-1", 0).await;
    assert!(collect_inbound(&mut third, 1, Duration::from_millis(300)).await.is_empty());
    let stats = chatsim.stats();
    assert_eq!((stats.inbound_sent, stats.inbound_acked, stats.receipts_acked), (1, 1, 0));
    chatsim.shutdown().await;
}

#[tokio::test]
async fn with_reply_rate_one_every_reader_writes_back() {
    let chatsim = start(ChatSimConfig { reply_rate: 1.0, ..ChatSimConfig::for_test() }).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 1).await;
    let envelope = sender.envelope("wamid.reply", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut stream, envelope).await, false);
    let replies = collect_inbound(&mut stream, 1, TIMEOUT).await;
    assert_eq!(replies.len(), 1);
    assert_eq!((replies[0].from.as_str(), replies[0].to.as_str()), (RECIPIENT, SENDER));
    assert!(replies[0].text_body.contains("wamid.reply"));
    // The reply comes with the read receipt, not before the message was read.
    assert!(stream.receipts.iter().any(|r| r.status() == receipt::Status::Read), "{:?}", stream.receipts);
    assert_eq!(chatsim.stats().inbound_sent, 1);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn answers_echo_the_attempt_and_a_stalled_stream_reads_without_answering() {
    let chatsim = start(ChatSimConfig { stall_after: 2, ..ChatSimConfig::for_test() }).await;
    let mut sender = Sender::new(client(&chatsim).await);
    let mut stream = Stream::open(&mut sender.client, "node-1", 0).await;
    for (i, attempt) in [(0, 7), (1, 1)] {
        let mut envelope = sender.envelope(&format!("wamid.a{i}"), RECIPIENT, b"hi").await;
        envelope.attempt = attempt;
        let result = send_one(&mut stream, envelope).await;
        assert_eq!(result.attempt, attempt, "the answer names the attempt it answers");
        must_ack(&result, false);
    }
    // The third envelope on this stream is read and left unanswered.
    let mut third = sender.envelope("wamid.a2", RECIPIENT, b"hi").await;
    stream.send(third.clone()).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while chatsim.stats().envelopes_unanswered < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stalled stream never read the envelope");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new stream answers again (and this envelope was never delivered: not a duplicate).
    let mut fresh = Stream::open(&mut sender.client, "node-1", 0).await;
    third.attempt = 2;
    let result = send_one(&mut fresh, third).await;
    must_ack(&result, false);
    assert_eq!(result.attempt, 2);
    let stats = chatsim.stats();
    assert_eq!((stats.unique_messages, stats.envelopes_unanswered, stats.envelopes_received), (3, 1, 4));
    drop(stream);
    chatsim.shutdown().await;
}

#[tokio::test]
async fn a_stale_leaders_stream_is_refused_and_a_replaced_one_gets_nothing_acked() {
    let sim = start(ChatSimConfig::for_test()).await;
    let mut c = client(&sim).await;
    let mut sender = Sender::new(c.clone());
    // Node 1 leads channel 0 at term 2; its stream works.
    let mut old = Stream::open_fenced(&mut c, "shard-space", 0, 2, 1).await;
    let e = sender.envelope("wamid.fence-1", RECIPIENT, b"one").await;
    must_ack(&send_one(&mut old, e).await, false);

    // A leader of an older term is refused at its Hello.
    let mut stale = Stream::open_fenced(&mut c, "shard-space", 0, 1, 2).await;
    let refused = stale.frames_in.message().await.expect_err("a stale term is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("stale term"), "{refused:?}");

    // Node 2 becomes leader at term 3: its stream takes the channel over; node 1's old stream gets
    // nothing acked any more.
    let mut new = Stream::open_fenced(&mut c, "shard-space", 0, 3, 2).await;
    let e = sender.envelope("wamid.fence-2", RECIPIENT, b"two").await;
    must_ack(&send_one(&mut new, e).await, false);
    let e = sender.envelope("wamid.fence-3", RECIPIENT, b"three").await;
    old.send(e).await;
    let cut = loop {
        match old.frames_in.message().await {
            Err(status) => break status,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the replaced stream ended without saying why"),
        }
    };
    assert_eq!(cut.code(), tonic::Code::FailedPrecondition, "{cut:?}");
    let stats = sim.stats();
    assert_eq!((stats.stale_term_refused, stats.stale_term_envelopes), (1, 1));
    assert_eq!(stats.unique_messages, 2, "the replaced stream's envelope was not acked");

    // Unfenced clients (a single node) are not affected by the fence.
    let mut single = Stream::open(&mut c, "shard-space", 0).await;
    let e = sender.envelope("wamid.fence-4", RECIPIENT, b"four").await;
    must_ack(&send_one(&mut single, e).await, false);
    sim.shutdown().await;
}

#[tokio::test]
async fn history_names_each_leaders_first_acks_and_each_recipients_order() {
    let sim = start(ChatSimConfig { read_receipts: false, ..ChatSimConfig::for_test() }).await;
    let mut c = client(&sim).await;
    let mut sender = Sender::new(c.clone());
    const OTHER: &str = "16315550000";
    let before = now_ms();
    // Node 1 leads channel 0 at term 2: two messages to RECIPIENT, one to OTHER.
    let mut old = Stream::open_fenced(&mut c, "space", 0, 2, 1).await;
    let mut acked = Vec::new();
    for (id, to) in [("wamid.h-1", RECIPIENT), ("wamid.h-2", OTHER), ("wamid.h-3", RECIPIENT)] {
        let e = sender.envelope(id, to, b"x").await;
        acked.push(e.clone());
        must_ack(&send_one(&mut old, e).await, false);
    }
    // Node 2 takes over at term 3: it resends h-3 first (a duplicate), then a new message.
    let mut new = Stream::open_fenced(&mut c, "space", 0, 3, 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    must_ack(&send_one(&mut new, acked[2].clone()).await, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = sender.envelope("wamid.h-4", RECIPIENT, b"x").await;
    must_ack(&send_one(&mut new, e).await, false);
    // A stream of another channel that acked nothing.
    let _idle = Stream::open(&mut c, "space", 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // the idle stream's Hello is read

    let mut admin = ChatAdminClient::connect(format!("http://{}", sim.local_addr())).await.unwrap();
    let h = admin.history(HistoryRequest { recipients: true }).await.unwrap().into_inner();
    assert_eq!(h, sim.history(true));
    assert_eq!(h.channels.len(), 2, "{h:?}");
    let (zero, one) = (&h.channels[0], &h.channels[1]);
    assert_eq!((zero.client_id.as_str(), zero.channel, zero.terms.len()), ("space", 0, 2), "{zero:?}");
    let (t2, t3) = (&zero.terms[0], &zero.terms[1]);
    assert_eq!((t2.term, t2.leader_node, t2.streams), (2, 1, 1));
    assert_eq!((t3.term, t3.leader_node, t3.streams), (3, 2, 1));
    assert!(t2.hello_unix_ms >= before && t2.first_ack_unix_ms >= t2.hello_unix_ms, "{t2:?}");
    assert_eq!(t2.first_ack_unix_ms, t2.first_delivery_unix_ms, "term 2's first ack was a delivery");
    assert!(t3.first_ack_unix_ms >= t3.hello_unix_ms, "{t3:?}");
    assert!(
        t3.first_delivery_unix_ms > t3.first_ack_unix_ms,
        "term 3 first acked a resend, then delivered a new id: {t3:?}"
    );
    assert_eq!((one.channel, one.terms.len()), (1, 1));
    assert_eq!((one.terms[0].term, one.terms[0].first_ack_unix_ms), (0, 0), "unfenced, nothing acked: {one:?}");

    assert!(!h.recipients_truncated);
    let order: Vec<(&str, &str, Vec<&str>)> = h
        .recipients
        .iter()
        .map(|r| (r.sender.as_str(), r.recipient.as_str(), r.message_ids.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        order,
        [(SENDER, OTHER, vec!["wamid.h-2"]), (SENDER, RECIPIENT, vec!["wamid.h-1", "wamid.h-3", "wamid.h-4"])],
        "first-ack order per (sender, recipient); the resend of h-3 did not move it"
    );
    assert!(h.recipients.iter().all(|r| !r.truncated && r.delivered == r.message_ids.len() as u64));
    let without = admin.history(HistoryRequest { recipients: false }).await.unwrap().into_inner();
    assert!(without.recipients.is_empty() && without.channels == h.channels);
    sim.shutdown().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
