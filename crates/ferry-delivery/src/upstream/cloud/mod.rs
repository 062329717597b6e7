//! The WhatsApp Cloud API upstream behind the seam (`upstream_kind = "cloud"`).
//!
//! - **Submit**: the accepted message (JSON of `OutboundMessage`) becomes the Cloud send body
//!   (`messaging_product: "whatsapp"`, `recipient_type: "individual"`, `to` as `+<wa_id>`, the
//!   type and its object; `biz_opaque_callback_data` is ferry's message id, the *marker*; the
//!   caller's own value stays in ferry and is echoed in the callbacks it relays) and is POSTed to
//!   `{base_url}/{api_version}/{phone_number_id}/messages` with the sender's bearer token, in a
//!   tokio task: a reservation in the number's pacer (`pacer.rs`: `throughput_per_sec`, shared
//!   by every shard), the dispatch mark, the request's send slot (one interval after the
//!   number's previous one), then the request with `request_timeout_ms`. One client for the
//!   node (`ferry_webhooks::https_client`: pooled, rustls, HTTP/2 by ALPN; with
//!   `http2_prior_knowledge`, `http2_client`: HTTP/2 also to `http://`, requests multiplexed on
//!   one connection). The answer comes back through [`Upstream::next_events`],
//!   always as attempt 0 ("the latest"): a submit of a message whose request is still running
//!   (the core's ack timeout) sends nothing new.
//! - **Answers** (`ferry_cloud::codes::classify`, the one table): 200 → accepted with the wamid;
//!   transient → retry; 130429 → the number pauses in its pacer (every shard's requests of it)
//!   and the message is sent again in the next free slot; 131056 → the recipient backs off; 131049
//!   → the marketing-limit rule; permanent → failed with Meta's code and title; number-level
//!   (190, 10, 200, 131048, 131031, 368, 131042, 131045) → the sender backs off at least
//!   `blocked_probe_secs` and the number shows as blocked (`ferry_cloud_number_blocked`) until a
//!   send from it is accepted again. A connection that could not be made → retry (nothing was
//!   sent); a timeout or a connection lost once the request went out → **in doubt** for
//!   `reconcile_secs`: a webhook status naming its marker settles it (it adopts the wamid); a
//!   resubmit after the wait is resent (`on_unresolved = resend`, counted) or failed (`fail`).
//! - **In doubt across a crash**: once the pacer reserves a place for a request (at most a fifth
//!   of a second's worth per number wait for their slots), and before it is written, the
//!   message gets a durable *dispatch mark* in its shard (`Shard::mark_dispatched_durably`; it
//!   leaves with the queue key). Every (re)start of the upstream reads the marks: those messages
//!   may have been posted by the previous process (or loop), so each is in doubt for
//!   `reconcile_secs` from the start — a webhook status naming it settles it, silence resends or
//!   fails it as above. A message without a mark was never posted and goes out at once.
//! - **Webhooks** (`hub.rs`): statuses with a marker come to the marker's shard; `sent`,
//!   `delivered`, `read` settle an in-flight or in-doubt message as accepted (a status that
//!   overtakes the 200 of its own POST) and are recorded as statuses; `failed` goes through the
//!   same table. Inbound messages go to the shard that owns the user. Each is acknowledged to
//!   the HTTP handler only once the core made it durable.

pub mod config;
pub mod hub;
mod pacer;
mod request;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_cloud::StatusKind;
use ferry_cloud::codes;
use ferry_model::{ErrorCode, MessageId, MessageKey, MessageStatus};
use ferry_shard::Shard;
use ferry_webhooks::HttpClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::config::{CloudConfig, OnUnresolved, ResolvedNumber};
use self::hub::{CloudHub, StatusReport, WebhookEvent, WebhookItem};
use self::pacer::Pacer;
use self::request::{cloud_body, outcome_for, post};
use super::{
    Attempt, BackOffReason, Connect, EventToken, Outcome, RecipientRef, Scope, Stalled, Submitted, Upstream,
    UpstreamEvent,
};
use crate::stats::{LinkState, ShardDeliveryStats};

