//! Users, tokens and who may call what over HTTP (the users and tokens are `ferry-auth`'s; the
//! same tokens work on gRPC).
//!
//! - `POST /v1/users/login` with HTTP Basic (`Authorization: Basic base64(user:password)`) →
//!   `{"users":[{"token":"…","expires_after":"2026-11-29 14:00:00+00:00"}]}`.
//! - `POST /v1/users/logout` (bearer) revokes that token only.
//! - Admin only: `POST /v1/users` `{"username","password","role","senders"}` (role `admin` or
//!   `user`, default `user`; `senders`: business numbers the user may send as and read, absent or
//!   `null` for unrestricted), `GET /v1/users/{username}`, `PATCH /v1/users/{username}`
//!   `{"senders":[...]}` (or `null`: lift the restriction), `DELETE /v1/users/{username}` (also
//!   revokes the user's tokens), `GET /v1/settings` (the effective config, secrets masked).
//!
//! [`require_auth`] is a middleware on the whole router; its table is `ferry_auth::access`,
//! looked up by the matched route: `/healthz`, `/readyz` and `/metrics` are open (probes and
//! Prometheus scrape without a token), and so is `POST /v1/users/login` (it checks the password
//! itself); messages, `/v1/health` and logout need a valid bearer token of role `user` or
//! `admin`; user management, settings, and anything the table does not name (unknown paths and
//! methods included) need role `admin`.
//!
//! Refusals use the On-Prem error shape: 401 (no, wrong, expired or revoked credentials, with
//! `WWW-Authenticate`) or 403 (role too low), body
//! `{"errors":[{"code":1005,"title":"…","details":"…"}]}`.
//!
//! Invariants (written as absences): no route the access table does not mark open runs without a
//! valid token; no response or log line carries a password or a token other than the
//! one a login just issued.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ferry_auth::access::{Access, Endpoint};
use ferry_auth::{AuthError, Role, UserInfo};
use ferry_model::{ApiError, ErrorCode};
use serde_json::json;

use crate::{HttpState, Route};

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/users/login", login),
        Route::new(Method::POST, "/v1/users/logout", logout),
        Route::new(Method::POST, "/v1/users", create_user),
        Route::new(Method::GET, "/v1/users/{username}", get_user),
        Route::new(Method::PATCH, "/v1/users/{username}", update_user),
        Route::new(Method::DELETE, "/v1/users/{username}", delete_user),
        Route::new(Method::GET, "/v1/settings", settings),
    ]
}

/// What a request needs: the access table's row of its matched route (method + path pattern);
/// a request that matched no route is looked up as such, i.e. admin-only.
pub fn required_access(request: &Request) -> Access {
    let route = request.extensions().get::<MatchedPath>().map_or("(no route)", MatchedPath::as_str);
    ferry_auth::access::required_access(Endpoint::Http(request.method().as_str(), route))
}

/// Middleware: refuses (401/403) a request that [`required_access`] does not let through; puts the
/// caller's [`ferry_auth::Principal`] in the request's extensions.
pub async fn require_auth(State(state): State<Arc<HttpState>>, mut request: Request, next: Next) -> Response {
    if let Access::Token(role) = required_access(&request) {
        match state.auth.authorize(authorization(request.headers()), role) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
            }
            Err(e) => {
                // Cloud clients (pywa, the Graph SDKs) parse only the Cloud error shape.
                let cloud = crate::messages::is_cloud_path(request.uri().path());
                return auth_error_shaped(&e, "Bearer", cloud);
            }
        }
    }
    next.run(request).await
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    // A non-ASCII value is no valid credential: pass something that fails as malformed.
    headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("?"))
}

/// A JSON response.
fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// An error in the On-Prem shape, with the HTTP status of the one error table.
pub fn api_error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"errors": [{"code": e.code.code(), "title": e.code.title(), "details": e.details}]});
    json_response(status, body)
}

/// An auth failure; a 401 names the scheme to use (`WWW-Authenticate`).
fn auth_error(e: &AuthError, scheme: &'static str) -> Response {
    auth_error_shaped(e, scheme, false)
}

