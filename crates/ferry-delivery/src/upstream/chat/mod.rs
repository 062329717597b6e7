//! The chat upstream: `ferry.chat.v1.Chat` (the reference chat server, or `ferry chatsim`)
//! behind the seam.
//!
//! - **Connection** (`link.rs`): one `Deliver` stream per shard, reconnected forever; frames out
//!   through a bounded buffer (full: [`Stalled`]), frames in translated to [`UpstreamEvent`]s.
//! - **Prepare** (`session.rs`): an encryption session with durably reserved counters, in the
//!   background; a cache hit needs no preparation.
//! - **Submit**: encrypt with the cached session and queue an `Envelope` carrying the attempt.
//! - **Answers**: `Ack` → accepted; `RECIPIENT_INVALID` → failed (1013); `RATE_LIMITED` /
//!   `MARKETING_LIMITED` → back off the recipient (the server's `retry_after_ms` as the hint);
//!   `SESSION_UNKNOWN` → re-prepare (a re-key: the next set-up fetches a new bundle);
//!   `TEMPORARILY_UNAVAILABLE` → retry; no outcome → resend. The server dedups by message id,
//!   so nothing is ever in doubt here.
//! - **Events**: receipts → statuses, inbound messages → inbound; both acknowledged with a
//!   `ReceiptAck` once the core made them durable.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_model::{ErrorCode, MessageStatus};
use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_proto::chat::v1::{
    ClientFrame, Envelope, EnvelopeResult, Hello, InboundMessage, ReceiptAck, client_frame, delivery_error,
    envelope_result, receipt, server_frame,
};
use ferry_session::{IdentityKeyPair, SendingSession};
use ferry_shard::Shard;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use self::link::{LinkEvent, LinkHandle, SendFailure, run_link};
use self::session::{SessionDeps, SessionFailure, SessionHeld, SessionOutcome, SessionSource, prepare_session};
use super::{
    Attempt, BackOffReason, Connect, EventToken, Inbound, Outcome, PrepareFailure, RecipientRef, Scope, Stalled,
    Submitted, Upstream, UpstreamEvent,
};
use crate::DeliveryConfig;
use crate::failpoint::{self, Point};
use crate::stats::ShardDeliveryStats;
use crate::supervise::{Joined, TaskSet};

mod key_agreement;
mod link;
mod session;

const BUFFER_FULL: Stalled = Stalled("the outgoing buffer is full (the server takes no frames)");

/// Opens a shard's chat upstream (a link task and a fresh session cache) for every loop start.
pub(crate) struct ChatConnector {
    pub(crate) shard: Arc<Shard>,
    pub(crate) client: ChatClient<Channel>,
    pub(crate) hello: Hello,
    pub(crate) config: DeliveryConfig,
    pub(crate) stats: Arc<ShardDeliveryStats>,
}

impl Connect for ChatConnector {
    type Upstream = ChatUpstream;

    fn connect(&self, shutdown: watch::Receiver<bool>) -> (ChatUpstream, JoinHandle<()>) {
        let (events_tx, events) = mpsc::channel(4096);
        // A replicated shard's leader says its term (the server refuses a stale leader's stream).
        let mut hello = self.hello.clone();
        if let Some(raft) = self.shard.raft_status() {
            hello.term = raft.term;
            hello.leader_node = self.shard.node_id();
        }
        let link = tokio::spawn(run_link(
            self.client.clone(),
            hello,
            events_tx,
            self.stats.clone(),
            Duration::from_millis(self.config.reconnect_initial_ms),
            self.config.link_buffer(),
            shutdown,
        ));
        let deps = SessionDeps {
            shard: self.shard.clone(),
            client: self.client.clone(),
            identity: Arc::new(IdentityKeyPair::from_bytes(self.shard.identity_key())),
            permits: Arc::new(Semaphore::new(self.config.max_concurrent_session_setups)),
            stats: self.stats.clone(),
            reservation: self.config.session_reservation,
        };
        let upstream = ChatUpstream {
            shard_label: self.shard.id().to_string(),
            deps,
            events,
            raw: Vec::with_capacity(256),
            link: None,
            sessions: quick_cache::unsync::Cache::new(self.config.session_cache_capacity),
            session_tasks: TaskSet::new(),
            rekey: HashSet::new(),
        };
        (upstream, link)
    }
}

