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
//! Transport: one hyper client ([`https_client`], shared with the Cloud upstream) for both schemes
//! (HTTP/2 when a TLS server offers it, else HTTP/1.1). `https://` URLs go over TLS
//! (rustls, ring) and the server's certificate must chain to a trust root: the Mozilla roots
//! compiled in (`webpki-roots`, not the system store) plus the PEM certificates of
//! `webhook.ca_file` when set (a private CA). `http://` is accepted for loopback and development; a
//! plain-http URL to a non-loopback host logs a warning at start.
//!
//! Invariants (written as absences):
//! - No cursor moves past a callback before its receiver answered 2xx, and retention never drops an
//!   event at or past the cursor; a crash before the cursor is durable sends the callback again
//!   (same message id and status: receivers can dedup).
//! - No status of a message is reported before an earlier one: each shard's sender posts its
//!   outbox strictly in order, one request at a time (several shards post concurrently, at most
//!   `max_concurrent_requests` in all).
//! - No callback goes over TLS to a server whose certificate does not chain to a configured trust
//!   root or does not name the URL's host: such a handshake fails, counts as a failed attempt and
//!   is retried like any refusal (the cursor stays).
//! - No client certificate is sent (no mutual TLS), and the system's certificate store is not
//!   read.
//!
//! Limits of this version: one request in flight per shard.

pub mod payload;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_shard::Shard;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub use payload::Shape;

/// Longest time between two writes of a shard's webhook cursor while callbacks flow.
const CURSOR_PERSIST_EVERY: Duration = Duration::from_millis(100);
/// The client every sender of an engine shares: `http://` and `https://` over one pool. The same
/// construction ([`https_client`]) serves the Cloud API upstream (`ferry-delivery`).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Webhook settings (config section `[webhook]`; flags `--webhook-url`, `--webhook-secret`,
/// `--webhook-shape`; `ca_file` only in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where callbacks are POSTed (`https://HOST[:PORT]/PATH`, or `http://` for loopback and
    /// development). Unset: no callbacks (and nothing is written to the outbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PEM file of extra trust roots for `https://` URLs (a private CA), added to the built-in
    /// Mozilla roots. Unset: the built-in roots only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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
    /// Checks every key; also reads `ca_file` (so `ferry config check` catches a bad one).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            parse_url(url)?;
        }
        if let Some(path) = &self.ca_file {
            load_ca_file(path)?;
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

/// `webhook.url` parsed: an `http://` or `https://` URL with a host.
fn parse_url(url: &str) -> Result<hyper::Uri, String> {
    const EXPECTED: &str = "expected https://HOST[:PORT]/PATH or http://HOST[:PORT]/PATH";
    let shown = mask_url(url);
    let uri: hyper::Uri = url.parse().map_err(|e| format!("webhook.url `{shown}`: {e}; {EXPECTED}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("webhook.url `{shown}`: scheme `{other}` is not supported; {EXPECTED}")),
        None => return Err(format!("webhook.url `{shown}`: no scheme; {EXPECTED}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("webhook.url `{shown}`: no host; {EXPECTED}"));
    }
    Ok(uri)
}

/// Whether `host` (as in a URL: IPv6 in brackets) is this machine: `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The certificates of `webhook.ca_file`: at least one, each a usable trust anchor.
fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("webhook.ca_file `{shown}`: cannot read it: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("webhook.ca_file `{shown}`: not valid PEM: {e}; expected PEM CERTIFICATE blocks"))?;
    if certs.is_empty() {
        return Err(format!(
            "webhook.ca_file `{shown}`: no certificate in it; expected one or more PEM CERTIFICATE blocks"
        ));
    }
    // Parse each as a trust anchor now, so a broken one is a config error rather than a
    // handshake failure later.
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!("webhook.ca_file `{shown}`: certificate {} is not usable as a trust root: {e}", i + 1)
        })?;
    }
    Ok(certs)
}

/// The client for `config`: http and https, trusting the built-in roots plus `ca_file`.
fn client(config: &WebhookConfig) -> Result<HttpClient, String> {
    let extra = match &config.ca_file {
        Some(path) => load_ca_file(path)?,
        None => Vec::new(),
    };
    https_client(extra)
}

/// ferry's one outgoing HTTP client construction (status callbacks and the Cloud API upstream):
/// `http://` and `https://` over one connection pool (connections are reused), TLS by rustls
/// (ring) trusting the compiled-in Mozilla roots plus `extra_roots`, HTTP/2 when the server
/// offers it by ALPN, else HTTP/1.1 (plain `http://` is HTTP/1.1). Cheap to clone: clones share
/// the pool.
pub fn https_client(extra_roots: Vec<CertificateDer<'static>>) -> Result<HttpClient, String> {
    client_with(extra_roots, false)
}

/// [`https_client`] that speaks only HTTP/2: to `http://` URLs without asking first (h2c with prior
/// knowledge; `cloud.http2_prior_knowledge`), so every request in flight to a host shares one
/// connection instead of one connection each.
pub fn http2_client(extra_roots: Vec<CertificateDer<'static>>) -> Result<HttpClient, String> {
    client_with(extra_roots, true)
}

fn client_with(extra_roots: Vec<CertificateDer<'static>>, http2_only: bool) -> Result<HttpClient, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert).map_err(|e| format!("a configured CA certificate is not usable as a trust root: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up of the HTTP client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).http2_only(http2_only).build(connector))
}

/// What a secret prints as.
pub const MASK: &str = "********";

/// `url` with credentials hidden: the userinfo (`https://user:pass@host`) and the query (`?token=…`),
/// where webhook URLs often carry them. Scheme, host, port and path stay readable. Every log line
/// and printed config that names the webhook URL goes through this.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = match rest.split_once('?') {
        Some((r, _)) => (r, Some(MASK)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    let mut out = if scheme.is_empty() { host } else { format!("{scheme}://{host}") };
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
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

/// Counter: status events delivered to the webhook (answered 2xx).
pub const WEBHOOK_DELIVERED_TOTAL: &str = "ferry_webhook_delivered_total";
/// Counter: webhook POSTs that failed (refused, unreachable, timed out); each is retried.
pub const WEBHOOK_FAILURES_TOTAL: &str = "ferry_webhook_failures_total";

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
        let url = parse_url(config.url.as_deref().ok_or("webhook.url is not set")?)?;
        if url.scheme_str() == Some("http") && !url.host().is_some_and(is_loopback) {
            tracing::warn!(
                url = %mask_url(&url.to_string()),
                "callbacks over plain http to a non-loopback host: use https outside development"
            );
        }
        let client = client(&config)?;
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
                tokio::spawn(sender.run_while_leading(shutdown_rx.clone()))
            })
            .collect();
        Ok(WebhookEngine { stats, shutdown, tasks })
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Stops the senders; undelivered callbacks stay in the status-event logs for the next start.
    ///
    /// Cancel safety: cancel-safe (the senders stop either way; the cursors persisted so far stay).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The most of a receiver's response body read (it is only read so the connection can be reused).
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Sender {
    shard: Arc<Shard>,
    client: HttpClient,
    url: hyper::Uri,
    config: Arc<WebhookConfig>,
    permits: Arc<Semaphore>,
    stats: Arc<WebhookStats>,
}

