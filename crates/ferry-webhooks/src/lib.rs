//! ferry's status callbacks: stage "tell the caller" of the pipeline.
//!
//! Every forward status change (sent, delivered, read, failed) is written by the shard's writer to
//! the shard's status-event log (`outbox` column family) in the same synced batch as the status
//! itself (`ferry-shard`, `settle`). [`WebhookEngine`] runs one sender per shard that reads that log
//! in order from the shard's webhook cursor, POSTs each event to the configured URL (On-Prem or
//! Cloud shape, [`payload`]), signed with `X-Hub-Signature-256: sha256=<HMAC-SHA256(body, secret)>`
//! when a secret is set, and moves the cursor past it only after the receiver answered 2xx.
//! Failures are retried forever with linear backoff (3 s steps, capped at 15 minutes, as the
//! reference does).
//!
//! Invariants (written as absences):
//! - No cursor moves past a callback before its receiver answered 2xx, and retention never drops an
//!   event at or past the cursor; a crash before the cursor is durable sends the callback again
//!   (same message id and status: receivers can dedup).
//! - No status of a message is reported before an earlier one: each shard's sender posts its
//!   outbox strictly in order, one request at a time (several shards post concurrently, at most
//!   `max_concurrent_requests` in all).
//!
//! Limits of this first version: `http://` URLs only (TLS is next); one request in flight per
//! shard.

pub mod payload;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_shard::Shard;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub use payload::Shape;

/// Longest time between two writes of a shard's webhook cursor while callbacks flow.
const CURSOR_PERSIST_EVERY: Duration = Duration::from_millis(100);

