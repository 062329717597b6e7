//! Operations endpoints: health, Kubernetes probes and Prometheus metrics.
//!
//! - `GET /v1/health`: the reference's multiconnect shape, one entry per shard keyed
//!   `shard-NN` (`{"health":{"shard-00":{"gateway_status":"connected","role":"shard"},...},
//!   "meta":{"api_status":"stable","version":"X.Y.Z"}}`). `gateway_status` is the state of
//!   that shard's link to the chat server: `connected`, `connecting` (first attempt or
//!   reconnecting) or `disconnected` (the stream ended; waiting to retry). With the Cloud
//!   upstream, `cloud.numbers` lists each business number: `status` `sending`, or `blocked` with
//!   Meta's `blocked_code`. Always 200: the body says what is wrong.
//! - `GET /healthz` (liveness): 200 while the process serves HTTP.
//! - `GET /readyz` (readiness): 200 when the node is not draining, every shard is open and its
//!   writer thread alive, no shard's delivery loop is restarting after a panic, and at least one shard is connected to
//!   the chat server; 503 otherwise. A node with some links down
//!   stays ready: it still accepts durably and those shards deliver once their link is back; a
//!   node with every link down is taken out of rotation. The JSON body says why.
//! - `GET /metrics`: Prometheus text format, rendered by `metrics-exporter-prometheus` from the
//!   recorder `ferry serve` installs ([`install_recorder`]). Counters and histograms are
//!   recorded where things happen (`ferry-coordinator`'s `telemetry`, `ferry-delivery`,
//!   `ferry-webhooks`); the per-shard state (queue depth, in flight, retries, session cache,
//!   webhook backlog, RocksDB sizes) is sampled from the existing stats at scrape time
//!   ([`sample`]), so the hot path pays nothing for it.
//!
//! Tokens (the access table, `ferry_auth::access`): `/healthz`, `/readyz` and `/metrics` are open
//! (probes and scrapers carry none); `/v1/health` is an API call like the reference's and needs a
//! token of role `user`. README's Operations table says the same (a test compares them).
//!
//! Invariants (written as absences): no probe or scrape endpoint needs a token; no scrape writes to or waits for a shard's writer (it reads atomics and RocksDB
//! properties only); no histogram is exported as a summary (every one has explicit buckets).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_delivery::{LinkState, ShardDeliveryStats};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

use crate::{HttpState, Route};

/// Buckets of `ferry_accept_latency_seconds` (a synced RocksDB write: sub-millisecond to seconds).
pub const ACCEPT_LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Buckets of `ferry_accept_to_ack_seconds` (milliseconds when the server is up, up to the TTL
/// when it is not).
pub const ACCEPT_TO_ACK_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0];

/// What the ops endpoints read besides the coordinator. `Default` is a node without delivery and
/// without a metrics recorder (`/metrics` then answers 503).
#[derive(Default, Clone)]
pub struct Ops {
    /// The Prometheus recorder's handle, from [`install_recorder`].
    pub prometheus: Option<PrometheusHandle>,
    /// Each shard's delivery counters and link state, in shard order
    /// (`DeliveryEngine::shard_stats`).
    pub delivery: Vec<Arc<ShardDeliveryStats>>,
}