/// [`auth_error`] in the On-Prem shape, or the Cloud one (`cloud`).
fn auth_error_shaped(e: &AuthError, scheme: &'static str, cloud: bool) -> Response {
    if let AuthError::Storage(err) = e {
        tracing::error!(error = %err, "auth storage failed");
    }
    let mut response =
        if cloud { crate::messages::cloud_error_response(e.api_error()) } else { api_error_response(&e.api_error()) };
    if response.status() == StatusCode::UNAUTHORIZED {
        let challenge = if scheme == "Basic" { "Basic realm=\"ferry\"" } else { "Bearer realm=\"ferry\"" };
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// Which lane a piece of blocking auth work runs in. Login needs no token and runs argon2 (~19 MiB
/// and tens of ms of a core per check), so it is bounded: without a bound a flood of logins would
/// take hundreds of blocking threads and gigabytes, and starve the send path. Logout and user
/// management (token-checked callers) have a lane of their own, so a login flood cannot starve
/// them either.
#[derive(Debug, Clone, Copy)]
enum Lane {
    Login,
    Management,
}

static LOGIN_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
static MANAGEMENT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// How long a request waits for a slot of its lane before it is refused with 429 (1015).
const AUTH_WORK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs blocking auth work (argon2, synced auth-store writes) off the async workers, at most two
/// at once per [`Lane`].
async fn blocking<T: Send + 'static>(
    lane: Lane,
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, Response> {
    let (slots, what) = match lane {
        Lane::Login => (&LOGIN_SLOTS, "logins"),
        Lane::Management => (&MANAGEMENT_SLOTS, "logout and user-management calls"),
    };
    let _slot = match tokio::time::timeout(AUTH_WORK_WAIT, slots.acquire()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            let e = ApiError::new(
                ErrorCode::TooManyRequests,
                "",
                format!("too many {what} at once: retry in a few seconds"),
            );
            return Err(api_error_response(&e));
        }
    };
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(auth_error(&e, "Basic")),
        Err(e) => Err(api_error_response(&ApiError::new(ErrorCode::Internal, "", e.to_string()))),
    }
}

/// `Authorization: Basic base64(user:password)` → (user, password).
fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), AuthError> {
    let malformed = || AuthError::Unauthenticated("expected `Authorization: Basic base64(username:password)`".into());
    let value = authorization(headers).ok_or_else(malformed)?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (user, password) = text.split_once(':').ok_or_else(malformed)?;
    Ok((user.to_owned(), password.to_owned()))
}

async fn login(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let (user, password) = match basic_credentials(&headers) {
        Ok(c) => c,
        Err(e) => return auth_error(&e, "Basic"),
    };
    let auth = state.auth.clone();
    let name = user.clone();
    match blocking(Lane::Login, move || auth.login(&name, &password)).await {
        Ok(t) => json_response(
            StatusCode::OK,
            json!({"users": [{"token": t.token, "expires_after": format_utc(t.expires_at_ms)}]}),
        ),
        Err(r) => {
            // The name only: never the password.
            tracing::warn!(%user, status = r.status().as_u16(), "login refused");
            r
        }
    }
}

async fn logout(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let auth = state.auth.clone();
    let header = authorization(&headers).map(str::to_owned);
    match blocking(Lane::Management, move || auth.logout(header.as_deref())).await {
        Ok(()) => json_response(StatusCode::OK, json!({})),
        Err(r) => r,
    }
}

fn user_json(u: &UserInfo) -> serde_json::Value {
    let senders = u.senders.as_ref().map(|list| list.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    json!({
        "username": u.username,
        "role": u.role.as_str(),
        "created_at": format_utc(u.created_at_ms),
        "senders": senders,
    })
}

/// The body of a user call as a JSON object, or a 400 saying what was expected.
fn json_object(body: &[u8], expected: &str) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(ApiError::invalid("body", format_args!("a JSON object {expected}"))),
    }
}

/// `senders`: absent or `null` → `None` (unrestricted); an array of strings → the raw numbers
/// (normalized and checked by `ferry-auth`); anything else is a 400 naming the field.
fn senders_field(body: &serde_json::Map<String, serde_json::Value>) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "senders",
            "an array of business phone numbers (strings, e.g. \"+15550100000\"), or null for unrestricted",
        )
    };
    match body.get("senders") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(bad)).collect::<Result<_, _>>().map(Some)
        }
        Some(_) => Err(bad()),
    }
}

