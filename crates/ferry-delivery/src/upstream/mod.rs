//! The upstream seam: what the delivery core (queue, window, FIFO per recipient, retries, TTL,
//! settle) asks of the service that takes messages from it, and what comes back.
//!
//! The core never sees a frame, a session or a connection. It asks the upstream to **prepare** a
//! recipient (the chat upstream: load or set up an encryption session with reserved counters),
//! **submits** one attempt at a time, and reads [`UpstreamEvent`]s: the answer to an attempt as a
//! plain [`Outcome`], the end of a preparation, statuses (receipts) and inbound user messages,
//! and the connection going up or down. Everything the core writes to the shard it derives from
//! these facts (`settle.rs`); nothing upstream-specific is stored.
//!
//! One upstream per shard loop, owned by the loop's task and called only from it (no locks): the
//! synchronous calls must not block (no disk, no network; start a task and report through
//! [`Upstream::next_events`]). [`Connect`] opens a fresh one for every (re)start of the loop.
//!
//! The outcomes and what the core does with each (see `ARCHITECTURE.md`, "the upstream seam"):
//! - [`Outcome::Accepted`]: settled `sent` (with the upstream's id, when it has one).
//! - [`Outcome::Failed`]: settled `failed` with the code, title and details given.
//! - [`Outcome::BackOff`]: the recipient, the sender or the whole upstream ([`Scope`]) waits
//!   `rate_limit_base_ms × 4^X`, at least the hint; the message goes back to the front of its FIFO.
//! - [`Outcome::Retry`]: exponential backoff with jitter for the recipient, then sent again.
//! - [`Outcome::Reprepare`]: [`Upstream::invalidate`], prepare again, send again.
//! - [`Outcome::InDoubt`]: the attempt may have been taken: not sent again for `wait`, still
//!   occupying its recipient's in-flight slot; a later answer (an upstream status reported as an
//!   `Answer` with attempt 0) settles it, silence resends it.
//! - [`Outcome::Resend`]: no verdict at all: sent again at once.

use std::future::Future;
use std::time::Duration;

use ferry_model::{ErrorCode, MessageStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) mod chat;
pub mod cloud;

/// An upstream's opaque handle of an event it wants acknowledged once the core recorded it
/// durably (the chat upstream: a receipt id).
pub type EventToken = u64;

/// A recipient of one business number: the unit of ordering, preparation and backoff.
#[derive(Debug, Clone, Copy)]
pub struct RecipientRef<'a> {
    /// `sender ++ 0 ++ wa_id`: the key the core uses for this recipient in every call.
    pub key: &'a str,
    /// The business number (sender) the messages are from.
    pub sender: &'a str,
    /// The recipient's normalized wa_id.
    pub wa_id: &'a str,
}

/// One attempt to hand a message to the upstream.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub recipient: RecipientRef<'a>,
    /// ferry's message id (`wamid.…`); answers name it.
    pub message_id: &'a str,
    /// JSON of `ferry_model::message::OutboundMessage`.
    pub payload: &'a [u8],
    /// 1 for the first attempt; answers echo it (0 in an answer: "the latest").
    pub attempt: u32,
}

/// The upstream takes no more now (a full outgoing buffer): the core resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled(pub &'static str);

/// What became of a [`Upstream::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Handed over; its answer comes as an [`UpstreamEvent::Answer`] (or does not: the core's
    /// ack timeout sends it again).
    Sent,
    /// The recipient's preparation is no longer usable (the upstream dropped it); nothing was
    /// sent. The core prepares the recipient again.
    Reprepare,
    /// The connection went away under the submit; an [`UpstreamEvent::Down`] follows, and the
    /// attempt counts as in flight until then.
    Closed,
    /// Taken as in flight, but the upstream stalled: the core resets it ([`Upstream::reset`]).
    Stalled(Stalled),
}

/// Who waits after a [`Outcome::BackOff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This recipient of this sender (a pair rate limit, a per-user limit).
    Recipient,
    /// Every recipient of the attempt's sender (a business number's throughput limit).
    Sender,
    /// Everything sent through this upstream.
    Upstream,
}

/// Why the upstream asked to back off (counted apart; the second may fail the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackOffReason {
    /// A rate limit (`ferry_delivery` counts it in `rate_limited`).
    RateLimited,
    /// The per-user marketing limit: more than `delivery.marketing_limit_retries` in a row fail
    /// the message (131049).
    MarketingLimited,
}

/// The upstream's verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream has the message: it leaves the queue as `sent`.
    Accepted {
        /// The upstream's own id of the message, when it has one (stored with `sent`:
        /// `upstream_message_id` of GetMessage).
        upstream_id: Option<String>,
        /// When the upstream took it (else the node's clock).
        at_ms: Option<i64>,
        /// The upstream already had it (a resend).
        duplicate: bool,
    },
    /// It will never be delivered: it leaves the queue as `failed`.
    Failed { code: u32, title: String, details: String },
    /// Wait before sending to `scope` again: at least `retry_after` (zero: no hint), else the
    /// core's 4^X rate-limit backoff.
    BackOff { scope: Scope, retry_after: Duration, reason: BackOffReason, detail: String },
    /// A temporary failure: send again after the recipient's exponential backoff.
    Retry { detail: String },
    /// The upstream does not know the recipient's preparation (an unknown session): prepare
    /// again, then send again; in a row they back off.
    Reprepare,
    /// The attempt may or may not have been taken (a request without idempotency that timed out
    /// or lost its connection): do not send again for `wait`; an answer meanwhile decides.
    InDoubt { wait: Duration },
    /// No verdict: send again at once.
    Resend,
}