/// Installs the process-wide Prometheus recorder with ferry's histogram buckets. Call once, before
/// anything records (metrics recorded earlier are lost).
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(ferry_coordinator::telemetry::ACCEPT_LATENCY_SECONDS.to_owned()),
            ACCEPT_LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(ferry_delivery::shard_loop::ACCEPT_TO_ACK_SECONDS.to_owned()),
                ACCEPT_TO_ACK_BUCKETS,
            )
        })
        .map_err(|e| format!("cannot configure the Prometheus histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
    describe();
    Ok(handle)
}

/// HELP lines, and the node-wide counters at 0 from the start (so `rate()` sees their first
/// increase and dashboards show 0 rather than no data).
fn describe() {
    use ferry_coordinator::telemetry as t;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(t::MESSAGES_ACCEPTED_TOTAL, "Messages durably accepted (idempotent replays excluded).");
    describe_counter!(t::MESSAGES_REJECTED_TOTAL, "Sends refused, by ferry error code.");
    describe_counter!(t::IDEMPOTENT_REPLAYS_TOTAL, "Sends answered with the first id of their idempotency key.");
    describe_histogram!(
        t::ACCEPT_LATENCY_SECONDS,
        Unit::Seconds,
        "Send received to durable answer, per accepted message."
    );
    describe_histogram!(
        ferry_delivery::shard_loop::ACCEPT_TO_ACK_SECONDS,
        Unit::Seconds,
        "Durable accept to the chat server's ack, per acked message."
    );
    for (name, help) in ferry_shard::raft::stages::DESCRIPTIONS {
        let unit = if name.ends_with("_seconds") { Unit::Seconds } else { Unit::Count };
        describe_histogram!(*name, unit, *help);
    }
    describe_gauge!("ferry_queue_depth", "Messages in the shard's queue (RocksDB estimate of its keys).");
    describe_counter!(
        "ferry_shard_appended_total",
        "Messages durably appended to the shard since start (whether or not the caller was still there)."
    );
    describe_counter!("ferry_shard_synced_writes_total", "Batches the shard's writer wrote with a WAL sync.");
    describe_counter!(
        "ferry_shard_unsynced_writes_total",
        "Batches of delivery bookkeeping written without a sync, answered once a later sync covered them."
    );
    describe_counter!(
        "ferry_shard_settle_syncs_total",
        "WAL syncs the shard's writer made itself because no other write covered its unsynced batches in time."
    );
    describe_gauge!(
        "ferry_held_messages",
        "Paced templates' messages held for quality assessment (RocksDB estimate of the held keys)."
    );
    describe_gauge!("ferry_in_flight", "Envelopes sent to the chat server and not answered yet.");
    describe_gauge!("ferry_delivery_window_loaded", "Messages of the shard in the delivery loop's memory.");
    describe_gauge!(
        "ferry_delivery_recipients_capped",
        "Recipients at max_window_per_recipient with more messages left on disk."
    );
    describe_gauge!("ferry_gateway_connected", "1 while the shard's link to the chat server is up, else 0.");
    describe_counter!(
        "ferry_delivery_envelopes_sent_total",
        "Envelopes written to the link (first attempts and retries)."
    );
    describe_counter!(
        "ferry_delivery_retries_total",
        "Envelopes sent again (timeout, temporary error, lost link, re-key)."
    );
    describe_counter!("ferry_delivery_settled_total", "Messages that left the queue (acked or failed for good).");
    describe_counter!(
        "ferry_delivery_failed_total",
        "Messages that failed for good (TTL, invalid recipient, marketing limit)."
    );
    describe_counter!("ferry_delivery_rate_limited_total", "RATE_LIMITED answers from the chat server.");
    describe_counter!("ferry_delivery_ack_timeouts_total", "Envelopes unanswered within ack_timeout_ms.");
    describe_counter!(
        "ferry_delivery_link_resets_total",
        "Streams to the chat server reset by the loop (ack timeouts in a row, full outgoing buffer)."
    );
    describe_counter!("ferry_session_cache_hits_total", "Encryptions with a cached session.");
    describe_counter!(
        "ferry_session_cache_misses_total",
        "Session cache misses (then loaded from the shard or set up)."
    );
    describe_counter!("ferry_session_setups_total", "New encryption sessions (pre-key bundle fetched).");
    describe_counter!("ferry_inbound_messages_total", "Inbound user messages received on the shard's stream.");
    describe_counter!(
        "ferry_delivery_task_panics_total",
        "Delivery tasks (session set-ups, settle writes, the shard loop) that panicked; each is retried."
    );
    describe_counter!("ferry_delivery_loop_restarts_total", "Shard delivery loops started again after a panic.");
    describe_gauge!("ferry_webhook_backlog", "Status events not yet delivered to the webhook.");
    describe_counter!(ferry_webhooks::WEBHOOK_DELIVERED_TOTAL, "Status events the webhook answered 2xx to.");
    describe_counter!(ferry_webhooks::WEBHOOK_FAILURES_TOTAL, "Webhook POSTs that failed (each is retried).");
    describe_gauge!("ferry_rocksdb_sst_bytes", Unit::Bytes, "Bytes of the shard's SST files (all column families).");
    describe_gauge!(
        "ferry_rocksdb_pending_compaction_bytes",
        Unit::Bytes,
        "Bytes RocksDB estimates compaction has to rewrite (all column families)."
    );
    for name in [
        t::MESSAGES_ACCEPTED_TOTAL,
        t::IDEMPOTENT_REPLAYS_TOTAL,
        ferry_webhooks::WEBHOOK_DELIVERED_TOTAL,
        ferry_webhooks::WEBHOOK_FAILURES_TOTAL,
    ] {
        metrics::counter!(name).absolute(0);
    }
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/health", health),
        Route::new(Method::GET, "/healthz", healthz),
        Route::new(Method::GET, "/readyz", readyz),
        Route::new(Method::GET, "/metrics", metrics_text),
    ]
}

