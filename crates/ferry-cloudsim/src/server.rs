//! The HTTP face of the reference Cloud API server: `POST /{version}/{phone_number_id}/messages`
//! (the send), `GET /cloudsim/stats` and `POST /cloudsim/inbound` (admin), served over HTTP/1.1
//! by an accept loop of its own so that a fault can close a connection without answering.
//!
//! One send, in order: number lookup and token (100, 190) → injected 502 / 131000 / drop-before →
//! body (`messaging_product`, then ferry-model's parsing and validation: 131008, 131009, 131051,
//! 131021, 100) → `--refuse` rules → per-number throughput (130429) → per-pair rate (131056) →
//! **take** (count the marker, schedule the webhooks) → drop-after or slow answer → 200.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_cloud::codes::{self, KnownCode};
use ferry_cloud::{
    Conversation, ConversationOrigin, GraphErrorBody, InboundContact, InboundMessage, InboundProfile, InboundText,
    Metadata, Pricing, SendResponse, Status, StatusKind, WebhookError, WebhookErrorData,
};
use ferry_model::message::Content;
use ferry_model::validate::{ValidatedMessage, ValidationContext};
use ferry_model::{ApiError, WaId};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::CloudSimConfig;
use crate::stats::{Counters, NumberStats, PeakRate, Stats, bump};
use crate::webhooks::{Item, WebhookSender};

/// Shards of the taken-marker set.
const MARKER_SHARDS: usize = 64;
/// Delay of an injected duplicate webhook after the original.
const DUPLICATE_AFTER: Duration = Duration::from_millis(20);

/// A response extension telling the connection loop to close the connection without answering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

/// One business number's state.
pub(crate) struct Number {
    id: String,
    token: String,
    expired: bool,
    metadata: Arc<Metadata>,
    sender: Option<WaId>,
    throughput: DefaultDirectRateLimiter,
    peak: Mutex<PeakRate>,
    taken: AtomicU64,
    throughput_refusals: AtomicU64,
    pair_refusals: AtomicU64,
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) config: CloudSimConfig,
    pub(crate) counters: Arc<Counters>,
    numbers: RwLock<HashMap<String, Arc<Number>>>,
    pairs: Option<DefaultKeyedRateLimiter<u64>>,
    markers: Vec<Mutex<HashMap<String, u32>>>,
    expired: HashSet<String>,
    sequence: AtomicU64,
    instance: u64,
    started: Instant,
    pub(crate) webhooks: WebhookSender,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

