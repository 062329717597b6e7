//! The JSON messages API, in the reference's two flavours.
//!
//! - **On-Prem**: `POST /v1/messages`. Request: the reference's `/v1/messages` JSON. Answer
//!   `201 Created` with `{"messages":[{"id":"..."}],"meta":{"api_status":"stable","version":"<ferry
//!   version>"}}`; errors `{"errors":[{"code","title","details"}],"meta":{...}}` with the HTTP
//!   status of the error table.
//! - **Cloud**: `POST /{version}/{phone_number_id}/messages` (`version` like `v21.0`). The request
//!   must carry `"messaging_product":"whatsapp"`. Answer `200 OK` with
//!   `{"messaging_product":"whatsapp","contacts":[{"input","wa_id"}],"messages":[{"id",
//!   "message_status"}]}` (`accepted`, or `held_for_quality_assessment` for a paced template; the
//!   On-Prem answer carries it only then); errors `{"error":{"message","type","code","error_data":
//!   {"messaging_product","details"},"fbtrace_id"}}` with the Cloud code of the error table.
//!   `phone_number_id`: a Graph API phone-number id (digits) is accepted and ignored, and the
//!   message goes out from the node's `default_sender`; a path id written as a phone number with
//!   a leading `+` (`/v21.0/+15550100000/messages`, or `%2B...`) names the sender instead.
//!
//! Tenancy: a user with a `senders` list may send only as those numbers (On-Prem and a numeric
//! Cloud `phone_number_id` send as `default_sender`, so that is checked); any other sender is 403
//! with code 1005 (Cloud: code 10) naming the sender, and nothing is written.
//!
//! Both flavours take an optional `Idempotency-Key` header (at most 256 characters): a retry
//! with the same key and the same message from the same sender answers the first id; the same
//! key with a different message is 409 (1009 / 131009).
//!
//! The body must be `Content-Type: application/json` (parameters such as `charset` allowed;
//! anything else is 415) and at most `[http] max_body_bytes` long (413, checked with the read
//! timeout for every route by [`crate::limits`]). Both errors are in the flavour's error shape.
//!
//! Invariants: this module never parses or validates a message itself (`parse_json` and the
//! coordinator do, as for gRPC): it only maps shapes; it never answers an id before the
//! coordinator has returned it, i.e. after the durable write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_coordinator::{Accepted, SendCommand};
use ferry_model::error::{ApiError, ErrorCode};
use ferry_model::message::parse_json;
use ferry_model::status::MessageStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{HttpState, Route};

/// The request header carrying an idempotency key (optional).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// ferry's version, reported as On-Prem `meta.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `message_status` of a send: `accepted`, or `held_for_quality_assessment` for a paced
/// template's message (`[pacing] templates`).
fn message_status(a: &Accepted) -> &'static str {
    if a.held { MessageStatus::HeldForQualityAssessment } else { MessageStatus::Accepted }.as_str()
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/messages", onprem_send),
        Route::new(Method::POST, "/{version}/{phone_number_id}/messages", cloud_send),
    ]
}

/// Which reference API a request came in on: fixes the answer and error shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    OnPrem,
    Cloud,
}

/// An error answer: the table's code plus, for transport-level failures (415, 413, 408), a status
/// of its own.
pub(crate) struct Failure {
    pub(crate) error: ApiError,
    pub(crate) status: Option<StatusCode>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { error, status: None }
    }
}

async fn onprem_send(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    match send(&state, Flavour::OnPrem, Ok(None), request).await {
        Ok((_, accepted)) => {
            // The reference's On-Prem answer has only the id; a held message says so (as Cloud).
            let mut message = json!({"id": accepted.message_id.as_str()});
            if accepted.held {
                message["message_status"] = json!(message_status(&accepted));
            }
            let body = json!({"messages": [message], "meta": onprem_meta()});
            json_response(StatusCode::CREATED, &body)
        }
        Err(f) => error_response(Flavour::OnPrem, f),
    }
}

