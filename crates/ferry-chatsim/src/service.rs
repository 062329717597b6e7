//! The gRPC face of the reference chat server: `ferry.chat.v1.Chat` (the `Deliver` delivery stream
//! and `FetchPreKeyBundle`) and `ferry.chat.v1.ChatAdmin` (`Stats`). One task per stream reads
//! frames and answers each envelope inline (fault rolls → recipient checks → marketing limit → dedup → rate limit →
//! decrypt → ack → schedule receipts); a second task per stream pushes that channel's receipts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::chat::v1::chat_admin_server::ChatAdmin;
use ferry_proto::chat::v1::chat_server::Chat;
use ferry_proto::chat::v1::{
    Ack, ClientFrame, DeliveryError, Envelope, EnvelopeResult, FetchPreKeyBundleRequest, Hello, HistoryRequest,
    HistoryResponse, InboundMessage, PreKeyBundle, Receipt, ServerFrame, SimulateInboundRequest,
    SimulateInboundResponse, StatsRequest, StatsResponse, client_frame, delivery_error, envelope_result, receipt,
    server_frame,
};
use ferry_session::Header;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ChatSimConfig;
use crate::counters::{Counters, bump};
use crate::receipts::{Channel, ChannelDirectory, FirstAcks, Push, ScheduledReceipt, push_receipts};
use crate::recipients::{EnvelopeDigest, Reception, RecipientDirectory};

/// This process's nonce in inbound message ids (the receipt counter starts again at every start).
static INSTANCE: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));

/// Frames buffered per stream towards the client (tonic encodes what is ready into one write).
const STREAM_BUFFER: usize = 1024;

/// Message ids `History` lists in all (about 32 bytes each on the wire: ~1.6 MB).
pub(crate) const HISTORY_ID_BUDGET: usize = 50_000;

type ServerFrameResult = Result<ServerFrame, Status>;

/// Everything the streams share.
pub(crate) struct Shared {
    pub(crate) config: ChatSimConfig,
    pub(crate) counters: Arc<Counters>,
    pub(crate) recipients: RecipientDirectory,
    channels: ChannelDirectory,
    started: Instant,
    stream_sequence: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// What `ChatAdmin/History` answers.
    pub(crate) fn history(&self, recipients: bool) -> HistoryResponse {
        let (recipients, recipients_truncated) =
            if recipients { self.recipients.history(HISTORY_ID_BUDGET) } else { (Vec::new(), false) };
        HistoryResponse { channels: self.channels.history(), recipients, recipients_truncated }
    }

    pub(crate) fn new(config: ChatSimConfig, shutdown: watch::Receiver<bool>) -> Self {
        let recipients = RecipientDirectory::new(key_seed(config.seed), config.state_shards);
        Shared {
            config,
            counters: Arc::default(),
            recipients,
            channels: ChannelDirectory::default(),
            started: Instant::now(),
            stream_sequence: AtomicU64::new(0),
            shutdown,
        }
    }
}

/// The 32-byte recipient-key seed of a config seed: SHA-256 of a label and the seed.
fn key_seed(seed: u64) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"ferry-chatsim/v1/recipient-key-seed");
    hasher.update(seed.to_le_bytes());
    hasher.finalize().into()
}