fn now_unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn plausible_wa_id(digits: &str) -> bool {
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

impl Shared {
    pub(crate) fn new(config: CloudSimConfig, counters: Arc<Counters>, webhooks: WebhookSender) -> Shared {
        let pairs = (config.pair_interval_ms > 0).then(|| {
            let quota = Quota::with_period(Duration::from_millis(config.pair_interval_ms))
                .expect("a non-zero period")
                .allow_burst(non_zero(config.pair_burst));
            RateLimiter::keyed(quota)
        });
        let instance = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let shared = Shared {
            expired: config.expired_numbers.iter().cloned().collect(),
            numbers: RwLock::default(),
            pairs,
            markers: (0..MARKER_SHARDS).map(|_| Mutex::default()).collect(),
            sequence: AtomicU64::new(0),
            instance,
            started: Instant::now(),
            counters,
            webhooks,
            config,
        };
        let configured: Vec<_> = shared
            .config
            .numbers
            .iter()
            .map(|n| {
                let rate = n.throughput_per_sec.unwrap_or(shared.config.throughput_per_sec);
                shared.new_number(&n.phone_number_id, &n.token, rate, n.phone_number.as_deref())
            })
            .collect();
        let mut numbers = shared.numbers.write();
        for number in configured {
            numbers.insert(number.id.clone(), Arc::new(number));
        }
        drop(numbers);
        shared
    }

    fn new_number(&self, id: &str, token: &str, rate: u32, phone: Option<&str>) -> Number {
        let display = phone.unwrap_or(id).to_owned();
        let quota = Quota::per_second(non_zero(rate)).allow_burst(non_zero(self.config.burst_for(rate)));
        Number {
            id: id.to_owned(),
            token: token.to_owned(),
            expired: self.expired.contains(id),
            sender: plausible_wa_id(&display).then(|| WaId::from_normalized(display.clone())),
            metadata: Arc::new(Metadata { display_phone_number: display, phone_number_id: id.to_owned() }),
            throughput: RateLimiter::direct(quota),
            peak: Mutex::default(),
            taken: AtomicU64::new(0),
            throughput_refusals: AtomicU64::new(0),
            pair_refusals: AtomicU64::new(0),
        }
    }

    /// The number of `id`: configured, or (with no `--number` given) created on first use.
    fn number(&self, id: &str) -> Option<Arc<Number>> {
        if let Some(n) = self.numbers.read().get(id) {
            return Some(n.clone());
        }
        if !self.config.numbers.is_empty() {
            return None;
        }
        let fresh = self.new_number(id, &self.config.token, self.config.throughput_per_sec, None);
        Some(self.numbers.write().entry(id.to_owned()).or_insert_with(|| Arc::new(fresh)).clone())
    }

    pub(crate) fn stats(&self) -> Stats {
        let numbers: BTreeMap<String, NumberStats> = self
            .numbers
            .read()
            .values()
            .map(|n| {
                let stats = NumberStats {
                    messages_taken: n.taken.load(Ordering::Relaxed),
                    max_per_second: n.peak.lock().max(),
                    throughput_refusals: n.throughput_refusals.load(Ordering::Relaxed),
                    pair_refusals: n.pair_refusals.load(Ordering::Relaxed),
                };
                (n.id.clone(), stats)
            })
            .collect();
        self.counters.snapshot(numbers)
    }

    /// How many times a send with this `biz_opaque_callback_data` was taken.
    pub(crate) fn marker_count(&self, marker: &str) -> u32 {
        self.markers[self.marker_shard(marker)].lock().get(marker).copied().unwrap_or(0)
    }

    fn marker_shard(&self, marker: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64(marker.as_bytes()) % MARKER_SHARDS as u64) as usize
    }

    /// A roll in [0, 1) for fault `kind` of request `sequence`: seeded and reproducible.
    fn roll(&self, kind: u64, sequence: u64) -> f64 {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&self.config.seed.to_le_bytes());
        key[8..16].copy_from_slice(&kind.to_le_bytes());
        key[16..].copy_from_slice(&sequence.to_le_bytes());
        (xxhash_rust::xxh3::xxh3_64(&key) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fbtrace_id(&self, sequence: u64) -> String {
        format!("A{:016x}", xxhash_rust::xxh3::xxh3_64_with_seed(&sequence.to_le_bytes(), self.instance))
    }

    /// A Graph error answer with `code` (counted as a refusal).
    fn graph_error(&self, code: u32, subcode: Option<u32>, details: String, sequence: u64) -> Response {
        self.counters.refuse(code);
        let known = codes::known(code).copied().unwrap_or(KnownCode {
            code,
            title: "Error",
            http_status: 400,
            kind: "OAuthException",
            details: "",
        });
        let mut body = GraphErrorBody::new(code, known.kind, known.title, details, &self.fbtrace_id(sequence));
        body.error.error_subcode = subcode;
        let status = StatusCode::from_u16(known.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = json_response(status, &body);
        if code == codes::ACCESS_TOKEN_EXPIRED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
            );
        }
        response
    }

    fn model_error(&self, error: &ApiError, sequence: u64) -> Response {
        let code = error.code.cloud_code();
        let details =
            if error.field.is_empty() { error.details.clone() } else { format!("{}: {}", error.field, error.details) };
        self.graph_error(code, None, details, sequence)
    }

    /// Takes a validated message: counts it, schedules its webhooks, returns its wamid.
    fn take(&self, number: &Number, message: &ValidatedMessage, sequence: u64) -> String {
        let wamid = format!("wamid.{:016x}{:016x}", self.instance, sequence);
        let counters = &self.counters;
        bump(&counters.messages_taken, 1);
        number.taken.fetch_add(1, Ordering::Relaxed);
        number.peak.lock().record(self.started.elapsed().as_secs());
        let marker = message.message.biz_opaque_callback_data.as_deref();
        match marker {
            Some(marker) => {
                let first = {
                    let mut shard = self.markers[self.marker_shard(marker)].lock();
                    let count = shard.entry(marker.to_owned()).or_default();
                    *count += 1;
                    *count == 1
                };
                bump(if first { &counters.unique_messages } else { &counters.duplicate_messages }, 1);
            }
            None => {
                bump(&counters.unique_messages, 1);
                bump(&counters.unmarked_messages, 1);
            }
        }
        self.schedule_statuses(number, message, &wamid, sequence);
        wamid
    }

    /// The code a taken message to `wa_id` later fails with, if any.
    fn failure_of(&self, wa_id: &str) -> Option<u32> {
        if self.config.invalid_prefix.as_deref().is_some_and(|p| wa_id.starts_with(p)) {
            return Some(codes::UNDELIVERABLE);
        }
        self.config.fail.iter().find(|r| wa_id.starts_with(&r.prefix)).map(|r| r.code)
    }

    fn schedule_statuses(&self, number: &Number, message: &ValidatedMessage, wamid: &str, sequence: u64) {
        let config = &self.config;
        let wa_id = message.wa_id.as_str();
        let now = Instant::now();
        let at = |ms: u64| now + Duration::from_millis(ms + config.webhook_delay_ms);
        let unix = now_unix_secs();
        let timestamp = |ms: u64| (unix + ms / 1000).to_string();
        let marker = message.message.biz_opaque_callback_data.clone();
        let status = |kind: StatusKind, ms: u64| Status {
            id: wamid.to_owned(),
            status: kind,
            timestamp: timestamp(ms),
            recipient_id: wa_id.to_owned(),
            biz_opaque_callback_data: marker.clone(),
            conversation: None,
            pricing: None,
            errors: Vec::new(),
        };
        if let Some(code) = self.failure_of(wa_id) {
            bump(&self.counters.failed_messages, 1);
            let known = codes::known(code);
            let title = known.map_or("Error", |k| k.title);
            let mut failed = status(StatusKind::Failed, config.sent_after_ms);
            failed.errors.push(WebhookError {
                code,
                title: title.to_owned(),
                message: Some(title.to_owned()),
                error_data: Some(WebhookErrorData { details: known.map_or("", |k| k.details).to_owned() }),
                href: Some("https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/".into()),
            });
            self.schedule_one(number, at(config.sent_after_ms), failed, sequence);
            return;
        }
        let (category, billable, pricing_type) = match &message.message.content {
            Content::Template(t) => (t.category.clone().unwrap_or_else(|| "marketing".into()), true, "regular"),
            _ => ("service".to_owned(), false, "free_customer_service"),
        };
        let conversation = Conversation {
            id: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(format!("{}:{wa_id}", number.id).as_bytes())),
            expiration_timestamp: Some((unix + 24 * 3600).to_string()),
            origin: Some(ConversationOrigin { kind: category.clone() }),
        };
        let pricing = Pricing {
            billable: Some(billable),
            pricing_model: Some("PMP".into()),
            category: Some(category),
            kind: Some(pricing_type.into()),
        };
        let delivered_ms = config.delivered_after_ms.max(config.sent_after_ms);
        let read_ms = config.read_after_ms.max(delivered_ms);
        let mut times = vec![config.sent_after_ms, delivered_ms];
        let mut kinds = vec![StatusKind::Sent, StatusKind::Delivered];
        if config.read_receipts {
            times.push(read_ms);
            kinds.push(StatusKind::Read);
        }
        if config.webhook_reorder_rate > 0.0 && self.roll(1, sequence) < config.webhook_reorder_rate {
            bump(&self.counters.reordered_messages, 1);
            // Give the last status the first time and so on (`read` before `sent`), a little apart
            // so the order on the wire is the reverse one.
            let spread: Vec<u64> = (0..times.len() as u64).map(|i| times[0] + i * 5).collect();
            times = spread.into_iter().rev().collect();
        }
        for (i, (kind, ms)) in kinds.into_iter().zip(times).enumerate() {
            let mut s = status(kind, ms);
            if kind != StatusKind::Read {
                s.conversation = Some(conversation.clone());
                s.pricing = Some(pricing.clone());
            }
            self.schedule_one(number, at(ms), s, sequence.wrapping_mul(4).wrapping_add(i as u64));
        }
        if config.reply_rate > 0.0 {
            let key = marker.as_deref().unwrap_or(wamid);
            let share = (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
            if share < config.reply_rate {
                let reply = format!("reply to {key}");
                let item =
                    inbound_item(&format!("wamid.in.{:016x}{:016x}", self.instance, sequence), wa_id, "", &reply, unix);
                self.webhooks.schedule(at(read_ms), &number.metadata, item);
            }
        }
    }

    fn schedule_one(&self, number: &Number, due: Instant, status: Status, roll_key: u64) {
        let duplicate =
            self.config.webhook_duplicate_rate > 0.0 && self.roll(2, roll_key) < self.config.webhook_duplicate_rate;
        if duplicate {
            bump(&self.counters.duplicates_injected, 1);
            self.webhooks.schedule(due + DUPLICATE_AFTER, &number.metadata, Item::Status(status.clone()));
        }
        self.webhooks.schedule(due, &number.metadata, Item::Status(status));
    }
}