/// Gauge: 1 while a business number is blocked by a number-level refusal (label
/// `phone_number_id`), else 0.
pub const NUMBER_BLOCKED: &str = "ferry_cloud_number_blocked";
/// Counter: send attempts that ended in doubt (timeout or connection lost after the request went
/// out).
pub const IN_DOUBT_TOTAL: &str = "ferry_cloud_in_doubt_total";
/// Counter: in-doubt messages settled by a webhook status within `reconcile_secs`.
pub const IN_DOUBT_RESOLVED_TOTAL: &str = "ferry_cloud_in_doubt_resolved_total";
/// Counter: in-doubt messages sent again after `reconcile_secs` without a status
/// (`on_unresolved = resend`): each may reach the user twice.
pub const IN_DOUBT_RESENT_TOTAL: &str = "ferry_cloud_in_doubt_resent_total";
/// Counter: in-doubt messages failed after `reconcile_secs` (`on_unresolved = fail`).
pub const IN_DOUBT_FAILED_TOTAL: &str = "ferry_cloud_in_doubt_failed_total";
/// Counter: queued messages found with a dispatch mark when a shard's upstream (re)started
/// (after a crash or a loop restart): each is in doubt for `reconcile_secs`.
pub const IN_DOUBT_RECOVERED_TOTAL: &str = "ferry_cloud_in_doubt_recovered_total";
/// Counter: send requests by outcome (`accepted`, `retry`, `throughput`, `pair`, `marketing`,
/// `failed`, `blocked`, `in_doubt`).
pub const REQUESTS_TOTAL: &str = "ferry_cloud_requests_total";
/// Counter: webhook statuses without ferry's marker whose wamid matched no message of the shard
/// (sent by something else on the same number, or older than the status retention): dropped.
pub const STATUSES_UNMATCHED_TOTAL: &str = "ferry_cloud_statuses_unmatched_total";

/// One business number as every shard sees it.
pub struct NumberState {
    pub phone_number: String,
    pub phone_number_id: String,
    url: hyper::Uri,
    authorization: hyper::header::HeaderValue,
    pacer: Pacer,
    /// The code of the number-level refusal that blocks it, 0 when it is not blocked.
    blocked: AtomicU32,
    /// When the latest number-level refusal came (`None`: not blocked).
    blocked_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    gauge: metrics::Gauge,
}

impl NumberState {
    /// The code blocking this number, if any.
    pub fn blocked_code(&self) -> Option<u32> {
        Some(self.blocked.load(Ordering::Relaxed)).filter(|c| *c != 0)
    }

    /// How much longer a blocked number waits before its next request (the probe): `None` when it
    /// is not blocked or its latest refusal is `probe` old.
    fn blocked_for(&self, probe: Duration) -> Option<Duration> {
        let at = (*self.blocked_at.lock().unwrap_or_else(|e| e.into_inner()))?;
        Some(probe.saturating_sub(at.elapsed())).filter(|left| !left.is_zero())
    }

    fn set_blocked(&self, code: u32) {
        *self.blocked_at.lock().unwrap_or_else(|e| e.into_inner()) = (code != 0).then(tokio::time::Instant::now);
        if self.blocked.swap(code, Ordering::Relaxed) != code {
            self.gauge.set(if code == 0 { 0.0 } else { 1.0 });
            if code == 0 {
                tracing::info!(phone_number_id = %self.phone_number_id, "business number accepted a send again: unblocked");
            } else {
                tracing::error!(phone_number_id = %self.phone_number_id, code, "business number blocked by Meta; its messages stay queued, probed again later");
            }
        }
    }
}

/// What every shard's Cloud upstream shares: the client, the settings, the numbers.
pub struct CloudShared {
    client: HttpClient,
    request_timeout: Duration,
    reconcile: Duration,
    on_unresolved: OnUnresolved,
    blocked_probe: Duration,
    /// By business number (normalized: a message's `sender`).
    numbers: HashMap<String, Arc<NumberState>>,
    hub: Arc<CloudHub>,
    /// Senders an operator unblocked ([`CloudShared::unblock`]); every shard's upstream listens.
    reopened: tokio::sync::broadcast::Sender<String>,
}