impl Sender {
    /// Runs the sender whenever this node leads its shard (always on a single node): a replicated
    /// shard's callbacks go out from its leader only, from the cursor the group persisted.
    async fn run_while_leading(self, shutdown: watch::Receiver<bool>) {
        loop {
            if !self.shard.wait_leading(shutdown.clone()).await {
                return;
            }
            let stop = self.shard.stop_when_not_leading(shutdown.clone());
            self.clone().run(stop).await;
            if *shutdown.borrow() {
                return;
            }
            tracing::info!(shard = %self.shard.id(), "no longer leading the shard: callbacks stop here");
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.shard.subscribe_events();
        let mut cursor = self.shard.webhook_cursor();
        // The cursor is persisted at most every CURSOR_PERSIST_EVERY (and when idle or stopping),
        // not per POST: it costs a write in the shard's group commit. A crash re-sends what was
        // accepted since the last persisted cursor (receivers dedup by message id and status).
        let mut persisted = cursor;
        let mut persisted_at = tokio::time::Instant::now();
        let mut failures = 0u64;
        // Events read from the outbox and not posted yet, in order from `cursor` (a POST takes a
        // prefix of one kind; the rest waits here instead of being read again), and how far the
        // outbox has been read into it.
        let mut buffered: VecDeque<(u64, ferry_shard::CallbackRecord)> = VecDeque::new();
        let mut read_to = cursor;
        let limit = self.config.max_statuses_per_post;
        loop {
            if *shutdown.borrow() {
                self.persist(&mut persisted, cursor);
                return;
            }
            let until = *events.borrow_and_update();
            if buffered.len() < limit && read_to < until {
                // A RocksDB range read (it may step over tombstones): on a blocking thread, not a
                // tokio worker that ingest and delivery share.
                let (shard, want) = (self.shard.clone(), limit - buffered.len());
                let scan = tokio::task::spawn_blocking(move || shard.scan_outbox(read_to, until, want))
                    .await
                    .unwrap_or_else(|e| Err(ferry_shard::ShardError::Layout(format!("outbox scan task failed: {e}"))));
                match scan {
                    Ok(read) => {
                        // Fewer than asked: everything up to `until` has been read.
                        read_to = match read.last() {
                            Some((seq, _)) if read.len() == want => seq + 1,
                            _ => until,
                        };
                        buffered.extend(read);
                    }
                    Err(e) => {
                        // Nothing moves: events it did not read are read again.
                        failures += 1;
                        let wait =
                            (self.config.backoff_step_ms.saturating_mul(failures)).min(self.config.backoff_max_ms);
                        tracing::error!(shard = %self.shard.id(), error = %e, retry_in_ms = wait, "cannot read the status events");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                            _ = shutdown.changed() => return,
                        }
                        continue;
                    }
                }
            }
            let fits = one_post(&buffered);
            if fits == 0 {
                cursor = cursor.max(read_to);
                self.persist(&mut persisted, cursor);
                tokio::select! {
                    _ = events.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let batch = &buffered.make_contiguous()[..fits];
            match self.post(batch).await {
                Ok(()) => {
                    failures = 0;
                    self.stats.delivered.fetch_add(fits as u64, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!(WEBHOOK_DELIVERED_TOTAL).increment(fits as u64);
                    cursor = batch.last().map_or(cursor, |(seq, _)| seq + 1);
                    buffered.drain(..fits);
                    self.shard.note_webhook_progress(cursor);
                    if persisted_at.elapsed() >= CURSOR_PERSIST_EVERY {
                        self.persist(&mut persisted, cursor);
                        persisted_at = tokio::time::Instant::now();
                    }
                }
                Err(reason) => {
                    failures += 1;
                    self.stats.failed_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!(WEBHOOK_FAILURES_TOTAL).increment(1);
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
                .map(|(_, r)| payload::StatusCallback::new(self.shard.id(), self.shard.id_space(), r))
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
        let deadline = tokio::time::Instant::now() + timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        // Read the body so the connection can be reused, bounded in size and by the same deadline:
        // a receiver that trickles or never ends its body must not hold the node-wide permit. The
        // status line already said whether it took the events; an unread body only costs the
        // connection (dropped, not reused).
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BODY_BYTES);
        if tokio::time::timeout_at(deadline, body.collect()).await.is_err() {
            tracing::debug!(shard = %self.shard.id(), "webhook response body not finished by the deadline; connection dropped");
        }
        if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
    }
}

/// How many of the first events fit one POST: events of one kind (statuses or inbound messages;
/// the two have different bodies). Numbers may mix: the Cloud shape gives each its own change.
fn one_post(buffered: &VecDeque<(u64, ferry_shard::CallbackRecord)>) -> usize {
    let Some((_, first)) = buffered.front() else { return 0 };
    buffered.iter().take_while(|(_, r)| r.kind == first.kind).count()
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

    fn with_url(url: &str) -> WebhookConfig {
        WebhookConfig { url: Some(url.into()), ..WebhookConfig::default() }
    }

    #[test]
    fn config_refuses_bad_urls_and_zeroes() {
        assert!(WebhookConfig::default().validate().is_ok());
        let zero = WebhookConfig { max_concurrent_requests: 0, ..WebhookConfig::default() };
        assert!(zero.validate().unwrap_err().contains("max_concurrent_requests"));
    }

    #[test]
    fn config_takes_https_and_http_urls() {
        for ok in
            ["https://x.example/hook", "https://x.example:8443/a/b", "http://127.0.0.1:8090/hook", "http://[::1]/h"]
        {
            assert_eq!(with_url(ok).validate(), Ok(()), "{ok}");
        }
    }

    #[test]
    fn config_refuses_other_schemes_and_missing_hosts() {
        let err = with_url("ftp://x.example/hook").validate().unwrap_err();
        assert!(err.contains("webhook.url `ftp://x.example/hook`") && err.contains("scheme `ftp`"), "{err}");
        assert!(err.contains("expected https://"), "{err}");
        let err = with_url("x.example:80").validate().unwrap_err();
        assert!(err.contains("no scheme"), "{err}");
        let err = with_url("not a url").validate().unwrap_err();
        assert!(err.contains("webhook.url `not a url`") && err.contains("expected https://"), "{err}");
    }

    #[test]
    fn config_refuses_a_bad_ca_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let with_ca = |path: &Path| WebhookConfig { ca_file: Some(path.to_owned()), ..with_url("https://x.example/") };

        let missing = dir.join("missing.pem");
        let err = with_ca(&missing).validate().unwrap_err();
        assert!(err.contains("webhook.ca_file") && err.contains("missing.pem") && err.contains("cannot read"), "{err}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = with_ca(&empty).validate().unwrap_err();
        assert!(
            err.contains("webhook.ca_file") && err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );

        // A PEM block that is not a certificate (a key) is not a trust root either.
        let key_only = dir.join("key.pem");
        std::fs::write(&key_only, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let err = with_ca(&key_only).validate().unwrap_err();
        assert!(err.contains("key.pem") && err.contains("no certificate"), "{err}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = with_ca(&garbage).validate().unwrap_err();
        assert!(err.contains("garbage.pem") && err.contains("trust root"), "{err}");

        // A real CA certificate (and a file with the CA and something else) is fine.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, format!("{}{}", ca.pem(), key.serialize_pem())).unwrap();
        assert_eq!(with_ca(&good).validate(), Ok(()));
        assert!(client(&with_ca(&good)).is_ok());
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "[2001:db8::1]", "localhost.example.com", "128.0.0.1"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