async fn cloud_send(
    State(state): State<Arc<HttpState>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    request: Request,
) -> Response {
    match send(&state, Flavour::Cloud, cloud_sender(&version, &phone_number_id), request).await {
        Ok((input, accepted)) => {
            let body = json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": input, "wa_id": accepted.wa_id.as_str()}],
                "messages": [{"id": accepted.message_id.as_str(), "message_status": message_status(&accepted)}],
            });
            json_response(StatusCode::OK, &body)
        }
        Err(f) => error_response(Flavour::Cloud, f),
    }
}

/// Checks the Cloud path and picks the sender (see the module docs).
fn cloud_sender(version: &str, phone_number_id: &str) -> Result<Option<String>, ApiError> {
    let digits = version.strip_prefix('v').unwrap_or("");
    let valid_version = !digits.is_empty()
        && digits.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !valid_version {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "version",
            format!(
                "unknown api version `{version}` in the path: expected `v` and a version number, e.g. /v21.0/PHONE_NUMBER_ID/messages"
            ),
        ));
    }
    match phone_number_id.strip_prefix('+') {
        Some(rest) if !rest.is_empty() => Ok(Some(phone_number_id.to_owned())),
        None if !phone_number_id.is_empty() && phone_number_id.bytes().all(|b| b.is_ascii_digit()) => Ok(None),
        _ => Err(ApiError::invalid(
            "phone_number_id",
            format!(
                "a phone number id (digits) or a business phone number with a leading `+` in the path, got `{phone_number_id}`"
            ),
        )),
    }
}

/// The Cloud-only part of a request body.
#[derive(Deserialize)]
struct CloudEnvelope {
    #[serde(default)]
    messaging_product: Option<Value>,
}

/// Checks headers and size, parses, sends. Returns the recipient as written and the acceptance.
/// Every refusal before the coordinator is counted in `ferry_messages_rejected_total` here (the
/// coordinator counts its own).
/// `sender` is the route's choice of sender (the Cloud path's, or a refusal of that path).
async fn send(
    state: &HttpState,
    flavour: Flavour,
    sender: Result<Option<String>, ApiError>,
    request: Request,
) -> Result<(String, Accepted), Failure> {
    let (command, input) = match prepare(state, flavour, sender, request).await {
        Ok(prepared) => prepared,
        Err(f) => {
            ferry_coordinator::telemetry::note_rejected(&f.error);
            return Err(f);
        }
    };
    let accepted = state.coordinator.send(command).await?;
    Ok((input, accepted))
}

/// Everything before the coordinator: draining, the route, headers, size, the Cloud envelope,
/// parsing. Answers the command and the recipient as written.
async fn prepare(
    state: &HttpState,
    flavour: Flavour,
    sender: Result<Option<String>, ApiError>,
    request: Request,
) -> Result<(SendCommand, String), Failure> {
    if state.lifecycle.is_draining() {
        // The node is shutting down (SIGTERM): a client retries elsewhere; nothing was written.
        return Err(ApiError::new(
            ErrorCode::ServiceNotReady,
            "",
            "the node is draining (shutting down); retry on another node or after it restarts",
        )
        .into());
    }
    let sender = sender?;
    let (parts, body) = request.into_parts();
    let Some(caller) = parts.extensions.get::<ferry_auth::Principal>() else {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "", "no authenticated caller").into());
    };
    state.auth.check_sender(caller, sender.as_deref())?;
    check_content_type(&parts.headers)?;
    let idempotency_key = idempotency_key(&parts.headers)?;
    let body = crate::limits::read_body(body, &parts.headers, state.max_body_bytes, state.read_timeout).await?;

    // The shape bounds (list lengths, depth, duplicate keys) before anything is built from the
    // body, the Cloud envelope included.
    ferry_model::message_limits::scan_json(&body)?;
    if flavour == Flavour::Cloud {
        // A body that is not a JSON object falls through to parse_json, which says so.
        if let Ok(envelope) = serde_json::from_slice::<CloudEnvelope>(&body) {
            match envelope.messaging_product {
                None | Some(Value::Null) => return Err(ApiError::missing("messaging_product").into()),
                Some(Value::String(p)) if p == "whatsapp" => {}
                Some(other) => {
                    return Err(ApiError::invalid("messaging_product", format!("\"whatsapp\", got {other}")).into());
                }
            }
        }
    }

    let message = parse_json(&body)?;
    let input = message.to.clone();
    Ok((SendCommand { message, idempotency_key, sender }, input))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Failure> {
    let unsupported = |got: &str| Failure {
        error: ApiError::new(
            ErrorCode::InvalidParameter,
            "Content-Type",
            format!("content type {got} is not supported: expected `Content-Type: application/json`"),
        ),
        status: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("(none)"));
    };
    let text = value.to_str().map_err(|_| unsupported("(not ascii)"))?;
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") { Ok(()) } else { Err(unsupported(&format!("`{text}`"))) }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(_) => Err(ApiError::invalid("Idempotency-Key", "a printable ascii header value").into()),
        },
    }
}