impl CloudShared {
    /// Builds the node's Cloud upstream state from a checked `[cloud]` (see
    /// [`CloudConfig::resolve`]) and its resolved numbers.
    pub fn new(config: &CloudConfig, numbers: Vec<ResolvedNumber>, shards: usize) -> Result<Arc<CloudShared>, String> {
        let client = if config.http2_prior_knowledge {
            ferry_webhooks::http2_client(Vec::new())?
        } else {
            ferry_webhooks::https_client(Vec::new())?
        };
        let base = config.base_url.trim_end_matches('/');
        let mut by_sender = HashMap::new();
        let mut ids = HashMap::new();
        for n in numbers {
            let url: hyper::Uri = format!("{base}/{}/{}/messages", config.api_version, n.phone_number_id)
                .parse()
                .map_err(|e| format!("cloud.base_url `{base}`: {e}"))?;
            let authorization = format!("Bearer {}", n.token)
                .parse()
                .map_err(|_| format!("the token of {} is not a valid header value", n.phone_number_id))?;
            let rate = NonZeroU32::new(n.throughput_per_sec).ok_or("throughput_per_sec = 0")?;
            let gauge = metrics::gauge!(NUMBER_BLOCKED, "phone_number_id" => n.phone_number_id.clone());
            gauge.set(0.0);
            ids.insert(n.phone_number_id.clone(), n.phone_number.clone());
            by_sender.insert(
                n.phone_number.clone(),
                Arc::new(NumberState {
                    phone_number: n.phone_number,
                    phone_number_id: n.phone_number_id,
                    url,
                    authorization,
                    // Requests leave evenly spaced when they leave (Meta counts arrivals).
                    pacer: Pacer::new(rate.get()),
                    blocked: AtomicU32::new(0),
                    blocked_at: std::sync::Mutex::new(None),
                    gauge,
                }),
            );
        }
        Ok(Arc::new(CloudShared {
            client,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            reconcile: Duration::from_secs(config.reconcile_secs),
            on_unresolved: config.on_unresolved,
            blocked_probe: Duration::from_secs(config.blocked_probe_secs),
            numbers: by_sender,
            hub: Arc::new(CloudHub::new(shards, ids)),
            reopened: tokio::sync::broadcast::channel(64).0,
        }))
    }

    /// The hub `POST /webhooks/cloud` hands webhook events to.
    pub fn hub(&self) -> Arc<CloudHub> {
        self.hub.clone()
    }

    /// An operator's call: the number `phone_number_id` may send again now (every shard stops
    /// backing off its messages and sends the next at once; if Meta still refuses, it is blocked
    /// again). Returns the code that blocked it (None: it was not blocked), or an error naming the
    /// configured numbers when no number has that id.
    pub fn unblock(&self, phone_number_id: &str) -> Result<Option<u32>, String> {
        let Some(n) = self.numbers.values().find(|n| n.phone_number_id == phone_number_id) else {
            let mut ids: Vec<&str> = self.numbers.values().map(|n| n.phone_number_id.as_str()).collect();
            ids.sort();
            return Err(format!(
                "no [[cloud.numbers]] entry has phone_number_id {phone_number_id}; configured: {}",
                ids.join(", ")
            ));
        };
        let was = n.blocked_code();
        n.set_blocked(0);
        tracing::info!(phone_number_id, was_blocked_by = ?was, "business number unblocked by an operator");
        // No receiver: no shard loop runs (nothing to wake).
        let _ = self.reopened.send(n.phone_number.clone());
        Ok(was)
    }

    /// Every number with the code blocking it (None: sending).
    pub fn numbers(&self) -> Vec<(String, String, Option<u32>)> {
        let mut v: Vec<_> = self
            .numbers
            .values()
            .map(|n| (n.phone_number.clone(), n.phone_number_id.clone(), n.blocked_code()))
            .collect();
        v.sort();
        v
    }
}

/// Opens a shard's Cloud upstream for every loop start.
pub(crate) struct CloudConnector {
    pub(crate) shard: Arc<Shard>,
    pub(crate) shared: Arc<CloudShared>,
    pub(crate) stats: Arc<ShardDeliveryStats>,
}

impl Connect for CloudConnector {
    type Upstream = CloudUpstream;

    fn connect(&self, mut shutdown: watch::Receiver<bool>) -> (CloudUpstream, JoinHandle<()>) {
        let index = self.shard.id().index();
        // No connection to wait for (each request has its own): health shows the shard connected
        // (`/readyz`, `/v1/health`); a blocked number shows in `ferry_cloud_number_blocked`.
        self.stats.link_state.store(LinkState::Connected as u8, Ordering::Relaxed);
        let (answers_tx, answers) = mpsc::channel(8192);
        let mut upstream = CloudUpstream {
            shard_label: self.shard.id().to_string(),
            index,
            shared: self.shared.clone(),
            webhooks: self.shared.hub.take(index),
            shard: self.shard.clone(),
            reopened: self.shared.reopened.subscribe(),
            recovered: None,
            recovered_until: tokio::time::Instant::now() + self.shared.reconcile,
            answers_tx,
            answers,
            requests: JoinSet::new(),
            running: HashSet::new(),
            in_doubt: HashSet::new(),
            pending: HashMap::new(),
            next_token: 1,
            local: Vec::new(),
            raw: Vec::with_capacity(256),
        };
        upstream.load_marks();
        // Nothing runs in the background but the requests (owned by the upstream).
        let idle = tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        (upstream, idle)
    }
}

