//! One request to the Cloud API: the send body of an accepted message, the POST (pacer, dispatch
//! mark, timeout), and the outcome of its answer by the one classification table
//! (`ferry_cloud::codes::classify`). See the module docs of `upstream::cloud`.

use std::time::Duration;

use bytes::Bytes;
use ferry_cloud::codes::{self, Class};
use ferry_shard::Shard;
use http_body_util::{BodyExt, Full};

use super::{CloudShared, IN_DOUBT_TOTAL, NumberState, REQUESTS_TOTAL};
use crate::upstream::{BackOffReason, Outcome, Scope};

/// The Cloud send body of an accepted message (see the module docs).
pub(super) fn cloud_body(payload: &[u8], message_id: &str) -> Result<Bytes, String> {
    use serde_json::Value;
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_slice(payload).map_err(|e| format!("the stored message is not valid json: {e}"))?;
    v.remove("ttl_seconds");
    let to = match v.get("to").and_then(Value::as_str) {
        Some(to) if to.starts_with('+') => to.to_owned(),
        Some(to) => format!("+{to}"),
        None => return Err("the stored message has no `to`".into()),
    };
    v.insert("to".into(), Value::String(to));
    v.insert("messaging_product".into(), Value::String(ferry_cloud::MESSAGING_PRODUCT.into()));
    v.insert("recipient_type".into(), Value::String("individual".into()));
    v.insert("biz_opaque_callback_data".into(), Value::String(message_id.to_owned()));
    serde_json::to_vec(&v).map(Bytes::from).map_err(|e| e.to_string())
}

/// One request: a reservation in the number's pacer, the message's dispatch mark (durable), the
/// request's send slot, then the POST within `request_timeout` (see `pacer.rs` for why the slot
/// comes after the mark).
///
/// Cancel-safe in the sense that matters: dropping it mid-request leaves the message in the
/// core's hands (it resends after its timeout), and its mark makes a restart treat it as in doubt.
pub(super) async fn post(shared: &CloudShared, shard: &Shard, seq: u64, number: &NumberState, body: Bytes) -> Outcome {
    let reservation = number.pacer.reserve().await;
    // The mark goes to disk before the request does: after a crash, a marked message may have
    // been posted, an unmarked one was not.
    let marked = match shard.mark_dispatched_durably(vec![seq], ferry_model::clock::system_now_ms()) {
        Ok(durable) => durable.await,
        Err(e) => Err(e),
    };
    if let Err(e) = marked {
        return Outcome::Retry { detail: format!("cannot record the dispatch mark: {e}") };
    }
    let slot = number.pacer.slot(reservation).await;
    let request = hyper::Request::post(number.url.clone())
        .header(hyper::header::AUTHORIZATION, number.authorization.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            shard.clear_dispatched(vec![seq]);
            return Outcome::Retry { detail: format!("building the request: {e}") };
        }
    };
    let exchange = async {
        let response = shared.client.request(request).await.map_err(|e| (e.is_connect(), e.to_string()))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| (false, e.to_string()))?.to_bytes();
        Ok::<_, (bool, String)>((status, body))
    };
    let outcome = match tokio::time::timeout(shared.request_timeout, exchange).await {
        Err(_) => {
            metrics::counter!(IN_DOUBT_TOTAL).increment(1);
            Outcome::InDoubt { wait: shared.reconcile }
        }
        // Not connected: nothing was sent.
        Ok(Err((true, detail))) => {
            shard.clear_dispatched(vec![seq]);
            Outcome::Retry { detail: format!("cannot connect to the Cloud API: {detail}") }
        }
        Ok(Err((false, detail))) => {
            metrics::counter!(IN_DOUBT_TOTAL).increment(1);
            tracing::warn!(error = %detail, "the Cloud API connection was lost after the request went out: in doubt");
            Outcome::InDoubt { wait: shared.reconcile }
        }
        Ok(Ok((status, body))) => {
            let outcome = answer_of(shared, number, status, &body);
            // Meta answered that it did not take the message (a refusal to retry later): it was
            // not posted after all, so a crash must not make it wait as in doubt.
            if matches!(outcome, Outcome::BackOff { .. } | Outcome::Retry { .. }) {
                shard.clear_dispatched(vec![seq]);
            }
            outcome
        }
    };
    metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome_label(&outcome)).increment(1);
    match outcome {
        // 130429: the number slows down in its pacer (every shard's requests of it), and this
        // message takes the next free slot after the pause; its recipient keeps its place.
        Outcome::BackOff { scope: Scope::Sender, retry_after, reason: BackOffReason::RateLimited, .. }
            if retry_after.is_zero() =>
        {
            let pause = number.pacer.refused(slot);
            tracing::debug!(phone_number_id = %number.phone_number_id, ?pause, "130429: the number pauses");
            Outcome::Resend
        }
        outcome => {
            if matches!(outcome, Outcome::Accepted { .. }) {
                number.pacer.accepted();
            }
            outcome
        }
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Failed { .. } => "failed",
        Outcome::BackOff { scope: Scope::Recipient, reason: BackOffReason::MarketingLimited, .. } => "marketing",
        Outcome::BackOff { scope: Scope::Recipient, .. } => "pair",
        Outcome::BackOff { scope: Scope::Sender, retry_after, .. } if !retry_after.is_zero() => "blocked",
        Outcome::BackOff { .. } => "throughput",
        Outcome::InDoubt { .. } => "in_doubt",
        Outcome::Retry { .. } | Outcome::Reprepare | Outcome::Resend => "retry",
    }
}