/// Each shard's gateway status, in shard order (all `connecting` without delivery stats).
fn gateway_states(state: &HttpState) -> Vec<LinkState> {
    let shards = usize::from(state.coordinator.shard_count());
    let state_of = |s: &Arc<ShardDeliveryStats>| {
        // A delivery loop restarting after a panic has no link.
        if s.delivery_restarting() { LinkState::Disconnected } else { s.link_state() }
    };
    (0..shards).map(|i| state.ops.delivery.get(i).map_or(LinkState::Connecting, state_of)).collect()
}

/// A JSON body (a local helper: this module does not need axum's `json` feature).
fn json_body(v: Value) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

/// The same `meta.version` as the messages API answers.
fn version() -> &'static str {
    crate::messages::VERSION
}

async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let shards = state.coordinator.shards();
    let health: serde_json::Map<String, Value> = gateway_states(&state)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut entry = json!({"gateway_status": s.as_str(), "role": "shard"});
            if let Some(r) = shards.get(i).and_then(|shard| shard.raft_status()) {
                // A follower does not deliver: it is not connected, and that is healthy.
                entry["raft"] = json!({
                    "role": r.role,
                    "term": r.term,
                    "leader": r.leader,
                    "last_log_index": r.last_log_index,
                    "applied_index": r.applied_index,
                    "delivering": r.delivering,
                });
            }
            (format!("shard-{i:02}"), entry)
        })
        .collect();
    let mut body = json!({"health": health, "meta": {"api_status": "stable", "version": version()}});
    if let Some(cloud) = &state.cloud {
        body["cloud"] = json!({"numbers": crate::cloud_numbers::numbers_json(&cloud.numbers)});
    }
    (StatusCode::OK, json_body(body)).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, json_body(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let states = gateway_states(&state);
    let connected = states.iter().filter(|s| **s == LinkState::Connected).count();
    let open = state.coordinator.shards().iter().filter(|s| !s.is_closed()).count();
    let restarting: Vec<String> = (state.ops.delivery.iter().enumerate())
        .filter(|(_, s)| s.delivery_restarting())
        .map(|(i, _)| format!("shard-{i:02}"))
        .collect();
    let shards = state.coordinator.shards();
    let writer_dead: Vec<String> =
        shards.iter().filter(|s| s.writer_stopped()).map(|s| format!("shard-{:02}", s.id().0)).collect();
    let leaderless: Vec<String> = (shards.iter())
        .filter(|s| s.raft_status().is_some_and(|r| r.leader.is_none()))
        .map(|s| format!("shard-{:02}", s.id().0))
        .collect();
    // A replicated shard delivers from its leader only: the chat link counts where this node leads.
    let delivering = shards.iter().filter(|s| *s.leading().borrow()).count();
    let reason = if state.lifecycle.is_draining() {
        Some("draining: shutting down, finishing in-flight requests".to_owned())
    } else if !writer_dead.is_empty() {
        Some(format!(
            "the writer of {} died (a panic): its sends and settles fail; restart the node",
            writer_dead.join(", ")
        ))
    } else if !leaderless.is_empty() {
        Some(format!("{} has no raft leader (an election is under way or a quorum is down)", leaderless.join(", ")))
    } else if open < states.len() {
        Some(format!("{} of {} shards are closed", states.len() - open, states.len()))
    } else if !restarting.is_empty() {
        Some(format!("the delivery loop of {} panicked and is restarting", restarting.join(", ")))
    } else if connected == 0 && delivering > 0 {
        Some("no shard is connected to the chat server".to_owned())
    } else {
        None
    };
    let (status, ready) = match reason {
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, false),
        None => (StatusCode::OK, true),
    };
    let body = json!({
        "ready": ready,
        "reason": reason.unwrap_or_else(|| "serving".to_owned()),
        "shards": states.len(),
        "shards_connected": connected,
    });
    (status, json_body(body)).into_response()
}