/// A queued message found with a dispatch mark at the upstream's start.
#[derive(Debug)]
enum Recovered {
    /// No status named it yet: in doubt until `recovered_until`.
    Waiting,
    /// A webhook status settled it before the core submitted it again: the answer to give.
    Settled(Outcome),
}

/// The answer of one request, from its task.
struct RequestDone {
    message_id: String,
    sender: String,
    outcome: Outcome,
}

/// One shard's Cloud upstream (see the module docs).
pub(crate) struct CloudUpstream {
    shard_label: String,
    index: usize,
    shared: Arc<CloudShared>,
    /// The shard's webhook events (`None` if another instance holds it: none arrive then).
    webhooks: Option<mpsc::Receiver<WebhookItem>>,
    /// The shard: dispatch marks are written to it before each request.
    shard: Arc<Shard>,
    /// Senders an operator unblocked (reported as [`UpstreamEvent::SenderReopened`]).
    reopened: tokio::sync::broadcast::Receiver<String>,
    /// The messages marked dispatched when this upstream started, by seq (`None` until the marks
    /// could be read: the upstream is not up before).
    recovered: Option<HashMap<u64, Recovered>>,
    /// When the recovered messages stop waiting for a status (start + `reconcile_secs`); while
    /// `recovered` is `None`, when the marks are read again.
    recovered_until: tokio::time::Instant,
    answers_tx: mpsc::Sender<RequestDone>,
    answers: mpsc::Receiver<RequestDone>,
    /// The running requests (aborted when the upstream is dropped).
    requests: JoinSet<()>,
    /// Messages with a request running.
    running: HashSet<String>,
    /// Messages whose last request ended in doubt and no status has named since.
    in_doubt: HashSet<String>,
    /// Webhook events recorded by the core once their token is acknowledged.
    pending: HashMap<EventToken, oneshot::Sender<()>>,
    next_token: EventToken,
    /// Events to report at the next `next_events` without waiting.
    local: Vec<UpstreamEvent>,
    raw: Vec<WebhookItem>,
}

impl Drop for CloudUpstream {
    fn drop(&mut self) {
        if let Some(rx) = self.webhooks.take() {
            self.shared.hub.put_back(self.index, rx);
        }
    }
}

impl Upstream for CloudUpstream {
    fn is_up(&self) -> bool {
        // Until the marks are read, nothing may be posted: a marked message must not go out
        // before it is known to be in doubt.
        self.recovered.is_some()
    }

    fn needs_prepare(&mut self, _key: &str) -> bool {
        false
    }

    fn prepare(&mut self, r: RecipientRef<'_>) {
        // Nothing to prepare; the core asks only when `needs_prepare` says so.
        self.local.push(UpstreamEvent::Prepared { key: r.key.to_owned(), result: Ok(()) });
    }

    fn invalidate(&mut self, _key: &str) {}

    fn forget(&mut self, _key: &str) {}