/// The outcome of an answered request.
fn answer_of(shared: &CloudShared, number: &NumberState, status: u16, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<ferry_cloud::SendResponse>(body) {
            Ok(r) => Outcome::Accepted { upstream_id: r.wamid().map(str::to_owned), at_ms: None, duplicate: false },
            // Taken (2xx) but unreadable: Meta has it; its webhooks will carry the marker.
            Err(_) => Outcome::Accepted { upstream_id: None, at_ms: None, duplicate: false },
        };
    }
    match serde_json::from_slice::<ferry_cloud::GraphErrorBody>(body) {
        Ok(e) => {
            let title = match codes::known(e.error.code) {
                Some(k) => k.title.to_owned(),
                None => e.error.message.clone(),
            };
            let details = e.details().to_owned();
            let outcome = outcome_for(shared, e.error.code, title, details, e.error.is_transient, status);
            if let Outcome::BackOff { scope: Scope::Sender, retry_after, .. } = &outcome
                && !retry_after.is_zero()
            {
                number.set_blocked(e.error.code);
            }
            outcome
        }
        Err(_) if status >= 500 || status == 408 => {
            Outcome::Retry { detail: format!("the Cloud API answered HTTP {status} without a Graph error") }
        }
        Err(_) if status == 429 => Outcome::BackOff {
            scope: Scope::Sender,
            retry_after: Duration::ZERO,
            reason: BackOffReason::RateLimited,
            detail: "HTTP 429 without a Graph error".into(),
        },
        Err(_) => Outcome::Retry {
            detail: format!("the Cloud API answered HTTP {status} without a Graph error (check cloud.base_url)"),
        },
    }
}

/// The outcome of Meta's error `code` (synchronous, or of a `failed` status): the table.
pub(super) fn outcome_for(
    shared: &CloudShared,
    code: u32,
    title: String,
    details: String,
    is_transient: Option<bool>,
    status: u16,
) -> Outcome {
    let detail = format!("({code}) {title}: {details}");
    match codes::classify(code, is_transient, status) {
        Class::Transient => Outcome::Retry { detail },
        Class::Throughput => Outcome::BackOff {
            scope: Scope::Sender,
            retry_after: Duration::ZERO,
            reason: BackOffReason::RateLimited,
            detail,
        },
        Class::PairLimit => Outcome::BackOff {
            scope: Scope::Recipient,
            retry_after: Duration::ZERO,
            reason: BackOffReason::RateLimited,
            detail,
        },
        Class::MarketingLimit => Outcome::BackOff {
            scope: Scope::Recipient,
            retry_after: Duration::ZERO,
            reason: BackOffReason::MarketingLimited,
            detail,
        },
        Class::Permanent => Outcome::Failed { code, title, details },
        Class::NumberLevel => Outcome::BackOff {
            scope: Scope::Sender,
            retry_after: shared.blocked_probe,
            reason: BackOffReason::RateLimited,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_body_carries_the_marker_and_a_plus_number() {
        let payload = br#"{"recipient_type":"individual","to":"16315551234","type":"text","text":{"body":"hi"},
            "biz_opaque_callback_data":"callers-own","ttl_seconds":60}"#;
        let body = cloud_body(payload, "wamid.ferry1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messaging_product"], "whatsapp");
        assert_eq!(v["recipient_type"], "individual");
        assert_eq!(v["to"], "+16315551234");
        assert_eq!(v["type"], "text");
        assert_eq!(v["text"]["body"], "hi");
        assert_eq!(v["biz_opaque_callback_data"], "wamid.ferry1", "the marker replaces the caller's value");
        assert!(v.get("ttl_seconds").is_none());
    }
}