/// One shard's chat upstream (see the module docs).
pub(crate) struct ChatUpstream {
    shard_label: String,
    deps: SessionDeps,
    events: mpsc::Receiver<LinkEvent>,
    raw: Vec<LinkEvent>,
    link: Option<LinkHandle>,
    sessions: quick_cache::unsync::Cache<String, SendingSession>,
    session_tasks: TaskSet<SessionOutcome, SessionHeld>,
    /// Recipients whose next set-up must fetch a new bundle (the server did not know the session).
    rekey: HashSet<String>,
}

impl Upstream for ChatUpstream {
    fn is_up(&self) -> bool {
        self.link.is_some()
    }

    fn needs_prepare(&mut self, key: &str) -> bool {
        self.sessions.get(key).is_none_or(SendingSession::needs_reservation)
    }

    fn prepare(&mut self, r: RecipientRef<'_>) {
        let rekey = self.rekey.remove(r.key);
        let cached = self.sessions.remove(r.key).map(|(_, s)| s);
        let panics = failpoint::hit(Point::SessionTask, r.wa_id);
        let (deps, sender, recipient) = (self.deps.clone(), r.sender.to_owned(), r.wa_id.to_owned());
        self.session_tasks.spawn(SessionHeld { key: r.key.to_owned(), rekey }, async move {
            if panics {
                panic!("failpoint: the session task panicked");
            }
            prepare_session(deps, sender, recipient, cached, rekey).await
        });
    }

    fn invalidate(&mut self, key: &str) {
        self.sessions.remove(key);
        self.rekey.insert(key.to_owned());
    }

    fn forget(&mut self, key: &str) {
        self.rekey.remove(key);
    }

    fn submit(&mut self, a: Attempt<'_>) -> Submitted {
        let Some(link) = &self.link else { return Submitted::Closed };
        let Some(mut session) = self.sessions.get_mut(a.recipient.key) else { return Submitted::Reprepare };
        let encrypted = session.encrypt(a.message_id, a.recipient.sender, a.recipient.wa_id, a.payload);
        drop(session);
        let (header, ciphertext) = match encrypted {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(shard = %self.shard_label, error = %e, "encryption failed; setting up a new session");
                self.sessions.remove(a.recipient.key);
                return Submitted::Reprepare;
            }
        };
        self.deps.stats.add(&self.deps.stats.session_hits, 1);
        let envelope = Envelope {
            message_id: a.message_id.to_owned(),
            sender: a.recipient.sender.to_owned(),
            recipient: a.recipient.wa_id.to_owned(),
            header: Some(header.into()),
            ciphertext,
            attempt: a.attempt,
        };
        match link.try_send(ClientFrame { frame: Some(client_frame::Frame::Envelope(envelope)) }) {
            Ok(()) => Submitted::Sent,
            Err(SendFailure::Closed) => Submitted::Closed,
            Err(SendFailure::Full) => Submitted::Stalled(BUFFER_FULL),
        }
    }

    fn acknowledge(&mut self, receipt_ids: Vec<EventToken>) -> Result<(), Stalled> {
        let Some(link) = &self.link else { return Ok(()) };
        let frame = ClientFrame { frame: Some(client_frame::Frame::ReceiptAck(ReceiptAck { receipt_ids })) };
        match link.try_send(frame) {
            Err(SendFailure::Full) => Err(BUFFER_FULL),
            _ => Ok(()),
        }
    }

    fn reset(&mut self, why: &str) -> bool {
        let Some(link) = self.link.take() else { return false };
        tracing::warn!(shard = %self.shard_label, why, "resetting the stream to the chat server");
        link.reset();
        true
    }

    /// Cancel-safe: `recv_many` and `TaskSet::join_next` are; events are translated only once
    /// one of them returned.
    async fn next_events(&mut self, out: &mut Vec<UpstreamEvent>) -> bool {
        tokio::select! {
            n = self.events.recv_many(&mut self.raw, 256) => {
                if n == 0 {
                    return false;
                }
                let mut raw = std::mem::take(&mut self.raw);
                for event in raw.drain(..) {
                    self.translate(event, out);
                }
                self.raw = raw;
            }
            Some(joined) = self.session_tasks.join_next(), if !self.session_tasks.is_empty() => {
                out.push(self.on_session_joined(joined));
            }
        }
        true
    }
}