    fn submit(&mut self, a: Attempt<'_>) -> Submitted {
        if self.running.contains(a.message_id) {
            // Its request still runs (waiting for the pacer or the answer): that answer will do.
            return Submitted::Sent;
        }
        let seq = MessageId::decode(a.message_id).map(|k| k.seq);
        if let Some(recovered) = seq.and_then(|seq| self.recovered.as_mut()?.remove(&seq)) {
            match recovered {
                Recovered::Settled(outcome) => {
                    self.answer_now(a.message_id, outcome);
                    return Submitted::Sent;
                }
                Recovered::Waiting => {
                    // Posted (perhaps) by the previous process: in doubt like a timed-out
                    // request, for what is left of the wait since the start.
                    self.in_doubt.insert(a.message_id.to_owned());
                    let wait = self.recovered_until.saturating_duration_since(tokio::time::Instant::now());
                    if !wait.is_zero() {
                        self.answer_now(a.message_id, Outcome::InDoubt { wait });
                        return Submitted::Sent;
                    }
                }
            }
        }
        let Some(number) = self.shared.numbers.get(a.recipient.sender).cloned() else {
            let details = format!("no [[cloud.numbers]] entry for sender {}", a.recipient.sender);
            let code = ErrorCode::InvalidParameter;
            self.answer_now(a.message_id, Outcome::Failed { code: code.code(), title: code.title().into(), details });
            return Submitted::Sent;
        };
        if let Some(left) = number.blocked_for(self.shared.blocked_probe) {
            // Blocked by a refusal this shard did not see (another shard's request, or a
            // `failed` status): hold the number's messages here too until the probe is due. An
            // in-doubt message stays in doubt: it is resent (or failed) only once the number is
            // open again.
            let detail = format!("business number {} is blocked by Meta", number.phone_number_id);
            let reason = BackOffReason::RateLimited;
            self.answer_now(a.message_id, Outcome::BackOff { scope: Scope::Sender, retry_after: left, reason, detail });
            return Submitted::Sent;
        }
        if self.in_doubt.remove(a.message_id) {
            match self.shared.on_unresolved {
                OnUnresolved::Fail => {
                    metrics::counter!(IN_DOUBT_FAILED_TOTAL).increment(1);
                    let title = "In doubt: not resent".to_owned();
                    let details = format!(
                        "the send request's answer was lost and no status named the message within cloud.reconcile_secs ({} s); cloud.on_unresolved = fail",
                        self.shared.reconcile.as_secs()
                    );
                    self.answer_now(
                        a.message_id,
                        Outcome::Failed { code: codes::SOMETHING_WENT_WRONG, title, details },
                    );
                    return Submitted::Sent;
                }
                OnUnresolved::Resend => {
                    metrics::counter!(IN_DOUBT_RESENT_TOTAL).increment(1);
                    tracing::warn!(shard = %self.shard_label, id = a.message_id, "in doubt past cloud.reconcile_secs: sending it again (it may arrive twice)");
                }
            }
        }
        let Some(seq) = seq else {
            let code = ErrorCode::Internal;
            let details = format!("`{}` is not a ferry message id", a.message_id);
            self.answer_now(a.message_id, Outcome::Failed { code: code.code(), title: code.title().into(), details });
            return Submitted::Sent;
        };
        let body = match cloud_body(a.payload, a.message_id) {
            Ok(b) => b,
            Err(details) => {
                let code = ErrorCode::Internal;
                self.answer_now(
                    a.message_id,
                    Outcome::Failed { code: code.code(), title: code.title().into(), details },
                );
                return Submitted::Sent;
            }
        };
        self.running.insert(a.message_id.to_owned());
        let (shared, shard) = (self.shared.clone(), self.shard.clone());
        let tx = self.answers_tx.clone();
        let (message_id, sender) = (a.message_id.to_owned(), a.recipient.sender.to_owned());
        self.requests.spawn(async move {
            let outcome = post(&shared, &shard, seq, &number, body).await;
            let _ = tx.send(RequestDone { message_id, sender, outcome }).await;
        });
        Submitted::Sent
    }

    fn acknowledge(&mut self, tokens: Vec<EventToken>) -> Result<(), Stalled> {
        for t in tokens {
            if let Some(done) = self.pending.remove(&t) {
                let _ = done.send(());
            }
        }
        Ok(())
    }

    fn reset(&mut self, _why: &str) -> bool {
        // No connection to reset: each request has its own timeout.
        false
    }