/// A plausible wa_id: 8 to 15 ASCII digits.
pub(crate) fn is_plausible_wa_id(recipient: &str) -> bool {
    (8..=15).contains(&recipient.len()) && recipient.bytes().all(|b| b.is_ascii_digit())
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whom an answer is for: the envelope's id and its `attempt`, echoed.
struct Answering {
    message_id: String,
    attempt: u32,
}

impl Answering {
    fn of(envelope: &Envelope) -> Self {
        Answering { message_id: envelope.message_id.clone(), attempt: envelope.attempt }
    }
}

fn error_result(to: Answering, kind: delivery_error::Kind, retry_after_ms: u64, detail: String) -> EnvelopeResult {
    EnvelopeResult {
        message_id: to.message_id,
        outcome: Some(envelope_result::Outcome::Error(DeliveryError { kind: kind as i32, retry_after_ms, detail })),
        attempt: to.attempt,
    }
}

/// `timestamp_ms`: when the server took the message; its receipts are stamped from the same
/// instant, so a `delivered` is never older than the ack it follows.
fn ack_result(to: Answering, duplicate: bool, timestamp_ms: i64) -> EnvelopeResult {
    EnvelopeResult {
        message_id: to.message_id,
        outcome: Some(envelope_result::Outcome::Ack(Ack { duplicate, timestamp_ms })),
        attempt: to.attempt,
    }
}

fn digest_of(envelope: &Envelope) -> EnvelopeDigest {
    use prost::Message;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(envelope.sender.as_bytes());
    hasher.update(&[0]);
    if let Some(header) = &envelope.header {
        hasher.update(&header.encode_to_vec());
    }
    hasher.update(&envelope.ciphertext);
    EnvelopeDigest(hasher.digest())
}

/// What a stream does after one envelope.
enum EnvelopeOutcome {
    Answer(EnvelopeResult),
    /// The `disconnect_rate` fault: end the stream without answering.
    Disconnect,
}

impl Shared {
    fn process_envelope(&self, channel: &Channel, envelope: Envelope, rng: &mut StdRng) -> EnvelopeOutcome {
        use delivery_error::Kind;
        let config = &self.config;
        let counters = &self.counters;
        bump(&counters.envelopes_received, 1);
        if config.disconnect_rate > 0.0 && rng.random::<f64>() < config.disconnect_rate {
            bump(&counters.disconnects_injected, 1);
            return EnvelopeOutcome::Disconnect;
        }
        let answering = || Answering::of(&envelope);
        if config.error_rate > 0.0 && rng.random::<f64>() < config.error_rate {
            bump(&counters.temporarily_unavailable, 1);
            let detail = "chatsim: injected temporary failure; retry later".to_owned();
            return EnvelopeOutcome::Answer(error_result(answering(), Kind::TemporarilyUnavailable, 0, detail));
        }
        let recipient = envelope.recipient.as_str();
        let invalid_by_prefix = config.invalid_prefix.as_deref().is_some_and(|prefix| recipient.starts_with(prefix));
        if !is_plausible_wa_id(recipient) || invalid_by_prefix {
            bump(&counters.recipient_invalid, 1);
            let detail = format!("recipient {recipient:?} is not a valid WhatsApp user");
            return EnvelopeOutcome::Answer(error_result(answering(), Kind::RecipientInvalid, 0, detail));
        }
        if config.marketing_limit_prefix.as_deref().is_some_and(|prefix| recipient.starts_with(prefix)) {
            bump(&counters.marketing_limited, 1);
            let detail = format!("{recipient} has reached the per-user marketing message limit (131049)");
            return EnvelopeOutcome::Answer(error_result(answering(), Kind::MarketingLimited, 0, detail));
        }
        let header = match envelope.header.as_ref().map(Header::try_from) {
            Some(Ok(header)) => header,
            Some(Err(error)) => return self.session_unknown(answering(), error.to_string()),
            None => return self.session_unknown(answering(), "envelope has no session header".to_owned()),
        };
        let now_ms = u64::try_from(now_unix_ms()).unwrap_or(0);
        let reception = self.recipients.receive(
            &envelope.message_id,
            &envelope.sender,
            recipient,
            &header,
            &envelope.ciphertext,
            digest_of(&envelope),
            now_ms,
            config.rate_limit_per_recipient,
        );
        match reception {
            Reception::Delivered { session_established } => {
                bump(&counters.sessions_established, u64::from(session_established));
                bump(&counters.unique_messages, 1);
                let taken_ms = now_unix_ms();
                match self.config.misroute_receipts.then(|| self.channels.latest()).flatten() {
                    Some(latest) => self.schedule_receipts(&latest, &envelope, taken_ms),
                    None => self.schedule_receipts(channel, &envelope, taken_ms),
                }
                EnvelopeOutcome::Answer(ack_result(answering(), false, taken_ms))
            }
            Reception::Duplicate { session_established } => {
                bump(&counters.sessions_established, u64::from(session_established));
                bump(&counters.duplicate_messages, 1);
                EnvelopeOutcome::Answer(ack_result(answering(), true, now_unix_ms()))
            }
            Reception::RateLimited { retry_after_ms } => {
                bump(&counters.rate_limited, 1);
                let detail = format!(
                    "more than {} messages per second to {recipient}; retry after {retry_after_ms} ms",
                    config.rate_limit_per_recipient
                );
                EnvelopeOutcome::Answer(error_result(answering(), Kind::RateLimited, retry_after_ms, detail))
            }
            Reception::Failed(error) => self.session_unknown(answering(), error.to_string()),
        }
    }

    /// An envelope that did not decrypt or authenticate: never acked; the client must re-key.
    fn session_unknown(&self, to: Answering, detail: String) -> EnvelopeOutcome {
        bump(&self.counters.decrypt_failures, 1);
        bump(&self.counters.session_unknown, 1);
        let detail = format!("{detail}; set up a new session (fetch a new pre-key bundle) and resend");
        EnvelopeOutcome::Answer(error_result(to, delivery_error::Kind::SessionUnknown, 0, detail))
    }

    fn schedule_receipts(&self, channel: &Channel, envelope: &Envelope, now_ms: i64) {
        let config = &self.config;
        let now = Instant::now();
        let offline = config.offline_prefix.as_deref().is_some_and(|prefix| envelope.recipient.starts_with(prefix));
        let online_at = if offline { self.started + Duration::from_millis(config.offline_for_ms) } else { now };
        let delivered_due = (now + Duration::from_millis(config.delivered_after_ms)).max(online_at);
        let read_due = (now + Duration::from_millis(config.read_after_ms)).max(delivered_due);
        let at_ms = |due: Instant| now_ms + due.saturating_duration_since(now).as_millis() as i64;
        let receipt = |status: receipt::Status, due: Instant| ScheduledReceipt {
            due,
            receipt: Push::Receipt(Receipt {
                receipt_id: self.channels.next_receipt_id(),
                message_id: envelope.message_id.clone(),
                recipient: envelope.recipient.clone(),
                status: status as i32,
                timestamp_ms: at_ms(due),
            }),
        };
        let delivered = receipt(receipt::Status::Delivered, delivered_due);
        let read = config.read_receipts.then(|| receipt(receipt::Status::Read, read_due));
        // The reply knob: a fixed share of recipients write back once they have read the message
        // (decided by the message id, so a resend does not roll again).
        let replies = config.reply_rate > 0.0
            && (xxhash_rust::xxh3::xxh3_64(envelope.message_id.as_bytes()) as f64 / u64::MAX as f64)
                < config.reply_rate;
        let reply = replies.then(|| {
            bump(&self.counters.inbound_sent, 1);
            let receipt_id = self.channels.next_receipt_id();
            ScheduledReceipt {
                due: read_due,
                receipt: Push::Inbound(InboundMessage {
                    // Unique across chatsim restarts too: ferry deduplicates inbound ids.
                    id: format!("chatsim.in.{:x}.{receipt_id}", *INSTANCE),
                    from: envelope.recipient.clone(),
                    to: envelope.sender.clone(),
                    timestamp_ms: at_ms(read_due),
                    r#type: "text".into(),
                    text_body: format!("reply to {}", envelope.message_id),
                    profile_name: String::new(),
                    receipt_id,
                }),
            }
        });
        channel.schedule(
            std::iter::once(delivered).chain(read).chain(reply),
            config.max_pending_receipts_per_channel,
            &self.counters,
        );
    }
}

/// The service value tonic holds (cheap to clone).
#[derive(Clone)]
pub(crate) struct ChatService {
    pub(crate) shared: Arc<Shared>,
}

/// Where a stream's envelope results go: straight to the client, or through the `ack_latency_ms`
/// delay line (a FIFO task: constant delay keeps order and keeps results pipelined).
enum ResultSink {
    Direct(mpsc::Sender<ServerFrameResult>),
    Delayed { line: mpsc::Sender<(Instant, ServerFrameResult)>, latency: Duration, task: tokio::task::JoinHandle<()> },
}

impl ResultSink {
    fn new(out: &mpsc::Sender<ServerFrameResult>, ack_latency_ms: u64) -> Self {
        if ack_latency_ms == 0 {
            return ResultSink::Direct(out.clone());
        }
        let (line, mut delayed) = mpsc::channel::<(Instant, ServerFrameResult)>(STREAM_BUFFER * 4);
        let out = out.clone();
        let task = tokio::spawn(async move {
            while let Some((due, frame)) = delayed.recv().await {
                tokio::time::sleep_until(due).await;
                if out.send(frame).await.is_err() {
                    return;
                }
            }
        });
        ResultSink::Delayed { line, latency: Duration::from_millis(ack_latency_ms), task }
    }

    /// False when the client is gone.
    async fn send(&self, frame: ServerFrameResult) -> bool {
        match self {
            ResultSink::Direct(out) => out.send(frame).await.is_ok(),
            ResultSink::Delayed { line, latency, .. } => line.send((Instant::now() + *latency, frame)).await.is_ok(),
        }
    }

    /// Drops results still in the delay line (an abrupt end).
    fn abort(self) {
        if let ResultSink::Delayed { task, .. } = self {
            task.abort();
        }
    }
}

impl ChatService {
    /// Serves one `Deliver` stream to its end. Reads the `Hello`, takes the channel over, then
    /// answers frames until the client ends, an injected disconnect, or server shutdown.
    async fn serve_stream(self, mut inbound: Streaming<ClientFrame>, out: mpsc::Sender<ServerFrameResult>) {
        let shared = self.shared;
        let mut shutdown = shared.shutdown.clone();
        let first = tokio::select! {
            first = inbound.message() => first,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Hello { client_id, channel: channel_number, term, leader_node } = match first {
            Ok(Some(ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) })) => hello,
            Ok(None) | Err(_) => return,
            Ok(Some(_)) => {
                let status = Status::invalid_argument("the first frame of Deliver must be a hello; got another frame");
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        bump(&shared.counters.connections, 1);
        let channel = shared.channels.channel(&client_id, channel_number);
        let fenced = term > 0;
        if fenced && let Err((t, l)) = channel.admit(term, leader_node) {
            bump(&shared.counters.stale_term_refused, 1);
            let status = Status::failed_precondition(format!(
                "stale term: channel {channel_number} of {client_id} is led at term {t} by node {l}; this stream said \
                 term {term}, node {leader_node}"
            ));
            let _ = out.send(Err(status)).await;
            return;
        }
        let generation = channel.take_over();
        channel.record_hello(term, leader_node, now_unix_ms());
        let mut first_acks = FirstAcks::new(term, leader_node);
        let orphans = shared
            .channels
            .take_orphans()
            .into_iter()
            .map(|m| ScheduledReceipt { due: Instant::now(), receipt: Push::Inbound(m) });
        channel.schedule(orphans, shared.config.max_pending_receipts_per_channel, &shared.counters);
        let pusher = tokio::spawn(push_receipts(channel.clone(), generation, out.clone(), shared.counters.clone()));
        let sequence = shared.stream_sequence.fetch_add(1, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(shared.config.seed ^ sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sink = ResultSink::new(&out, shared.config.ack_latency_ms);
        let mut abrupt = false;
        let mut answered = 0u64;
        loop {
            let frame = tokio::select! {
                frame = inbound.message() => frame,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let Ok(Some(ClientFrame { frame: Some(frame) })) = frame else {
                if matches!(frame, Ok(Some(_))) {
                    continue; // an empty frame: nothing to do
                }
                break;
            };
            match frame {
                client_frame::Frame::Envelope(_) if fenced && channel.generation() != generation => {
                    // A newer leader's stream took the channel over: this one speaks for a term
                    // that is over, and nothing it sends is taken.
                    bump(&shared.counters.envelopes_received, 1);
                    bump(&shared.counters.stale_term_envelopes, 1);
                    let status = Status::failed_precondition(format!(
                        "stale term: a newer stream (leader) took channel {channel_number} of {client_id} over"
                    ));
                    let _ = out.send(Err(status)).await;
                    break;
                }
                client_frame::Frame::Envelope(_)
                    if shared.config.stall_after > 0 && answered >= shared.config.stall_after =>
                {
                    // The `stall_after` fault: read, never answer, keep the stream open.
                    bump(&shared.counters.envelopes_received, 1);
                    bump(&shared.counters.envelopes_unanswered, 1);
                }
                client_frame::Frame::Envelope(envelope) => {
                    answered += 1;
                    match shared.process_envelope(&channel, envelope, &mut rng) {
                        EnvelopeOutcome::Answer(result) => {
                            if let Some(envelope_result::Outcome::Ack(ack)) = &result.outcome {
                                first_acks.note(&channel, ack.timestamp_ms, ack.duplicate);
                            }
                            let frame = ServerFrame { frame: Some(server_frame::Frame::Result(result)) };
                            if !sink.send(Ok(frame)).await {
                                break;
                            }
                        }
                        EnvelopeOutcome::Disconnect => {
                            abrupt = true;
                            break;
                        }
                    }
                }
                client_frame::Frame::ReceiptAck(ack) => {
                    let (receipts, inbound) = channel.ack(&ack.receipt_ids);
                    bump(&shared.counters.receipts_acked, receipts);
                    bump(&shared.counters.inbound_acked, inbound);
                }
                client_frame::Frame::Hello(_) => {
                    let status = Status::invalid_argument("hello is only valid as the first frame of a stream");
                    let _ = out.send(Err(status)).await;
                    break;
                }
            }
        }
        pusher.abort();
        if abrupt {
            sink.abort();
            let _ = out.send(Err(Status::unavailable("chatsim: injected disconnect"))).await;
        }
        // Otherwise the delay line (if any) drains its results and ends; the stream ends with it.
    }
}

#[tonic::async_trait]
impl Chat for ChatService {
    type DeliverStream = ReceiverStream<ServerFrameResult>;

    async fn deliver(&self, request: Request<Streaming<ClientFrame>>) -> Result<Response<Self::DeliverStream>, Status> {
        let (out, frames) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().serve_stream(request.into_inner(), out));
        Ok(Response::new(ReceiverStream::new(frames)))
    }

    async fn fetch_pre_key_bundle(
        &self,
        request: Request<FetchPreKeyBundleRequest>,
    ) -> Result<Response<PreKeyBundle>, Status> {
        let recipient = request.into_inner().recipient;
        if !is_plausible_wa_id(&recipient) {
            return Err(Status::not_found(format!("recipient {recipient:?} is not a wa_id; expected 8 to 15 digits")));
        }
        let bundle = self.shared.recipients.next_bundle(&recipient);
        bump(&self.shared.counters.bundles_served, 1);
        Ok(Response::new(bundle.to_proto(&recipient)))
    }
}

#[tonic::async_trait]
impl ChatAdmin for ChatService {
    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(self.shared.counters.snapshot()))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        Ok(Response::new(self.shared.history(request.into_inner().recipients)))
    }

    async fn simulate_inbound(
        &self,
        request: Request<SimulateInboundRequest>,
    ) -> Result<Response<SimulateInboundResponse>, Status> {
        let r = request.into_inner();
        for (field, value) in [("from", &r.from), ("to", &r.to)] {
            if !is_plausible_wa_id(value) {
                return Err(Status::invalid_argument(format!(
                    "{field} {value:?} is not a wa_id; expected 8 to 15 digits"
                )));
            }
        }
        let shared = &self.shared;
        let receipt_id = shared.channels.next_receipt_id();
        let id = format!("chatsim.in.{receipt_id}");
        let message = InboundMessage {
            id: id.clone(),
            from: r.from,
            to: r.to,
            timestamp_ms: now_unix_ms(),
            r#type: "text".into(),
            text_body: if r.text.is_empty() { "hello".into() } else { r.text },
            profile_name: r.profile_name,
            receipt_id,
        };
        bump(&shared.counters.inbound_sent, 1);
        let pushed =
            shared.channels.push_inbound(message, shared.config.max_pending_receipts_per_channel, &shared.counters);
        Ok(Response::new(SimulateInboundResponse { id, pushed }))
    }
}