async fn create_user(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let parsed = match json_object(&body, r#"{"username","password","role","senders"}"#) {
        Ok(p) => p,
        Err(e) => return api_error_response(&e),
    };
    let field = |name: &str| parsed.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let Some(username) = field("username") else { return api_error_response(&ApiError::missing("username")) };
    let Some(password) = field("password") else { return api_error_response(&ApiError::missing("password")) };
    let role = match field("role").as_deref().unwrap_or("user").parse::<Role>() {
        Ok(r) => r,
        Err(e) => return api_error_response(&ApiError::new(ErrorCode::InvalidParameter, "role", e)),
    };
    let senders = match senders_field(&parsed) {
        Ok(s) => s,
        Err(e) => return api_error_response(&e),
    };
    let auth = state.auth.clone();
    match blocking(Lane::Management, move || auth.create_user(&username, &password, role, senders.as_deref())).await {
        Ok(u) => json_response(StatusCode::CREATED, json!({"users": [user_json(&u)]})),
        Err(r) => r,
    }
}

/// `PATCH /v1/users/{username}` `{"senders":[...]}` or `{"senders":null}`: sets or lifts the
/// user's senders (in force for its open tokens at once). Other fields cannot be changed here.
async fn update_user(State(state): State<Arc<HttpState>>, Path(username): Path<String>, body: Bytes) -> Response {
    let parsed = match json_object(&body, r#"{"senders":[...]}"#) {
        Ok(p) => p,
        Err(e) => return api_error_response(&e),
    };
    if let Some(other) = parsed.keys().find(|k| k.as_str() != "senders") {
        let e = ApiError::invalid(other.as_str(), format_args!("only `senders` can be changed, got `{other}`"));
        return api_error_response(&e);
    }
    if !parsed.contains_key("senders") {
        return api_error_response(&ApiError::missing("senders"));
    }
    let senders = match senders_field(&parsed) {
        Ok(s) => s,
        Err(e) => return api_error_response(&e),
    };
    let auth = state.auth.clone();
    match blocking(Lane::Management, move || auth.set_senders(&username, senders.as_deref())).await {
        Ok(u) => json_response(StatusCode::OK, json!({"users": [user_json(&u)]})),
        Err(r) => r,
    }
}

async fn get_user(State(state): State<Arc<HttpState>>, Path(username): Path<String>) -> Response {
    let auth = state.auth.clone();
    match blocking(Lane::Management, move || auth.user(&username)).await {
        Ok(u) => json_response(StatusCode::OK, json!({"users": [user_json(&u)]})),
        Err(r) => r,
    }
}

async fn delete_user(State(state): State<Arc<HttpState>>, Path(username): Path<String>) -> Response {
    let auth = state.auth.clone();
    let name = username.clone();
    match blocking(Lane::Management, move || auth.delete_user(&name)).await {
        Ok(()) => {
            tracing::info!(%username, "user deleted; its tokens are revoked");
            json_response(StatusCode::OK, json!({"users": [{"username": username}]}))
        }
        Err(r) => r,
    }
}

async fn settings(State(state): State<Arc<HttpState>>) -> Response {
    json_response(StatusCode::OK, json!({"settings": state.settings}))
}

/// `YYYY-MM-DD HH:MM:SS+00:00` (the reference's `expires_after` format) of a Unix time in ms.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+00:00", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod users_tests {
    use super::*;

    #[test]
    fn expires_after_is_the_reference_format() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00+00:00");
        assert_eq!(format_utc(1_519_918_166_000), "2018-03-01 15:29:26+00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00+00:00");
    }

    #[test]
    fn basic_credentials_are_parsed_and_malformed_ones_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWRtaW46cDpzcw=="));
        assert_eq!(basic_credentials(&h).unwrap(), ("admin".into(), "p:ss".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer YWRtaW46cDpzcw=="));
        assert!(basic_credentials(&h).is_err());
        assert!(basic_credentials(&HeaderMap::new()).is_err());
    }
}