/// Webhook settings (config section `[webhook]`; flags `--webhook-url`, `--webhook-secret`,
/// `--webhook-shape`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where callbacks are POSTed (`http://HOST:PORT/PATH`). Unset: no callbacks (and nothing is
    /// written to the outbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// App secret for `X-Hub-Signature-256`. Unset: requests are not signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `onprem` (`{"statuses":[...]}`) or `cloud` (`{"object":"whatsapp_business_account",...}`).
    pub shape: Shape,
    /// Linear backoff step after a failed POST (ms): 1×, 2×, 3×, ... this, up to `backoff_max_ms`.
    pub backoff_step_ms: u64,
    /// Longest wait between retries (ms); retries go on forever at this interval.
    pub backoff_max_ms: u64,
    /// Requests in flight at once over all shards.
    pub max_concurrent_requests: usize,
    /// Statuses per POST (the reference sends 1).
    pub max_statuses_per_post: usize,
    /// A request with no answer after this long counts as failed (ms).
    pub request_timeout_ms: u64,
    /// `entry[].id` of the Cloud shape (the WhatsApp Business Account id).
    pub business_account_id: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: None,
            shape: Shape::Onprem,
            backoff_step_ms: 3_000,
            backoff_max_ms: 900_000,
            max_concurrent_requests: 6,
            max_statuses_per_post: 1,
            request_timeout_ms: 10_000,
            business_account_id: "0".into(),
        }
    }
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            let uri: hyper::Uri =
                url.parse().map_err(|e| format!("webhook.url `{url}`: {e}; expected http://HOST:PORT/PATH"))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    return Err(format!("webhook.url `{url}`: https is not supported yet; expected an http:// URL"));
                }
                _ => return Err(format!("webhook.url `{url}`: expected an http:// URL")),
            }
        }
        for (name, v) in [
            ("webhook.backoff_step_ms", self.backoff_step_ms),
            ("webhook.max_concurrent_requests", self.max_concurrent_requests as u64),
            ("webhook.max_statuses_per_post", self.max_statuses_per_post as u64),
            ("webhook.request_timeout_ms", self.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} is 0: expected at least 1"));
            }
        }
        if self.backoff_max_ms < self.backoff_step_ms {
            return Err("webhook.backoff_max_ms must be at least webhook.backoff_step_ms".into());
        }
        Ok(())
    }

    /// Short backoff for tests.
    pub fn for_test(url: String) -> Self {
        WebhookConfig { url: Some(url), backoff_step_ms: 20, backoff_max_ms: 200, ..WebhookConfig::default() }
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Hub-Signature-256`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Counters of the senders.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: std::sync::atomic::AtomicU64,
    pub failed_attempts: std::sync::atomic::AtomicU64,
}

/// The senders of a node, one per shard.
pub struct WebhookEngine {
    stats: Arc<WebhookStats>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl WebhookEngine {
    /// Starts a sender per shard. The shards must have been opened with `ShardConfig::callbacks`.
    pub fn start(shards: &[Arc<Shard>], config: WebhookConfig) -> Result<WebhookEngine, String> {
        config.validate()?;
        let url: hyper::Uri =
            config.url.clone().ok_or("webhook.url is not set")?.parse().map_err(|e| format!("{e}"))?;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let permits = Arc::new(Semaphore::new(config.max_concurrent_requests));
        let stats = Arc::new(WebhookStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let config = Arc::new(config);
        let tasks = shards
            .iter()
            .map(|shard| {
                let sender = Sender {
                    shard: shard.clone(),
                    client: client.clone(),
                    url: url.clone(),
                    config: config.clone(),
                    permits: permits.clone(),
                    stats: stats.clone(),
                };
                tokio::spawn(sender.run(shutdown_rx.clone()))
            })
            .collect();
        Ok(WebhookEngine { stats, shutdown, tasks })
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Stops the senders; undelivered callbacks stay in the status-event logs for the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Sender {
    shard: Arc<Shard>,
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    config: Arc<WebhookConfig>,
    permits: Arc<Semaphore>,
    stats: Arc<WebhookStats>,
}

impl Sender {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.shard.subscribe_events();
        let mut cursor = self.shard.webhook_cursor();
        // The cursor is persisted at most every CURSOR_PERSIST_EVERY (and when idle or stopping),
        // not per POST: it costs a write in the shard's group commit. A crash re-sends what was
        // accepted since the last persisted cursor (receivers dedup by message id and status).
        let mut persisted = cursor;
        let mut persisted_at = tokio::time::Instant::now();
        let mut failures = 0u64;
        loop {
            if *shutdown.borrow() {
                self.persist(&mut persisted, cursor);
                return;
            }
            let until = *events.borrow_and_update();
            let batch = match self.shard.scan_outbox(cursor, until, self.config.max_statuses_per_post) {
                Ok(batch) => one_post(batch),
                Err(e) => {
                    tracing::error!(shard = %self.shard.id(), error = %e, "cannot read the status events");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                cursor = cursor.max(until);
                self.persist(&mut persisted, cursor);
                tokio::select! {
                    _ = events.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            match self.post(&batch).await {
                Ok(()) => {
                    failures = 0;
                    self.stats.delivered.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    cursor = batch.last().map_or(cursor, |(seq, _)| seq + 1);
                    self.shard.note_webhook_progress(cursor);
                    if persisted_at.elapsed() >= CURSOR_PERSIST_EVERY {
                        self.persist(&mut persisted, cursor);
                        persisted_at = tokio::time::Instant::now();
                    }
                }
                Err(reason) => {
                    failures += 1;
                    self.stats.failed_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = (self.config.backoff_step_ms.saturating_mul(failures)).min(self.config.backoff_max_ms);
                    tracing::warn!(shard = %self.shard.id(), reason, retry_in_ms = wait, "webhook refused or unreachable");
                    self.persist(&mut persisted, cursor);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Writes the cursor to the shard (joining its next group commit) if it moved; does not wait.
    fn persist(&self, persisted: &mut u64, cursor: u64) {
        if cursor <= *persisted {
            return;
        }
        *persisted = cursor;
        match self.shard.advance_webhook_cursor(cursor) {
            Ok(durable) => {
                let shard = self.shard.id();
                tokio::spawn(async move {
                    if let Err(e) = durable.await {
                        tracing::warn!(%shard, error = %e, "webhook cursor not persisted");
                    }
                });
            }
            Err(e) => tracing::warn!(shard = %self.shard.id(), error = %e, "webhook cursor not persisted"),
        }
    }

    async fn post(&self, batch: &[(u64, ferry_shard::CallbackRecord)]) -> Result<(), String> {
        let (shape, account) = (self.config.shape, &self.config.business_account_id);
        let body = if batch.first().is_some_and(|(_, r)| r.kind == ferry_shard::CALLBACK_INBOUND) {
            let records: Vec<&ferry_shard::CallbackRecord> = batch.iter().map(|(_, r)| r).collect();
            payload::inbound_body(shape, account, &records).to_string()
        } else {
            let callbacks: Vec<payload::StatusCallback<'_>> = batch
                .iter()
                .map(|(_, r)| payload::StatusCallback::new(self.shard.id(), self.shard.node_id(), r))
                .collect();
            payload::body(shape, account, &callbacks).to_string()
        };
        let mut request = hyper::Request::post(self.url.clone()).header("content-type", "application/json");
        if let Some(secret) = &self.config.secret {
            request = request.header("x-hub-signature-256", signature(secret, body.as_bytes()));
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        // Read the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
    }
}

/// The longest prefix of `batch` that fits one POST: events of one kind (statuses or inbound
/// messages) and one business number (the Cloud shape names one per body).
fn one_post(mut batch: Vec<(u64, ferry_shard::CallbackRecord)>) -> Vec<(u64, ferry_shard::CallbackRecord)> {
    let Some((_, first)) = batch.first() else { return batch };
    let (kind, sender) = (first.kind, first.sender.clone());
    let fits = batch.iter().take_while(|(_, r)| r.kind == kind && r.sender == sender).count();
    batch.truncate(fits);
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_refuses_bad_urls_and_zeroes() {
        assert!(WebhookConfig::default().validate().is_ok());
        let https = WebhookConfig { url: Some("https://x.example/hook".into()), ..WebhookConfig::default() };
        assert!(https.validate().unwrap_err().contains("https"));
        let zero = WebhookConfig { max_concurrent_requests: 0, ..WebhookConfig::default() };
        assert!(zero.validate().unwrap_err().contains("max_concurrent_requests"));
    }
}