/// A preparation that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareFailure {
    /// The recipient cannot be reached at all: every waiting message of theirs fails with this.
    Permanent { code: u32, title: String, details: String },
    /// Try again after the recipient's backoff.
    Temporary(String),
}

impl PrepareFailure {
    /// The recipient does not exist upstream (1013).
    pub fn recipient_invalid(details: String) -> PrepareFailure {
        PrepareFailure::Permanent {
            code: ErrorCode::UserNotValid.code(),
            title: RECIPIENT_INVALID_TITLE.to_owned(),
            details,
        }
    }
}

/// The title of a 1013 failure.
pub const RECIPIENT_INVALID_TITLE: &str = "Recipient is not a valid WhatsApp user";

/// A message a user sent to a business number, as the upstream reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The upstream's id of the message.
    pub id: String,
    /// The user's wa_id.
    pub from: String,
    /// The business number.
    pub to: String,
    /// When the user sent it (else the node's clock).
    pub at_ms: Option<i64>,
    pub message_type: String,
    pub text_body: String,
    pub profile_name: String,
}

/// What the upstream reports to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEvent {
    /// Attempts can be submitted (again).
    Up,
    /// The connection ended: every attempt in flight may or may not have arrived; the core sends
    /// them again once `Up` (an upstream that cannot dedup answers each with `InDoubt` instead).
    Down { reason: String },
    /// The answer to attempt `attempt` (0: the latest) of `message_id`.
    Answer { message_id: String, attempt: u32, outcome: Outcome },
    /// A [`Upstream::prepare`] ended.
    Prepared { key: String, result: Result<(), PrepareFailure> },
    /// A status of a message (`delivered`, `read`); `token` is acknowledged once it is durable.
    Status { message_id: String, status: MessageStatus, at_ms: Option<i64>, token: EventToken },
    /// The upstream reported that a message it had taken failed after all (a Cloud API `failed`
    /// status after the 200): recorded `sent` → `failed` with its code even when the message
    /// already left the queue; `token` is acknowledged once that is durable.
    LateFailure { message_id: String, code: u32, title: String, details: String, at_ms: Option<i64>, token: EventToken },
    /// A user's message; `token` is acknowledged once it is durable in the user's shard.
    Inbound { message: Inbound, token: EventToken },
    /// Nothing to record: acknowledge `token` with this turn's events.
    Unrecognized { token: EventToken },
    /// The sender may be sent to again now (an operator lifted its block): its back-off ends and
    /// its streak starts again at X = 0.
    SenderReopened { sender: String },
}

/// The upstream of one shard loop. See the module docs.
pub trait Upstream: Send + 'static {
    /// Whether attempts can be submitted now.
    fn is_up(&self) -> bool;

    /// Whether the recipient must be prepared before its next submit.
    fn needs_prepare(&mut self, key: &str) -> bool;

    /// Starts preparing the recipient in the background; ends with one
    /// [`UpstreamEvent::Prepared`]. The core starts at most one per recipient at a time.
    fn prepare(&mut self, recipient: RecipientRef<'_>);

    /// The upstream answered [`Outcome::Reprepare`] for the recipient's current attempt: drop
    /// what its preparation holds, so the next one starts afresh.
    fn invalidate(&mut self, key: &str);

    /// The recipient left the core's memory (nothing loaded, nothing blocked): forget any
    /// per-recipient state that is not a cache.
    fn forget(&mut self, key: &str);

    /// Hands one attempt over without waiting.
    fn submit(&mut self, attempt: Attempt<'_>) -> Submitted;

    /// Acknowledges events whose records are durable (unsent ones are pushed again by the
    /// upstream: harmless).
    fn acknowledge(&mut self, tokens: Vec<EventToken>) -> Result<(), Stalled>;

    /// Ends the current connection (the upstream stopped answering or taking attempts); true
    /// when there was one. The core then treats every attempt in flight as after a `Down`.
    fn reset(&mut self, why: &str) -> bool;

    /// Waits for the next events and appends them to `out`; false when the upstream is gone for
    /// good (shutdown).
    ///
    /// Must be cancel-safe: the loop polls it in a `select!`, so dropping the future before it
    /// is ready loses no event.
    fn next_events(&mut self, out: &mut Vec<UpstreamEvent>) -> impl Future<Output = bool> + Send;
}

/// Opens the upstream of a shard loop, for every (re)start.
pub(crate) trait Connect: Send + Sync + 'static {
    type Upstream: Upstream;
    /// A fresh upstream, and its background task (the supervisor aborts and joins it after the
    /// loop ended). It stops when `shutdown` turns true.
    fn connect(&self, shutdown: watch::Receiver<bool>) -> (Self::Upstream, JoinHandle<()>);
}
