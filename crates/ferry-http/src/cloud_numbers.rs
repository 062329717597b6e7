//! The Cloud upstream's business numbers, for operators: `POST
//! /v1/cloud/numbers/{phone_number_id}/unblock` (admin) lifts a number-level block at once, and
//! [`numbers_json`] is what `GET /v1/health` shows of them.
//!
//! A number blocked by Meta (190 token expired, 131031 locked, ...) is probed again on a timer by
//! itself (`cloud.blocked_probe_secs`, then 4^X); once the operator fixed the cause (a new token in
//! the config needs a restart; a payment or a lock is fixed on Meta's side) the unblock call makes
//! every shard send its next message of that number now. If Meta still refuses, it is blocked
//! again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use ferry_delivery::upstream::cloud::CloudShared;
use ferry_model::{ApiError, ErrorCode};
use serde_json::{Value, json};

use crate::{HttpState, Route};

pub const UNBLOCK_PATH: &str = "/v1/cloud/numbers/{phone_number_id}/unblock";

pub fn routes() -> Vec<Route> {
    vec![Route::new(Method::POST, UNBLOCK_PATH, unblock)]
}

/// Every configured number and whether it sends (`/v1/health`'s `cloud.numbers`).
pub fn numbers_json(shared: &CloudShared) -> Value {
    let numbers: Vec<Value> = shared
        .numbers()
        .into_iter()
        .map(|(phone_number, phone_number_id, blocked)| match blocked {
            None => json!({"phone_number": phone_number, "phone_number_id": phone_number_id, "status": "sending"}),
            Some(code) => json!({
                "phone_number": phone_number,
                "phone_number_id": phone_number_id,
                "status": "blocked",
                "blocked_code": code,
            }),
        })
        .collect();
    Value::Array(numbers)
}

async fn unblock(State(state): State<Arc<HttpState>>, Path(phone_number_id): Path<String>) -> Response {
    let Some(cloud) = &state.cloud else {
        let details = "this node does not deliver to the Cloud API (upstream_kind is not \"cloud\")".to_owned();
        return crate::users::api_error_response(&ApiError {
            code: ErrorCode::NotFound,
            field: String::new(),
            details,
        });
    };
    match cloud.numbers.unblock(&phone_number_id) {
        Ok(was) => {
            let body = json!({
                "phone_number_id": phone_number_id,
                "was_blocked": was.is_some(),
                "blocked_code": was,
                "status": "sending",
            });
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(details) => crate::users::api_error_response(&ApiError {
            code: ErrorCode::NotFound,
            field: "phone_number_id".into(),
            details,
        }),
    }
}
