//! The webhook side of the reference Cloud API server: statuses and inbound messages are scheduled
//! at a due time ([`WebhookSender::schedule`]); one scheduler task keeps them in a heap by due time
//! and, when they are due, groups statuses of the same number into POSTs of up to `webhook_batch`
//! (inbound messages go one per POST, as Meta sends them) and hands each POST to its own task
//! (at most `webhook_concurrency` in flight). Every body is signed with the app secret
//! (`X-Hub-Signature-256`). A POST that fails (connection error, timeout, non-2xx) is scheduled
//! again with doubling backoff (from `webhook_retry_ms` up to 60 s) until the server stops, as
//! Meta retries; nothing is dropped before that.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_cloud::{ChangeValue, InboundContact, InboundMessage, Metadata, Status, WebhookPayload};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::CloudSimConfig;
use crate::stats::{Counters, bump};

/// Longest wait between two attempts of one POST.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What one webhook carries.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Status(Status),
    Inbound { contact: InboundContact, message: InboundMessage },
}

/// One POST-to-be: items of one business number, due at `due`.
struct Scheduled {
    due: Instant,
    order: u64,
    metadata: Arc<Metadata>,
    items: Vec<Item>,
    attempt: u32,
}

impl Scheduled {
    fn is_inbound(&self) -> bool {
        matches!(self.items.first(), Some(Item::Inbound { .. }))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap's top is the earliest due.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// Where the request path schedules webhooks. Without a webhook URL it drops everything.
pub(crate) struct WebhookSender {
    queue: Option<mpsc::UnboundedSender<Scheduled>>,
    order: AtomicU64,
    counters: Arc<Counters>,
}

impl WebhookSender {
    /// Schedules `item` about the number of `metadata` for `due`.
    pub(crate) fn schedule(&self, due: Instant, metadata: &Arc<Metadata>, item: Item) {
        let Some(queue) = &self.queue else { return };
        bump(&self.counters.webhooks_pending, 1);
        let order = self.order.fetch_add(1, Ordering::Relaxed);
        let scheduled = Scheduled { due, order, metadata: metadata.clone(), items: vec![item], attempt: 0 };
        if queue.send(scheduled).is_err() {
            // The scheduler has stopped (shutdown): nothing will be posted any more.
            self.counters.webhooks_pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What every POST task needs.
struct Poster {
    url: hyper::Uri,
    secret: Vec<u8>,
    business_account_id: String,
    timeout: Duration,
    retry: Duration,
    client: HttpClient,
    permits: Semaphore,
    counters: Arc<Counters>,
    requeue: mpsc::UnboundedSender<Scheduled>,
    order: Arc<AtomicU64>,
}

/// Starts the scheduler (when `config.webhook_url` is set) and returns the sender side.
pub(crate) fn start(
    config: &CloudSimConfig,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) -> (WebhookSender, Option<tokio::task::JoinHandle<()>>) {
    let Some(url) = config.webhook_url.as_deref() else {
        return (WebhookSender { queue: None, order: AtomicU64::new(0), counters }, None);
    };
    // `validate` has parsed it.
    let url: hyper::Uri = url.parse().expect("validated webhook url");
    let (queue, incoming) = mpsc::unbounded_channel();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let poster = Arc::new(Poster {
        url,
        secret: config.app_secret.as_bytes().to_vec(),
        business_account_id: config.business_account_id.clone(),
        timeout: Duration::from_millis(config.webhook_timeout_ms),
        retry: Duration::from_millis(config.webhook_retry_ms),
        client: Client::builder(TokioExecutor::new()).build(connector),
        permits: Semaphore::new(config.webhook_concurrency),
        counters: counters.clone(),
        requeue: queue.clone(),
        order: Arc::new(AtomicU64::new(1 << 62)),
    });
    let task = tokio::spawn(run_scheduler(incoming, poster, config.webhook_batch, shutdown));
    (WebhookSender { queue: Some(queue), order: AtomicU64::new(0), counters }, Some(task))
}

/// The scheduler: a heap by due time, drained into POST tasks as items fall due.
///
/// Cancel safety: it is a task's whole body; it ends at shutdown and drops what is still pending.
async fn run_scheduler(
    mut incoming: mpsc::UnboundedReceiver<Scheduled>,
    poster: Arc<Poster>,
    batch: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heap = BinaryHeap::<Scheduled>::new();
    loop {
        let next_due = heap.peek().map(|s| s.due);
        tokio::select! {
            received = incoming.recv() => {
                let Some(first) = received else { return };
                heap.push(first);
                while let Ok(more) = incoming.try_recv() {
                    heap.push(more);
                }
            }
            () = sleep_until_due(next_due) => {
                let now = Instant::now();
                let mut due = Vec::new();
                while heap.peek().is_some_and(|s| s.due <= now) {
                    due.extend(heap.pop());
                }
                for post in group(due, batch) {
                    tokio::spawn(poster.clone().post(post));
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Groups due items into POSTs: statuses of one number together, up to `batch` per POST, in due
/// order; each inbound message alone.
fn group(due: Vec<Scheduled>, batch: usize) -> Vec<Scheduled> {
    let mut posts: Vec<Scheduled> = Vec::new();
    for s in due {
        let open = posts.iter_mut().rev().find(|p| !p.is_inbound() && p.metadata == s.metadata);
        match open {
            Some(p) if !s.is_inbound() && p.items.len() + s.items.len() <= batch => p.items.extend(s.items),
            _ => posts.push(s),
        }
    }
    posts
}

impl Poster {
    /// POSTs one batch; on failure schedules it again with backoff.
    async fn post(self: Arc<Self>, mut post: Scheduled) {
        let Ok(_permit) = self.permits.acquire().await else { return };
        let mut value = ChangeValue::new(Metadata::clone(&post.metadata));
        for item in &post.items {
            match item {
                Item::Status(status) => value.statuses.push(status.clone()),
                Item::Inbound { contact, message } => {
                    value.contacts.push(contact.clone());
                    value.messages.push(message.clone());
                }
            }
        }
        let body = serde_json::to_vec(&WebhookPayload::messages_change(&self.business_account_id, value))
            .expect("webhook payloads always serialize");
        let signature = ferry_cloud::sign(&self.secret, &body);
        let outcome = self.send(body, &signature).await;
        let count = post.items.len() as u64;
        match outcome {
            Ok(()) => {
                bump(&self.counters.posts_delivered, 1);
                let inbound = post.items.iter().filter(|i| matches!(i, Item::Inbound { .. })).count() as u64;
                bump(&self.counters.inbound_delivered, inbound);
                bump(&self.counters.statuses_delivered, count - inbound);
                self.counters.webhooks_pending.fetch_sub(count, Ordering::Relaxed);
            }
            Err(error) => {
                bump(&self.counters.posts_failed, 1);
                tracing::debug!(%error, attempt = post.attempt, "cloudsim webhook post failed; scheduled again");
                let backoff = self.retry.saturating_mul(1u32 << post.attempt.min(16)).min(MAX_RETRY);
                post.attempt += 1;
                post.due = Instant::now() + backoff;
                post.order = self.order.fetch_add(1, Ordering::Relaxed);
                if self.requeue.send(post).is_err() {
                    self.counters.webhooks_pending.fetch_sub(count, Ordering::Relaxed);
                }
            }
        }
    }

    async fn send(&self, body: Vec<u8>, signature: &str) -> Result<(), String> {
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(ferry_cloud::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        // Read the body so the connection can be reused.
        let _ = tokio::time::timeout_at(deadline, response.into_body().collect()).await;
        if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_cloud::StatusKind;

    fn status(id: &str) -> Item {
        Item::Status(Status {
            id: id.into(),
            status: StatusKind::Sent,
            timestamp: "1".into(),
            recipient_id: "16315551234".into(),
            biz_opaque_callback_data: None,
            conversation: None,
            pricing: None,
            errors: Vec::new(),
        })
    }

    fn scheduled(order: u64, metadata: &Arc<Metadata>, item: Item) -> Scheduled {
        Scheduled { due: Instant::now(), order, metadata: metadata.clone(), items: vec![item], attempt: 0 }
    }

    #[tokio::test]
    async fn group_batches_statuses_per_number_and_inbound_alone() {
        let a = Arc::new(Metadata { display_phone_number: "1".into(), phone_number_id: "A".into() });
        let b = Arc::new(Metadata { display_phone_number: "2".into(), phone_number_id: "B".into() });
        let inbound = Item::Inbound {
            contact: InboundContact { profile: Default::default(), wa_id: "16315551234".into() },
            message: InboundMessage {
                from: "16315551234".into(),
                id: "wamid.in".into(),
                timestamp: "1".into(),
                kind: "text".into(),
                text: None,
                other: Default::default(),
            },
        };
        let due = vec![
            scheduled(0, &a, status("1")),
            scheduled(1, &b, status("2")),
            scheduled(2, &a, status("3")),
            scheduled(3, &a, inbound.clone()),
            scheduled(4, &a, inbound),
            scheduled(5, &a, status("4")),
        ];
        let posts = group(due, 2);
        let shape: Vec<(String, usize, bool)> =
            posts.iter().map(|p| (p.metadata.phone_number_id.clone(), p.items.len(), p.is_inbound())).collect();
        assert_eq!(
            shape,
            vec![
                ("A".into(), 2, false),
                ("B".into(), 1, false),
                ("A".into(), 1, true),
                ("A".into(), 1, true),
                ("A".into(), 1, false),
            ]
        );
    }
}
