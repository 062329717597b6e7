//! The hub between `POST /webhooks/cloud` (ferry-http) and each shard's Cloud upstream: one
//! channel per shard, created once per node (the receivers survive loop restarts). The HTTP
//! handler hands every status and inbound message of a verified webhook to the shard that owns
//! it and answers Meta 200 only once each one's [`WebhookItem::done`] fired, i.e. once the shard
//! recorded it durably (the upstream fires it from `Upstream::acknowledge`).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::upstream::Inbound;

/// A status of an outbound message, as Meta's webhook reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// ferry's message id (the `biz_opaque_callback_data` marker ferry sent).
    pub message_id: String,
    /// Meta's wamid of the message.
    pub wamid: String,
    /// `sent`, `delivered`, `read`, `failed`, ...
    pub status: ferry_cloud::StatusKind,
    pub at_ms: Option<i64>,
    /// Of a `failed` status: the first error's code, title and details.
    pub error: Option<(u32, String, String)>,
    /// Meta's id of the business number the webhook is about (its `metadata`).
    pub phone_number_id: String,
}

/// What a webhook carried for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    Status(StatusReport),
    Inbound(Inbound),
}

/// One event and the signal that it is durable.
#[derive(Debug)]
pub struct WebhookItem {
    pub event: WebhookEvent,
    pub done: oneshot::Sender<()>,
}

/// Events queued per shard before the HTTP handler waits (then Meta's POST waits too).
const PER_SHARD: usize = 8192;

/// See the module docs.
pub struct CloudHub {
    senders: Vec<mpsc::Sender<WebhookItem>>,
    receivers: Vec<Mutex<Option<mpsc::Receiver<WebhookItem>>>>,
    /// Meta's phone number id → the business number (normalized), for inbound messages.
    numbers: HashMap<String, String>,
}

impl CloudHub {
    /// A hub for `shards` shards; `numbers` maps phone number ids to business numbers.
    pub fn new(shards: usize, numbers: HashMap<String, String>) -> CloudHub {
        let (senders, receivers) = (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(PER_SHARD);
                (tx, Mutex::new(Some(rx)))
            })
            .unzip();
        CloudHub { senders, receivers, numbers }
    }

    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    /// The business number of Meta's phone number id, if configured.
    pub fn business_number(&self, phone_number_id: &str) -> Option<&str> {
        self.numbers.get(phone_number_id).map(String::as_str)
    }

    /// Queues `event` for `shard`; the receiver resolves once it is durable (and errs if the
    /// upstream went away first: answer Meta with an error so it retries).
    ///
    /// Cancel-safe: dropping it before it queued queues nothing.
    pub async fn deliver(&self, shard: usize, event: WebhookEvent) -> Option<oneshot::Receiver<()>> {
        let (done, wait) = oneshot::channel();
        self.senders.get(shard)?.send(WebhookItem { event, done }).await.ok()?;
        Some(wait)
    }

    /// The shard's receiver, taken by its upstream while it runs.
    pub(crate) fn take(&self, shard: usize) -> Option<mpsc::Receiver<WebhookItem>> {
        self.receivers.get(shard)?.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Gives the receiver back (the upstream ended), for the next start of the shard's loop.
    pub(crate) fn put_back(&self, shard: usize, rx: mpsc::Receiver<WebhookItem>) {
        if let Some(slot) = self.receivers.get(shard) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
        }
    }
}