    /// Cancel-safe: `recv_many` is, and events are translated only once it returned.
    async fn next_events(&mut self, out: &mut Vec<UpstreamEvent>) -> bool {
        while self.requests.try_join_next().is_some() {}
        if self.recovered.is_none() {
            // The marks could not be read at the start: try again, and come up once they are
            // (a deadline, not a sleep: the loop may drop this future and call again).
            tokio::time::sleep_until(self.recovered_until).await;
            self.load_marks();
            if self.recovered.is_some() {
                out.push(UpstreamEvent::Up);
            }
            return true;
        }
        if !self.local.is_empty() {
            out.append(&mut self.local);
            return true;
        }
        let mut done = Vec::new();
        let raw = &mut self.raw;
        let answers = &mut self.answers;
        let mut webhooks_closed = false;
        // A webhook receiver that is gone (another instance holds it) never yields.
        let webhooks = async {
            match self.webhooks.as_mut() {
                Some(w) => w.recv_many(raw, 256).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = answers.recv_many(&mut done, 256) => {
                if n == 0 {
                    return false;
                }
            }
            n = webhooks => webhooks_closed = n == 0,
            reopened = self.reopened.recv() => match reopened {
                Ok(sender) => out.push(UpstreamEvent::SenderReopened { sender }),
                // Missed some: reopen every number that is not blocked (harmless for the others).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for n in self.shared.numbers.values().filter(|n| n.blocked_code().is_none()) {
                        out.push(UpstreamEvent::SenderReopened { sender: n.phone_number.clone() });
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
        }
        if webhooks_closed {
            self.webhooks = None;
        }
        for d in done {
            self.on_request_done(d, out);
        }
        let raw = std::mem::take(&mut self.raw);
        for item in raw {
            self.on_webhook(item, out);
        }
        true
    }
}

/// How soon unreadable dispatch marks are read again.
const MARKS_RETRY: Duration = Duration::from_secs(1);

impl CloudUpstream {
    /// Reads the shard's dispatch marks (a small column family: the messages that had a request
    /// out when the previous upstream ended). On a read error the upstream stays down.
    fn load_marks(&mut self) {
        match crate::window::off_worker(|| self.shard.dispatch_marks()) {
            Ok(marks) => {
                if !marks.is_empty() {
                    metrics::counter!(IN_DOUBT_RECOVERED_TOTAL).increment(marks.len() as u64);
                    tracing::warn!(shard = %self.shard_label, count = marks.len(), wait_secs = self.shared.reconcile.as_secs(), "messages that may have been posted before the restart are in doubt");
                }
                self.recovered_until = tokio::time::Instant::now() + self.shared.reconcile;
                self.recovered = Some(marks.into_iter().map(|(seq, _)| (seq, Recovered::Waiting)).collect());
            }
            Err(e) => {
                tracing::error!(shard = %self.shard_label, error = %e, "cannot read the dispatch marks; nothing is sent until they are read");
                // While no marks are loaded this is when they are read again.
                self.recovered_until = tokio::time::Instant::now() + MARKS_RETRY;
            }
        }
    }

    /// A webhook settled `message_id`: if it is a recovered message the core has not submitted
    /// again yet, remember the answer for that submit.
    fn settle_recovered(&mut self, message_id: &str, outcome: &Outcome) {
        let Some(seq) = MessageId::decode(message_id).map(|k| k.seq) else { return };
        if let Some(r) = self.recovered.as_mut().and_then(|m| m.get_mut(&seq)) {
            if matches!(r, Recovered::Waiting) && matches!(outcome, Outcome::Accepted { .. }) {
                metrics::counter!(IN_DOUBT_RESOLVED_TOTAL).increment(1);
            }
            *r = Recovered::Settled(outcome.clone());
        }
    }

    fn answer_now(&mut self, message_id: &str, outcome: Outcome) {
        self.local.push(UpstreamEvent::Answer { message_id: message_id.to_owned(), attempt: 0, outcome });
    }

    fn on_request_done(&mut self, d: RequestDone, out: &mut Vec<UpstreamEvent>) {
        self.running.remove(&d.message_id);
        match &d.outcome {
            Outcome::InDoubt { .. } => {
                self.in_doubt.insert(d.message_id.clone());
            }
            Outcome::Accepted { .. } => {
                self.in_doubt.remove(&d.message_id);
                if let Some(n) = self.shared.numbers.get(&d.sender) {
                    n.set_blocked(0);
                }
            }
            _ => {}
        }
        out.push(UpstreamEvent::Answer { message_id: d.message_id, attempt: 0, outcome: d.outcome });
    }

    fn token(&mut self, done: oneshot::Sender<()>) -> EventToken {
        let t = self.next_token;
        self.next_token += 1;
        self.pending.insert(t, done);
        t
    }

    fn on_webhook(&mut self, item: WebhookItem, out: &mut Vec<UpstreamEvent>) {
        let token = self.token(item.done);
        match item.event {
            WebhookEvent::Inbound(message) => out.push(UpstreamEvent::Inbound { message, token }),
            WebhookEvent::Status(s) => self.on_status(s, token, out),
        }
    }

    /// A `failed` status whose code is about the number, not the message, acts on the number as
    /// a refused request does (`request.rs`): 130429 pauses it in its pacer, across every shard,
    /// and the message (if still held) is resent in the next free slot; a number-level code (190,
    /// 131031, 131042, ...) blocks it (`/v1/health`, `ferry_cloud_number_blocked`) until a probe
    /// or an operator's unblock. Without it, only this shard's gate for the sender backed off.
    fn number_level_status(&self, phone_number_id: &str, code: u32, outcome: Outcome) -> Outcome {
        let Some(number) = self.shared.numbers.values().find(|n| n.phone_number_id == phone_number_id) else {
            return outcome;
        };
        match outcome {
            Outcome::BackOff { scope: Scope::Sender, retry_after, reason: BackOffReason::RateLimited, .. }
                if retry_after.is_zero() =>
            {
                let pause = number.pacer.refused(tokio::time::Instant::now());
                tracing::debug!(%phone_number_id, ?pause, "130429 in a failed status: the number pauses");
                Outcome::Resend
            }
            Outcome::BackOff { scope: Scope::Sender, .. } => {
                number.set_blocked(code);
                outcome
            }
            outcome => outcome,
        }
    }

    fn on_status(&mut self, mut s: StatusReport, token: EventToken, out: &mut Vec<UpstreamEvent>) {
        if s.message_id.is_empty() {
            // No marker: match by wamid (recorded with the message's `sent`).
            let found = match crate::window::off_worker(|| self.shard.seq_for_upstream_id(&s.wamid)) {
                Ok(found) => found,
                Err(e) => {
                    // Not acknowledged: Meta sends the webhook again.
                    tracing::error!(shard = %self.shard_label, wamid = %s.wamid, error = %e, "cannot look up a status's wamid");
                    self.pending.remove(&token);
                    return;
                }
            };
            let Some(seq) = found else {
                metrics::counter!(STATUSES_UNMATCHED_TOTAL).increment(1);
                tracing::warn!(shard = %self.shard_label, wamid = %s.wamid, "cloud status matches no message (no marker, unknown wamid): ignored");
                out.push(UpstreamEvent::Unrecognized { token });
                return;
            };
            let key = MessageKey { shard: self.shard.id(), space: self.shard.id_space(), seq };
            s.message_id = MessageId::encode(key).as_str().to_owned();
        }
        let status = match s.status {
            StatusKind::Sent => Some(MessageStatus::Sent),
            StatusKind::Delivered => Some(MessageStatus::Delivered),
            StatusKind::Read | StatusKind::Played => Some(MessageStatus::Read),
            StatusKind::Failed | StatusKind::Other => None,
        };
        if let Some(status) = status {
            // Meta has the message: settle it if the core still holds it (in flight, in doubt,
            // or waiting to be resent), then record the status; one batch, acked after it.
            if self.in_doubt.remove(&s.message_id) {
                metrics::counter!(IN_DOUBT_RESOLVED_TOTAL).increment(1);
            }
            let upstream_id = Some(s.wamid.clone()).filter(|w| !w.is_empty());
            let accepted = Outcome::Accepted { upstream_id, at_ms: s.at_ms, duplicate: false };
            self.settle_recovered(&s.message_id, &accepted);
            out.push(UpstreamEvent::Answer { message_id: s.message_id.clone(), attempt: 0, outcome: accepted });
            out.push(UpstreamEvent::Status { message_id: s.message_id, status, at_ms: s.at_ms, token });
            return;
        }
        if s.status == StatusKind::Failed {
            let (code, title, details) = s.error.unwrap_or((codes::SOMETHING_WENT_WRONG, String::new(), String::new()));
            self.in_doubt.remove(&s.message_id);
            let outcome = outcome_for(&self.shared, code, title.clone(), details.clone(), None, 400);
            let outcome = self.number_level_status(&s.phone_number_id, code, outcome);
            if matches!(outcome, Outcome::Failed { .. }) {
                self.settle_recovered(&s.message_id, &outcome);
            }
            // The core fails the message through this answer if it still holds it; a message
            // already settled `sent` fails through the late failure (one of them applies).
            out.push(UpstreamEvent::Answer { message_id: s.message_id.clone(), attempt: 0, outcome });
            let at_ms = s.at_ms;
            out.push(UpstreamEvent::LateFailure { message_id: s.message_id, code, title, details, at_ms, token });
            return;
        }
        out.push(UpstreamEvent::Unrecognized { token });
    }
}
