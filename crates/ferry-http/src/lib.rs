//! ferry's HTTP surface, served by the same process and tokio runtime as the gRPC API.
//!
//! - [`messages`]: the JSON API: On-Prem `POST /v1/messages` and Cloud
//!   `POST /{version}/{phone_number_id}/messages`. It only maps shapes: parsing to the domain
//!   (`ferry_model::message::parse_json`) and validation are the ones gRPC uses.
//! - [`users`]: `POST /v1/users/login`, `/v1/users/logout`, user management, settings; the
//!   auth middleware in front of every route.
//! - [`ops`]: `GET /v1/health`, `/healthz`, `/readyz`, `/metrics`.
//!
//! Invariants: this crate never touches storage directly (it awaits the coordinator, and
//! `ferry-auth` for users and tokens), and it answers a send only with what the coordinator
//! returned after the durable write. No route runs without the auth middleware.

pub mod messages;
pub mod ops;
pub mod tls;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use ferry_coordinator::Coordinator;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The process's lifecycle as the HTTP and gRPC surfaces report it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// Called once, at the first SIGTERM/SIGINT: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Everything the HTTP handlers need, shared by all requests.
pub struct HttpState {
    pub coordinator: Arc<Coordinator>,
    pub lifecycle: Arc<Lifecycle>,
    /// Delivery stats and the metrics recorder for the ops endpoints.
    pub ops: ops::Ops,
    /// Users and tokens (the same as gRPC's); [`users::require_auth`] checks every request.
    pub auth: Arc<ferry_auth::Auth>,
    /// The effective config, secrets masked, for `GET /v1/settings` (admin only).
    pub settings: serde_json::Value,
    /// Longest request body the messages API reads (`[http] max_body_bytes`); longer is 413.
    pub max_body_bytes: usize,
}

/// The `[http]` section of `ferry.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest JSON request body accepted, in bytes; longer bodies are refused with 413 in the
    /// flavour's error shape. Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: usize,
}

/// 1 MiB: far above the largest valid message (a 4096-character text, or an interactive list with
/// ten rows, is a few KiB), small enough that a flood of big bodies cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_body_bytes: DEFAULT_MAX_BODY_BYTES }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!(
                "http.max_body_bytes = {}: expected at least 1024 bytes (a message request needs a few hundred)",
                self.max_body_bytes
            ));
        }
        Ok(())
    }
}

/// The whole HTTP API, behind the auth middleware ([`users::required_access`] says which routes
/// are open).
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .merge(messages::routes())
        .merge(users::routes())
        .merge(ops::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), users::require_auth))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// [`serve`] over TLS (`[tls]`): the same router behind rustls.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(tls::TlsListener::new(listener, config)?, router).with_graceful_shutdown(shutdown).await
}