fn inbound_item(id: &str, from: &str, profile_name: &str, text: &str, unix: u64) -> Item {
    Item::Inbound {
        contact: InboundContact { profile: InboundProfile { name: profile_name.to_owned() }, wa_id: from.to_owned() },
        message: InboundMessage {
            from: from.to_owned(),
            id: id.to_owned(),
            timestamp: unix.to_string(),
            kind: "text".into(),
            text: Some(InboundText { body: text.to_owned() }),
            other: Default::default(),
        },
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("cloudsim answers always serialize");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

fn dropped() -> Response {
    let mut response = Response::new(Body::empty());
    response.extensions_mut().insert(DropConnection);
    response
}

/// The router of every endpoint.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/cloudsim/stats", get(stats))
        .route("/cloudsim/inbound", post(inbound))
        .route("/{version}/{phone_number_id}/messages", post(send))
        .fallback(unknown_path)
        .with_state(shared)
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.stats())
}

async fn unknown_path(State(shared): State<Arc<Shared>>) -> Response {
    let sequence = shared.sequence.fetch_add(1, Ordering::Relaxed);
    let details = "unknown path components: expected POST /{version}/{phone_number_id}/messages".to_owned();
    shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence)
}

/// The bearer token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

async fn send(
    State(shared): State<Arc<Shared>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    http_version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sequence = shared.sequence.fetch_add(1, Ordering::Relaxed);
    bump(&shared.counters.requests, 1);
    if http_version == Version::HTTP_2 {
        bump(&shared.counters.http2_requests, 1);
    }
    let config = &shared.config;
    if !version.starts_with('v') {
        let details = format!("unknown api version `{version}`: expected e.g. v23.0");
        return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
    }
    let Some(token) = bearer(&headers) else {
        let details = "no access token: expected `Authorization: Bearer <token>`".to_owned();
        return shared.graph_error(codes::ACCESS_TOKEN_EXPIRED, None, details, sequence);
    };
    let Some(number) = shared.number(&phone_number_id) else {
        let details = format!(
            "Unsupported post request. Object with ID '{phone_number_id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        );
        return shared.graph_error(codes::INVALID_PARAMETER, Some(33), details, sequence);
    };
    if !constant_time_eq(token.as_bytes(), number.token.as_bytes()) {
        let details = "Invalid OAuth access token - Cannot parse access token".to_owned();
        return shared.graph_error(codes::ACCESS_TOKEN_EXPIRED, Some(460), details, sequence);
    }
    if number.expired {
        let details = format!("Error validating access token: Session has expired for phone number id {}", number.id);
        return shared.graph_error(codes::ACCESS_TOKEN_EXPIRED, Some(463), details, sequence);
    }
    if config.server_error_rate > 0.0 && shared.roll(10, sequence) < config.server_error_rate {
        bump(&shared.counters.server_errors_injected, 1);
        let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        return (StatusCode::BAD_GATEWAY, [(header::CONTENT_TYPE, "text/html")], html).into_response();
    }
    if config.error_rate > 0.0 && shared.roll(11, sequence) < config.error_rate {
        let details = "cloudsim: injected error; retry later".to_owned();
        return shared.graph_error(codes::SOMETHING_WENT_WRONG, None, details, sequence);
    }
    if config.drop_before_rate > 0.0 && shared.roll(12, sequence) < config.drop_before_rate {
        bump(&shared.counters.dropped_before_taking, 1);
        return dropped();
    }
    // The body: Cloud's own key first, then ferry-model's rules (the same ones ferry accepts by).
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let details = format!("request body is not valid json ({e}): expected a json object");
            return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
        }
    };
    match value.get("messaging_product").and_then(|v| v.as_str()) {
        Some(ferry_cloud::MESSAGING_PRODUCT) => {}
        Some(other) => {
            let details = format!("Param messaging_product must be one of {{WHATSAPP}} - got \"{other}\"");
            return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
        }
        None => {
            let details = "The parameter messaging_product is required.".to_owned();
            return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
        }
    }
    let context =
        ValidationContext { default_country_code: config.default_country_code.clone(), sender: number.sender.clone() };
    let message = match ferry_model::message::parse_json(&body).and_then(|m| m.validate(&context)) {
        Ok(message) => message,
        Err(error) => return shared.model_error(&error, sequence),
    };
    let input = value.get("to").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let wa_id = message.wa_id.as_str();
    if let Some(rule) = config.refuse.iter().find(|r| wa_id.starts_with(&r.prefix)) {
        let details = codes::known(rule.code).map_or("cloudsim: refused by a --refuse rule", |k| k.details).to_owned();
        return shared.graph_error(rule.code, None, details, sequence);
    }
    if number.throughput.check().is_err() {
        number.throughput_refusals.fetch_add(1, Ordering::Relaxed);
        let details = codes::known(codes::THROUGHPUT_LIMIT).map(|k| k.details).unwrap_or_default().to_owned();
        return shared.graph_error(codes::THROUGHPUT_LIMIT, Some(2494055), details, sequence);
    }
    if let Some(pairs) = &shared.pairs {
        let mut key = xxhash_rust::xxh3::Xxh3::new();
        key.update(number.id.as_bytes());
        key.update(&[0]);
        key.update(wa_id.as_bytes());
        if pairs.check_key(&key.digest()).is_err() {
            number.pair_refusals.fetch_add(1, Ordering::Relaxed);
            let details = codes::known(codes::PAIR_RATE_LIMIT).map(|k| k.details).unwrap_or_default().to_owned();
            return shared.graph_error(codes::PAIR_RATE_LIMIT, Some(2494055), details, sequence);
        }
    }
    let wamid = shared.take(&number, &message, sequence);
    if config.drop_after_rate > 0.0 && shared.roll(13, sequence) < config.drop_after_rate {
        bump(&shared.counters.dropped_after_taking, 1);
        return dropped();
    }
    if config.slow_rate > 0.0 && shared.roll(14, sequence) < config.slow_rate {
        bump(&shared.counters.slow_answers, 1);
        tokio::time::sleep(Duration::from_millis(config.slow_ms)).await;
    }
    json_response(StatusCode::OK, &SendResponse::accepted(&input, wa_id, &wamid, None))
}