async fn metrics_text(State(state): State<Arc<HttpState>>) -> Response {
    let Some(handle) = &state.ops.prometheus else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no metrics recorder is installed in this process\n").into_response();
    };
    sample(&state);
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// Copies the per-shard state into the recorder (gauges, and counters kept by the shards' own
/// atomics). Called at every scrape.
pub fn sample(state: &HttpState) {
    for (i, shard) in state.coordinator.shards().iter().enumerate() {
        let label = shard.id().to_string();
        let stats = shard.stats();
        metrics::gauge!("ferry_queue_depth", "shard" => label.clone()).set(stats.estimated_queue_len as f64);
        metrics::gauge!("ferry_held_messages", "shard" => label.clone()).set(stats.estimated_held_len as f64);
        metrics::counter!("ferry_shard_appended_total", "shard" => label.clone()).absolute(stats.appended);
        metrics::counter!("ferry_shard_synced_writes_total", "shard" => label.clone()).absolute(stats.synced_writes);
        metrics::counter!("ferry_shard_unsynced_writes_total", "shard" => label.clone())
            .absolute(stats.unsynced_writes);
        metrics::counter!("ferry_shard_settle_syncs_total", "shard" => label.clone()).absolute(stats.settle_syncs);
        if let Some(r) = shard.raft_status() {
            metrics::gauge!("ferry_raft_term", "shard" => label.clone()).set(r.term as f64);
            metrics::gauge!("ferry_raft_is_leader", "shard" => label.clone())
                .set(f64::from(u8::from(r.role == "leader")));
            metrics::gauge!("ferry_raft_leader_node", "shard" => label.clone()).set(r.leader.unwrap_or(0) as f64);
            metrics::gauge!("ferry_raft_last_log_index", "shard" => label.clone()).set(r.last_log_index as f64);
            metrics::gauge!("ferry_raft_applied_index", "shard" => label.clone()).set(r.applied_index as f64);
            metrics::gauge!("ferry_raft_delivering", "shard" => label.clone()).set(f64::from(u8::from(r.delivering)));
        }
        let disk = shard.disk_usage();
        metrics::gauge!("ferry_rocksdb_sst_bytes", "shard" => label.clone()).set(disk.sst_bytes as f64);
        metrics::gauge!("ferry_rocksdb_pending_compaction_bytes", "shard" => label.clone())
            .set(disk.pending_compaction_bytes as f64);
        let cursor = shard.webhook_cursor();
        if cursor != u64::MAX {
            let backlog = shard.committed_next_outbox_seq().saturating_sub(cursor);
            metrics::gauge!("ferry_webhook_backlog", "shard" => label.clone()).set(backlog as f64);
        }
        let Some(delivery) = state.ops.delivery.get(i) else { continue };
        let d = delivery.snapshot();
        metrics::gauge!("ferry_in_flight", "shard" => label.clone()).set(d.in_flight as f64);
        metrics::gauge!("ferry_delivery_window_loaded", "shard" => label.clone()).set(d.loaded as f64);
        metrics::gauge!("ferry_delivery_recipients_capped", "shard" => label.clone()).set(d.recipients_capped as f64);
        let connected = delivery.link_state() == LinkState::Connected;
        metrics::gauge!("ferry_gateway_connected", "shard" => label.clone()).set(if connected { 1.0 } else { 0.0 });
        for (name, value) in [
            ("ferry_delivery_envelopes_sent_total", d.envelopes_sent),
            ("ferry_delivery_retries_total", d.retries),
            ("ferry_delivery_settled_total", d.settled),
            ("ferry_delivery_failed_total", d.failed),
            ("ferry_delivery_rate_limited_total", d.rate_limited),
            ("ferry_delivery_ack_timeouts_total", d.ack_timeouts),
            ("ferry_delivery_link_resets_total", d.link_resets),
            ("ferry_session_cache_hits_total", d.session_hits),
            ("ferry_session_cache_misses_total", d.session_misses),
            ("ferry_session_setups_total", d.session_setups),
            ("ferry_inbound_messages_total", d.inbound),
            ("ferry_delivery_task_panics_total", d.task_panics),
            ("ferry_delivery_loop_restarts_total", d.loop_restarts),
        ] {
            metrics::counter!(name, "shard" => label.clone()).absolute(value);
        }
    }
}
