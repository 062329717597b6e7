//! `GET|POST /webhooks/cloud`: Meta's webhooks for the Cloud upstream (`upstream_kind = "cloud"`).
//!
//! - `GET`: the subscription handshake: `hub.mode=subscribe`, `hub.verify_token` equal to
//!   `cloud.verify_token` and a `hub.challenge` → 200 with the challenge as the body; else 403.
//! - `POST`: authenticated by `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with
//!   `cloud.app_secret`, compared in constant time), not by a bearer token: bad or missing → 401
//!   and nothing is recorded. Each status is handed to the shard its marker
//!   (`biz_opaque_callback_data`, ferry's message id) names — one without a marker to the shard of
//!   its `recipient_id`, which matches it by wamid — each inbound message to the shard that owns
//!   the user, through the hub (`ferry_delivery::upstream::cloud::hub`). The answer is
//!   200 only once every one of them is durable; otherwise 503, so Meta sends the webhook again
//!   (ferry's status merge makes a repeat harmless).
//!
//! Without the Cloud upstream both routes answer 404.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ferry_cloud::{VerificationQuery, WebhookPayload};
use ferry_delivery::upstream::Inbound;
use ferry_delivery::upstream::cloud::hub::{CloudHub, StatusReport, WebhookEvent};
use ferry_model::routing::shard_for_recipient;
use ferry_model::{MessageId, WaId};
use serde_json::json;

use crate::{HttpState, Route};

/// What the webhook routes need (set only with the Cloud upstream).
pub struct CloudWebhook {
    pub hub: Arc<CloudHub>,
    /// The numbers (for `/v1/health` and the unblock call, `cloud_numbers.rs`).
    pub numbers: Arc<ferry_delivery::upstream::cloud::CloudShared>,
    pub app_secret: String,
    pub verify_token: String,
}

/// How long a POST waits for its events to become durable before answering 503.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

pub const PATH: &str = "/webhooks/cloud";

pub fn routes() -> Vec<Route> {
    vec![Route::new(Method::GET, PATH, verify), Route::new(Method::POST, PATH, receive)]
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"error": {"code": status.as_u16(), "message": message}}))
}

fn not_configured() -> Response {
    error(StatusCode::NOT_FOUND, "no Cloud upstream on this node (upstream_kind is not cloud)")
}

async fn verify(State(state): State<Arc<HttpState>>, uri: Uri) -> Response {
    let Some(cloud) = &state.cloud else { return not_configured() };
    let query = parse_query(uri.query().unwrap_or(""));
    match query.challenge_if_valid(&cloud.verify_token) {
        Some(challenge) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], challenge.to_owned()).into_response()
        }
        None => error(
            StatusCode::FORBIDDEN,
            "verification refused: expected hub.mode=subscribe, hub.verify_token equal to cloud.verify_token and a hub.challenge",
        ),
    }
}

async fn receive(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(cloud) = &state.cloud else { return not_configured() };
    let signature = headers.get(ferry_cloud::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = ferry_cloud::verify(cloud.app_secret.as_bytes(), &body, signature) {
        tracing::warn!(error = %e, "cloud webhook refused: bad signature");
        return error(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let payload: WebhookPayload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let message = format!("the webhook body is not a WhatsApp Business Account webhook: {e}");
            return error(StatusCode::BAD_REQUEST, &message);
        }
    };
    let shards = cloud.hub.shard_count();
    let mut events = Vec::new();
    for (metadata, s) in payload.statuses() {
        let marker = s.biz_opaque_callback_data.as_deref().unwrap_or("");
        let key = MessageId::decode(marker).filter(|k| state.coordinator.issued_here(k) && k.shard.index() < shards);
        // Without ferry's marker the status is matched by wamid in the recipient's shard (where
        // the message's `sent` recorded it); `message_id` stays empty for the upstream to fill.
        let recipient = Some(&s.recipient_id)
            .filter(|r| (8..=15).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_digit()))
            .map(|r| WaId::from_normalized(r.clone()));
        let (shard, message_id) = match (key, recipient) {
            (Some(key), _) => (key.shard.index(), marker.to_owned()),
            (None, Some(recipient)) if !s.id.is_empty() => {
                (shard_for_recipient(&recipient, shards as u16).index(), String::new())
            }
            (None, _) => {
                tracing::warn!(wamid = %s.id, marker, recipient = %s.recipient_id, "cloud status with neither a marker of this node nor a wamid and recipient: ignored");
                continue;
            }
        };
        let error = s
            .errors
            .first()
            .map(|e| (e.code, e.title.clone(), e.error_data.as_ref().map(|d| d.details.clone()).unwrap_or_default()));
        let report = StatusReport {
            message_id,
            wamid: s.id.clone(),
            status: s.status,
            at_ms: seconds_to_ms(&s.timestamp),
            error,
            phone_number_id: metadata.phone_number_id.clone(),
        };
        events.push((shard, WebhookEvent::Status(report)));
    }
    for (metadata, contact, m) in payload.inbound_messages() {
        let to = match cloud.hub.business_number(&metadata.phone_number_id) {
            Some(n) => n.to_owned(),
            None => metadata.display_phone_number.chars().filter(char::is_ascii_digit).collect(),
        };
        let owner = shard_for_recipient(&WaId::from_normalized(m.from.clone()), shards as u16);
        let inbound = Inbound {
            id: m.id.clone(),
            from: m.from.clone(),
            to,
            at_ms: seconds_to_ms(&m.timestamp),
            message_type: m.kind.clone(),
            text_body: m.text.as_ref().map(|t| t.body.clone()).unwrap_or_default(),
            profile_name: contact.map(|c| c.profile.name.clone()).unwrap_or_default(),
        };
        events.push((owner.index(), WebhookEvent::Inbound(inbound)));
    }
    let count = events.len();
    let mut waits = Vec::with_capacity(count);
    for (shard, event) in events {
        match cloud.hub.deliver(shard, event).await {
            Some(wait) => waits.push(wait),
            None => return error(StatusCode::SERVICE_UNAVAILABLE, "delivery is not running: send again later"),
        }
    }
    let all_durable = async {
        for w in waits {
            w.await.map_err(|_| ())?;
        }
        Ok::<(), ()>(())
    };
    match tokio::time::timeout(DURABLE_WAIT, all_durable).await {
        Ok(Ok(())) => json_response(StatusCode::OK, json!({"received": count})),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "not recorded durably yet: send again later"),
    }
}

/// Meta's timestamps: seconds since the epoch, as a string.
fn seconds_to_ms(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|v| *v > 0).map(|v| v * 1000)
}

/// The handshake's query (`application/x-www-form-urlencoded`).
fn parse_query(query: &str) -> VerificationQuery {
    let mut q = VerificationQuery::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = Some(v.into_owned());
        match k.as_ref() {
            "hub.mode" => q.mode = v,
            "hub.verify_token" => q.verify_token = v,
            "hub.challenge" => q.challenge = v,
            _ => {}
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_query_is_decoded() {
        let q = parse_query("hub.mode=subscribe&hub.verify_token=a%20b%2Bc&hub.challenge=1158201444");
        assert_eq!(q.mode.as_deref(), Some("subscribe"));
        assert_eq!(q.verify_token.as_deref(), Some("a b+c"));
        assert_eq!(q.challenge_if_valid("a b+c"), Some("1158201444"));
        assert_eq!(parse_query("hub.verify_token=100%").verify_token.as_deref(), Some("100%"));
        assert_eq!(seconds_to_ms("1700000000"), Some(1_700_000_000_000));
    }
}