/// `POST /cloudsim/inbound`: a user writes to a business number.
#[derive(Debug, serde::Deserialize)]
struct InboundRequest {
    phone_number_id: String,
    from: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    profile_name: Option<String>,
}

async fn inbound(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let sequence = shared.sequence.fetch_add(1, Ordering::Relaxed);
    let request: InboundRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let details = format!("{e}: expected {{\"phone_number_id\", \"from\", \"text\"?, \"profile_name\"?}}");
            return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
        }
    };
    if !plausible_wa_id(&request.from) {
        let details = format!("from {:?} is not a wa_id: expected 8 to 15 digits", request.from);
        return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
    }
    let Some(number) = shared.number(&request.phone_number_id) else {
        let details =
            format!("unknown phone_number_id {:?}: expected one of the --number ids", request.phone_number_id);
        return shared.graph_error(codes::INVALID_PARAMETER, None, details, sequence);
    };
    let id = format!("wamid.in.{:016x}{:016x}", shared.instance, sequence);
    let text = request.text.as_deref().unwrap_or("hello");
    let item = inbound_item(&id, &request.from, request.profile_name.as_deref().unwrap_or(""), text, now_unix_secs());
    shared.webhooks.schedule(
        Instant::now() + Duration::from_millis(shared.config.webhook_delay_ms),
        &number.metadata,
        item,
    );
    json_response(StatusCode::OK, &serde_json::json!({ "id": id }))
}

/// Equality whose time depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Periodic housekeeping: forgets pair-limiter state of pairs idle long enough to be full again.
pub(crate) async fn housekeeping(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(pairs) = &shared.pairs {
                    pairs.retain_recent();
                    pairs.shrink_to_fit();
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