impl ChatUpstream {
    fn translate(&mut self, event: LinkEvent, out: &mut Vec<UpstreamEvent>) {
        match event {
            LinkEvent::Up(handle) => {
                tracing::info!(shard = %self.shard_label, "connected to the chat server");
                self.link = Some(handle);
                out.push(UpstreamEvent::Up);
            }
            LinkEvent::Down(reason) => {
                if self.link.take().is_some() {
                    tracing::warn!(shard = %self.shard_label, reason, "lost the chat server; in-flight messages will be resent");
                }
                out.push(UpstreamEvent::Down { reason });
            }
            LinkEvent::Frame(frame) => match frame.frame {
                Some(server_frame::Frame::Result(result)) => out.push(answer(result)),
                Some(server_frame::Frame::Receipt(r)) => out.push(match receipt::Status::try_from(r.status) {
                    Ok(receipt::Status::Delivered) => status(r, MessageStatus::Delivered),
                    Ok(receipt::Status::Read) => status(r, MessageStatus::Read),
                    _ => UpstreamEvent::Unrecognized { token: r.receipt_id },
                }),
                Some(server_frame::Frame::Inbound(m)) => out.push(inbound(m)),
                None => {}
            },
        }
    }

    /// A session task ended: its outcome, or a temporary failure for its recipient if it panicked.
    fn on_session_joined(&mut self, joined: Joined<SessionOutcome, SessionHeld>) -> UpstreamEvent {
        let (SessionHeld { key, rekey }, outcome) = match joined {
            Joined::Done { output, held } => (held, output),
            Joined::Panicked { held, reason } => {
                self.deps.stats.add(&self.deps.stats.task_panics, 1);
                tracing::error!(shard = %self.shard_label, reason, "a session task panicked; the recipient retries");
                (held, Err(SessionFailure::Temporary(format!("the session task panicked: {reason}"))))
            }
        };
        let stats = &self.deps.stats;
        let result = match outcome {
            Ok((session, source)) => {
                match source {
                    SessionSource::Loaded => stats.add(&stats.session_loads, 1),
                    SessionSource::Setup => stats.add(&stats.session_setups, 1),
                    SessionSource::Reserved => {}
                }
                self.sessions.insert(key.clone(), session);
                Ok(())
            }
            Err(SessionFailure::RecipientInvalid(detail)) => Err(PrepareFailure::recipient_invalid(detail)),
            Err(SessionFailure::Temporary(detail)) => {
                // A failed re-key must stay a re-key: the stored session is the one the server
                // does not know.
                if rekey {
                    self.rekey.insert(key.clone());
                }
                Err(PrepareFailure::Temporary(detail))
            }
        };
        UpstreamEvent::Prepared { key, result }
    }
}

fn answer(result: EnvelopeResult) -> UpstreamEvent {
    let outcome = match result.outcome {
        Some(envelope_result::Outcome::Ack(ack)) => Outcome::Accepted {
            upstream_id: None,
            at_ms: (ack.timestamp_ms > 0).then_some(ack.timestamp_ms),
            duplicate: ack.duplicate,
        },
        Some(envelope_result::Outcome::Error(error)) => {
            let kind =
                delivery_error::Kind::try_from(error.kind).unwrap_or(delivery_error::Kind::TemporarilyUnavailable);
            let back_off = |reason| Outcome::BackOff {
                scope: Scope::Recipient,
                retry_after: Duration::from_millis(error.retry_after_ms),
                reason,
                detail: error.detail.clone(),
            };
            match kind {
                delivery_error::Kind::RecipientInvalid => Outcome::Failed {
                    code: ErrorCode::UserNotValid.code(),
                    title: super::RECIPIENT_INVALID_TITLE.to_owned(),
                    details: error.detail,
                },
                delivery_error::Kind::RateLimited => back_off(BackOffReason::RateLimited),
                delivery_error::Kind::MarketingLimited => back_off(BackOffReason::MarketingLimited),
                delivery_error::Kind::SessionUnknown => Outcome::Reprepare,
                delivery_error::Kind::TemporarilyUnavailable | delivery_error::Kind::Unspecified => {
                    Outcome::Retry { detail: error.detail }
                }
            }
        }
        None => Outcome::Resend,
    };
    UpstreamEvent::Answer { message_id: result.message_id, attempt: result.attempt, outcome }
}

fn status(r: ferry_proto::chat::v1::Receipt, status: MessageStatus) -> UpstreamEvent {
    let at_ms = (r.timestamp_ms > 0).then_some(r.timestamp_ms);
    UpstreamEvent::Status { message_id: r.message_id, status, at_ms, token: r.receipt_id }
}

fn inbound(m: InboundMessage) -> UpstreamEvent {
    let message = Inbound {
        id: m.id,
        from: m.from,
        to: m.to,
        at_ms: (m.timestamp_ms > 0).then_some(m.timestamp_ms),
        message_type: if m.r#type.is_empty() { "text".into() } else { m.r#type },
        text_body: m.text_body,
        profile_name: m.profile_name,
    };
    UpstreamEvent::Inbound { message, token: m.receipt_id }
}