fn onprem_meta() -> Value {
    json!({"api_status": "stable", "version": VERSION})
}

/// `details` as prose that names the field (most already do).
fn details_of(e: &ApiError) -> String {
    if e.field.is_empty() || e.details.contains(&e.field) {
        e.details.clone()
    } else if e.details.is_empty() {
        format!("`{}`", e.field)
    } else {
        format!("`{}`: {}", e.field, e.details)
    }
}

/// Whether `path` is the Cloud messages route (`/{version}/{phone_number_id}/messages`): errors on
/// it, including auth refusals, are answered in the Cloud shape that Cloud clients parse.
pub fn is_cloud_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!((parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(v), Some(id), Some("messages"), None) if !v.is_empty() && !id.is_empty() && v != "v1")
}

/// `f` in the Cloud error shape (`cloud`) or the On-Prem one.
pub(crate) fn failure_response(cloud: bool, f: Failure) -> Response {
    error_response(if cloud { Flavour::Cloud } else { Flavour::OnPrem }, f)
}

/// `e` in the Cloud error shape, with the table's HTTP status.
pub fn cloud_error_response(e: ApiError) -> Response {
    error_response(Flavour::Cloud, e.into())
}

fn error_response(flavour: Flavour, f: Failure) -> Response {
    let e = &f.error;
    let status = f
        .status
        .unwrap_or_else(|| StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let details = details_of(e);
    let body = match flavour {
        Flavour::OnPrem => json!({
            "errors": [{"code": e.code.code(), "title": e.code.title(), "details": details}],
            "meta": onprem_meta(),
        }),
        Flavour::Cloud => json!({
            "error": {
                "message": format!("(#{}) {}", e.code.cloud_code(), e.code.title()),
                "type": "OAuthException",
                "code": e.code.cloud_code(),
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": fbtrace_id(),
            }
        }),
    };
    json_response(status, &body)
}

/// A unique-enough id for Cloud errors, so a caller can quote one in a log search.
fn fbtrace_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    format!("F{:016x}{:04x}", nanos, COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_paths_are_recognised() {
        assert!(is_cloud_path("/v21.0/106540352242922/messages"));
        assert!(!is_cloud_path("/v1/messages"));
        assert!(!is_cloud_path("/v1/users/login"));
        assert!(!is_cloud_path("/v21.0/106540352242922/messages/x"));
    }

    #[test]
    fn cloud_path_picks_the_sender() {
        assert_eq!(cloud_sender("v21.0", "106540352242922").unwrap(), None);
        assert_eq!(cloud_sender("v17", "+15550100000").unwrap(), Some("+15550100000".into()));
        let bad_version = cloud_sender("latest", "1").unwrap_err();
        assert_eq!((bad_version.code, bad_version.field.as_str()), (ErrorCode::NotFound, "version"));
        let bad_id = cloud_sender("v21.0", "abc").unwrap_err();
        assert_eq!((bad_id.code, bad_id.field.as_str()), (ErrorCode::InvalidParameter, "phone_number_id"));
        assert!(bad_id.details.contains("`abc`"), "{}", bad_id.details);
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(check_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let f = check_content_type(&h).unwrap_err();
        assert_eq!(f.status, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert!(f.error.details.contains("`text/plain`") && f.error.details.contains("application/json"));
    }

    #[test]
    fn details_name_the_field() {
        let e = ApiError::new(ErrorCode::InvalidParameter, "to", "bad number");
        assert_eq!(details_of(&e), "`to`: bad number");
        let e = ApiError::missing("text.body");
        assert_eq!(details_of(&e), "`text.body` is required");
    }
}
